"""jobs.report: the Reporter's progress lines and stop decisions, and
examples/user_train_plain.py run the way plan-job runs a user's command (its {fields} in the
arguments, PLANJOB_* in the environment): to its total, split into two jobs that resume, and
stopped by a signal or by the stop time. CPU, real processes, a few seconds each."""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from jobs.contract import command_fields
from jobs.progress import read_progress
from jobs.report import STOP_SIGNALS, Reporter
from tests.paths import REPO
from tests.reporter_fixtures import (  # noqa: F401 (autouse fixtures)
    clean_environment,
    in_tmp_path,
    restore_signal_handlers,
)

PLAIN = REPO / "examples" / "user_train_plain.py"
PLAIN_SPEC = REPO / "examples" / "user-plain.yaml"


def events(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    return [e for e in read_progress(path) if kind is None or e["event"] == kind]


# --- the Reporter in this process --------------------------------------------------------------


def test_lines_carry_the_format_fields(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    checkpoint = tmp_path / "ck" / "state.bin"
    checkpoint.parent.mkdir()
    rep = Reporter(
        total_steps=4, checkpoint_interval_steps=2, progress_path=str(path), handle_signals=False
    )
    rep.start(
        0,
        params=1234,
        samples_per_step=8,
        tokens_per_sample=16,
        token_unit="pixels",
        flops_per_step=2.5e6,
    )
    for step in range(1, 5):
        time.sleep(0.02)
        rep.step(step, loss=float("nan") if step == 4 else 1.0 / step)
        if rep.checkpoint_due(step):
            with rep.saving(step, checkpoint):
                checkpoint.write_bytes(b"x" * (100 * step))
                time.sleep(0.3)  # a slow save: the next step's time must not include it
    with rep.evaluating(4) as evaluation:
        time.sleep(0.05)
        evaluation.loss = 0.5
    rep.stop(4)

    found = events(path)
    assert [e["event"] for e in found] == [
        "start",
        "step",
        "step",
        "checkpoint",
        "step",
        "step",
        "checkpoint",
        "eval",
        "stop",
    ]
    start = found[0]
    assert start == {
        **start,
        "step": 0,
        "total_steps": 4,
        "restart": 0,
        "job_id": None,
        "pid": os.getpid(),
        "params": 1234,
        "samples_per_step": 8,
        "tokens_per_sample": 16,
        "token_unit": "pixels",
        "flops_per_step": 2.5e6,
    }
    steps = events(path, "step")
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert [e["samples"] for e in steps] == [8, 16, 24, 32]
    assert [e["tokens"] for e in steps] == [128, 256, 384, 512]
    assert [e["loss"] for e in steps] == [1.0, 0.5, 1.0 / 3, None]  # NaN is no JSON number
    assert all(e["step_s"] >= 0.019 for e in steps)
    assert steps[2]["step_s"] < 0.25, "the step after a save was charged the save"
    assert all("peak_memory_bytes" not in e for e in steps)  # no CUDA here: left out
    saves = events(path, "checkpoint")
    assert [(e["step"], e["bytes"], e["path"]) for e in saves] == [
        (2, 200, str(checkpoint)),
        (4, 400, str(checkpoint)),
    ]
    assert all(e["save_s"] >= 0.29 for e in saves)
    evaluation_line = events(path, "eval")[0]
    assert evaluation_line["step"] == 4 and evaluation_line["loss"] == 0.5
    assert evaluation_line["eval_s"] >= 0.049
    assert found[-1] == {**found[-1], "step": 4, "reason": "done", "signal": None}
    times = [e["time"] for e in found]
    assert times == sorted(times)

    # The next job of the run counts the earlier starts; a folder's size is its files'.
    folder = tmp_path / "hf-style"
    (folder / "sub").mkdir(parents=True)
    (folder / "a").write_bytes(b"a" * 10)
    (folder / "sub" / "b").write_bytes(b"b" * 5)
    again = Reporter(total_steps=4, progress_path=str(path), handle_signals=False)
    again.start(4)
    again.checkpoint(4, 0.1, folder)
    again.stop(4, "signal")
    assert [e["restart"] for e in events(path, "start")] == [0, 1]
    assert events(path, "checkpoint")[-1]["bytes"] == 15
    assert events(path, "stop")[-1]["reason"] == "signal"


def test_standalone_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rep = Reporter(total_steps=5, checkpoint_interval_steps=3, handle_signals=False)
    assert not rep.writes and rep.resume_from is None and rep.stop_at is None
    due = [rep.checkpoint_due(step) for step in range(7)]
    assert due == [False, False, False, True, False, True, True]  # every 3, and the total
    rep.start(0)
    for step in range(1, 4):
        rep.step(step, loss=1.0)
        assert not rep.should_stop()
    with rep.saving(3, tmp_path / "missing.pt"):
        pass
    with rep.evaluating(3) as evaluation:
        evaluation.loss = 1.0
    rep.stop(3)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("ranks", "writes"),
    [
        ({"RANK": "1"}, False),
        ({"SLURM_PROCID": "2"}, False),
        ({"RANK": "0", "SLURM_PROCID": "3"}, True),  # torchrun's RANK over Slurm's task id
        ({}, True),
    ],
)
def test_only_rank_zero_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ranks: dict[str, str], writes: bool
) -> None:
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv("PLANJOB_PROGRESS_PATH", str(path))
    monkeypatch.setenv("PLANJOB_TOTAL_STEPS", "5")
    for name, value in ranks.items():
        monkeypatch.setenv(name, value)
    rep = Reporter()
    rep.start(0)
    rep.step(1, loss=2.0)
    with rep.saving(1, tmp_path / "ck.pt"):
        (tmp_path / "ck.pt").write_bytes(b"1")
    os.kill(os.getpid(), signal.SIGUSR2)
    assert _wait_for(rep.should_stop), "every rank answers should_stop"
    rep.stop(1)
    assert path.exists() == writes
    if writes:
        assert [e["event"] for e in events(path)] == ["start", "step", "checkpoint", "stop"]


