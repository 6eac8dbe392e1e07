"""Data-parallel training over the tasks that srun (or torchrun) starts: which task this process
is, where rank 0 listens, and the few collectives the training entry needs.

One process per GPU (``srun --ntasks-per-node=G``), or one per node on CPU. Every rank builds
the workload; rank 0's initial weights are broadcast; every rank but 0 re-seeds its RNG
streams, so the ranks draw different samples and one optimizer step sees
``ranks x micro_batch x grad_accum`` of them; gradients are averaged once per step. A world of
one process starts no ``torch.distributed`` at all.

Torch-free at import: the login node imports jobs.train, which imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from jobs.contract.failure import CollectiveFailed, NodeError

INIT_TIMEOUT_ENV = "PLANJOB_DIST_INIT_TIMEOUT_S"
TIMEOUT_ENV = "PLANJOB_DIST_TIMEOUT_S"
# A rank that never shows up (it failed before training, or srun could not start it) is
# reported after this long instead of being waited for forever.
DEFAULT_INIT_TIMEOUT_S = 300.0
# Any collective may wait this long for the slowest rank; it must outlast rank 0 writing the
# largest checkpoint, since the others wait for that save to finish.
DEFAULT_TIMEOUT_S = 1800.0
# MASTER_PORT when not set: one per job id, below the kernel's ephemeral range (32768+) so
# that outgoing connections cannot hold it.
PORT_BASE, PORT_SPAN = 20000, 10000
BUCKET_BYTES = 64 * 2**20  # gradients are averaged in flat buckets of about this size
_RENDEZVOUS_KEY = "plan-job/host/{rank}"


# --- who this process is ---------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """This process's place among the training's tasks, as the launcher's environment says."""

    size: int
    rank: int
    local_rank: int  # among the tasks on this node: picks the GPU
    launcher: str  # "none" | "torchrun" | "slurm"
    host: str  # this task's node, for messages
    master_host: str | None  # rank 0's node (a name or an address); None for one process
    master_port: int | None
    init_timeout_s: float = DEFAULT_INIT_TIMEOUT_S
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def name(self) -> str:
        return f"rank {self.rank}/{self.size} on {self.host}"


