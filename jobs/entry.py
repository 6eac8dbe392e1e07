"""Entry points that submitit pickles by reference. Torch-free at import: the login node
imports this module to hand the function to submitit, and must not pay for torch."""

from __future__ import annotations

from jobs.measurement import CalibrationRequest, Measurement


def calibrate(request: CalibrationRequest) -> Measurement:
    if request.command:  # the user's own training command, run as it is
        from jobs.command_calibration import calibrate_command

        return calibrate_command(request)
    from jobs.harness import calibrate as run

    return run(request)
