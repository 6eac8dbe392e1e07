"""The Hugging Face Trainer and Lightning callbacks (jobs.hf_callback, jobs.lightning_callback),
driving the real libraries through examples/user_train_hf.py and user_train_lightning.py on
CPU: progress lines, saves at the interval, resume, and a save and stop on a real signal or
before the stop time. In this process (the libraries import once), a few seconds each."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from jobs.contract import command_fields
from jobs.progress import read_progress
from jobs.report import STOP_SIGNALS, Reporter
from tests.paths import REPO
from tests.reporter_fixtures import (  # noqa: F401 (autouse fixtures)
    clean_environment,
    in_tmp_path,
    restore_signal_handlers,
)

EXAMPLES = REPO / "examples"


def load_example(name: str) -> ModuleType:
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def events(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    return [e for e in read_progress(path) if kind is None or e["event"] == kind]


def check_steps(progress: Path, first: int, last: int) -> None:
    """A step line for every optimizer step, each timed and with its loss."""
    steps = [e for e in events(progress, "step") if e["step"] >= first]
    assert [e["step"] for e in steps] == list(range(first, last + 1))
    assert all(e["step_s"] > 0 for e in steps)
    assert all(isinstance(e["loss"], float) and e["loss"] > 0 for e in steps)


@pytest.mark.slow
def test_callbacks_import_without_their_library() -> None:
    """The modules import anywhere; the classes say what to install."""
    for module, blocked, hint in [
        ("jobs.hf_callback", ["transformers"], "pip install transformers"),
        ("jobs.lightning_callback", ["lightning", "pytorch_lightning"], "pip install lightning"),
    ]:
        block = "; ".join(f"sys.modules[{name!r}] = None" for name in blocked)
        code = (
            f"import sys; {block}; import {module} as m\n"
            "try:\n    m.PlanJobCallback()\nexcept ImportError as exc:\n    print(exc)\n"
            "assert 'torch' not in sys.modules"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert hint in proc.stdout


# --- Hugging Face Trainer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf() -> ModuleType:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return load_example("user_train_hf")


def hf_args(output: Path, *extra: str) -> list[str]:
    return ["--output-dir", str(output), "--micro-batch", "8", *extra]


@pytest.mark.slow
def test_hf_callback_writes_progress_and_resumes(
    hf: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress, output = tmp_path / "progress.jsonl", tmp_path / "out"
    monkeypatch.setenv("PLANJOB_PROGRESS_PATH", str(progress))
    first = ["--total-steps", "10", "--checkpoint-every", "5", "--eval-every", "5"]
    assert hf.main(hf_args(output, *first)) == 0
    found = events(progress)
    assert [e["event"] for e in found if e["event"] != "step"] == [
        "start",
        "eval",
        "checkpoint",
        "eval",
        "checkpoint",
        "stop",
    ]
    start = found[0]
    assert start == {**start, "step": 0, "restart": 0, "total_steps": 10, "samples_per_step": 8}
    assert start["params"] > 0
    check_steps(progress, 1, 10)
    assert [e["samples"] for e in events(progress, "step")] == [8 * s for s in range(1, 11)]
    evaluations = events(progress, "eval")
    assert [e["step"] for e in evaluations] == [5, 10]
    assert all(e["eval_s"] > 0 and e["loss"] > 0 for e in evaluations)
    saves = events(progress, "checkpoint")
    assert [(e["step"], e["path"]) for e in saves] == [
        (5, str(output / "checkpoint-5")),
        (10, str(output / "checkpoint-10")),
    ]
    assert all(e["save_s"] > 0 and e["bytes"] > 1000 for e in saves)
    assert (output / "checkpoint-10" / "trainer_state.json").is_file()
    assert found[-1] == {**found[-1], "step": 10, "reason": "done", "signal": None}

    # The next job: plan-job passes the newest checkpoint; the Trainer resumes from it.
    resume = str(output / "checkpoint-10")
    second = ["--total-steps", "14", "--checkpoint-every", "5", "--resume-from", resume]
    assert hf.main(hf_args(output, *second)) == 0
    found = events(progress)
    starts = [i for i, e in enumerate(found) if e["event"] == "start"]
    start, resumed = found[starts[1]], found[starts[1] + 1]
    assert start == {**start, "step": 10, "restart": 1, "total_steps": 14}
    assert resumed == {**resumed, "event": "resume", "step": 10, "path": resume}
    check_steps(progress, 11, 14)
    assert [e["step"] for e in events(progress, "checkpoint")][2:] == [14]
    assert found[-1] == {**found[-1], "step": 14, "reason": "done"}


@pytest.mark.slow
def test_hf_callback_saves_and_stops_on_a_signal(
    hf: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import TrainerCallback

    from jobs.hf_callback import PlanJobCallback

    class SignalAtStep3(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGUSR2)  # as Slurm's warning would come

    progress, output = tmp_path / "progress.jsonl", tmp_path / "out"
    args = hf.parse_args(hf_args(output, "--total-steps", "50", "--checkpoint-every", "20"))
    rep = Reporter(total_steps=50, checkpoint_interval_steps=20, progress_path=str(progress))
    hf.build_trainer(args, [SignalAtStep3(), PlanJobCallback(rep)]).train()
    stop = events(progress, "stop")[-1]
    assert stop == {**stop, "step": 3, "reason": "signal", "signal": "SIGUSR2"}
    saved = events(progress, "checkpoint")[-1]
    assert saved["step"] == 3 and (output / "checkpoint-3" / "trainer_state.json").is_file()
    check_steps(progress, 1, 3)


@pytest.mark.slow
def test_hf_callback_stops_before_the_stop_time(
    hf: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs.hf_callback import PlanJobCallback, trainer_arguments

    progress, output = tmp_path / "progress.jsonl", tmp_path / "out"
    stop_at = time.time() + 3.0
    env = {
        "total_steps": 500,
        "checkpoint_interval_steps": 4,
        "checkpoint_dir": str(output),
        "progress_path": str(progress),
        "stop_at": stop_at,
        "micro_batch": 8,
        "grad_accum": 1,
        "seed": 5,
    }
    for name, value in command_fields.environment(env).items():
        monkeypatch.setenv(name, value)
    # 0.3 s kept free: the margin a busy 2-core machine needs between its steps' times.
    rep = Reporter(stop_margin_s=0.3)
    made = trainer_arguments(rep)
    assert made == {
        "output_dir": str(output),
        "max_steps": 500,
        "save_strategy": "steps",
        "save_steps": 4,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "seed": 5,
    }
    args = hf.parse_args(["--sleep-ms", "50"])  # the rest from the environment
    hf.build_trainer(args, [PlanJobCallback(rep)]).train()
    stop = events(progress, "stop")[-1]
    assert stop["reason"] == "time_limit" and stop["signal"] is None
    assert 0 < stop["step"] < 500
    assert stop["time"] <= stop_at
    saved = events(progress, "checkpoint")[-1]
    assert saved["step"] == stop["step"]
    assert (output / f"checkpoint-{stop['step']}").is_dir()


@pytest.mark.slow
def test_hf_example_unchanged_writes_only_the_trainers_checkpoints(
    hf: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress, output = tmp_path / "progress.jsonl", tmp_path / "out"
    monkeypatch.setenv("PLANJOB_PROGRESS_PATH", str(progress))
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    extra = ["--no-callback", "--total-steps", "6", "--checkpoint-every", "3"]
    assert hf.main(hf_args(output, *extra)) == 0
    assert not progress.exists()
    names = sorted(p.name for p in output.iterdir() if p.name.startswith("checkpoint-"))
    assert names == ["checkpoint-3", "checkpoint-6"]
    assert (output / "checkpoint-6" / "trainer_state.json").is_file()
    assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == handlers


# --- Lightning ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lightning() -> ModuleType:
    from jobs import lightning_callback

    if lightning_callback._MISSING is not None:
        pytest.importorskip("pytorch_lightning")
    return load_example("user_train_lightning")


@pytest.mark.slow
def test_lightning_callback_writes_progress_and_resumes(
    lightning: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress, folder = tmp_path / "progress.jsonl", tmp_path / "ck"
    monkeypatch.setenv("PLANJOB_PROGRESS_PATH", str(progress))
    common = ["--checkpoint-dir", str(folder), "--checkpoint-every", "5", "--micro-batch", "8"]
    assert lightning.main([*common, "--total-steps", "10", "--eval-every", "5"]) == 0
    found = events(progress)
    start = found[0]
    assert start == {
        **start,
        "event": "start",
        "step": 0,
        "restart": 0,
        "total_steps": 10,
        "samples_per_step": 8,
    }
    assert start["params"] > 0
    check_steps(progress, 1, 10)
    assert [e["samples"] for e in events(progress, "step")] == [8 * s for s in range(1, 11)]
    saves = events(progress, "checkpoint")
    assert [(e["step"], e["path"]) for e in saves] == [
        (5, str(folder / "step-000000005.ckpt")),
        (10, str(folder / "step-000000010.ckpt")),
    ]
    assert all(e["save_s"] > 0 and e["bytes"] > 1000 for e in saves)
    evaluations = events(progress, "eval")
    assert [e["step"] for e in evaluations] == [5, 10]
    assert all(e["eval_s"] > 0 and e["loss"] > 0 for e in evaluations)
    assert found[-1] == {**found[-1], "event": "stop", "step": 10, "reason": "done"}
    assert sorted(p.name for p in folder.iterdir()) == [
        "step-000000005.ckpt",
        "step-000000010.ckpt",
    ]  # complete files only: no temporaries

    resume = str(folder / "step-000000010.ckpt")
    assert lightning.main([*common, "--total-steps", "16", "--resume-from", resume]) == 0
    found = events(progress)
    starts = [i for i, e in enumerate(found) if e["event"] == "start"]
    start, resumed = found[starts[1]], found[starts[1] + 1]
    assert start == {**start, "step": 10, "restart": 1, "total_steps": 16}
    assert resumed == {**resumed, "event": "resume", "step": 10, "path": resume}
    check_steps(progress, 11, 16)
    assert [e["step"] for e in events(progress, "checkpoint")][2:] == [15, 16]
    assert sorted(p.name for p in folder.iterdir()) == [
        "step-000000015.ckpt",
        "step-000000016.ckpt",
    ]  # the newest two kept
    assert found[-1] == {**found[-1], "event": "stop", "step": 16, "reason": "done"}


@pytest.mark.slow
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=[s.name for s in STOP_SIGNALS])
def test_lightning_callback_saves_and_stops_on_a_signal(
    lightning: ModuleType, tmp_path: Path, signum: signal.Signals
) -> None:
    from jobs.lightning_callback import PlanJobCallback

    callback_base = PlanJobCallback.__mro__[1]

    class SignalAtStep3(callback_base):  # type: ignore[misc,valid-type]
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == 3:
                os.kill(os.getpid(), signum)

    progress, folder = tmp_path / "progress.jsonl", tmp_path / "ck"
    args = lightning.parse_args(["--checkpoint-dir", str(folder), "--total-steps", "50"])
    rep = Reporter(
        total_steps=50,
        checkpoint_dir=str(folder),
        checkpoint_interval_steps=20,
        progress_path=str(progress),
    )
    trainer, model, (train, _val) = lightning.build(
        args, rep, [SignalAtStep3(), PlanJobCallback(rep)]
    )
    if signum == signal.SIGTERM:
        # Lightning ends fit itself on SIGTERM, with SystemExit, once the step is saved.
        with pytest.raises(SystemExit):
            trainer.fit(model, train)
    else:
        trainer.fit(model, train)
    stop = events(progress, "stop")[-1]
    assert stop == {**stop, "step": 3, "reason": "signal", "signal": signum.name}
    saved = events(progress, "checkpoint")[-1]
    assert saved["step"] == 3 and saved["path"] == str(folder / "step-000000003.ckpt")
    assert Path(saved["path"]).is_file()
    check_steps(progress, 1, 3)


@pytest.mark.slow
def test_lightning_callback_stops_before_the_stop_time(
    lightning: ModuleType, tmp_path: Path
) -> None:
    from jobs.lightning_callback import PlanJobCallback

    progress, folder = tmp_path / "progress.jsonl", tmp_path / "ck"
    args = lightning.parse_args(["--checkpoint-dir", str(folder), "--sleep-ms", "50"])
    stop_at = time.time() + 3.0
    rep = Reporter(
        total_steps=500,
        checkpoint_dir=str(folder),
        checkpoint_interval_steps=4,
        progress_path=str(progress),
        stop_at=stop_at,
        stop_margin_s=0.3,
    )
    trainer, model, (train, _val) = lightning.build(args, rep, [PlanJobCallback(rep)])
    trainer.fit(model, train)
    stop = events(progress, "stop")[-1]
    assert stop["reason"] == "time_limit" and stop["signal"] is None
    assert 0 < stop["step"] < 500
    assert stop["time"] <= stop_at
    saved = events(progress, "checkpoint")[-1]
    assert saved["step"] == stop["step"] and Path(saved["path"]).parent == folder
    assert Path(saved["path"]).is_file()


@pytest.mark.slow
def test_an_unchanged_trainer_script_calibrates_from_its_checkpoint_folders(
    tmp_path: Path,
) -> None:
    """report: trainer_state on the real Trainer, unchanged (--no-callback): fast steps and
    save_total_limit=2 rotate folders away within a poll or two; each must still count."""
    pytest.importorskip("transformers")
    import shlex

    import yaml

    from planner.calibration.record import load_record
    from tests.paths import REPO
    from tests.processes import run_cli

    example = REPO / "examples" / "user_train_hf.py"
    run = (
        f"{shlex.quote(sys.executable)} {shlex.quote(str(example))} --no-callback "
        "--output-dir {output_dir} --total-steps {total_steps} "
        "--checkpoint-every {checkpoint_interval_steps} --resume-from {resume_from}"
    )
    spec = {
        "name": "hf-unchanged",
        "command": {"run": run, "report": "trainer_state", "output_dir": "out"},
        "data": {"samples": 20000},
        "batch": {"micro_batch": 16},
        "cluster": {"gpus_per_node": 0},
        "checkpoint": {"dir": "ck"},
        "calibration": {"executor": "local", "max_steps": 400, "max_seconds": 30},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    proc = run_cli(["calibrate", "spec.yaml", "-o", "cal.yaml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = load_record(tmp_path / "cal.yaml").measurement
    assert m.steady_steps >= 40 and 0 < m.step_mean_s < 0.5
    assert m.checkpoint_save_s > 0 and m.checkpoint_bytes > 0 and m.startup_s > 0.5
    # The calibration's saves went to its scratch folder, which is gone: not to output_dir.
    assert not (tmp_path / "out").exists()
    assert not any((tmp_path / "ck").glob(".calibration-probe-*"))
