"""Data-parallel training (python -m jobs.train as several tasks): the launch environment and
Slurm host lists without a cluster, then real two-rank CPU runs (gloo) started by hand, as
torchrun would, and by srun on the test cluster.

Two ranks on one CPU machine are bit-reproducible: a sum of two gradients does not depend on
their order, and every process runs one thread (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs.contract.failure import CollectiveFailed
from jobs.node.data_parallel import rank_seed
from jobs.node.world import (
    DEFAULT_INIT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    World,
    detect,
    expand_hostlist,
    job_port,
    master_address,
)
from jobs.progress import read_progress
from jobs.workloads import common, jit
from jobs.workloads.base import Workload, WorkloadConfig
from tests.paths import REPO
from tests.processes import FINISH_S, LAUNCH_VARIABLES, finish, free_port, unlaunched_env
from tests.slurm_cluster import SlurmCluster
from tests.training_runs import train_json

TOTAL_STEPS = 8


# --- workloads the runs below import on each rank ------------------------------------------------


def slow_jit(config: WorkloadConfig) -> Workload:
    """jit:tiny whose data takes 0.1 s per step (a sleep changes no number): time to signal it.
    Slowed in next_batch, so the built-in train step (and its gradient hook) stays."""
    workload = jit.build(config)
    next_batch = workload.next_batch

    def slowed() -> Any:
        time.sleep(0.1)
        return next_batch()

    workload.next_batch = slowed
    return workload


def fails_on_rank_1(config: WorkloadConfig) -> Workload:
    """jit:tiny whose data fails at step 3 on rank 1 only."""
    workload = jit.build(config)
    next_batch = workload.next_batch
    calls = [0]

    def failing() -> Any:
        calls[0] += 1
        if calls[0] == 3 and os.environ.get("RANK") == "1":
            raise RuntimeError("disk of rank 1 is gone")
        return next_batch()

    workload.next_batch = failing
    return workload


def diverges_on_rank_1(config: WorkloadConfig) -> Workload:
    """jit:tiny whose rank 1 nudges a weight outside the averaged update, at its first step."""
    workload = jit.build(config)
    next_batch = workload.next_batch

    def nudging() -> Any:
        if os.environ.get("RANK") == "1":
            with torch.no_grad():
                next(workload.model.parameters()).add_(1e-3)
        return next_batch()

    workload.next_batch = nudging
    return workload


def linear_union(config: WorkloadConfig) -> Workload:
    """A linear map fitted with the built-in train step, clipping every step (the norm is far
    above 0.001). With ``overrides.union`` one process draws, per step, rank 0's micro-batches
    and then rank 1's: exactly the samples of a two-rank run, as one batch."""
    torch.manual_seed(config.seed)
    width, device = 8, torch.device("cpu")
    model = torch.nn.Linear(width, width)
    data_rng = common.stream_generator(config.seed, 0, device)
    streams = [data_rng]
    if config.overrides.get("union"):
        rank_1_seed = rank_seed(data_rng.initial_seed(), 1)
        streams.append(torch.Generator().manual_seed(rank_1_seed))

    def next_batch() -> list[torch.Tensor]:
        per_stream = config.grad_accum // len(streams)
        shape = (config.micro_batch, width)
        return [torch.randn(shape, generator=g) for g in streams for _ in range(per_stream)]

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        return ((model(x) - x.flip(-1)) ** 2).mean()

    return common.assemble(
        name="linear-union",
        config=config,
        model=model,
        lr=0.01,
        weight_decay=0.0,
        grad_clip=0.001,
        loss_fn=loss_fn,
        next_batch=next_batch,
        tokens_per_sample=1,
        token_unit="rows",
        training_flops_per_sample=6 * width * width,
        rngs={"data_rng": data_rng},
    )


# --- helpers -------------------------------------------------------------------------------------


def make_config(folder: Path, builder: str = "jobs.workloads.jit:build", **changes: Any) -> Path:
    """tests.training_runs.train_json with this module's step count and three kept checkpoints."""
    fields = {"total_steps": TOTAL_STEPS, "keep_checkpoints": 3, **changes}
    return train_json(folder, builder_path=builder, **fields)


