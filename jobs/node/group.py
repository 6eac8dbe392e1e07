"""The collectives of data-parallel training: joining the other ranks (a rendezvous that
names whoever is missing, then a torch.distributed process group, gloo on CPU and NCCL on
CUDA) and the few collectives the calibration and the training need. A world of one process
starts no ``torch.distributed`` at all: its Group is the identity.

Torch-free at import: the login node imports jobs.train, which imports this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from jobs.contract.failure import CollectiveFailed, NodeError
from jobs.node.world import World, master_address

BUCKET_BYTES = 64 * 2**20  # gradients are averaged in flat buckets of about this size
_RENDEZVOUS_KEY = "plan-job/host/{rank}"


class Group:
    """The collectives of a world of one process: each is the identity, and nothing waits."""

    def __init__(self, world: World) -> None:
        self.world = world

    @property
    def size(self) -> int:
        return self.world.size

    @property
    def is_main(self) -> bool:
        return self.world.rank == 0

    def broadcast_weights(self, model: Any) -> None:
        """Make every rank's parameters and (persistent) buffers rank 0's. Only at the start:
        buffers that training changes, such as batch-norm statistics, then drift per rank."""

    def average_gradients(self, params: Sequence[Any]) -> None:
        """Replace every rank's gradients by their mean over the ranks."""

    def mean(self, value: float) -> float:
        return value

    def stop_votes(self, signum: int, late: bool) -> tuple[int, bool]:
        """The largest signal number any rank got (0: none) and whether any rank is late."""
        return signum, late

    def gather(self, obj: Any, what: str) -> list[Any] | None:
        """Every rank's ``obj`` by rank, on rank 0; None elsewhere. ``what`` is for errors."""
        return [obj]

    def broadcast(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` on every rank (the others pass anything, e.g. None)."""
        return obj

    def close(self) -> None:
        pass


class ProcessGroup(Group):
    """A torch.distributed group of several processes, gloo on CPU and NCCL on CUDA.

    Every failure of a collective becomes a CollectiveFailed: with srun's
    --kill-on-bad-exit the first rank to exit 1 takes the others down, and without it each
    rank still leaves on its own once its peers' sockets close or the timeout passes.
    """

    def __init__(self, world: World, device: Any) -> None:
        super().__init__(world)
        import torch
        import torch.distributed as dist

        self.torch, self.dist, self.device = torch, dist, device

    def broadcast_weights(self, model: Any) -> None:
        with self._collective("broadcasting rank 0's initial weights"):
            # A tied weight comes twice, under both names: sent twice, harmlessly.
            for tensor in model.state_dict().values():
                buffer = tensor if tensor.is_contiguous() else tensor.contiguous()
                self.dist.broadcast(buffer, src=0)
                if buffer is not tensor:
                    tensor.copy_(buffer)

    def average_gradients(self, params: Sequence[Any]) -> None:
        torch = self.torch
        with self._collective("averaging gradients"):
            # Which parameters have a gradient anywhere: a branch one rank skipped leaves its
            # gradient None there, and every rank must send the same buffers.
            present = [param.grad is not None for param in params]
            votes = torch.tensor(present, dtype=torch.int32, device=self.device)
            self.dist.all_reduce(votes, op=self.dist.ReduceOp.MAX)
            grads = []
            for param, anywhere in zip(params, votes.tolist(), strict=True):
                if anywhere:
                    if param.grad is None:
                        param.grad = torch.zeros_like(param)
                    grads.append(param.grad)
            for bucket in _buckets(grads):
                flat = torch.cat([grad.reshape(-1) for grad in bucket])
                self.dist.all_reduce(flat, op=self.dist.ReduceOp.SUM)
                flat.div_(self.size)  # what ReduceOp.AVG does, which gloo lacks
                pieces = flat.split([grad.numel() for grad in bucket])
                for grad, piece in zip(bucket, pieces, strict=True):
                    grad.copy_(piece.view_as(grad))

    def mean(self, value: float) -> float:
        torch = self.torch
        with self._collective("averaging the loss"):
            total = torch.tensor([value], dtype=torch.float64, device=self.device)
            self.dist.all_reduce(total, op=self.dist.ReduceOp.SUM)
            return float(total.item()) / self.size

    def stop_votes(self, signum: int, late: bool) -> tuple[int, bool]:
        torch = self.torch
        with self._collective("agreeing on whether to stop"):
            votes = torch.tensor([signum, int(late)], dtype=torch.int64, device=self.device)
            self.dist.all_reduce(votes, op=self.dist.ReduceOp.MAX)
            most, any_late = votes.tolist()
            return int(most), bool(any_late)

    def gather(self, obj: Any, what: str) -> list[Any] | None:
        with self._collective(f"gathering {what}"):
            found: list[Any] | None = [None] * self.size if self.is_main else None
            self.dist.gather_object(obj, found, dst=0)
            return found

    def broadcast(self, obj: Any, what: str) -> Any:
        with self._collective(f"sharing {what}"):
            box = [obj]
            self.dist.broadcast_object_list(box, src=0)
            return box[0]

    def close(self) -> None:
        self.dist.destroy_process_group()

    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except NodeError:
            raise
        except Exception as exc:
            raise CollectiveFailed(
                f"{what} failed ({_first_line(exc)}): another rank failed or "
                f"was killed (its own error names it), or did not get here within "
                f"{self.world.timeout_s:.0f} s"
            ) from exc


def _first_line(exc: BaseException) -> str:
    # torch's C++ errors append their whole stack to the message.
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def _buckets(grads: Sequence[Any]) -> Iterator[list[Any]]:
    """Consecutive gradients of one dtype and device, about BUCKET_BYTES at a time: one
    collective per bucket rather than per tensor, without a second copy of all gradients."""
    bucket: list[Any] = []
    size = 0
    for grad in grads:
        if bucket and (
            grad.dtype != bucket[0].dtype
            or grad.device != bucket[0].device
            or size + grad.numel() * grad.element_size() > BUCKET_BYTES
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(grad)
        size += grad.numel() * grad.element_size()
    if bucket:
        yield bucket


def select_gpu(world: World, device_setting: str, torch: Any) -> None:
    """Make this rank's GPU the current one before the device is resolved: ``cuda:LOCAL_RANK``
    when the task sees all of its node's GPUs, ``cuda:0`` when Slurm bound it to its own
    (``--gpus-per-task`` or ``--gpu-bind``) and it sees one."""
    if world.size == 1 or device_setting == "cpu" or not torch.cuda.is_available():
        return
    count = torch.cuda.device_count()
    if count == 1:
        torch.cuda.set_device(0)
    elif world.local_rank < count:
        torch.cuda.set_device(world.local_rank)
    else:
        raise NodeError(
            "device",
            f"local rank {world.local_rank} has no GPU of its own: this task sees {count} "
            f"GPUs; start at most one task per GPU (--ntasks-per-node <= the GPUs per node)",
        )


def start(world: World, device: Any) -> Group:
    """Join the other ranks: a rendezvous that names whoever is missing, then the process
    group (gloo on CPU, NCCL on CUDA). A world of one process gets the trivial Group."""
    if world.size == 1:
        return Group(world)
    import torch.distributed as dist

    if not dist.is_available():
        raise CollectiveFailed("this torch build has no torch.distributed")
    address = master_address(world)
    store = _rendezvous(world, address, dist)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(
            backend,
            store=store,
            rank=world.rank,
            world_size=world.size,
            timeout=timedelta(seconds=world.timeout_s),
        )
    except Exception as exc:
        raise CollectiveFailed(
            f"starting the {backend} process group of {world.size} ranks at "
            f"{address}:{world.master_port} failed: {_first_line(exc)}"
        ) from exc
    return ProcessGroup(world, device)


def _rendezvous(world: World, address: str, dist: Any) -> Any:
    """A TCPStore that rank 0 serves; every rank leaves its host there and waits for all."""
    port, wait = world.master_port, world.init_timeout_s
    timeout = timedelta(seconds=wait)
    try:
        store = dist.TCPStore(
            address, port, world.size, world.rank == 0, timeout, wait_for_workers=False
        )
    except Exception as exc:
        if world.rank == 0:
            reason = (
                f"cannot listen on port {port} for the rendezvous ({_first_line(exc)}); "
                f"another job on {world.host} may hold it: set $MASTER_PORT"
            )
        else:
            reason = (
                f"cannot reach rank 0's rendezvous at {address}:{port} within {wait:.0f} s "
                f"({_first_line(exc)}): rank 0 on {world.master_host} did not start or "
                f"failed (see its error)"
            )
        raise CollectiveFailed(reason) from exc
    keys = [_RENDEZVOUS_KEY.format(rank=rank) for rank in range(world.size)]
    try:
        store.set(keys[world.rank], world.host)
        store.wait(keys, timeout)
    except Exception as exc:
        raise CollectiveFailed(_missing_ranks(world, store, keys, address)) from exc
    return store


def _missing_ranks(world: World, store: Any, keys: list[str], address: str) -> str:
    where = f"the {world.size}-rank group at {address}:{world.master_port}"
    wait = f"{world.init_timeout_s:.0f} s"
    try:
        missing = [rank for rank, key in enumerate(keys) if not store.check([key])]
        joined = [
            f"{rank} on {store.get(key).decode()}"
            for rank, key in enumerate(keys)
            if rank not in missing
        ]
    except Exception:  # rank 0, the store's server, may have given up first
        return f"not every rank joined {where} within {wait}; see the other ranks' errors"
    return (
        f"rank(s) {', '.join(map(str, missing))} did not join {where} within {wait} "
        f"(joined: {'; '.join(joined)}): a task failed before training started, or the "
        f"launcher did not start it"
    )
