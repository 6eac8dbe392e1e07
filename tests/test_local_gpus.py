"""The local executor gives a CUDA calibration the GPUs it needs.

submitit's LocalExecutor sets CUDA_VISIBLE_DEVICES to its first gpus_per_node GPUs, an empty
list by default: `plan-job calibrate --executor local --device cuda` on a GPU machine saw no
device at all. These run on a CPU machine, so they check the executor's parameters and the
environment the real local job sees, not CUDA itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from planner.errors import SpecError
from planner.slurm.submission import count_local_gpus, local_gpu_parameters, make_executor
from tests.builders import spec_with


def test_cuda_asks_for_one_gpu_per_task() -> None:
    assert local_gpu_parameters("cuda", 1, {}, gpus_here=0) == {"gpus_per_node": 1}
    assert local_gpu_parameters("auto", 1, {}, gpus_here=2) == {"gpus_per_node": 1}


def test_cpu_and_auto_without_a_gpu_keep_every_gpu_hidden() -> None:
    assert local_gpu_parameters("cpu", 1, {}, gpus_here=8) == {}
    assert local_gpu_parameters("auto", 1, {}, gpus_here=0) == {}


def test_the_users_visible_gpus_are_kept() -> None:
    # The user set CUDA_VISIBLE_DEVICES=2,3: the job gets GPU 2, not GPU 0 of the machine.
    got = local_gpu_parameters("cuda", 1, {"CUDA_VISIBLE_DEVICES": "2,3"}, gpus_here=4)
    assert got == {"gpus_per_node": 1, "visible_gpus": [2, 3]}
    # UUIDs cannot go through submitit's integer list: an export in the job's shell instead.
    uuid = "GPU-8f0e3c1a-0000-1111-2222-333344445555"
    got = local_gpu_parameters("cuda", 1, {"CUDA_VISIBLE_DEVICES": f"{uuid},GPU-x"}, 2)
    assert got == {"setup": [f"export CUDA_VISIBLE_DEVICES={uuid}"]}


def test_cuda_with_every_gpu_hidden_is_bad_input() -> None:
    with pytest.raises(SpecError) as info:
        local_gpu_parameters("cuda", 1, {"CUDA_VISIBLE_DEVICES": ""}, gpus_here=1)
    assert info.value.field == "calibration.device"
    assert "CUDA_VISIBLE_DEVICES=''" in str(info.value)


def test_gpus_are_counted_from_the_drivers_proc_entries(tmp_path: Path) -> None:
    assert count_local_gpus(tmp_path / "absent") == 0
    for bus in ("0000:18:00.0", "0000:2a:00.0"):
        (tmp_path / bus).mkdir()
    assert count_local_gpus(tmp_path) == 2


@pytest.mark.slow
@pytest.mark.parametrize(("device", "expected"), [("cuda", "0"), ("cpu", "")])
def test_the_local_job_sees_the_gpu_it_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str, expected: str
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    spec = spec_with(calibration={"executor": "local", "device": device})
    executor = make_executor(spec, tmp_path, "cal")
    assert executor.parameters.get("gpus_per_node", 0) == (1 if device == "cuda" else 0)
    # The real local job: what its process finds in its environment.
    job = executor.submit(os.getenv, "CUDA_VISIBLE_DEVICES", "unset")
    assert job.result() == expected
