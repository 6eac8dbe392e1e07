"""The run's energy beside its GPU-hours: the arithmetic on a record with a known power
(worked out by hand below), the cases where the power is unknown (never a made-up figure),
and the calibration's power readings as far as this GPU-less machine can take them: the real
nvidia-ml-py without a driver, and the sampler's windows on readings it is handed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from jobs.calibration import power
from planner.calibration.record import load_record, save_record
from planner.errors import RecordFieldError, SpecError
from planner.model.report import options_table, summary_table
from tests.builders import plan_for, record_for, reference_files, spec_with
from tests.in_process import invoke
from tests.processes import no_slurm_env

# The reference plan of tests/test_planning.py at one node of 4 GPUs (plan.max_nodes 1).
ONE_NODE = {"plan__max_nodes": 1}


def test_energy_is_gpu_hours_times_measured_power_times_pue() -> None:
    spec = spec_with(**ONE_NODE, plan__pue=1.25)
    # Four GPUs drew 300, 310, 290 and 300 W over the steady steps: 300 W each on average.
    record = record_for(spec, power_w=(300.0, 310.0, 290.0, 300.0), power_source="nvml")
    plan = plan_for(spec, record=record)
    assert plan.gpus == 4
    # By hand: GPU-hours = P50 hours x 4 GPUs; kWh = GPU-hours x 0.300 kW x 1.25.
    gpu_hours = plan.wall.p50_s / 3600 * 4
    assert plan.gpu_hours == pytest.approx(gpu_hours)
    assert plan.energy_kwh == pytest.approx(gpu_hours * 0.300 * 1.25)
    assert plan.power_w == pytest.approx(300.0)
    # Every node count weighed gets its own, from its own GPU-hours.
    chosen = next(o for o in plan.options if o.chosen)
    assert chosen.energy_kwh == pytest.approx(plan.energy_kwh)
    text = summary_table(plan, width=200)
    assert f"{plan.energy_kwh:,.4g} kWh at P50" in text
    assert "300 W per GPU" in text and "PUE 1.25" in text
    assert "kWh" in options_table(plan, width=200)


def test_a_known_plan_in_numbers() -> None:
    # 2 h 30 min at P50 on 4 GPUs = 10 GPU-hours; at 400 W per GPU and PUE 1.5:
    # 10 h x 0.4 kW x 1.5 = 6 kWh.
    from planner.model.energy import PowerFacts

    facts = PowerFacts(power_w=400.0, idle_w=60.0, pue=1.5, note="")
    assert facts.kwh(10.0) == pytest.approx(6.0)
    assert PowerFacts(None, None, 1.0, "unknown").kwh(10.0) is None


@pytest.mark.parametrize(
    ("measured", "spec_changes", "why"),
    [
        ({}, {}, "made before plan-job read GPU power"),
        (
            {"power_source": "unknown: nvidia-ml-py is not installed on the node"},
            {},
            "nvidia-ml-py is not installed",
        ),
        ({"device_kind": "cpu", "power_source": "unknown: the calibration ran on the CPU"}, {},
         "ran on the CPU"),
        ({"power_w": (300.0,), "power_source": "nvml"}, {"cluster__gpus_per_node": 0},
         "CPU-only plan"),
    ],
)  # fmt: skip
def test_unknown_power_gives_no_energy(
    measured: dict[str, object], spec_changes: dict[str, object], why: str
) -> None:
    spec = spec_with(**ONE_NODE, **spec_changes, batch__global_batch=64)
    plan = plan_for(spec, record=record_for(spec, **measured))
    assert plan.energy_kwh is None and plan.power_w is None
    assert why in plan.energy_note
    assert all(o.energy_kwh is None for o in plan.options)
    if spec.cluster.gpus_per_node:
        assert f"energy         {plan.energy_note[:40]}" in summary_table(plan, width=200)
    assert "kWh" not in summary_table(plan, width=200)


def test_power_round_trips_through_the_record_and_old_records_load(tmp_path: Path) -> None:
    spec = spec_with()
    record = record_for(
        spec, power_w=(301.5, 299.25), idle_power_w=(61.0, 60.0), power_source="nvml"
    )
    save_record(record, tmp_path / "cal.yaml")
    loaded = load_record(tmp_path / "cal.yaml")
    assert loaded.measurement.power_w == (301.5, 299.25)
    assert loaded.measurement.idle_power_w == (61.0, 60.0)
    assert loaded.measurement.power_source == "nvml"
    # A record written before power was read has none of the three fields.
    raw = yaml.safe_load((tmp_path / "cal.yaml").read_text())
    for key in ("power_w", "idle_power_w", "power_source"):
        del raw["measurement"][key]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(raw))
    old = load_record(tmp_path / "old.yaml")
    assert (old.measurement.power_w, old.measurement.power_source) == ((), "")
    # A power edited into nonsense is refused with the field.
    raw["measurement"]["power_w"] = [300.0, -5.0]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(RecordFieldError, match=r"measurement\.power_w.*number of watts"):
        load_record(tmp_path / "bad.yaml")


def test_pue_below_one_is_refused() -> None:
    with pytest.raises(SpecError, match=r"plan\.pue.*must be >= 1"):
        spec_with(plan__pue=0.9)


def test_plan_json_carries_the_energy(tmp_path: Path) -> None:
    spec, cal = reference_files(tmp_path, plan__max_nodes=1, plan__pue=1.1)
    record = load_record(cal)
    save_record(record_for(record.spec, power_w=(250.0,) * 4, power_source="nvml"), cal)
    env = no_slurm_env(tmp_path, PLANJOB_HISTORY=str(tmp_path / "h.sqlite"))
    proc = invoke(["plan", str(spec), "--calibration", str(cal), "--json"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["power_w_per_gpu"] == 250.0 and out["pue"] == 1.1
    assert out["energy_kwh"] == pytest.approx(out["gpu_hours"] * 0.250 * 1.1)


# -- the calibration's readings ------------------------------------------------------------


def test_without_a_driver_nvml_says_why() -> None:
    # nvidia-ml-py is installed with the test extras; this machine has no NVIDIA driver.
    gpus, why = power.open_gpus(None)
    assert gpus is None
    assert why.startswith("NVML did not start") or why.startswith("nvidia-ml-py is not")
    watch = power.Watch(None, idle_s=0.0).begin()
    result = watch.finish(0.0, time.time())
    assert result.power_w == () and result.source.startswith("unknown: ")
    assert why in result.source


def test_the_steady_window_takes_each_gpus_median() -> None:
    # Two GPUs; idle around 60 W for t < 10, then steps: warm-up at 200 W, steady near 300.
    samples = [(t / 10, (60.0, 62.0)) for t in range(0, 100)]
    samples += [(10 + t / 10, (200.0, 210.0)) for t in range(0, 20)]
    samples += [(12 + t / 10, (300.0 + t % 3, 310.0 - t % 5)) for t in range(0, 80)]
    result = power.reading(samples, idle=(0.0, 9.95), steady=(12.0, 20.0))
    assert result.source == power.SOURCE
    assert result.power_w == (301.0, 308.0)  # medians of 300/301/302 and 306..310
    assert result.idle_w == (60.0, 62.0)
    # Too few readings in the window: unknown, and why.
    short = power.reading(samples, idle=(0.0, 9.95), steady=(19.96, 20.0))
    assert short.power_w == () and "fewer than 3 power readings" in short.source


def test_the_sampler_reads_until_stopped_and_keeps_a_failure() -> None:
    values = iter([(100.0,), (101.0,), (102.0,)])

    def read() -> tuple[float, ...]:
        return next(values)  # StopIteration on the fourth: the GPU "went away"

    sampler = power.Sampler(read, period_s=0.01).start()
    deadline = time.time() + 30
    while sampler.error is None and time.time() < deadline:
        time.sleep(0.01)
    samples = sampler.stop()
    assert [w for _, w in samples] == [(100.0,), (101.0,), (102.0,)]
    assert sampler.error is not None and "StopIteration" in sampler.error


def test_gpus_are_matched_by_uuid_or_index() -> None:
    handles = {"aaaa-1111": (0, "h0"), "bbbb-2222": (1, "h1")}
    assert power._find("GPU-bbbb-2222", handles) == "h1"
    assert power._find("bbbb", handles) == "h1"  # a unique prefix, as CUDA accepts
    assert power._find("1", handles) == "h1"
    assert power._find("cccc", handles) is None
    env = {"CUDA_VISIBLE_DEVICES": "GPU-aaaa-1111, 1"}
    assert power.visible_selectors(env) == ["GPU-aaaa-1111", "1"]
    assert power.visible_selectors({}) is None