def test_environment_wins_over_keywords_and_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "TOTAL_STEPS": "50",
        "CHECKPOINT_DIR": "/ck",
        "CHECKPOINT_INTERVAL_STEPS": "10",
        "RESUME_FROM": "",  # plan-job's fresh start, whatever the script's default
        "STOP_AT": "",
        "EVAL_INTERVAL_STEPS": "5",
        "MICRO_BATCH": "4",
        "GRAD_ACCUM": "2",
        "GLOBAL_BATCH": "16",
        "SEED": "3",
        "OUTPUT_DIR": "",
    }
    for name, value in env.items():
        monkeypatch.setenv(f"PLANJOB_{name}", value)
    rep = Reporter(
        total_steps=7,
        checkpoint_dir="mine",
        checkpoint_interval_steps=3,
        resume_from="old.pt",
        stop_at=123.0,
        handle_signals=False,
    )
    assert (rep.total_steps, rep.checkpoint_dir, rep.checkpoint_interval_steps) == (50, "/ck", 10)
    assert (rep.resume_from, rep.stop_at, rep.eval_interval_steps) == (None, None, 5)
    assert (rep.micro_batch, rep.grad_accum, rep.global_batch, rep.seed) == (4, 2, 16, 3)
    assert rep.output_dir is None and not rep.writes
    assert rep.eval_due(10) and not rep.eval_due(11)

    monkeypatch.setenv("PLANJOB_RESUME_FROM", "/ck/step-10.pt")
    monkeypatch.setenv("PLANJOB_STOP_AT", "1700000000.5")
    monkeypatch.delenv("PLANJOB_TOTAL_STEPS")
    rep = Reporter(total_steps=7, handle_signals=False)
    assert (rep.total_steps, rep.resume_from, rep.stop_at) == (7, "/ck/step-10.pt", 1700000000.5)

    bad = [
        ("PLANJOB_TOTAL_STEPS", "ten"),
        ("PLANJOB_TOTAL_STEPS", "0"),
        ("PLANJOB_STOP_AT", "soon"),
        ("PLANJOB_CHECKPOINT_INTERVAL_STEPS", "-1"),
    ]
    for name, value in bad:
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            with pytest.raises(ValueError, match=name):
                Reporter(handle_signals=False)
    with pytest.raises(ValueError, match="total_steps"):
        Reporter(total_steps=0, handle_signals=False)


def test_start_needs_the_target_when_writing(tmp_path: Path) -> None:
    rep = Reporter(progress_path=str(tmp_path / "p.jsonl"), handle_signals=False)
    with pytest.raises(ValueError, match="PLANJOB_TOTAL_STEPS"):
        rep.start(0)


def test_a_real_signal_stops_and_earlier_handlers_still_run(tmp_path: Path) -> None:
    heard: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: heard.append(signum))
    path = tmp_path / "progress.jsonl"
    rep = Reporter(total_steps=10, progress_path=str(path))
    rep.start(0)
    rep.step(1, loss=1.0)
    assert not rep.should_stop()
    os.kill(os.getpid(), signal.SIGTERM)
    assert _wait_for(rep.should_stop)
    assert rep.signal == "SIGTERM" and heard == [signal.SIGTERM]
    rep.stop(1)
    assert events(path, "stop")[-1] == {
        **events(path, "stop")[-1],
        "step": 1,
        "reason": "signal",
        "signal": "SIGTERM",
    }
    # Saved and stopped: a late signal must not kill the process while it tears down.
    assert all(signal.getsignal(signum) == signal.SIG_IGN for signum in STOP_SIGNALS)
    rep.stop(1)  # once only
    assert len(events(path, "stop")) == 1

    untouched = signal.getsignal(signal.SIGUSR2)
    Reporter(handle_signals=False)
    assert signal.getsignal(signal.SIGUSR2) == untouched


