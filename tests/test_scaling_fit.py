"""Multi-node calibration, the login-node half: the spec and CLI, the record's scaling section,
the all-reduce fit and the plan made with it. No Slurm: the measurements are written by hand.

The reference numbers are tests/test_planning.py's: 1e9 parameters (4e9 gradient bytes), 4
GPUs per node, micro-batch 8, global batch 256, intra-node 100 GB/s (0.06 s for 4 GPUs:
2 x 3/4 x 4e9 / 100e9). A 1-node calibration of 4 ranks at grad_accum 8 stepping in 1.06 s is
0.125 s of compute per micro-batch plus that 0.06 s.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.contract.measurement import Measurement
from planner.calibration.calibrate import CalibrationRun, calibration_runs, check_node_counts
from planner.calibration.record import JobInfo, load_record, make_record, save_record
from planner.errors import BadInputError, SpecError
from planner.model.report import options_table, plan_table
from planner.scaling.fit import (
    MeasuredScaling,
    extrapolation,
    fit_allreduce,
    make_section,
    measured_scaling,
)
from planner.scaling.ring import RingAllReduce
from planner.slurm.submission import make_executor
from planner.spec.load import parse_spec
from tests.builders import (
    GRAD_BYTES,
    MEASUREMENT,
    SPEC,
    TINY_JIT,
    partition,
    plan_for,
    point,
    scaled_record,
    spec_with,
    write_spec,
)
from tests.in_process import invoke

# -- the fit ---------------------------------------------------------------------------------


def test_fit_recovers_latency_and_bandwidth() -> None:
    latency, bandwidth = 2e-3, 12.5e9
    points = [
        point(1, 1.06),
        point(2, 0.9, tasks=1, latency_s=latency, bytes_per_s=bandwidth),
        point(4, 0.7, tasks=1, latency_s=latency, bytes_per_s=bandwidth),
    ]
    fit = fit_allreduce(points, default_latency_s=1.0)  # the default must not be used
    assert fit is not None
    assert fit.latency_fitted and fit.points == 6  # three sizes at each multi-node count
    assert fit.latency_s == pytest.approx(latency, rel=0.01)
    assert fit.bytes_per_s == pytest.approx(bandwidth, rel=0.01)
    assert fit.rms_relative_error < 1e-9 and fit.max_relative_error < 1e-9


def test_fit_with_noise_reports_its_residual() -> None:
    latency, bandwidth = 5e-3, 25e9
    clean = point(2, 0.9, latency_s=latency, bytes_per_s=bandwidth)
    noisy = dataclasses.replace(
        clean,
        allreduce_times=tuple(
            (b, t * f) for (b, t), f in zip(clean.allreduce_times, (1.02, 0.98, 1.02), strict=True)
        ),
    )
    fit = fit_allreduce([noisy], default_latency_s=1e-3)
    assert fit is not None and fit.latency_fitted
    assert fit.bytes_per_s == pytest.approx(bandwidth, rel=0.05)
    assert 0.005 < fit.rms_relative_error < 0.03
    assert fit.max_relative_error >= fit.rms_relative_error


def test_one_point_fits_the_bandwidth_only() -> None:
    # 2 ranks, 4e9 bytes in 0.09 s with the spec's 10 ms latency: 2 x 1/2 x 4e9 / 0.08 = 50 GB/s
    one = dataclasses.replace(point(2, 0.6, tasks=1), allreduce_times=((GRAD_BYTES, 0.09),))
    fit = fit_allreduce([point(1, 1.0, tasks=1), one], default_latency_s=0.01)
    assert fit is not None and not fit.latency_fitted and fit.points == 1
    assert fit.latency_s == 0.01
    assert fit.bytes_per_s == pytest.approx(50e9)
    assert fit.rms_relative_error == pytest.approx(0.0, abs=1e-12)


def test_no_multi_node_timing_gives_no_fit() -> None:
    assert fit_allreduce([point(1, 1.06)], default_latency_s=0.01) is None


def test_fitted_parameters_are_never_negative() -> None:
    # Times that shrink with the bytes: the best line has a negative slope, so the bandwidth
    # term goes (bandwidth unbounded) and the latency takes the mean level.
    p = dataclasses.replace(
        point(2, 0.6, tasks=1),
        allreduce_times=((GRAD_BYTES, 0.010), (GRAD_BYTES // 4, 0.011), (GRAD_BYTES // 16, 0.012)),
    )
    fit = fit_allreduce([p], default_latency_s=0.01)
    assert fit is not None
    assert fit.latency_s > 0 and math.isinf(fit.bytes_per_s)


# -- the model -------------------------------------------------------------------------------


def test_measured_scaling_against_hand_values() -> None:
    model = MeasuredScaling(0.125, 4e9, 100e9, latency_s=0.01, bytes_per_s=50e9)
    one = model.step_time(1, 4, 8)
    # intra 2 x 3/4 x 4e9 / 100e9 = 0.06; nothing across nodes
    assert (one.compute_s, one.intranode_s, one.internode_s) == pytest.approx((1.0, 0.06, 0.0))
    # 2 nodes x 4 GPUs: the fitted all-reduce over 8 ranks is 0.01 + 2 x 7/8 x 4e9 / 50e9 =
    # 0.15 s, of which the intra-node 0.06 is already counted: 0.5 + 0.06 + 0.09
    two = model.step_time(2, 4, 4)
    assert (two.intranode_s, two.internode_s) == pytest.approx((0.06, 0.09))
    assert two.total_s == pytest.approx(0.65)
    # one rank per node: RingAllReduce with the fitted numbers, once per optimizer step
    ring = RingAllReduce(0.125, 4e9, 100e9, 50e9, 0.01)
    for nodes, accum in ((1, 8), (2, 4), (4, 2), (8, 1)):
        assert model.step_time(nodes, 1, accum) == ring.step_time(nodes, 1, accum)
    assert model.step_time(2, 1, 4).total_s == pytest.approx(0.5 + 0.01 + 0.08)


def test_model_from_a_section_reproduces_the_smallest_count() -> None:
    spec = spec_with()
    section = make_section(
        [point(2, 0.58, latency_s=1e-3, bytes_per_s=400e9), point(1, 1.06)], spec.plan, 10**9
    )
    assert section.node_counts == (1, 2)  # sorted: the first is the record's measurement
    model = measured_scaling(spec.plan, section, 1.06, 10**9)
    assert model.micro_s == pytest.approx(0.125)  # (1.06 - 0.06 intra) / 8
    checks = {c.nodes: c for c in section.checks}
    assert checks[1].model_s == pytest.approx(1.06) and checks[1].error == pytest.approx(0)
    # 2 nodes: fitted to the step itself (one point: the spec's 10 ms latency, and the
    # bandwidth from 0.58 - 4 x 0.125 = 0.08 s = 0.01 + 1.75 x 4e9 / B: 100 GB/s), so the
    # model reproduces the measured 0.58 s.
    assert section.fit is not None and section.fit.bytes_per_s == pytest.approx(100e9)
    assert checks[2].model_s == pytest.approx(0.58) and checks[2].error == pytest.approx(0)
    # The all-reduces timed on their own (400 GB/s, 1 ms) are kept beside it.
    assert section.allreduce_fit is not None
    assert section.allreduce_fit.bytes_per_s == pytest.approx(400e9, rel=0.01)


def test_extrapolation_line() -> None:
    assert extrapolation((1, 2), 8) == "measured at 1-2 nodes; 8 nodes is extrapolated 4x beyond"
    assert "within the measured range" in extrapolation((1, 2), 2)
    assert extrapolation((2,), 3).startswith("measured at 2 nodes; 3 nodes is extrapolated 1.5x")


# -- the plan --------------------------------------------------------------------------------


def test_plan_uses_the_fit_and_its_choice_follows_the_measured_bandwidth() -> None:
    # The spec's 50 GB/s and 10 ms choose 2 nodes (tests/test_planning.py).
    assert plan_for().nodes == 2
    # Poor: a 2-node step of 1.91 s = 0.5 compute + 1.41: with the spec's 10 ms latency,
    # 1.75 x 4e9 / B = 1.40 s, B = 5 GB/s; efficiency 1.06 / 3.82 = 28%: one node.
    poor = plan_for(record=scaled_record(0.01, 5e9, 1.91))
    by_n = {o.nodes: o for o in poor.options}
    assert by_n[2].step_s == pytest.approx(1.91)
    assert poor.nodes == 1
    # Good: a 2-node step of 0.56 s = 0.5 + 0.06: 0.01 + 1.75 x 4e9 / B = 0.06, B = 140 GB/s.
    # 2 nodes 0.56 s (94.6%); 4 nodes 0.25 + 0.01 + 1.875 x 4e9 / 140e9 = 0.3136 s (84.5%);
    # 8 nodes 0.125 + 0.01 + 1.9375 x 4e9 / 140e9 = 0.1904 s (69.6%, under the 80% floor):
    # four nodes.
    good = plan_for(record=scaled_record(1e-3, 400e9, 0.56))
    by_n = {o.nodes: o for o in good.options}
    assert by_n[2].efficiency == pytest.approx(1.06 / 1.12)
    assert by_n[4].efficiency == pytest.approx(1.06 / (4 * (0.26 + 7.5e9 / 140e9)))
    assert good.nodes == 4
    # Measured at 2 nodes: 8 ranks x 4 / 0.56 s per node against 4 x 8 / 1.06 s = 94.6%.
    assert by_n[2].measured_efficiency == pytest.approx(1.06 / 1.12)
    assert by_n[2].measured_step_s == 0.56
    assert by_n[1].measured_efficiency == pytest.approx(1.0)
    assert by_n[4].measured_efficiency is None
    assert good.extrapolation == "measured at 1-2 nodes; 4 nodes is extrapolated 2x beyond"
    assert "bus bandwidth 140 GB/s" in good.scaling_model
    assert "Timed on its own (3 timings): 400 GB/s" in good.scaling_model


def test_report_shows_measured_next_to_model_efficiency() -> None:
    plan = plan_for(record=scaled_record(1e-3, 400e9, 0.56))
    table = options_table(plan)
    assert "measured (step)" in table.splitlines()[0]
    row = next(line for line in table.splitlines() if line.split()[0] == "2")
    assert row.count("94.6%") == 2 and "(560 ms)" in row
    text = plan_table(plan)
    assert "measured at 1-2 nodes; 4 nodes is extrapolated 2x beyond" in text
    assert "all-reduce fitted to the steps at 2 nodes" in text
    # A one-device record's report has neither.
    plain = plan_table(plan_for())
    assert "measured (step)" not in plain and "extrapolated" not in plain
    data = yaml.safe_load(yaml.safe_dump(plan.to_dict()))
    assert data["extrapolation"] == plan.extrapolation
    assert data["options"][1]["measured_efficiency"] == pytest.approx(1.06 / 1.12)


def test_plan_with_a_forced_count_and_a_partition() -> None:
    plan = plan_for(None, partition(), record=scaled_record(0.01, 5e9, 1.91), nodes=2)
    assert plan.nodes == 2 and plan.step_s == pytest.approx(1.91)
    assert plan.extrapolation.endswith("2 node(s) is within the measured range")


# -- the record ------------------------------------------------------------------------------


def test_record_with_scaling_round_trips(tmp_path: Path) -> None:
    record = scaled_record(1e-3, 400e9, 0.58)
    path = tmp_path / "cal.yaml"
    save_record(record, path)
    raw = yaml.safe_load(path.read_text())
    assert [p["nodes"] for p in raw["scaling"]["points"]] == [1, 2]
    assert raw["scaling"]["points"][1]["allreduce_times"][0] == [GRAD_BYTES, pytest.approx(0.0185)]
    assert raw["spec"]["calibration"]["nodes"] == [1, 2]
    loaded = load_record(path)
    assert loaded.scaling == record.scaling  # tuples again, not YAML's lists
    assert isinstance(loaded.scaling.points[1].allreduce_times[0], tuple)
    assert loaded.spec.calibration.nodes == (1, 2)
    assert loaded.measurement == record.measurement


def test_record_without_scaling_loads_as_before(tmp_path: Path) -> None:
    spec = spec_with()
    record = make_record(
        spec, Measurement(**MEASUREMENT), JobInfo("local", "1", "/", "o", "e", None, 5.0)
    )
    path = tmp_path / "cal.yaml"
    save_record(record, path)
    raw = yaml.safe_load(path.read_text())
    assert "scaling" not in raw
    # A record written before calibration.nodes existed.
    del raw["spec"]["calibration"]["nodes"], raw["spec"]["calibration"]["tasks_per_node"]
    path.write_text(yaml.safe_dump(raw))
    loaded = load_record(path)
    assert loaded.scaling is None and loaded.spec.calibration.nodes == (1,)
    assert plan_for(record=loaded).nodes == 2  # the ring model, as before


def test_broken_scaling_section_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "cal.yaml"
    save_record(scaled_record(1e-3, 400e9, 0.58), path)
    raw = yaml.safe_load(path.read_text())
    raw["scaling"]["points"][0]["speed"] = 3
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match="missing or unknown fields") as info:
        load_record(path)
    assert info.value.field == "--calibration"


# -- spec, jobs and validation ---------------------------------------------------------------


def test_spec_node_counts() -> None:
    spec = spec_with(calibration={"nodes": [2, 1], "executor": "slurm"})
    assert spec.calibration.nodes == (1, 2)
    assert spec.calibration.tasks_per_node is None
    assert spec_with().calibration.nodes == (1,)
    assert spec_with(calibration={"nodes": 4}).calibration.nodes == (4,)
    assert parse_spec(spec.to_dict()) == dataclasses.replace(spec, source=None)


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([1, 1], "each node count once"),
        ([0, 1], "node counts from 1 to"),
        ([1, "two"], "node counts from 1 to"),
        ([], "at least one node count"),
    ],
)
def test_bad_node_counts_name_the_field(nodes: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        spec_with(calibration={"nodes": nodes})
    assert info.value.field == "calibration.nodes"


def test_runs_keep_the_global_batch() -> None:
    spec = spec_with(calibration={"executor": "slurm", "nodes": [1, 2, 4]})
    # tasks_per_node defaults to cluster.gpus_per_node (4): 256 / (8 x 4n)
    assert calibration_runs(spec) == (
        CalibrationRun(1, 4, 8),
        CalibrationRun(2, 4, 4),
        CalibrationRun(4, 4, 2),
    )
    assert calibration_runs(spec)[1].ranks == 8
    # The default calibration times one device at the spec's own accumulation, as before.
    assert calibration_runs(spec_with()) == (CalibrationRun(1, 1, 8),)
    two = spec_with(calibration={"executor": "slurm", "nodes": [1, 2], "tasks_per_node": 2})
    assert calibration_runs(two) == (CalibrationRun(1, 2, 16), CalibrationRun(2, 2, 8))


def test_node_count_whose_batch_does_not_split() -> None:
    spec = spec_with(calibration={"executor": "slurm", "nodes": [1, 3]})
    with pytest.raises(SpecError, match=r"at 3 node\(s\).*8 x 12 = 96") as info:
        check_node_counts(spec)
    assert info.value.field == "calibration.nodes" and info.value.value == [1, 3]


def test_node_counts_beyond_the_partition() -> None:
    spec = spec_with(calibration={"executor": "slurm", "nodes": [1, 2, 4]})
    check_node_counts(spec, partition(max_nodes=4))
    with pytest.raises(SpecError, match="at most 2") as info:
        check_node_counts(spec, partition(total_nodes=2))
    assert info.value.field == "calibration.nodes"


def test_local_executor_takes_one_node_and_one_task() -> None:
    with pytest.raises(SpecError, match="--executor slurm") as info:
        check_node_counts(spec_with(calibration={"nodes": [1, 2]}))
    assert info.value.field == "calibration.nodes"
    with pytest.raises(SpecError, match="one task") as info:
        check_node_counts(spec_with(calibration={"tasks_per_node": 2}))
    assert info.value.field == "calibration.tasks_per_node"
    check_node_counts(spec_with())


def test_executor_shape(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # submitit's Slurm executor wants an srun on PATH; it never runs here.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    spec = spec_with(calibration={"executor": "slurm", "nodes": [1, 2]})
    default = make_executor(spec, tmp_path / "a", "cal").parameters
    assert (default["nodes"], default["ntasks_per_node"], default["gres"]) == (1, 1, "gpu:1")
    two = make_executor(spec, tmp_path / "b", "cal", nodes=2, tasks_per_node=4).parameters
    assert (two["nodes"], two["ntasks_per_node"], two["gres"]) == (2, 4, "gpu:4")


# -- the command line ------------------------------------------------------------------------


def tiny_spec(tmp_path: Path, **calibration: Any) -> Path:
    doc = copy.deepcopy(TINY_JIT)
    doc["calibration"].update(calibration)
    return write_spec(tmp_path, doc)


def test_cli_local_executor_with_two_node_counts(tmp_path: Path) -> None:
    path = tiny_spec(tmp_path)
    result = invoke(["calibrate", str(path), "--nodes", "1,2"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "calibration.nodes: got [1, 2]" in result.stderr
    assert "--executor slurm" in result.stderr
    assert not (tmp_path / ".plan-job").exists()  # nothing submitted, no folder
    assert not (tmp_path / "calibrations").exists()


def test_cli_node_count_whose_batch_does_not_split(tmp_path: Path) -> None:
    # micro-batch 4 x grad_accum 2 on one CPU rank per node: global batch 8, not split by 3
    path = tiny_spec(tmp_path, nodes=[1, 3], executor="slurm")
    result = invoke(["calibrate", str(path)], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "calibration.nodes: got [1, 3]" in result.stderr
    assert "micro_batch x GPUs = 4 x 3 = 12" in result.stderr
    assert not (tmp_path / ".plan-job").exists()


def test_cli_bad_nodes_flag(tmp_path: Path) -> None:
    path = tiny_spec(tmp_path)
    result = invoke(["calibrate", str(path), "--nodes", "1,two"], tmp_path)
    assert result.returncode == 2
    assert "--nodes: got '1,two'" in result.stderr
    result = invoke(["calibrate", str(path), "--nodes", "1,1"], tmp_path)
    assert result.returncode == 2
    assert "calibration.nodes" in result.stderr and "each node count once" in result.stderr


def test_bad_input_is_bad_input() -> None:
    with pytest.raises(BadInputError):
        check_node_counts(spec_with(calibration={"executor": "slurm", "nodes": [3]}))
    assert SPEC["cluster"]["gpus_per_node"] == 4  # the reference the arithmetic above uses


# -- calibrate(): one job per node count (submitit and Slurm replaced by fakes) --------------


@dataclasses.dataclass
class FakeJob:
    request: Any
    nodes: int
    tasks: int


class FakeRunner:
    """JobRunner's part: the job's measurement at once, as rank 0 of nodes x tasks reports
    it: 1.06 s at one node, 0.56 s at two, all-reduces at 400 GB/s and 1 ms."""

    ranks_seen: int | None = None  # set to make every job report this many ranks

    def __init__(self, job: FakeJob, *_args: Any) -> None:
        self.job = job

    def wait(self) -> Any:
        from planner.slurm.submission import Finished

        job, ranks = self.job, self.job.nodes * self.job.tasks
        expected = point(job.nodes, 1.06, tasks=job.tasks)
        if job.nodes > 1:
            expected = point(job.nodes, 0.56, tasks=job.tasks, latency_s=1e-3, bytes_per_s=400e9)
        fields = {
            **MEASUREMENT,
            "step_mean_s": expected.step_mean_s,
            "samples_per_step": 8 * job.request.work.grad_accum,
            "nodes": job.nodes,
            "ranks": self.ranks_seen or ranks,
            "tasks_per_node": job.tasks,
            "backend": "nccl",
            "allreduce_times": expected.allreduce_times,
        }
        folder = Path(job.request.progress_path).parent
        job_id = str(100 + job.nodes)
        return Finished(Measurement(**fields), job_id, folder, folder / "o", folder / "e", 1.0, 9.0)


def fake_slurm(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, str]]:
    from planner.calibration import calibrate as calibration

    submitted: list[tuple[int, int, str]] = []

    class Executor:
        def __init__(self, nodes: int, tasks: int, name: str) -> None:
            self.nodes, self.tasks = nodes, tasks
            submitted.append((nodes, tasks, name))

        def submit(self, _function: Any, request: Any) -> FakeJob:
            return FakeJob(request, self.nodes, self.tasks)

    def make(_spec: Any, _folder: Path, name: str, nodes: int = 1, tasks: int = 1) -> Executor:
        return Executor(nodes, tasks, name)

    monkeypatch.setattr(calibration, "check_submission", lambda _spec: None)
    monkeypatch.setattr(calibration, "read_partition", lambda _name: partition())
    monkeypatch.setattr(calibration, "make_executor", make)
    monkeypatch.setattr(calibration, "JobRunner", FakeRunner)
    return submitted


def test_calibrate_runs_one_job_per_node_count(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from planner.calibration.calibrate import calibrate

    submitted = fake_slurm(monkeypatch)
    spec = spec_with(calibration={"executor": "slurm", "nodes": [2, 1]})
    seen: list[tuple[int, int, int, str]] = []
    record = calibrate(
        spec,
        tmp_path / "jobs",
        on_run=lambda run, i, n, folder: seen.append((run.nodes, i, n, folder.name)),
    )
    assert submitted == [(1, 4, "plan-job-cal-plan-test-1n"), (2, 4, "plan-job-cal-plan-test-2n")]
    assert seen == [(1, 1, 2, "nodes-1"), (2, 2, 2, "nodes-2")]
    assert record.measurement.step_mean_s == 1.06 and record.job.job_id == "101"
    section = record.scaling
    assert section is not None
    assert [(p.nodes, p.ranks, p.grad_accum, p.job_id) for p in section.points] == [
        (1, 4, 8, "101"),
        (2, 8, 4, "102"),
    ]
    assert section.fit is not None and section.allreduce_fit is not None
    assert section.fit.bytes_per_s == pytest.approx(140e9)  # from the 0.56 s step
    assert section.allreduce_fit.bytes_per_s == pytest.approx(400e9, rel=0.01)
    assert plan_for(record=record).nodes == 4  # the plan uses the fit


def test_a_job_that_did_not_run_data_parallel_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from planner.calibration.calibrate import calibrate
    from planner.errors import JobFailedError

    fake_slurm(monkeypatch)
    monkeypatch.setattr(FakeRunner, "ranks_seen", 1)
    spec = spec_with(calibration={"executor": "slurm", "nodes": [1, 2]})
    with pytest.raises(JobFailedError, match="measured 1 rank"):
        calibrate(spec, tmp_path / "jobs")


def test_a_command_is_calibrated_in_one_task() -> None:
    doc = copy.deepcopy(SPEC)
    del doc["workload"]
    doc["command"] = "python train.py --steps {total_steps}"
    doc["calibration"] = {"executor": "slurm", "nodes": [1, 2]}
    with pytest.raises(SpecError, match="one task") as info:
        check_node_counts(parse_spec(doc))
    assert info.value.field == "calibration.nodes"
