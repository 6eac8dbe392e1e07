"""A failing rank of a multi-rank calibration: every rank fails, and each names the rank that
failed first and its own error, not just "a collective failed".

Each rank publishes its own failure in the rendezvous store that every rank already talks to;
a rank that saw only a collective fail (its peer died) reports the peer's published failure.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from jobs.contract.failure import NodeError, parse_failure
from jobs.node import runtime
from jobs.node.world import World

# The failures of the ranks, in the rendezvous store that every rank already talks to: a
# rank that sees only "a collective failed" (its peer died) reports the peer's own error.
_FAILURE_COUNT_KEY = "plan-job/calibration/failures"
_FAILURE_KEY = "plan-job/calibration/failure/{index}"
# How long a rank whose collective failed waits for the failing rank's own error. The peer
# publishes before it exits and gloo notices the exit, so it is normally there already.
FAILURE_WAIT_S = 3.0


def rank_failure(world: World, exc: BaseException) -> NodeError:
    """The NodeError this rank raises for ``exc``: its own failure, named ``rank R on
    NODE: KIND: message`` and published for the others, or, when all this rank saw was a
    collective failing, the first failure another rank published."""
    if isinstance(exc, NodeError):
        parsed = parse_failure(str(exc)) or {"kind": exc.kind, "message": str(exc)}
    else:
        message = f"{type(exc).__name__}: {exc}{runtime.where(exc)}"
        parsed = {"kind": "error", "message": message}
    kind, message = str(parsed.pop("kind")), str(parsed.pop("message"))
    store = _default_store()
    if kind == "distributed" and store is not None:
        other = _published_failure(store)
        if other is not None:
            return other
    details = {**parsed, "rank": world.rank, "node": world.host}
    named = f"rank {world.rank} on {world.host}: {kind}: {message}"
    if kind != "distributed" and store is not None:
        _publish(store, {"kind": kind, "message": named, **details})
    return NodeError(kind, named, **details)


def _default_store() -> Any:
    """The process group's store, with a short timeout; None before the group exists."""
    try:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            return None
        store = dist.distributed_c10d._get_default_store()
        # Its own timeout is the rendezvous's (minutes): a failing rank must not wait that
        # long on a server whose node is gone. The group is finished with it by now.
        short = timedelta(seconds=FAILURE_WAIT_S + 2)
        for layer in (store, getattr(store, "underlying_store", None)):
            if layer is not None:
                layer.set_timeout(short)
        return store
    except Exception:  # a private API: without it, each rank reports only its own failure
        return None


def _publish(store: Any, failure: dict[str, Any]) -> None:
    try:
        index = store.add(_FAILURE_COUNT_KEY, 1)
        store.set(_FAILURE_KEY.format(index=index), json.dumps(failure))
    except Exception:  # the store's server (rank 0) may be gone: this rank's error stands
        pass


def _published_failure(store: Any) -> NodeError | None:
    deadline = time.monotonic() + FAILURE_WAIT_S
    try:
        while True:
            # The first published: the rank that failed first, whose failure the others saw.
            if store.add(_FAILURE_COUNT_KEY, 0) >= 1 and store.check(
                [_FAILURE_KEY.format(index=1)]
            ):
                failure = json.loads(store.get(_FAILURE_KEY.format(index=1)))
                kind, message = failure.pop("kind"), failure.pop("message")
                return NodeError(kind, message, **failure)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
    except Exception:  # rank 0, the store's server, may have exited first
        return None