def launch(
    config: Path,
    ranks: tuple[int, ...] = (0, 1),
    world_size: int = 2,
    args: tuple[str, ...] = (),
    **extra_env: str,
) -> dict[int, subprocess.Popen[str]]:
    """Start ``ranks`` of a ``world_size``-rank run the way torchrun would (its variables)."""
    port = str(free_port())
    procs = {}
    for rank in ranks:
        rank_env = {"WORLD_SIZE": str(world_size), "RANK": str(rank), "LOCAL_RANK": str(rank)}
        launched = unlaunched_env(
            **rank_env, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **extra_env
        )
        procs[rank] = subprocess.Popen(
            [sys.executable, "-m", "jobs.train", str(config), *args],
            cwd=REPO,
            env=launched if world_size > 1 else unlaunched_env(**extra_env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    return procs


def run_ok(config: Path, world_size: int = 2, args: tuple[str, ...] = ()) -> dict[int, Any]:
    results = finish(launch(config, tuple(range(world_size)), world_size, args))
    for rank, (status, _, err) in results.items():
        assert status == 0, f"rank {rank} exited {status}: {err}"
    return results


def events(folder: Path, kind: str | None = None) -> list[dict[str, Any]]:
    found = read_progress(folder / "progress.jsonl")
    return [e for e in found if kind is None or e["event"] == kind]


def state_at(folder: Path, step: int = TOTAL_STEPS) -> dict[str, Any]:
    return torch.load(folder / "ck" / f"ckpt-{step:09d}.pt", weights_only=False)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def losses(folder: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events(folder, "step")}


def wait_for_step(folder: Path, step: int, procs: dict[int, subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + FINISH_S
    while not any(e["step"] >= step for e in events(folder, "step")):
        assert all(p.poll() is None for p in procs.values()), "a rank exited early"
        assert time.monotonic() < deadline, f"the run never got to step {step}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted two-rank run (the reference the other runs are compared with)."""
    folder = tmp_path_factory.mktemp("two-ranks")
    run_ok(make_config(folder))
    return folder


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same config in one process: half the global batch, and no torch.distributed."""
    folder = tmp_path_factory.mktemp("one-rank")
    run_ok(make_config(folder), world_size=1)
    return folder


# --- the launch environment ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("n1", ["n1"]),
        ("n[1-2]", ["n1", "n2"]),
        ("gpu[01-04,07],login1", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "login1"]),
        ("n[9-11]", ["n9", "n10", "n11"]),
        ("node-[008-010]", ["node-008", "node-009", "node-010"]),
        ("r[1-2]n[1,3]", ["r1n1", "r1n3", "r2n1", "r2n3"]),
        ("a,b[2],c", ["a", "b2", "c"]),
    ],
)
def test_expand_hostlist(hostlist: str, hosts: list[str]) -> None:
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["", "n[1-", "n1]", "n[2-1]", "n[a-b]", "n[[1]]", "n[1-2"])
def test_expand_hostlist_rejects_malformed(hostlist: str) -> None:
    with pytest.raises(ValueError, match="host list"):
        expand_hostlist(hostlist)


# What srun's second task saw on the test cluster (sbatch --nodes=2 --ntasks-per-node=1).
SRUN_TASK = {
    "SLURMD_NODENAME": "n2",
    "SLURM_JOB_ID": "1234",
    "SLURM_JOB_NODELIST": "n[1-2]",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "1",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NODELIST": "n[1-2]",
    "SLURM_STEP_NUM_TASKS": "2",
}


def test_detect_srun_task() -> None:
    world = detect(SRUN_TASK)
    assert world == World(
        size=2,
        rank=1,
        local_rank=0,
        launcher="slurm",
        host="n2",
        master_host="n1",
        master_port=20000 + 1234,
        init_timeout_s=DEFAULT_INIT_TIMEOUT_S,
        timeout_s=DEFAULT_TIMEOUT_S,
    )
    assert world.name == "rank 1/2 on n2"
    assert job_port("98765") == 28765
    # The step's own nodes come first; MASTER_ADDR, MASTER_PORT and the timeouts override.
    step_env = {**SRUN_TASK, "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NODELIST": "n[1-9]"}
    assert detect(step_env).master_host == "gpu07"
    overridden = detect(
        {
            **SRUN_TASK,
            "MASTER_ADDR": "10.0.0.5",
            "MASTER_PORT": "29400",
            "PLANJOB_DIST_INIT_TIMEOUT_S": "5",
            "PLANJOB_DIST_TIMEOUT_S": "7.5",
        }
    )
    assert (overridden.master_host, overridden.master_port) == ("10.0.0.5", 29400)
    assert (overridden.init_timeout_s, overridden.timeout_s) == (5.0, 7.5)


def test_detect_one_process() -> None:
    assert detect({}).size == 1
    # The batch script of a two-task job is one process, not rank 0 of two.
    batch_script = {k: v for k, v in SRUN_TASK.items() if not k.startswith("SLURM_STEP")}
    alone = detect({**batch_script, "SLURM_PROCID": "0"})
    assert (alone.size, alone.rank, alone.launcher, alone.master_host) == (1, 0, "none", None)
    one_task = detect({**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"})
    assert (one_task.size, one_task.launcher, one_task.master_port) == (1, "slurm", None)


def test_detect_torchrun_comes_first() -> None:
    torchrun = {
        "WORLD_SIZE": "8",
        "RANK": "5",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "node3",
        "MASTER_PORT": "29500",
    }
    world = detect({**SRUN_TASK, **torchrun})
    assert (world.size, world.rank, world.local_rank, world.launcher) == (8, 5, 1, "torchrun")
    assert (world.master_host, world.master_port, world.host) == ("node3", 29500, "n2")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "1"}, "$MASTER_ADDR is not set"),
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h"}, "$MASTER_PORT is not set"),
        ({"WORLD_SIZE": "two"}, "$WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "$RANK is not set"),
        ({**SRUN_TASK, "SLURM_PROCID": "2"}, "rank 2 is not below the world size 2"),
        ({**SRUN_TASK, "MASTER_PORT": "70000"}, "not a TCP port"),
        ({**SRUN_TASK, "SLURM_STEP_NODELIST": "n[1-"}, "$SLURM_STEP_NODELIST: unbalanced"),
        ({**SRUN_TASK, "SLURM_JOB_ID": "x"}, "$SLURM_JOB_ID='x' is not a job number"),
        ({"PLANJOB_DIST_TIMEOUT_S": "0"}, "must be > 0 seconds"),
    ],
)
def test_detect_names_the_bad_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as error:
        detect(env)
    assert message in str(error.value)


def _world(master_host: str) -> World:
    return World(2, 1, 0, "slurm", "n2", master_host, 20001)


def test_master_address_falls_back_to_slurm_node_addr() -> None:
    asked: list[list[str]] = []

    def scontrol(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        asked.append(argv)
        out = "NodeName=n1 Arch=x86_64 NodeAddr=127.0.0.1 NodeHostName=vm Port=23146\n"
        return subprocess.CompletedProcess(argv, 0, out, "")

    assert master_address(_world("localhost"), scontrol) == "localhost"
    assert asked == []  # a name DNS knows is used as it is
    # RFC 6761: .invalid never resolves, like the test cluster's node names.
    assert master_address(_world("n1.invalid"), scontrol) == "127.0.0.1"
    assert asked == [["scontrol", "-o", "show", "node", "n1.invalid"]]

    def no_scontrol(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(argv[0])

    with pytest.raises(CollectiveFailed, match="set \\$MASTER_ADDR"):
        master_address(_world("n1.invalid"), no_scontrol)


def test_rank_seeds_keep_rank_0_and_differ() -> None:
    assert rank_seed(7 * 16, 0) == 7 * 16
    seeds = {rank_seed(seed, rank) for seed in (112, 113) for rank in range(1, 65)}
    assert len(seeds) == 128 and all(0 <= s < 2**63 for s in seeds)
    assert seeds.isdisjoint(range(100_000))


# --- two ranks on this machine ---------------------------------------------------------------


@pytest.mark.slow
def test_two_ranks_train_one_global_batch(two_ranks: Path, one_rank: Path) -> None:
    found = events(two_ranks)
    assert [e["event"] for e in found if e["event"] != "step"] == [
        "start",
        "checkpoint",
        "checkpoint",
        "stop",
    ]
    assert [e["step"] for e in events(two_ranks, "step")] == list(range(1, TOTAL_STEPS + 1))
    assert found[-1] == {**found[-1], "step": TOTAL_STEPS, "reason": "done"}
    state = state_at(two_ranks)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    rank0, rank1 = state["ranks"]
    # Rank 0's streams are the ones a one-process run has; rank 1's are its own.
    assert torch.equal(rank0["streams"]["data_rng"], state["extra.data_rng"])
    assert not torch.equal(rank1["streams"]["data_rng"], rank0["streams"]["data_rng"])
    assert not torch.equal(rank1["global"]["cpu"], rank0["global"]["cpu"])
    assert rank0["weights_sum"] == rank1["weights_sum"]
    # Same seed, same first weights, same rank-0 data: only rank 1's different samples in
    # the averaged gradient can have moved the two-rank run elsewhere.
    assert state_at(one_rank)["world_size"] == 1
    assert not same_weights(state["model"], state_at(one_rank)["model"])
    assert losses(two_ranks) != losses(one_rank)


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_both_ranks_samples(tmp_path: Path) -> None:
    """Data parallelism is a bigger batch: two ranks x 2 micro-batches step as one process
    with the same 4 micro-batches does, up to the order of float sums. Clipping is on at
    every step, so averaging after the clip (or not at all) would not match."""
    builder = "tests.test_train_distributed:linear_union"
    two = tmp_path / "two"
    run_ok(make_config(two, builder, workload_name="linear", grad_accum=2, total_steps=6))
    one = tmp_path / "one"
    config = make_config(
        one, builder, workload_name="linear", grad_accum=4, total_steps=6, overrides={"union": 1}
    )
    assert run_ok(config, world_size=1)
    weights, expected = state_at(two, 6)["model"], state_at(one, 6)["model"]
    assert not same_weights(weights, state_at(two, 5)["model"])
    for key in expected:
        torch.testing.assert_close(weights[key], expected[key], rtol=1e-5, atol=1e-6)
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)


@pytest.mark.slow
def test_gpt_with_tied_weights_and_accumulation_trains_on_two_ranks(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, "jobs.workloads.gpt:build", workload_name="gpt", grad_accum=2, total_steps=6
    )
    results = run_ok(config)
    assert "warning" not in results[0][2]
    rank0, rank1 = state_at(tmp_path, 6)["ranks"]
    assert rank0["weights_sum"] == rank1["weights_sum"]


@pytest.mark.slow
def test_ranks_whose_weights_drift_apart_are_reported(tmp_path: Path) -> None:
    builder = "tests.test_train_distributed:diverges_on_rank_1"
    results = run_ok(make_config(tmp_path, builder, total_steps=2))
    assert "warning: the ranks' weights differ at step 2 (rank 0: " in results[0][2]


def test_train_step_hook_runs_once_between_backward_and_update() -> None:
    """The hook sees the whole step's accumulated gradient, and runs before the update: a
    hook that zeroes the gradients leaves AdamW (no weight decay here) nothing to apply."""
    config = WorkloadConfig("tiny", {}, micro_batch=2, grad_accum=3, precision="fp32", device="cpu")
    workload = jit.build(config)
    train_step = workload.train_step
    assert isinstance(train_step, common.TrainStep)
    before = [p.detach().clone() for p in workload.model.parameters()]
    seen: list[int] = []

    def zero_gradients() -> None:
        grads = [p.grad for p in workload.model.parameters()]
        seen.append(sum(g is not None and bool(g.abs().sum() > 0) for g in grads))
        for grad in grads:
            if grad is not None:
                grad.zero_()

    train_step.before_update = zero_gradients
    train_step(workload.next_batch())
    assert len(seen) == 1 and seen[0] > 0
    after = list(workload.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.slow
def test_signal_to_one_rank_stops_both_and_resume_is_bit_identical(
    tmp_path: Path, two_ranks: Path
) -> None:
    config = make_config(tmp_path, builder="tests.test_train_distributed:slow_jit")
    # Past its stop time at once: both ranks time the (collective) probe save, agree, and
    # leave at step 0 without a checkpoint.
    run_ok(config, args=("--stop-at", str(time.time())))
    stop = events(tmp_path, "stop")[-1]
    assert (stop["step"], stop["reason"]) == (0, "time_limit")
    assert not list((tmp_path / "ck").glob("*.pt"))

    procs = launch(config)
    wait_for_step(tmp_path, 3, procs)
    procs[1].send_signal(signal.SIGUSR2)  # srun signals every task, but not at one instant
    for rank, (status, _, err) in finish(procs).items():
        assert status == 0, f"rank {rank}: {err}"
    stop = events(tmp_path, "stop")[-1]
    assert stop["reason"] == "signal" and stop["signal"] == "SIGUSR2"
    stopped_at = stop["step"]
    assert 3 <= stopped_at < TOTAL_STEPS
    assert state_at(tmp_path, stopped_at)["step"] == stopped_at

    results = run_ok(config)
    assert results[1][1] == ""  # rank 0 alone reports
    starts = events(tmp_path, "start")
    assert [(e["step"], e["restart"]) for e in starts] == [(0, 0), (0, 1), (stopped_at, 2)]
    assert events(tmp_path, "resume")[-1]["step"] == stopped_at
    assert events(tmp_path, "stop")[-1]["reason"] == "done"
    assert same_weights(state_at(tmp_path)["model"], state_at(two_ranks)["model"])
    assert losses(tmp_path) == losses(two_ranks)


@pytest.mark.slow
def test_checkpoint_of_another_world_size_is_refused(tmp_path: Path, one_rank: Path) -> None:
    folder = tmp_path / "run"
    shutil.copytree(one_rank, folder)
    (folder / "ck" / f"ckpt-{TOTAL_STEPS:09d}.pt").unlink()  # leaves step 5 to resume
    config = make_config(folder)
    results = finish(launch(config))
    for rank, (status, _, err) in results.items():
        assert status == 1, err
        assert f"plan-job train: rank {rank}/2 on " in err
        assert "was written by 1 rank(s) and this job has 2" in err


@pytest.mark.slow
def test_a_failing_rank_fails_every_rank(tmp_path: Path) -> None:
    config = make_config(tmp_path, builder="tests.test_train_distributed:fails_on_rank_1")
    # Ended by the peer's closed sockets, not the collective timeout (see FINISH_S).
    results = finish(launch(config))
    status, _, err = results[1]
    assert status == 1
    assert "rank 1/2 on" in err
    assert "workload_error: training step 3 raised RuntimeError: disk of rank 1 is gone" in err
    status, _, err = results[0]
    assert status == 1
    assert "rank 0/2 on" in err and "distributed:" in err and "another rank failed" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_missing_rank_is_named(tmp_path: Path) -> None:
    short = {"PLANJOB_DIST_INIT_TIMEOUT_S": "3"}
    alone_first = launch(make_config(tmp_path / "a"), ranks=(0,), **short)
    alone_second = launch(make_config(tmp_path / "b"), ranks=(1,), **short)
    status, _, err = finish(alone_first)[0]
    assert status == 1
    assert "rank 0/2 on" in err and "rank(s) 1 did not join the 2-rank group" in err
    assert "within 3 s (joined: 0 on" in err
    status, _, err = finish(alone_second)[1]
    assert status == 1
    assert "rank 1/2 on" in err and "cannot reach rank 0's rendezvous at 127.0.0.1:" in err


# --- srun on the test cluster ----------------------------------------------------------------


def test_srun_on_two_nodes_matches_the_local_two_ranks(
    slurm_cluster: SlurmCluster, tmp_path: Path, two_ranks: Path, one_rank: Path
) -> None:
    config = make_config(tmp_path)
    script = tmp_path / "train.sbatch"
    launcher = " ".join(LAUNCH_VARIABLES)
    script.write_text(
        "#!/bin/bash\n"
        f"cd {REPO}\n"
        f"unset {launcher} PLANJOB_STOP_AT\n"
        f"export PYTHONPATH={REPO} OMP_NUM_THREADS=1\n"
        f"srun --kill-on-bad-exit=1 {sys.executable} -m jobs.train {config}\n"
    )
    log = tmp_path / "job.out"
    proc = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--parsable",
            f"--partition={slurm_cluster.partition}",
            "--nodes=2",
            "--ntasks-per-node=1",
            "--time=2",
            f"--output={log}",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=2 * 120 + 120,  # twice the job's --time, and two minutes to be scheduled
        check=False,
    )
    output = log.read_text() if log.exists() else ""
    assert proc.returncode == 0, f"{proc.stderr}\n{output}"
    job_id = proc.stdout.strip().split(";")[0]
    found = events(tmp_path)
    start, stop = found[0], found[-1]
    assert start == {**start, "event": "start", "step": 0, "job_id": job_id}
    assert stop == {**stop, "event": "stop", "step": TOTAL_STEPS, "reason": "done"}
    assert len(events(tmp_path, "start")) == 1  # one progress stream for both tasks
    assert output.count("stopped at step 8/8 (done)") == 1
    state = state_at(tmp_path)
    assert state["world_size"] == 2
    # The ranks saw different data (not the one-process run), and srun's launch trains
    # exactly as the hand-made one does.
    assert not same_weights(state["model"], state_at(one_rank)["model"])
    assert same_weights(state["model"], state_at(two_ranks)["model"])
    assert losses(tmp_path) == losses(two_ranks)
