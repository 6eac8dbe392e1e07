"""How a job on the node fails: every error class of jobs/, and the failure line that carries
one back to the login node. Standard library only.

A calibration's exception reaches the login node only as text: submitit keeps the job's
traceback as a string, and planner.submission parses the last failure line out of it
(parse_failure), never the exception's class. A training job prints the same kind and
message to its log and exits 1.
"""

from __future__ import annotations

import json
from typing import Any

FAILURE_MARKER = "plan-job-failure:"


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


class CollectiveFailed(NodeError):
    """A collective (or the rendezvous) failed or timed out: usually another rank died."""

    def __init__(self, message: str) -> None:
        super().__init__("distributed", message)
