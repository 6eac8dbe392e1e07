"""The training progress file: JSON Lines that every job of a run appends to.

Standard library only: the login node and users' own scripts read it without torch.

Each line is one JSON object with an ``"event"`` name and a ``"time"`` (Unix seconds, a
float, when the line was written). A run that spans several Slurm jobs appends each job's
lines to the same file, so the file reads as the run's history: every job begins with a
``start`` line and, unless it crashed or was killed outright, ends with a ``stop`` line.

``start``
    ``step`` (int): the optimizer step this job starts from (0 on a fresh start, else the
    step of the checkpoint it resumed); ``total_steps`` (int): the run's target;
    ``restart`` (int): 0 for the run's first job, else how many ``start`` lines precede this
    one; ``job_id`` (str or null): ``$SLURM_JOB_ID``; ``host`` (str); ``pid`` (int).
    Optional, present only when the writer knows them (a user's script through
    jobs.report): ``params`` (int, the model's parameters); ``samples_per_step`` (int, on one
    device); ``tokens_per_sample`` (int) and ``token_unit`` (str, what a token is);
    ``flops_per_step`` (float, training FLOPs of one optimizer step on one device).
``resume``
    Written after ``start`` when the job loaded a checkpoint. ``step`` (int): the
    checkpoint's step; ``load_s`` (float): seconds to read and apply it; ``path`` (str).
``step``
    One every ``log_every`` optimizer steps, and for the last step. ``step`` (int): optimizer
    steps completed by the run so far; ``samples`` and ``tokens`` (int): totals so far on one
    device (``step`` times the per-step counts; tokens in the workload's token unit);
    ``step_s`` (float): wall time of this step, from the end of the one before (or of the
    save or evaluation after it): its data, the step, and the loop's own work between steps
    (progress lines, stop checks), so that a job's steps, saves and evaluations account for
    its time from ``start`` to ``stop``; ``loss`` (float, the mean over the step's
    micro-batches; null when not finite, as JSON has no NaN). A user's script through
    jobs.report may write null ``samples``, ``tokens`` and ``loss`` when it does not say
    them, and an optional ``peak_memory_bytes`` (int): the peak memory so far (CUDA's max
    allocated), present only when known.
``checkpoint``
    ``step`` (int): the step saved; ``save_s`` (float): seconds to write it (atomically);
    ``path`` (str); ``bytes`` (int): its size.
``eval``
    One per evaluation, every ``eval_interval_steps`` steps (after that step, before its
    checkpoint). ``step`` (int): the step evaluated at; ``eval_s`` (float): seconds the
    evaluation took, held-out data included; ``loss`` (float, the mean over its batches and
    ranks; null when not finite).
``stop``
    ``step`` (int): the step the job stopped at (a checkpoint of it is on disk, unless it
    is 0); ``reason``: ``"done"`` (``total_steps`` reached), ``"signal"`` (SIGUSR2 or
    SIGTERM, e.g. Slurm's warning before the time limit) or ``"time_limit"`` (the next step
    and its save would not have finished before the job's stop time); ``signal`` (str or
    null): the signal's name, e.g. ``"SIGUSR2"``, when ``reason`` is ``"signal"``.

``checkpoint_bad``
    A checkpoint failed its checksum or did not load, and was set aside: ``path`` (str:
    where it was); ``moved_to`` (str: the ``.bad`` path it was renamed to); ``reason`` (str,
    one line: ``"checksum mismatch"`` or the load error); ``step`` (int or null: the step its
    name says).
``failure``
    The training entry (the built-in training or the launcher of a user's command) knows
    why it ends with an error; written just before its non-zero exit. ``step`` (int: the
    last step it completed); ``cause`` (str, one of jobs.contract.failure.CAUSES);
    ``message`` (str, one line, at most 500 characters); ``detail`` (object, optional,
    cause-specific: ``trainer_running``: ``{"holder": {the lock's fields}}``;
    ``command_failed``: ``{"exit_code": int or null, "signal": str or null}``;
    ``no_space``: ``{"path": str, "free_bytes": int, "needed_bytes": int}``). Optional:
    ``rank`` (int: the rank that wrote it, in a job of several) and ``job_id`` (str or null).
``hang``
    A rank's hang watchdog expired (every rank whose watchdog fires writes one, then dumps
    its threads' stacks into the job's log and exits 124): ``step`` (int: the last optimizer
    step this rank completed); ``phase`` (str: ``"startup"``, ``"load"``, ``"compile"``,
    ``"step"``, ``"save"``, ``"eval"``, ``"exit"`` (after the last save, until the process
    ends) or ``"progress"`` (a user's command wrote no progress line within its timeout));
    ``waited_s`` and ``timeout_s`` (float); ``rank`` (int); ``host`` (str); ``job_id`` (str
    or null).
``chain_stopped``
    A segment found at its start that the segments before it made no progress ``stalled``
    times in a row: it cancelled the rest of its chain and exits 3. ``step`` (int: the
    newest checkpoint's step, 0 if none); ``stalled`` (int); ``reason`` (str, one sentence);
    ``cancelled`` (list of str: the job ids it cancelled); ``log_tail`` (list of str, at
    most 20: the last lines of the previous job's log); ``job_id`` (str or null).

A job killed while writing can leave a last line cut short; readers skip a line that is
not a complete JSON object, and the next writer starts on a fresh line. Readers must also
skip events they do not know: new kinds of line may be added (``eval`` was).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, TextIO

EVENTS = (
    "start",
    "resume",
    "step",
    "checkpoint",
    "eval",
    "stop",
    "checkpoint_bad",
    "failure",
    "hang",
    "chain_stopped",
)
STOP_REASONS = ("done", "signal", "time_limit")
MESSAGE_CHARS = 500  # a failure's message, at most
LOG_TAIL_LINES = 20  # a chain_stopped event's log lines, at most


class ProgressWriter:
    """Appends one flushed line per event; opened in append mode so jobs share one file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115
        if _ends_torn(path):
            self._handle.write("\n")  # so the first line of this job is not glued to it

    def start(
        self,
        step: int,
        total_steps: int,
        restart: int,
        *,
        params: int | None = None,
        samples_per_step: int | None = None,
        tokens_per_sample: int | None = None,
        token_unit: str | None = None,
        flops_per_step: float | None = None,
    ) -> None:
        self._write(
            "start",
            step=step,
            total_steps=total_steps,
            restart=restart,
            job_id=os.environ.get("SLURM_JOB_ID"),
            host=socket.gethostname(),
            pid=os.getpid(),
            **_known(
                params=params,
                samples_per_step=samples_per_step,
                tokens_per_sample=tokens_per_sample,
                token_unit=token_unit,
                flops_per_step=flops_per_step,
            ),
        )

    def resume(self, step: int, load_s: float, path: str) -> None:
        self._write("resume", step=step, load_s=load_s, path=path)

    def step(
        self,
        step: int,
        samples: int | None,
        tokens: int | None,
        step_s: float,
        loss: float | None,
        *,
        peak_memory_bytes: int | None = None,
    ) -> None:
        self._write(
            "step",
            step=step,
            samples=samples,
            tokens=tokens,
            step_s=step_s,
            loss=loss,
            **_known(peak_memory_bytes=peak_memory_bytes),
        )

    def checkpoint(self, step: int, save_s: float, path: str, nbytes: int) -> None:
        self._write("checkpoint", step=step, save_s=save_s, path=path, bytes=nbytes)

    def eval(self, step: int, eval_s: float, loss: float | None) -> None:
        self._write("eval", step=step, eval_s=eval_s, loss=loss)

    def stop(self, step: int, reason: str, signal: str | None = None) -> None:
        if reason not in STOP_REASONS:
            raise ValueError(f"stop reason {reason!r} is not one of {', '.join(STOP_REASONS)}")
        self._write("stop", step=step, reason=reason, signal=signal)

    def checkpoint_bad(self, path: str, moved_to: str, reason: str, step: int | None) -> None:
        self._write("checkpoint_bad", path=path, moved_to=moved_to, reason=reason, step=step)

    def failure(
        self,
        step: int,
        cause: str,
        message: str,
        detail: dict[str, Any] | None = None,
        *,
        rank: int | None = None,
    ) -> None:
        one_line = " ".join(message.split())
        if len(one_line) > MESSAGE_CHARS:
            one_line = one_line[: MESSAGE_CHARS - 3] + "..."
        self._write(
            "failure",
            step=step,
            cause=cause,
            message=one_line,
            **_known(detail=detail, rank=rank),
            job_id=os.environ.get("SLURM_JOB_ID"),
        )

    def hang(self, step: int, phase: str, waited_s: float, timeout_s: float, rank: int) -> None:
        self._write(
            "hang",
            step=step,
            phase=phase,
            waited_s=waited_s,
            timeout_s=timeout_s,
            rank=rank,
            host=socket.gethostname(),
            job_id=os.environ.get("SLURM_JOB_ID"),
        )

    def chain_stopped(
        self, step: int, stalled: int, reason: str, cancelled: list[str], log_tail: list[str]
    ) -> None:
        self._write(
            "chain_stopped",
            step=step,
            stalled=stalled,
            reason=reason,
            cancelled=list(cancelled),
            log_tail=list(log_tail)[-LOG_TAIL_LINES:],
            job_id=os.environ.get("SLURM_JOB_ID"),
        )

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ProgressWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "time": time.time(), **fields})
        self._handle.write(line + "\n")
        self._handle.flush()


