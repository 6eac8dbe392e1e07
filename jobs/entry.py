"""Entry points that submitit pickles by reference. Torch-free at import: the login node
imports this module to hand the function to submitit, and must not pay for torch."""

from __future__ import annotations

import os

from jobs.contract.failure import NodeError
from jobs.contract.measurement import CalibrationRequest, Measurement


def calibrate(request: CalibrationRequest) -> Measurement:
    """Calibrate on this node. Launched as several tasks, every task calls this and the
    workload's steps run data-parallel across them (jobs.calibration.builtin); each task
    returns its own Measurement of the same steps, and submitit hands back task 0's."""
    if request.work.command:  # the user's own training command, run as it is
        _one_task_only()
        from jobs.calibration.command import calibrate_command

        return calibrate_command(request)
    from jobs.calibration.builtin import calibrate as run

    return run(request)


def _one_task_only() -> None:
    from jobs.node.world import detect

    try:
        size = detect(os.environ).size
    except ValueError:
        return  # the command ignores the launcher's variables: nothing to refuse
    if size > 1:
        # Every task would start the whole command: as many unrelated trainings as tasks.
        raise NodeError(
            "distributed",
            f"the calibration job started {size} tasks, and a user's own command "
            "(workload.command) is calibrated in one: launch the calibration with one node "
            "and one task per node; the command's own launcher (torchrun) may start more",
        )
