"""Calibration as several tasks (srun's nodes x tasks per node): real two-rank CPU runs (gloo)
of jobs.entry.calibrate, started by hand with torchrun's variables, as in
tests/test_train_distributed.py; and the Measurement fields they add, read back from YAML.
"""

from __future__ import annotations

import dataclasses
import pickle
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.calibration import allreduce_timing
from jobs.calibration import builtin as harness
from jobs.contract.measurement import CalibrationRequest, Measurement
from jobs.contract.work import Work
from jobs.node.group import Group
from jobs.node.world import World
from tests.paths import REPO
from tests.processes import FINISH_S, finish, free_port, unlaunched_env

# One task as submitit runs it: calibrate(request), then the result or the failure it raised
# (parsed as the login node parses it) into a pickle.
WORKER = """
import pickle, sys
from jobs.entry import calibrate
from jobs.contract.failure import NodeError, parse_failure

with open(sys.argv[1], "rb") as handle:
    request = pickle.load(handle)
try:
    outcome = ("ok", calibrate(request))
except NodeError as exc:
    outcome = ("failed", parse_failure(str(exc)))
with open(sys.argv[2], "wb") as handle:
    pickle.dump(outcome, handle)
sys.exit(0 if outcome[0] == "ok" else 1)
"""


def tiny_request(folder: Path, builder: str = "jobs.workloads.jit:build") -> CalibrationRequest:
    return CalibrationRequest(
        work=Work(
            builder_path=builder,
            workload_name="jit",
            preset="tiny",
            overrides={},
            micro_batch=2,
            grad_accum=2,  # gradients are exchanged once per optimizer step, not per micro-batch
            precision="fp32",
            device="cpu",
            seed=7,
        ),
        min_steps=10,
        max_steps=100_000,
        max_seconds=3.0,
        target_ci=0.001,
        scratch_dir=str(folder / "scratch"),
        progress_path=str(folder / "progress.jsonl"),
    )


def launch(
    request: CalibrationRequest,
    folder: Path,
    ranks: tuple[int, ...] = (0, 1),
    **extra_env: str,
) -> dict[int, subprocess.Popen[str]]:
    """Start ``ranks`` of a two-rank calibration the way torchrun would."""
    folder.mkdir(parents=True, exist_ok=True)
    request_path = folder / "request.pickle"
    request_path.write_bytes(pickle.dumps(request))
    port = str(free_port())
    procs = {}
    for rank in ranks:
        env = unlaunched_env(
            WORLD_SIZE="2",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            **extra_env,
        )
        out = folder / f"rank-{rank}.pickle"
        procs[rank] = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(request_path), str(out)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    return procs


def outcomes(folder: Path, results: dict[int, Any]) -> dict[int, tuple[str, Any]]:
    found = {}
    for rank, (status, _, err) in results.items():
        path = folder / f"rank-{rank}.pickle"
        assert path.exists(), f"rank {rank} exited {status} without an outcome: {err}"
        found[rank] = pickle.loads(path.read_bytes())
    return found


