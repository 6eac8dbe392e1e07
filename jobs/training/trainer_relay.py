"""A Hugging Face Trainer's checkpoints, relayed as progress lines: a command with ``report:
trainer_state`` (an unchanged Trainer script) writes no progress lines, so the launcher
(jobs.training.command) and the calibration (jobs.calibration.command) write them for it from
the Trainer's checkpoint-N folders, and eta and resubmit read such a run as any other.
Standard library only.
"""

from __future__ import annotations

import sys

from jobs.progress import ProgressWriter
from jobs.training import trainer_state


class TrainerStateRelay:
    """Turns a Trainer's new checkpoint-N folders into progress lines: per folder a ``step``
    line (step_s: the mean step time since the previous save ended, or since ``since_time``
    for the first) and a ``checkpoint`` line (save_s and bytes from the folder's files).

    A folder is taken at the first look that finds its trainer_state.json, which the Trainer
    writes at the end of a save: waiting for a second look would lose folders that
    save_total_limit deletes within a poll or two when steps are fast. Folders that were
    there before (earlier jobs) are not this job's."""

    def __init__(
        self,
        output_dir: str,
        writer: ProgressWriter,
        since_step: int,
        since_time: float,
        samples_per_step: int,
    ) -> None:
        self.output_dir, self.writer = output_dir, writer
        self.last_step, self.last_end = since_step, since_time
        self.samples_per_step = samples_per_step
        # Earlier jobs' folders. One above since_step is a save cut short (no
        # trainer_state.json): this job writes it anew.
        folders = trainer_state.checkpoint_folders(output_dir)
        self._seen = {step for step, _ in folders if step <= since_step}
        self._warned = False

    def poll(self) -> list[trainer_state.CheckpointFolder]:
        """Write the lines of the folders completed since the last call; returns them."""
        written = []
        for step, path in trainer_state.checkpoint_folders(self.output_dir):
            if step in self._seen:
                continue
            if step <= self.last_step:
                self._seen.add(step)
                self._warn_behind(step)
                continue
            folder = trainer_state.describe(path, step)
            if folder is None:
                continue  # being written, or a save an earlier job's end cut short
            self._seen.add(step)
            self._write(folder)
            written.append(folder)
        return written

    def _write(self, folder: trainer_state.CheckpointFolder) -> None:
        steps = folder.step - self.last_step
        step_s = max(folder.save_start - self.last_end, 0.0) / steps
        loss = trainer_state.loss_at(folder.state, folder.step)
        samples = folder.step * self.samples_per_step
        self.writer.step(folder.step, samples, 0, step_s, loss)
        self.writer.checkpoint(folder.step, folder.save_s, folder.path, folder.nbytes)
        self.last_step, self.last_end = folder.step, folder.save_end

    def _warn_behind(self, step: int) -> None:
        if not self._warned:
            self._warned = True
            print(
                f"plan-job: warning: the command saved checkpoint-{step} behind step "
                f"{self.last_step}: it did not resume; pass {{resume_from}} to the Trainer's "
                "resume_from_checkpoint",
                file=sys.stderr,
            )