def detect(env: Mapping[str, str]) -> World:
    """Read the world from torchrun's variables, else from an srun task's, else one process.

    torchrun's come first: torchrun inside an srun step sets them for its own children. A
    Slurm task is recognised by ``SLURM_STEP_ID``: the batch script itself also sees
    ``SLURM_NTASKS`` (the job's task count) but is one process, and waiting there for ranks
    that srun never started would only end at the timeout. A ValueError names the variable.
    """
    host = env.get("SLURMD_NODENAME") or socket.gethostname()
    init_timeout_s = _seconds(env, INIT_TIMEOUT_ENV, DEFAULT_INIT_TIMEOUT_S)
    timeout_s = _seconds(env, TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    launcher, size, rank, local_rank = "none", 1, 0, 0
    master_host: str | None = None
    master_port: int | None = None
    if "WORLD_SIZE" in env:
        launcher = "torchrun"
        size = _integer(env, "WORLD_SIZE", minimum=1)
        rank = _integer(env, "RANK", minimum=0) if size > 1 or "RANK" in env else 0
        local_rank = _integer(env, "LOCAL_RANK", minimum=0) if "LOCAL_RANK" in env else 0
        if size > 1:
            if not env.get("MASTER_ADDR"):
                raise ValueError(f"$WORLD_SIZE={size} but $MASTER_ADDR is not set")
            master_host, master_port = env["MASTER_ADDR"], _port(env)
            if master_port is None:
                raise ValueError(f"$WORLD_SIZE={size} but $MASTER_PORT is not set")
    elif "SLURM_STEP_ID" in env:
        launcher = "slurm"
        tasks = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        size = _integer(env, tasks, minimum=1)
        rank = _integer(env, "SLURM_PROCID", minimum=0)
        local_rank = _integer(env, "SLURM_LOCALID", minimum=0)
        if size > 1:
            master_host = env.get("MASTER_ADDR") or _first_node(env)
            master_port = _port(env)
            if master_port is None:
                master_port = job_port(env.get("SLURM_JOB_ID", ""))
    if rank >= size:
        raise ValueError(f"rank {rank} is not below the world size {size}")
    return World(
        size,
        rank,
        local_rank,
        launcher,
        host,
        master_host,
        master_port,
        init_timeout_s,
        timeout_s,
    )


def job_port(job_id: str) -> int:
    """The rendezvous port of a job: tasks of one job agree on it without talking first."""
    if not job_id.isdigit():
        raise ValueError(f"$SLURM_JOB_ID={job_id!r} is not a job number; set $MASTER_PORT")
    return PORT_BASE + int(job_id) % PORT_SPAN


def _first_node(env: Mapping[str, str]) -> str:
    # The step's own nodes: an srun over part of the allocation starts rank 0 on the first of
    # them, which need not be the job's first node.
    for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if env.get(name):
            try:
                return expand_hostlist(env[name])[0]
            except ValueError as exc:
                raise ValueError(f"${name}: {exc}") from None
    raise ValueError("an srun task without $SLURM_STEP_NODELIST or $SLURM_JOB_NODELIST")


def _integer(env: Mapping[str, str], name: str, minimum: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        raise ValueError(f"${name} is not set")
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"${name}={text!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"${name}={value} must be >= {minimum}")
    return value


def _port(env: Mapping[str, str]) -> int | None:
    if not env.get("MASTER_PORT", "").strip():
        return None
    port = _integer(env, "MASTER_PORT", minimum=1)
    if port > 65535:
        raise ValueError(f"$MASTER_PORT={port} is not a TCP port")
    return port


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"${name}={text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"${name}={text!r} must be > 0 seconds")
    return value


# --- Slurm hostlists and node addresses --------------------------------------------------------

# Expanded here rather than with `scontrol show hostnames`: pure Python is testable without
# Slurm and costs no call to slurmctld from each of possibly thousands of tasks.
_BRACKET = re.compile(r"([^\[\]]*)\[([^\[\]]*)\](.*)")


def expand_hostlist(text: str) -> list[str]:
    """Slurm's compressed host list, expanded in order: ``"gpu[01-02,07],login1"`` is
    ``["gpu01", "gpu02", "gpu07", "login1"]``; several bracket groups multiply out
    (``"r[1-2]n[1-2]"``); a range keeps its lower bound's zero padding."""
    hosts: list[str] = []
    for entry in _top_level_entries(text):
        hosts.extend(_expand_entry(entry, text))
    if not hosts:
        raise ValueError(f"empty host list {text!r}")
    return hosts


def _top_level_entries(text: str) -> list[str]:
    entries, current, depth = [], [], 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if depth not in (0, 1):
            raise ValueError(f"unbalanced or nested brackets in host list {text!r}")
        if char == "," and depth == 0:
            entries.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if depth:
        raise ValueError(f"unbalanced brackets in host list {text!r}")
    entries.append("".join(current).strip())
    return [entry for entry in entries if entry]


def _expand_entry(entry: str, text: str) -> list[str]:
    match = _BRACKET.fullmatch(entry)
    if match is None:
        if "[" in entry or "]" in entry:
            raise ValueError(f"bad brackets in host list {text!r}")
        return [entry]
    prefix, ranges, rest = match.groups()
    tails = _expand_entry(rest, text) if rest else [""]
    return [prefix + value + tail for value in _expand_ranges(ranges, text) for tail in tails]


def _expand_ranges(ranges: str, text: str) -> Iterator[str]:
    for part in ranges.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"bad range {part!r} in host list {text!r}")
        if not dash:
            yield low
            continue
        if int(high) < int(low):
            raise ValueError(f"descending range {part!r} in host list {text!r}")
        for number in range(int(low), int(high) + 1):
            yield f"{number:0{len(low)}d}"


def master_address(
    world: World, run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
) -> str:
    """Where rank 0 listens: its node's name where DNS knows it, else the node's ``NodeAddr``
    from ``scontrol show node``. Slurm reaches its nodes by NodeAddr, which need not be a name
    in DNS (the test cluster's nodes n1, n2 are all 127.0.0.1); asking DNS first spares
    slurmctld one request per task on clusters where the names resolve."""
    name = world.master_host
    if name is None:
        raise ValueError("a world of one process has no master")
    try:
        socket.getaddrinfo(name, None)
        return name
    except OSError:
        pass
    try:
        shown = run(
            ["scontrol", "-o", "show", "node", name],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        shown = None
    found = re.search(r"\bNodeAddr=(\S+)", shown.stdout) if shown is not None else None
    if found is None:
        raise CollectiveFailed(
            f"cannot find rank 0's node {name!r}: DNS does not know it and `scontrol show node` "
            f"gives no NodeAddr; set $MASTER_ADDR to its address"
        )
    return found.group(1)


# --- streams, weights and gradients of one rank ------------------------------------------------


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s copy of a stream seeded ``seed``. Rank 0 keeps ``seed``, so
    its draws are a one-process run's; the others get hashed seeds, unrelated to ``seed + k``
    (the next stream of the same workload) and to each other."""
    if rank == 0:
        return seed
    digest = hashlib.blake2b(f"plan-job/{seed}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # torch takes seeds below 2**64


def decorrelate_streams(workload: Any, rank: int) -> None:
    """Re-seed this rank's data/noise generators and torch's global RNGs: built from the same
    seed, every rank would draw the same samples and the global batch would be one rank's
    batch repeated. Workloads stay unaware of ranks: their generators are the
    ``torch.Generator`` objects in ``extra_state``, which checkpoints already track."""
    import torch

    if rank == 0:
        return
    for obj in workload.extra_state.values():
        if isinstance(obj, torch.Generator):
            obj.manual_seed(rank_seed(obj.initial_seed(), rank))
    torch.manual_seed(rank_seed(torch.initial_seed(), rank))  # the CPU's and every GPU's


def join_data_parallel(workload: Any, group: Group, program: str) -> None:
    """Make ``workload`` one rank of a data-parallel run, the same way for the calibration and
    the training (``program`` names which in the note): its own data streams, rank 0's
    weights, gradients averaged once per optimizer step (DDP's no_sync() semantics)."""
    decorrelate_streams(workload, group.world.rank)
    group.broadcast_weights(workload.model)
    hooked = install_gradient_averaging(workload, group)
    if hooked == "optimizer" and group.is_main:
        print(
            f"{program}: note: the workload has its own train_step: gradients are "
            "averaged across ranks in optimizer.step(), after any clipping or loss scaling "
            "that train_step does (which then sees one rank's gradients)",
            file=sys.stderr,
        )


def install_gradient_averaging(workload: Any, group: Group) -> str:
    """Average gradients across the ranks once per optimizer step; returns where it hooked.

    The built-in train step (jobs.workloads.common.TrainStep) calls ``before_update`` after
    its last micro-batch's backward, before unscaling, clipping and the update: the same
    gradients as DDP under ``no_sync()`` for all but the last micro-batch, with one exchange
    per step. Clipping then sees the global gradient, and with fp16 an inf on any rank
    reaches every rank, so all skip the step together. A workload's own train step is hooked
    in ``optimizer.step()`` instead (a step pre-hook): exact unless that step clips gradients
    itself (it would clip this rank's share); one that scales the loss is refused.
    """
    from torch.amp import GradScaler

    from jobs.workloads.common import TrainStep

    seen: set[int] = set()
    params = []
    for param_group in workload.optimizer.param_groups:
        for param in param_group["params"]:
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                params.append(param)

    def average() -> None:
        group.average_gradients(params)

    if isinstance(workload.train_step, TrainStep):
        workload.train_step.before_update = average
        return "train_step"
    if any(isinstance(obj, GradScaler) for obj in workload.extra_state.values()):
        # Each rank's scaler would find infs in its own gradients: ranks skipping different
        # steps would then wait in different collectives.
        raise CollectiveFailed(
            "the workload's own train_step scales the loss (a GradScaler): that cannot be "
            "made data-parallel from outside; build its step with "
            "jobs.workloads.common.make_train_step (or assemble), or train on one rank"
        )
    workload.optimizer.register_step_pre_hook(lambda _optimizer, _args, _kwargs: average())
    return "optimizer"


# --- the collectives -------------------------------------------------------------------------


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


# --- joining -------------------------------------------------------------------------------------


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
