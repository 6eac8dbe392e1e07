"""How a job on the node fails: every error class of jobs/, and the failure line that carries
one back to the login node. Standard library only.

A calibration's exception reaches the login node only as text: submitit keeps the job's
traceback as a string, and planner.submission parses the last failure line out of it
(parse_failure), never the exception's class. A training job prints the same kind and
message to its log, writes a ``failure`` progress event with one of CAUSES (jobs.progress),
and exits with one of the EXIT_ codes below.
"""

from __future__ import annotations

import json
from typing import Any

FAILURE_MARKER = "plan-job-failure:"

# Exit status of `python -m jobs.train` (the login node reads them from sacct).
EXIT_OK = 0  # done, or stopped cleanly (a signal, the stop time)
EXIT_FAILED = 1  # the training failed; a `failure` progress event says why when it can
# Refused to start: no checkpoint loads while the run is past step 0, another trainer holds
# the run's lock, the checkpoint folder lacks room (or bad config, arguments, environment).
EXIT_REFUSED = 2
EXIT_CHAIN_STOPPED = 3  # the segments before this one made no progress: the chain is cancelled
EXIT_HANG = 124  # the hang watchdog expired (as timeout(1) exits)

# The named causes of a `failure` progress event: what the node can tell about why it ends.
CAUSES = (
    "no_space",  # ENOSPC saving a checkpoint or writing progress, or too little room to start
    "out_of_memory",  # the device's (CUDA) memory
    "host_out_of_memory",  # the node's memory, where Python saw it (MemoryError)
    "import_error",  # the user's workload does not import
    "checkpoint_mismatch",  # a checkpoint that does not fit the workload (keys, shapes, ranks)
    "no_checkpoint_loads",  # the run is past step 0 and none of its checkpoints loads
    "trainer_running",  # another trainer holds the run's lock (jobs.node.trainer_lock)
    "command_failed",  # the user's command exited non-zero or was killed by a signal
    "command_ignored_stop",  # the user's command outlived stop_grace_s after the stop signal
    "exception",  # anything else
)


def failure_message(kind: str, message: str, **details: Any) -> str:
    """A line the login node can parse out of submitit's traceback text."""
    payload = {"kind": kind, "message": message, **details}
    return f"{FAILURE_MARKER} {json.dumps(payload, sort_keys=True)}"


def parse_failure(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        _, marker, payload = line.partition(FAILURE_MARKER)
        if marker:
            try:
                return json.loads(payload)
            except json.JSONDecodeError:
                return None
    return None


class NodeError(RuntimeError):
    """A failure on the compute node, raised by the calibration harness, the training entry and
    the command launcher alike: ``kind`` names what failed (``oom``, ``workload_error``,
    ``checkpoint``, ``distributed``, ...), and the text is a failure line (failure_message)
    that travels back through submitit's traceback text."""

    def __init__(self, kind: str, message: str, **details: Any) -> None:
        self.kind = kind
        super().__init__(failure_message(kind, message, **details))


class Refusal(NodeError):
    """The training will not start, for a reason a user fixes before the next job (another
    trainer runs, nothing loads, no room): the job exits with EXIT_REFUSED, and a `failure`
    event names ``cause`` (one of CAUSES)."""

    def __init__(self, cause: str, message: str, **detail: Any) -> None:
        self.cause, self.detail, self.text = cause, detail, message
        super().__init__(cause, message)


class CheckpointMismatch(NodeError):
    """A checkpoint that loads but does not fit the workload: its keys or shapes, or the
    number of ranks that wrote it."""

    def __init__(self, message: str) -> None:
        super().__init__("checkpoint", message)


class CollectiveFailed(NodeError):
    """A collective (or the rendezvous) failed or timed out: usually another rank died."""

    def __init__(self, message: str) -> None:
        super().__init__("distributed", message)