def test_stop_time_counts_the_slowest_step_the_save_and_a_due_evaluation(tmp_path: Path) -> None:
    def measured(folder: Path) -> tuple[Reporter, float, float, float]:
        """A reporter that has timed a step (0.05 s), a save (0.2 s) and an evaluation
        (0.3 s), with the times it wrote."""
        path = folder / "progress.jsonl"
        rep = Reporter(
            total_steps=100,
            eval_interval_steps=2,
            stop_at=time.time() + 3600,
            progress_path=str(path),
            handle_signals=False,
        )
        rep.start(0)
        time.sleep(0.05)
        rep.step(1)
        with rep.saving(1, folder / "ck"):
            (folder / "ck").write_bytes(b"1")
            time.sleep(0.2)
        with rep.evaluating(1):
            time.sleep(0.3)
        assert not rep.should_stop(3)
        lines = read_progress(path)
        step_s, save_s, eval_s = (
            next(e[field] for e in lines if e["event"] == event)
            for event, field in (("step", "step_s"), ("checkpoint", "save_s"), ("eval", "eval_s"))
        )
        return rep, step_s, save_s, eval_s

    (tmp_path / "a").mkdir()
    rep, step_s, save_s, eval_s = measured(tmp_path / "a")
    assert eval_s >= 0.29
    # 0.15 s to spare after step 3 and its save; step 2 would also evaluate (0.3 s).
    rep.stop_at = time.time() + step_s + save_s + 0.15
    assert not rep.should_stop(3)
    assert rep.should_stop(2)
    assert rep.should_stop(3), "once out of time, stays out of time"
    rep.stop(1)
    assert events(tmp_path / "a" / "progress.jsonl", "stop")[-1]["reason"] == "time_limit"

    (tmp_path / "b").mkdir()
    rep, _step_s, save_s, _eval_s = measured(tmp_path / "b")
    rep.stop_at = time.time() + save_s + 0.025  # room for the save, not for another step
    assert rep.should_stop(3)


def _wait_for(condition: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- examples/user_train_plain.py, as plan-job runs it ------------------------------------------


def job(folder: Path, total_steps: int, resume_from: str = "", **extra: Any) -> dict[str, Any]:
    """The field values plan-job gives one job of a run in ``folder``."""
    return {
        "total_steps": total_steps,
        "checkpoint_dir": str(folder / "ck"),
        "checkpoint_interval_steps": 5,
        "resume_from": resume_from,
        "progress_path": str(folder / "progress.jsonl"),
        "stop_at": None,
        "eval_interval_steps": 0,
        "micro_batch": 8,
        "grad_accum": 2,
        "global_batch": 16,
        "seed": 3,
        "output_dir": None,
        **extra,
    }


def plain_command(values: dict[str, Any], *extra_args: str) -> tuple[list[str], dict[str, str]]:
    """The spec's command with its fields filled in, and its environment, as plan-job's
    launcher makes them (jobs.contract.command_fields)."""
    run = yaml.safe_load(PLAIN_SPEC.read_text())["command"]["run"]
    argv = command_fields.render(shlex.split(run), values)
    assert argv[:2] == ["python", "examples/user_train_plain.py"]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "PLANJOB_")) and k != "RANK"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(command_fields.environment(values))
    return [sys.executable, str(PLAIN), *argv[2:], *extra_args], env


