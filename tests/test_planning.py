"""The planning library against numbers worked out by hand (the arithmetic is in the comments).

The reference case: one calibrated device step of 1.0 s at micro-batch 8 x grad_accum 8 (so
0.125 s per micro-batch), 1e9 parameters (4e9 gradient bytes), 4 GPUs per node, global batch
256, 1,000,000 samples -> ceil(1e6 / 256) = 3907 steps. Intra-node 100 GB/s, inter-node
50 GB/s, 10 ms latency, MTBF 24 h, no run-to-run spread and no noise unless a test adds it.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import yaml

from jobs.contract.measurement import Measurement
from planner.errors import (
    BadInputError,
    BatchSplitError,
    CalibrationMismatchError,
    DeadlineError,
    PartitionLimitError,
    SpecError,
)
from planner.model.interval import daly_interval_s, expected_overhead, job_mtbf, young_interval_s
from planner.model.report import plan_table
from planner.model.timemodel import count_work
from planner.scaling.ring import RingAllReduce, efficiency, grad_accum_for
from planner.spec.load import parse_spec
from planner.units import slurm_minutes
from tests.builders import MEASUREMENT, partition, plan_for, record_for, spec_with

Z95 = 1.6448536269514722


# -- work ------------------------------------------------------------------------------------


def test_steps_from_samples() -> None:
    m = Measurement(**MEASUREMENT)
    totals = count_work(spec_with(), m)
    assert (totals.samples, totals.steps) == (1_000_000, 3907)  # 1e6 / 256 = 3906.25
    assert totals.tokens == 512_000_000
    tenth = count_work(spec_with(data__epochs=0.1), m)
    assert (tenth.samples, tenth.steps) == (100_000, 391)  # not 100,001 from a float's last bit
    three = count_work(spec_with(data__epochs=3), m)
    assert (three.samples, three.steps) == (3_000_000, 11719)  # 3e6 / 256 = 11718.75


def test_steps_from_tokens() -> None:
    spec = spec_with(data={"tokens": 10**9 + 1, "epochs": 2})
    totals = count_work(spec, Measurement(**MEASUREMENT))
    # ceil((1e9 + 1) / 512) = 1,953,126 samples per epoch, x 2 epochs
    assert totals.samples == 3_906_252
    assert totals.steps == 15_259  # 256 x 15258 = 3,906,048 < 3,906,252 <= 256 x 15259
    assert totals.tokens == 3_906_252 * 512
    assert totals.token_unit == "sequence positions"


def test_tokens_need_a_workload_that_counts_tokens() -> None:
    spec = spec_with(data={"tokens": 10**6})
    with pytest.raises(SpecError, match=r"data\.tokens.*give data\.samples"):
        count_work(spec, Measurement(**{**MEASUREMENT, "tokens_per_sample": 0}))


# -- checkpoint interval ---------------------------------------------------------------------


def test_daly_against_hand_values() -> None:
    # d = 60 s, M = 24 h: sqrt(2 x 60 x 86400) = 3219.938; d / 2M = 3.4722e-4
    # x [1 + sqrt(3.4722e-4) / 3 + 3.4722e-4 / 9] = 3219.938 x 1.0062498 = 3240.062; - 60
    assert daly_interval_s(60, 86400) == pytest.approx(3180.062, abs=1e-3)
    assert young_interval_s(60, 86400) == pytest.approx(3219.938, abs=1e-3)
    assert daly_interval_s(200, 50) == 50  # d >= 2M: checkpoint every MTBF


def test_daly_tends_to_young_for_small_saves() -> None:
    for save_s in (1e-3, 1e-2, 0.1):
        ratio = daly_interval_s(save_s, 1e7) / young_interval_s(save_s, 1e7)
        assert ratio == pytest.approx(1.0, abs=1e-4)
    assert daly_interval_s(600, 3600) / young_interval_s(600, 3600) < 0.95  # not for big d


def test_overhead_formula() -> None:
    # d / tau + ((tau + d) / 2 + R) / M = 60/3000 + (1530 + 130) / 86400 = 0.02 + 0.019213
    assert expected_overhead(3000, 60, 86400, 130) == pytest.approx(0.0392130, abs=1e-6)


def test_mtbf_from_the_llama3_rate() -> None:
    spec = spec_with(plan={})
    mtbf_s, source = job_mtbf(spec, 16384)
    assert mtbf_s == pytest.approx(86400 / (4.7e-4 * 16384))  # 11,220 s = 3.1 h
    assert "16384 GPUs" in source
    assert job_mtbf(spec_with(), 16384)[0] == 86400  # plan.mtbf_hours: 24 wins


def test_interval_in_steps_and_user_override() -> None:
    plan = plan_for(spec_with(plan__max_nodes=1))
    # one node: step 1.06 s; round(3180.062 / 1.06) = round(3000.06) = 3000 steps
    assert plan.checkpoint_interval_steps == 3000
    assert plan.checkpoint_interval_s == pytest.approx(3180.0)
    assert plan.checkpoint.method == "daly"
    user = plan_for(spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 250}))
    assert (user.checkpoint_interval_steps, user.checkpoint.method) == (250, "user")
    assert "set by checkpoint.interval_steps" in " ".join(plan_table(user).split())


# -- scaling ---------------------------------------------------------------------------------


def test_ring_all_reduce_against_hand_values() -> None:
    model = RingAllReduce(0.125, 4e9, 100e9, 50e9, 0.01)
    # intra: 2 x 3/4 x 4e9 / 100e9 = 0.06 s; inter(n): 2 (n-1)/n x 4e9 / 50e9 + 0.01
    one = model.step_time(1, 4, 8)
    assert (one.compute_s, one.intranode_s, one.internode_s) == pytest.approx((1.0, 0.06, 0.0))
    assert model.step_time(2, 4, 4).total_s == pytest.approx(0.5 + 0.06 + 0.08 + 0.01)
    assert model.step_time(4, 4, 2).total_s == pytest.approx(0.25 + 0.06 + 0.12 + 0.01)
    assert model.step_time(8, 4, 1).total_s == pytest.approx(0.125 + 0.06 + 0.14 + 0.01)
    assert model.step_time(1, 1, 8).comm_s == 0  # one GPU: nothing to reduce
    assert efficiency(1.06, 2, 0.65) == pytest.approx(0.815385, abs=1e-6)
    assert grad_accum_for(256, 8, 12) is None
    assert grad_accum_for(256, 8, 16) == 2


def test_calibration_at_another_accumulation_gives_the_same_micro_batch_time() -> None:
    # Calibrated with 2 nodes in the spec: grad_accum 4, step 0.5 s -> still 0.125 s/micro.
    spec = spec_with()
    other = record_for(spec_with(cluster__nodes=2), step_mean_s=0.5, samples_per_step=32)
    assert other.fingerprint != spec.step_fingerprint()
    plan = plan_for(spec_with(plan__max_nodes=1), record=other)
    assert plan.step_s == pytest.approx(1.06)


# -- time model ------------------------------------------------------------------------------


def test_time_estimate_terms_on_one_node() -> None:
    plan = plan_for(spec_with(plan__max_nodes=1))
    wall = plan.wall
    assert wall.startup_s == 100 and wall.warmup_s == 20
    assert wall.steps_s == pytest.approx(3907 * 1.06)  # 4141.42
    # ceil(3907 / 3000) saves, and the probe save by which the first job times a save
    assert wall.checkpoints_s == pytest.approx(3 * 60)
    assert (wall.evals_s, wall.resumes_s) == (0, 0)
    # 4441.42 s before failures; 4441.42 / 86400 failures x ((3180 + 60) / 2 + 150) s, where
    # a restart costs start-up 100 + load 30 + warm-up 20
    assert wall.failures_s == pytest.approx(90.98742, abs=1e-4)
    assert wall.p50_s == pytest.approx(4532.40742, abs=1e-4)
    assert wall.p95_s == pytest.approx(wall.p50_s)  # no uncertainty at all in this record
    assert len(plan.segments) == 1 and plan.partition is None


def test_evaluation_term() -> None:
    plan = plan_for(spec_with(plan__max_nodes=1, plan__eval_interval_steps=500, plan__eval_s=30))
    assert plan.wall.evals_s == 7 * 30  # floor(3907 / 500) evaluations
    assert plan.eval_s == 30
    assert "every 500 steps (7 in all), 10 held-out batches, 30 s each (plan.eval_s)" in (
        plan_table(plan)
    )


def test_evaluation_time_comes_from_the_calibration_per_batch() -> None:
    spec = spec_with(plan__max_nodes=1, plan__eval_interval_steps=500, plan__eval_batches=20)
    # The calibration timed 10 batches in 12 s: 20 batches take 24 s.
    plan = plan_for(spec, record=record_for(spec, eval_s=12.0, eval_batches=10))
    assert plan.eval_s == pytest.approx(24.0)
    assert plan.wall.evals_s == pytest.approx(7 * 24.0)
    without = plan_for(spec_with(plan__max_nodes=1), record=record_for(spec, eval_s=12.0))
    assert without.wall.evals_s == 0 and without.eval_s == 0


def test_evaluation_without_a_timing_is_bad_input() -> None:
    spec = spec_with(plan__max_nodes=1, plan__eval_interval_steps=500)
    with pytest.raises(SpecError, match="timed none") as info:
        plan_for(spec)  # an old record, or one calibrated without evaluation
    assert info.value.field == "plan.eval_interval_steps"
    assert isinstance(info.value, BadInputError)


def test_p95_combines_mean_ci_spread_and_noise() -> None:
    spec = spec_with(plan__max_nodes=1, plan__run_to_run_spread=0.02)
    # ci 0.0196 s = 1.96 sigma -> 1% of the mean; std 5% of the mean
    plan = plan_for(spec, record=record_for(spec, step_ci_half_s=0.0196, step_std_s=0.05))
    # sigma = hypot(hypot(0.01, 0.02) x 4141.42, 0.05 x 1.06 x sqrt(3907)) = 92.6642 s
    assert plan.wall.sigma_s == pytest.approx(92.6642, abs=1e-3)
    assert plan.wall.p95_s - plan.wall.p50_s == pytest.approx(Z95 * 92.6642, abs=2e-3)


def test_p50_and_p95_grow_with_steps() -> None:
    walls = []
    for samples in (100_000, 1_000_000, 10_000_000):
        spec = spec_with(data__samples=samples, plan__run_to_run_spread=0.02)
        plan = plan_for(spec, record=record_for(spec, step_ci_half_s=0.02, step_std_s=0.05))
        assert plan.wall.p95_s > plan.wall.p50_s
        walls.append(plan.options[0])  # one node, to compare like with like
    assert walls[0].wall_p50_s < walls[1].wall_p50_s < walls[2].wall_p50_s
    assert walls[0].wall_p95_s < walls[1].wall_p95_s < walls[2].wall_p95_s


# -- node choice -----------------------------------------------------------------------------


def test_choice_without_deadline_is_the_fastest_efficient_count() -> None:
    plan = plan_for()
    by_n = {o.nodes: o for o in plan.options}
    assert list(by_n) == list(range(1, 9))  # plan.max_nodes: 8, no partition
    # efficiency: 1.06 / (n x step(n)) = 1, 0.8154, 0.6023, 0.3955 for n = 1, 2, 4, 8
    assert by_n[2].efficiency == pytest.approx(0.815385, abs=1e-6)
    assert by_n[4].efficiency == pytest.approx(0.602273, abs=1e-6)
    assert plan.nodes == 2 and by_n[2].chosen
    assert [o.nodes for o in plan.options if o.chosen] == [2]
    assert plan.grad_accum == 4 and plan.step_s == pytest.approx(0.65)
    assert not by_n[3].feasible and "8 x 12 = 96" in by_n[3].reason
    assert "efficiency below" in by_n[4].reason
    lower = plan_for(spec_with(plan__efficiency_floor=0.5))
    assert lower.nodes == 4


def test_choice_with_deadline_is_the_fewest_gpu_hours_in_time() -> None:
    # one node takes 4470 s > 1 h; two nodes ~2.8e3 s; four are faster but cost more GPU-hours
    plan = plan_for(deadline_hours=1.0)
    assert plan.nodes == 2
    by_n = {o.nodes: o for o in plan.options}
    assert by_n[1].wall_p95_s > 3600 and "deadline" in by_n[1].reason
    assert by_n[4].wall_p95_s <= 3600 and by_n[4].gpu_hours > by_n[2].gpu_hours
    assert plan.gpu_hours == pytest.approx(plan.wall.p50_s * 8 / 3600)
    assert plan_for(spec_with(plan__deadline_hours=1.0)).nodes == 2  # the spec's own deadline


def test_deadline_nobody_meets_names_the_best_achievable() -> None:
    with pytest.raises(DeadlineError) as info:
        plan_for(deadline_hours=0.1)
    message = str(info.value)
    assert info.value.field == "plan.deadline_hours"
    assert "best achievable" in message and "on 8 node(s)" in message
    assert isinstance(info.value, BadInputError)


def test_forced_node_count_that_cannot_split_the_batch() -> None:
    with pytest.raises(BatchSplitError, match=r"micro_batch x GPUs = 8 x 12 = 96"):
        plan_for(nodes=3)
    assert plan_for(nodes=4).nodes == 4
    with pytest.raises(PartitionLimitError, match="between 1 and 8"):
        plan_for(nodes=9)


def test_gpu_hour_cost() -> None:
    plan = plan_for(spec_with(plan__gpu_hour_cost=2.0))
    assert plan.cost == pytest.approx(plan.gpu_hours * 2.0)
    assert all(o.cost is None or o.cost == pytest.approx(o.gpu_hours * 2) for o in plan.options)


# -- validation ------------------------------------------------------------------------------


def test_record_of_another_workload_is_refused_naming_the_fields() -> None:
    spec = spec_with()
    other = record_for(spec_with(batch={"global_batch": 256, "micro_batch": 16}))
    with pytest.raises(CalibrationMismatchError) as info:
        plan_for(spec, record=other)
    assert "batch.micro_batch: spec 8, calibration 16" in str(info.value)
    assert info.value.field == "--calibration"
    preset = record_for(spec_with(workload={"name": "jit", "preset": "B/4"}))
    with pytest.raises(CalibrationMismatchError, match=r"workload\.preset: spec 'tiny'"):
        plan_for(spec, record=preset)


def test_spec_asking_more_than_the_partition_has() -> None:
    spec = spec_with(cluster__nodes=3, batch__global_batch=96)
    with pytest.raises(PartitionLimitError) as info:
        plan_for(spec, partition(total_nodes=2))
    assert info.value.field == "cluster.nodes" and "at most 2" in str(info.value)
    with pytest.raises(PartitionLimitError) as info:
        plan_for(spec_with(), partition(gpus_per_node=2))
    assert info.value.field == "cluster.gpus_per_node" and "2 GPUs" in str(info.value)


def test_node_counts_follow_the_partition() -> None:
    allowed = {"allow_unmeasured_scaling": True}
    plan = plan_for(spec_with(plan=allowed), partition(max_nodes=4))  # 16 nodes, 4 per job
    assert [o.nodes for o in plan.options] == [1, 2, 3, 4]
    capped = plan_for(spec_with(plan__max_nodes=2), partition())
    assert [o.nodes for o in capped.options] == [1, 2]


def test_bad_deadline_override() -> None:
    with pytest.raises(SpecError, match="--deadline"):
        plan_for(deadline_hours=0)


# -- segments and time limits ----------------------------------------------------------------


def test_run_longer_than_max_time_is_split_into_segments() -> None:
    # one node, a save every 100 steps: 1.06 + 60/100 = 1.66 s per step; the reserve after the
    # work is lead = ceil(1.06 + 60 + 10 + 60) = 132 s, and the signal is asked for 60 s later
    # (72 s before the end) since Slurm may send it 60 s early. MaxTime 30 min = 1800 s. First
    # job (start-up 100, warm-up 20, probe save 60): (1800 - 180 - 132) / 1.66 = 896.4 -> 896
    # steps; later jobs (start-up 100, load 30, warm-up 20): (1800 - 150 - 132) / 1.66 =
    # 914.5 -> 914; 3907 - 896 - 3 x 914 = 269 left for a fifth job: 150 + 269 x 1.66 + 132
    # = 728.5 s -> 13 min.
    spec = spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100})
    plan = plan_for(spec, partition(1800))
    assert plan.signal_lead_s == 72 and plan.signal_option == "B:USR2@72"
    assert [s.steps_planned for s in plan.segments] == [896, 914, 914, 914, 269]
    assert [s.time_limit_minutes for s in plan.segments] == [30, 30, 30, 30, 13]
    assert [s.index for s in plan.segments] == [1, 2, 3, 4, 5]
    assert sum(s.steps_p50 for s in plan.segments) == plan.total_steps
    assert plan.wall.resumes_s == 4 * 150
    # ceil(3907 / 100) + one per boundary + the first job's probe
    assert plan.wall.checkpoints_s == (40 + 4 + 1) * 60
    assert "--time=00:30:00" in plan_table(plan)


def test_segments_with_uncertainty_stay_under_max_time() -> None:
    spec = spec_with(plan__max_nodes=2, data__samples=20_000_000, plan__run_to_run_spread=0.03)
    record = record_for(spec, step_ci_half_s=0.02, step_std_s=0.1)
    plan = plan_for(spec, partition(3 * 3600 + 59), record=record)  # 3:00:59 -> 180 min
    segments = plan.segments
    assert len(segments) > 2
    assert all(s.time_limit_minutes <= 180 for s in segments)
    assert all(s.time_limit_minutes == 180 for s in segments[:-1])
    assert all(1 <= s.time_min_minutes < s.time_limit_minutes for s in segments[:-1])
    assert sum(s.steps_planned for s in segments) == plan.total_steps
    assert sum(s.steps_p50 for s in segments) == plan.total_steps
    # at P50 the early jobs get further than their P95 share, so the last needs less
    assert segments[0].steps_p50 > segments[0].steps_planned
    assert segments[-1].steps_p50 < segments[-1].steps_planned
    assert plan.wall.p95_s > plan.wall.p50_s


def test_single_segment_time_is_rounded_up_to_minutes() -> None:
    plan = plan_for(spec_with(plan__max_nodes=1), partition(24 * 3600))
    (segment,) = plan.segments
    # 100 + 20 + 60 (probe save) + 3907 x (1.06 + 60 / 3000) + 122 = 4521.56 s -> 75.36 min
    assert segment.time_limit_minutes == 76
    assert segment.time_min_minutes == 76  # no uncertainty: P50 = P95


def test_max_time_too_short_to_make_progress() -> None:
    with pytest.raises(PartitionLimitError, match="MaxTime") as info:
        plan_for(spec_with(plan__max_nodes=1), partition(180))
    assert "not more than one step" in str(info.value)


# -- baselines and report --------------------------------------------------------------------


def test_baselines_against_hand_values() -> None:
    plan = plan_for()  # 2 nodes, 8 GPUs, grad_accum 4 (half the calibrated 8)
    b = plan.baselines
    # mini run: 100 s start-up + 20 s warm-up + 100 steps x 1.0 s = 220 s (K = 100)
    assert (b.mini_steps, b.mini_s) == (100, 220)
    # 3907 steps x 4/8 calibration steps each / 100 x 220 s
    assert b.method1_s == pytest.approx(4297.7)
    # 4e14 / 64 FLOP per sample x 1e6 samples / (8 GPUs x 400 TFLOP/s)
    assert b.flops_total == pytest.approx(6.25e18)
    assert b.flops_s == pytest.approx(1953.125)
    assert "MFU" in b.flops_rate_source


def test_report_and_yaml() -> None:
    plan = plan_for(spec_with(plan__gpu_hour_cost=3.0), partition(1800))
    text = plan_table(plan)
    for expected in ("wall time", "why (P50)", "* 2", "method 1", "FLOP estimate", "Daly"):
        assert expected in text, text
    assert "--signal=B:USR2@" in text
    data = yaml.safe_load(yaml.safe_dump(plan.to_dict()))
    assert data["nodes"] == 2 and data["signal"] == "USR2"
    assert len(data["segments"]) == len(plan.segments)
    assert data["segments"][0]["time_limit_minutes"] == 30
    assert data["partition"]["max_time_s"] == 1800
    assert parse_spec(data["spec"]) == dataclasses.replace(plan.spec, source=None)
    assert math.isclose(data["wall"]["p50_s"], plan.wall.p50_s)


def test_slurm_minutes() -> None:
    assert slurm_minutes(9) == "00:09:00"
    assert slurm_minutes(180) == "03:00:00"
    assert slurm_minutes(3 * 1440 + 61) == "3-01:01:00"
