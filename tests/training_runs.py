"""Training jobs the tests start: train.json configs for the built-in workloads (and slowed
builders that sleep in each step, so a test can interrupt them) and for a user's command,
running python -m jobs.train, and reading back its progress and weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from jobs.contract.train_config import TrainConfig
from jobs.node import threads
from jobs.node.signals import StopRequest
from jobs.progress import read_progress
from jobs.training import builtin
from jobs.workloads import gpt, gpt_config, jit, jit_config
from jobs.workloads.base import Workload, WorkloadConfig
from tests.paths import REPO, SCRIPTS
from tests.processes import cli_env

"""Training jobs the tests start: train.json configs for the built-in workloads (and slowed
builders that sleep in each step, so a test can interrupt them) and for a user's command,
running python -m jobs.train, and reading back its progress and weights."""


TOTAL_STEPS = 12


def slow_jit(config: WorkloadConfig) -> Workload:
    return _slowed(jit.build(config), 0.1)


def slow_gpt(config: WorkloadConfig) -> Workload:
    return _slowed(gpt.build(config), 0.1)


def slower_jit(config: WorkloadConfig) -> Workload:
    return _slowed(jit.build(config), 0.25)


def _slowed(workload: Workload, delay_s: float) -> Workload:
    step = workload.train_step

    def train_step(batch: Any) -> Any:
        time.sleep(delay_s)
        return step(batch)

    workload.train_step = train_step
    return workload


def train_json(folder: Path, name: str = "jit", slow: str = "", **changes: Any) -> Path:
    """``slow``: "slow" or "slower" for this module's builders that sleep in each step."""
    folder.mkdir(parents=True, exist_ok=True)
    builder = f"tests.training_runs:{slow}_{name}" if slow else f"jobs.workloads.{name}:build"
    fields: dict[str, Any] = {
        "builder_path": builder,
        "workload_name": name,
        "preset": "tiny",
        "overrides": {},
        "micro_batch": 2,
        "grad_accum": 1,
        "precision": "fp32",
        "device": "cpu",
        "seed": 7,
        "total_steps": TOTAL_STEPS,
        "checkpoint_dir": str(folder / "ck"),
        "checkpoint_interval_steps": 5,
        "keep_checkpoints": 2,
        "progress_path": str(folder / "progress.jsonl"),
        **changes,
    }
    path = folder / "train.json"
    path.write_text(TrainConfig.from_flat(fields).to_json())
    return path


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PLANJOB_"))}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    return {**base, **extra}


def command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "jobs.train", str(config), *args]


def run_train(
    config: Path, *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(config, *args),
        cwd=REPO,
        env=env(**(extra_env or {})),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_in_process(config: Path, stop_at: float | None = None) -> int:
    """A job of the run in this process: the same code path past argument parsing, without
    waiting for torch's import, and with the stop time not at the mercy of that import."""
    threads.apply(torch)  # as jobs.train's main does: every job of a run the same count
    parsed = TrainConfig.from_json(config.read_text())
    return builtin.train(parsed, stop_at, StopRequest())


def events(folder: Path, kind: str | None = None) -> list[dict[str, Any]]:
    found = read_progress(folder / "progress.jsonl")
    return [e for e in found if kind is None or e["event"] == kind]


def final_model(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / "ck" / f"ckpt-{TOTAL_STEPS:09d}.pt"
    return torch.load(path, weights_only=False)["model"]


PACED = SCRIPTS / "paced_train.py"


FAKE_HF = SCRIPTS / "fake_hf_trainer.py"


def command_env() -> dict[str, str]:
    """This environment without a launcher's or Slurm's variables (the test may run in a job)."""
    drop = ("PLANJOB_", "SLURM_", "WORLD_SIZE", "RANK")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def command_config(tmp_path: Path, argv: Sequence[str], **changes: Any) -> TrainConfig:
    fields: dict[str, Any] = {
        "builder_path": "",
        "workload_name": "command",
        "preset": "",
        "overrides": {},
        "micro_batch": 2,
        "grad_accum": 3,
        "precision": "fp32",
        "device": "cpu",
        "seed": 7,
        "total_steps": 8,
        "checkpoint_dir": str(tmp_path / "ck"),
        "checkpoint_interval_steps": 3,
        "keep_checkpoints": 2,
        "progress_path": str(tmp_path / "progress.jsonl"),
        "command": tuple(argv),
        "stop_grace_s": 5.0,
    }
    fields.update(changes)
    return TrainConfig.from_flat(fields)


def launch_command(
    tmp_path: Path, config: TrainConfig, extra: Sequence[str] = ()
) -> subprocess.Popen[str]:
    path = tmp_path / "train.json"
    path.write_text(config.to_json())
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.train", str(path), *extra],
        cwd=tmp_path,
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_command(tmp_path: Path, config: TrainConfig, timeout: float = 60) -> tuple[int, str, str]:
    proc = launch_command(tmp_path, config)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def reference_weights(config_path: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The same run, uninterrupted and unpaced (the pacing changes no number)."""
    data = json.loads(config_path.read_text())
    data.update(
        overrides={**data["overrides"], "pace_s": 0.0},
        checkpoint_dir=str(tmp_path / "reference-ck"),
        progress_path=str(tmp_path / "reference.jsonl"),
    )
    reference = tmp_path / "reference.json"
    reference.write_text(TrainConfig.from_json(json.dumps(data)).to_json())
    subprocess.run(
        [sys.executable, "-m", "jobs.train", str(reference)],
        cwd=REPO,
        env=cli_env(),
        check=True,
        timeout=120,
    )
    return final_weights(tmp_path / "reference-ck", data["total_steps"])


def final_weights(folder: Path, step: int) -> dict[str, torch.Tensor]:
    state = torch.load(folder / f"ckpt-{step:09d}.pt", map_location="cpu", weights_only=False)
    return state["model"]


WORKLOADS = {"jit": (jit, jit_config), "gpt": (gpt, gpt_config)}


def build_workload(
    name: str,
    preset: str = "tiny",
    micro_batch: int = 8,
    grad_accum: int = 1,
    precision: str = "fp32",
    seed: int = 0,
    **overrides: Any,
) -> Workload:
    module, _ = WORKLOADS[name]
    config = WorkloadConfig(
        preset=preset,
        overrides=overrides,
        micro_batch=micro_batch,
        grad_accum=grad_accum,
        precision=precision,
        device="cpu",
        seed=seed,
    )
    return module.build(config)


def losses(workload: Workload, steps: int) -> list[float]:
    return [float(workload.train_step(workload.next_batch())) for _ in range(steps)]


def checkpoint_steps(folder: Path) -> list[int]:
    return sorted(int(p.name[5:14]) for p in (folder / "ck").glob("ckpt-*.pt"))


def assert_same_run(folder: Path, reference: Path) -> None:
    """Bit-identical weights at the end, and the same loss at every step on the way."""
    model, expected = final_model(folder), final_model(reference)
    assert model.keys() == expected.keys()
    for key in expected:
        assert torch.equal(model[key], expected[key]), key
    losses = {e["step"]: e["loss"] for e in events(folder, "step")}
    assert losses == {e["step"]: e["loss"] for e in events(reference, "step")}


def copy_run(source: Path, target: Path) -> Path:
    """The run folder copied, its config pointed at the copy."""
    shutil.copytree(source, target)
    config = TrainConfig.from_json((target / "train.json").read_text())
    return train_json(
        target,
        config.work.workload_name,
        checkpoint_dir=str(target / "ck"),
        progress_path=str(target / "progress.jsonl"),
    )