def run_plain(values: dict[str, Any], *extra_args: str) -> subprocess.CompletedProcess[str]:
    argv, env = plain_command(values, *extra_args)
    return subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def final_weights(path: str | Path) -> dict[str, Any]:
    import torch

    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def plain_reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted 12-step run of the plain example."""
    folder = tmp_path_factory.mktemp("plain-reference")
    proc = run_plain(job(folder, 12))
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.mark.slow
def test_plain_example_runs_to_its_total(plain_reference_run: Path) -> None:
    progress = plain_reference_run / "progress.jsonl"
    found = events(progress)
    assert [e["event"] for e in found if e["event"] != "step"] == [
        "start",
        "checkpoint",
        "checkpoint",
        "checkpoint",
        "stop",
    ]
    start = found[0]
    assert start == {**start, "step": 0, "total_steps": 12, "restart": 0, "samples_per_step": 16}
    assert start["params"] > 0 and start["flops_per_step"] > 0
    steps = events(progress, "step")
    assert [e["step"] for e in steps] == list(range(1, 13))
    assert [e["samples"] for e in steps] == [16 * step for step in range(1, 13)]
    assert all(e["step_s"] > 0 and e["loss"] > 0 for e in steps)
    losses = [e["loss"] for e in steps]
    assert sum(losses[-3:]) < sum(losses[:3])  # it learns
    saves = events(progress, "checkpoint")
    assert [e["step"] for e in saves] == [5, 10, 12]
    assert all(e["bytes"] > 0 and e["save_s"] > 0 for e in saves)
    assert sorted(p.name for p in (plain_reference_run / "ck").iterdir()) == [
        "step-000000010.pt",
        "step-000000012.pt",
    ]  # the newest two kept, no temporaries left
    assert found[-1] == {**found[-1], "step": 12, "reason": "done", "signal": None}


@pytest.mark.slow
def test_plain_example_resumes_to_the_same_run(tmp_path: Path, plain_reference_run: Path) -> None:
    # A first job capped at 6 steps (as a calibration caps its own), then the next job of the
    # run resumes from the newest checkpoint the progress file names.
    first = run_plain(job(tmp_path, 6))
    assert first.returncode == 0, first.stderr
    progress = tmp_path / "progress.jsonl"
    assert events(progress, "stop")[-1]["reason"] == "done"
    newest = events(progress, "checkpoint")[-1]
    assert newest["step"] == 6

    second = run_plain(job(tmp_path, 12, resume_from=newest["path"]))
    assert second.returncode == 0, second.stderr
    found = events(progress)
    starts = [i for i, e in enumerate(found) if e["event"] == "start"]
    assert len(starts) == 2
    start, resume = found[starts[1]], found[starts[1] + 1]
    assert start == {**start, "step": 6, "restart": 1, "total_steps": 12}
    assert resume == {**resume, "event": "resume", "step": 6, "path": newest["path"]}
    assert resume["load_s"] > 0
    steps = events(progress, "step")
    assert [e["step"] for e in steps] == list(range(1, 13))
    assert events(progress, "stop")[-1] == {
        **events(progress, "stop")[-1],
        "step": 12,
        "reason": "done",
    }
    # Same data, same optimizer state: the same losses and, on CPU, the same weights.
    expected = {
        e["step"]: e["loss"] for e in events(plain_reference_run / "progress.jsonl", "step")
    }
    assert {e["step"]: e["loss"] for e in steps} == expected
    import torch

    weights = final_weights(tmp_path / "ck" / "step-000000012.pt")
    reference_weights = final_weights(plain_reference_run / "ck" / "step-000000012.pt")
    assert weights.keys() == reference_weights.keys()
    assert all(torch.equal(weights[k], reference_weights[k]) for k in weights)


@pytest.mark.slow
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=[s.name for s in STOP_SIGNALS])
def test_plain_example_saves_and_exits_0_on_a_signal(
    tmp_path: Path, signum: signal.Signals
) -> None:
    argv, env = plain_command(job(tmp_path, 1000), "--sleep-ms", "50")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    progress = tmp_path / "progress.jsonl"
    deadline = time.monotonic() + 60
    while len(events(progress, "step")) < 3 and proc.poll() is None:
        assert time.monotonic() < deadline, "the example never got to step 3"
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    stop = events(progress, "stop")[-1]
    assert stop["reason"] == "signal" and stop["signal"] == signum.name
    assert 3 <= stop["step"] < 1000
    saved = events(progress, "checkpoint")[-1]
    assert saved["step"] == stop["step"] and Path(saved["path"]).is_file()


def load_example(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_plain_example_stops_before_the_stop_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In this process, with torch and its optimizer machinery warm (the first AdamW imports
    # torch._dynamo, 1.7 s here): the stop time is then not at the mercy of imports.
    import torch

    torch.optim.AdamW(torch.nn.Linear(1, 1).parameters())
    example = load_example(PLAIN)
    # 1000 steps of 50 ms against a stop 6 s away: it stops part-way, whatever the load does
    # to the time before its first step.
    stop_at = time.time() + 6.0
    for name, value in command_fields.environment(job(tmp_path, 1000, stop_at=stop_at)).items():
        monkeypatch.setenv(name, value)
    assert example.main(["--sleep-ms", "50"]) == 0
    progress = tmp_path / "progress.jsonl"
    stop = events(progress, "stop")[-1]
    assert stop["reason"] == "time_limit" and stop["signal"] is None
    assert 0 < stop["step"] < 1000
    assert stop["time"] <= stop_at  # saved and out before the stop time
    saved = events(progress, "checkpoint")[-1]
    assert saved["step"] == stop["step"] and Path(saved["path"]).is_file()
    assert events(progress, "start")[0]["total_steps"] == 1000