@pytest.mark.slow
def test_two_ranks_calibrate_together(tmp_path: Path) -> None:
    results = finish(launch(tiny_request(tmp_path), tmp_path), timeout=FINISH_S)
    for rank, (status, _, err) in results.items():
        assert status == 0, f"rank {rank} exited {status}: {err}"
    (kind0, m0), (kind1, m1) = outcomes(tmp_path, results).values()
    assert kind0 == kind1 == "ok"
    assert (m0.ranks, m0.nodes, m0.tasks_per_node, m0.backend) == (2, 1, 2, "gloo")
    # The ranks stopped after the same step, for the reason rank 0 gave.
    assert m0.steps_run == m1.steps_run >= 10
    assert m0.stopped_by == m1.stopped_by
    assert len(m0.step_times_s) == len(m1.step_times_s) == m0.steps_run
    # Different data on each rank: rank 1's streams are its own.
    assert m0.loss_first != m1.loss_first
    # 1/16, 1/4 and all of the fp32 gradient, agreed by both ranks.
    sizes = [size for size, _ in m0.allreduce_times]
    assert sizes == [m0.params // 16 * 4, m0.params // 4 * 4, m0.params * 4]
    assert all(seconds > 0 for _, seconds in m0.allreduce_times)
    assert m1.allreduce_times == m0.allreduce_times
    # One checkpoint probe (rank 0's, reported by both), cleaned up; one progress stream.
    assert m1.checkpoint_bytes == m0.checkpoint_bytes > 0
    assert m1.checkpoint_save_s == m0.checkpoint_save_s
    assert not list((tmp_path / "scratch").glob("*.pt*"))
    lines = (tmp_path / "progress.jsonl").read_text().splitlines()
    assert len(lines) == m0.steps_run


@pytest.mark.slow
def test_a_rank_failing_in_a_step_fails_both_and_is_named(tmp_path: Path) -> None:
    builder = "tests.fixtures.user_workloads:raises_in_step_on_rank_1"
    # Ended by the peer's closed sockets, not a timeout: finishing at all within FINISH_S
    # says so, the collective timeout being six times longer.
    results = finish(launch(tiny_request(tmp_path, builder), tmp_path), timeout=FINISH_S)
    assert [status for status, _, _ in results.values()] == [1, 1]
    host = socket.gethostname()
    # Rank 0 only saw its gradient exchange fail: it reports rank 1's own error.
    for kind, failure in outcomes(tmp_path, results).values():
        assert kind == "failed"
        assert failure["kind"] == "workload_error"
        assert (failure["rank"], failure["node"]) == (1, host)
        assert failure["message"].startswith(
            f"rank 1 on {host}: workload_error: training step 3 raised RuntimeError: "
            "the data shard of rank 1 is unreadable"
        )


@pytest.mark.slow
def test_a_rank_that_never_joins_is_named(tmp_path: Path) -> None:
    results = finish(
        launch(tiny_request(tmp_path), tmp_path, ranks=(0,), PLANJOB_DIST_INIT_TIMEOUT_S="2"),
        timeout=FINISH_S,
    )
    kind, failure = outcomes(tmp_path, results)[0]
    assert kind == "failed" and failure["kind"] == "distributed"
    assert failure["message"].startswith(f"rank 0 on {socket.gethostname()}: distributed: ")
    assert "rank(s) 1 did not join the 2-rank group" in failure["message"]


@pytest.mark.slow
def test_one_process_has_the_defaults(tmp_path: Path, monkeypatch: Any) -> None:
    for name in ("WORLD_SIZE", "RANK", "SLURM_STEP_ID"):
        monkeypatch.delenv(name, raising=False)
    request = dataclasses.replace(tiny_request(tmp_path), max_seconds=0.5, min_steps=3)
    m = harness.calibrate(request)
    assert (m.ranks, m.nodes, m.tasks_per_node, m.backend, m.allreduce_times) == (1, 1, 1, "", ())
    lonely = Group(World(1, 0, 0, "none", "h", None, None))
    assert allreduce_timing.time_allreduces(lonely, 100, None, lambda: None) == ()


def test_new_fields_read_back_from_yaml_and_old_records_load() -> None:
    old: dict[str, Any] = {
        "host": "n1",
        "device_kind": "cpu",
        "device_name": "cpu",
        "versions": {"torch": "2.4.0"},
        "params": 1000,
        "samples_per_step": 4,
        "tokens_per_sample": 1,
        "token_unit": "rows",
        "flops_per_step": 1e6,
        "startup_s": 1.0,
        "import_s": 0.5,
        "build_s": 0.1,
        "warmup_steps": 1,
        "warmup_extra_s": 0.0,
        "steps_run": 10,
        "steady_steps": 9,
        "step_mean_s": 0.01,
        "step_median_s": 0.01,
        "step_std_s": 0.0,
        "step_ci_half_s": 0.0,
        "step_p90_s": 0.01,
        "data_share": 0.1,
        "stopped_by": "time_cap",
        "target_ci": 0.02,
        "peak_memory_bytes": 1,
        "memory_kind": "rss_peak",
        "checkpoint_save_s": 0.1,
        "checkpoint_load_s": 0.1,
        "checkpoint_bytes": 1,
        "loss_first": 1.0,
        "loss_last": 0.5,
    }
    before = Measurement(**old)
    assert (before.nodes, before.ranks, before.tasks_per_node) == (1, 1, 1)
    assert (before.backend, before.allreduce_times) == ("", ())
    pairs = ((250, 1e-4), (1000, 2e-4), (4000, 5e-4))
    fields = {"nodes": 2, "ranks": 8, "tasks_per_node": 4, "backend": "nccl"}
    m = Measurement(**old, **fields, allreduce_times=pairs)
    text = yaml.safe_dump(dataclasses.asdict(m))  # as planner.calibration.record writes it
    read = yaml.safe_load(text)
    assert read["allreduce_times"] == [list(pair) for pair in pairs]  # YAML has no tuples
    back = Measurement(**read)
    assert back.allreduce_times == pairs
    assert (back.nodes, back.ranks, back.tasks_per_node, back.backend) == (2, 8, 4, "nccl")
