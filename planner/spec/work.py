"""The one builder of the jobs' Work (jobs.contract.work) from a run spec: the calibration's
request and the run's train.json embed the same Work, built here, so the two cannot drift in
what they run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.contract.work import Work
from planner.spec.run_spec import RunSpec


def build_work(spec: RunSpec, grad_accum: int, trainer_output: Path | None = None) -> Work:
    """What a job of ``spec`` runs, ``grad_accum`` micro-batches per rank per optimizer step.

    ``trainer_output`` is where a user's command that reports through the Hugging Face
    Trainer writes (command.output_dir): the run's own folder for the run, a scratch folder
    for the calibration, whose saves must not become checkpoints the run resumes from.
    """
    command: dict[str, Any] = {}
    if spec.command is not None:
        wanted = spec.command.output_dir is not None and trainer_output is not None
        command = {
            "command": spec.command.argv,
            "report": spec.command.report,
            "output_dir": str(trainer_output) if wanted else "",
            "stop_grace_s": spec.command.stop_grace_s,
        }
    return Work(
        builder_path=spec.workload.builder_path,
        workload_name=spec.workload.name,
        preset=spec.workload.preset,
        overrides=dict(spec.workload.overrides),
        micro_batch=spec.batch.micro_batch,
        grad_accum=grad_accum,
        precision=spec.precision,
        device=spec.calibration.device,
        seed=spec.calibration.seed,
        compile=spec.workload.compile,
        **command,
    )