def read_progress(
    path: str | os.PathLike[str], keep_steps: int | None = None
) -> list[dict[str, Any]]:
    """All events in file order; [] when the file does not exist yet. Torn lines are skipped.

    ``keep_steps``: keep only the last this many ``step`` lines (0: none) and every other
    event, still in file order. A job reads the file at its start, and a run of a million
    steps is a million step lines: parsed whole, 12 s and 1.4 GB of dicts on a node, where
    the lines a job needs (starts, checkpoints, failures, a few recent steps) are a handful.
    Step lines as ProgressWriter writes them are told apart by their first bytes, unparsed.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return []
    kept: list[tuple[int, bytes]] = []
    steps: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=keep_steps or 1)
    with handle:
        for index, line in enumerate(handle):
            if keep_steps is not None and line.startswith(_STEP_PREFIX):
                if keep_steps and line.rstrip().endswith(b"}"):  # a torn one takes no place
                    steps.append((index, line))
                continue
            kept.append((index, line))
    if keep_steps:
        kept = sorted([*kept, *steps])
    events = []
    # str.splitlines, as the readers on the login side split: a stray \r or \x0b ends a line.
    texts = (part for _, line in kept for part in line.decode("utf-8", "replace").splitlines())
    for text in texts:
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    return events


# How ProgressWriter starts a step line (json.dumps with the event first): other writers' step
# lines are parsed and kept like any other event, which is only slower.
_STEP_PREFIX = b'{"event": "step",'


def restart_count(events: list[dict[str, Any]]) -> int:
    """The restart number of the job about to start: how many jobs started before it (each
    job's first line is its ``start``, written before it opens the file for anything else)."""
    return sum(event["event"] == "start" for event in events)


def _known(**fields: Any) -> dict[str, Any]:
    # Optional fields are left out rather than written as null: the training entry's lines stay
    # as they were, and "absent" reads the same as "unknown" to every reader.
    return {name: value for name, value in fields.items() if value is not None}


def _ends_torn(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"
