"""Who this process is among the training's tasks, as srun (or torchrun) says, and where
rank 0 listens. Standard library only.

One process per GPU (``srun --ntasks-per-node=G``), or one per node on CPU. The launcher's
environment names the world's size and this task's rank; without either the world is one
process. jobs.node.group joins the ranks once the world is known.
"""

from __future__ import annotations

import math
import re
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from jobs.contract.failure import CollectiveFailed

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
    entries: list[str] = []
    current: list[str] = []
    depth = 0
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
