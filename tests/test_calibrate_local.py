"""plan-job calibrate on the embedded default (submitit's local executor), end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner.calibration.record import load_record
from tests.builders import TINY_JIT, check_sane, user_workload, write_spec
from tests.in_process import invoke
from tests.paths import REPO
from tests.processes import PLAN_JOB, cli_env, run_cli


@pytest.mark.slow
def test_tiny_jit_calibrates_locally(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, TINY_JIT)
    proc = run_cli(["calibrate", str(spec), "-o", "cal.yaml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    check_sane(tmp_path / "cal.yaml", "jit", "local")
    assert "steady step time" in proc.stdout and "checkpoint" in proc.stdout
    assert "FINISHED" in proc.stderr  # the live state line
    # The checkpoint probe cleaned up after itself.
    assert not any((tmp_path / "ck").rglob("*.pt"))


@pytest.mark.slow
def test_tiny_gpt_with_flag_overrides(tmp_path: Path) -> None:
    spec = dict(TINY_JIT, workload={"name": "gpt", "preset": "tiny"})
    path = write_spec(tmp_path, spec)
    proc = run_cli(
        [
            "calibrate",
            str(path),
            "--set",
            "batch.micro_batch=2",
            "--max-steps",
            "40",
            "--set",
            "calibration.peak_tflops=1.5",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    record = load_record(tmp_path / "calibrations" / "tiny.yaml")
    check_sane_gpt = record.measurement
    assert record.spec.batch.micro_batch == 2
    assert check_sane_gpt.samples_per_step == 4
    assert check_sane_gpt.steps_run <= 40
    assert record.derived.mfu == pytest.approx(record.derived.achieved_tflops / 1.5)


@pytest.mark.slow
def test_user_workload(tmp_path: Path) -> None:
    path = write_spec(tmp_path, user_workload("linear_regression"))
    proc = run_cli(["calibrate", str(path), "-o", "cal.yaml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = load_record(tmp_path / "cal.yaml")
    assert record.measurement.params == 32 * 32 + 32
    assert record.measurement.token_unit == "rows"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("raises_in_build", "RuntimeError: the user's data path /no/such/file does not exist"),
        ("raises_in_step", "training step 1 raised ValueError: shape mismatch"),
        ("not_a_workload", "returned dict, expected jobs.workloads.base.Workload"),
        ("no_such_function", "cannot import workload"),
    ],
)
def test_workload_that_raises_fails_clearly(tmp_path: Path, function: str, expected: str) -> None:
    path = write_spec(tmp_path, user_workload(function))
    proc = run_cli(["calibrate", str(path), "-o", "cal.yaml"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert expected in proc.stderr
    assert "last lines of the job's stderr" in proc.stderr
    assert "log: " in proc.stderr
    assert not (tmp_path / "cal.yaml").exists()


@pytest.mark.slow
def test_import_error_of_a_missing_module(tmp_path: Path) -> None:
    spec = dict(TINY_JIT, workload={"function": "no_such_package.train:build"})
    proc = run_cli(["calibrate", str(write_spec(tmp_path, spec))], cwd=tmp_path)
    assert proc.returncode == 1
    assert "cannot import workload 'no_such_package.train:build'" in proc.stderr
    assert "No module named 'no_such_package'" in proc.stderr


@pytest.mark.slow
def test_out_of_memory_is_named_with_the_micro_batch(tmp_path: Path) -> None:
    path = write_spec(tmp_path, user_workload("out_of_memory"))
    proc = run_cli(["calibrate", str(path)], cwd=tmp_path)
    assert proc.returncode == 1
    assert "out of memory at micro-batch 4" in proc.stderr
    assert "lower batch.micro_batch" in proc.stderr


def test_bad_spec_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    spec = dict(TINY_JIT, precision="fp64")
    proc = invoke(["calibrate", str(write_spec(tmp_path, spec)), "-o", "cal.yaml"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "precision: got 'fp64'; allowed: fp32, bf16, fp16" in proc.stderr
    assert not (tmp_path / "cal.yaml").exists()
    assert not (tmp_path / ".plan-job").exists()


def test_bad_flag_value_exits_2(tmp_path: Path) -> None:
    proc = invoke(
        ["calibrate", str(write_spec(tmp_path, TINY_JIT)), "--max-seconds", "-1"], cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "calibration.max_seconds: got -1.0; must be > 0" in proc.stderr


@pytest.mark.slow
def test_slurm_executor_without_slurm_says_so(tmp_path: Path) -> None:
    # A PATH without Slurm's commands: what a laptop looks like.
    env = cli_env({"PATH": str(tmp_path)})
    proc = run_cli(
        ["calibrate", str(write_spec(tmp_path, TINY_JIT)), "--executor", "slurm"],
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 2
    assert "no Slurm client here" in proc.stderr
    assert "--executor local" in proc.stderr


@pytest.mark.slow
def test_slurm_executor_with_a_dead_controller(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=nowhere\nSlurmctldHost=localhost\nSlurmctldPort=9\n"
        "NodeName=x CPUs=1\nPartitionName=p Nodes=x\nMessageTimeout=2\n"
    )
    env = cli_env({"SLURM_CONF": str(conf)})
    proc = run_cli(
        ["calibrate", str(write_spec(tmp_path, TINY_JIT)), "--executor", "slurm"],
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "controller does not answer" in proc.stderr


# How each reaches plan-job: Ctrl-C and a closed terminal signal the whole foreground process
# group (submitit's local controller and the job included); `kill` and `timeout` plan-job
# alone.
STOPS = {
    "ctrl-c": (signal.SIGINT, True, "interrupted: cancelled job"),
    "sigterm": (signal.SIGTERM, False, "interrupted by SIGTERM: cancelled job"),
    "sighup": (signal.SIGHUP, True, "interrupted by SIGHUP: cancelled job"),
}


@pytest.mark.slow
@pytest.mark.parametrize("stop", sorted(STOPS))
def test_ctrl_c_sigterm_and_sighup_cancel_the_local_job(tmp_path: Path, stop: str) -> None:
    spec = dict(
        TINY_JIT,
        calibration={
            **TINY_JIT["calibration"],
            "max_seconds": 120,
            "max_steps": 10**6,
            "target_ci": 1e-6,
        },
    )
    path = write_spec(tmp_path, spec)
    proc = subprocess.Popen(
        [str(PLAN_JOB), "calibrate", str(path)],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell's foreground job
        # A terminal's job has SIGHUP at its default; a suite started under nohup would hand
        # down SIG_IGN, which plan-job rightly leaves alone (planner/stop_signals.py).
        preexec_fn=_default_sighup,
    )
    progress = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and progress is None:
        found = list((tmp_path / ".plan-job").rglob("calibration-progress.jsonl"))
        progress = found[0] if found and found[0].stat().st_size > 0 else None
        time.sleep(0.2)
    assert progress is not None, "the job never started stepping"
    job_pids = {int(p.name.split("_")[0]) for p in progress.parent.glob("*_log.err")}
    assert job_pids
    signum, whole_group, said = STOPS[stop]
    if whole_group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert said in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err  # submitit's, hidden
    deadline = time.monotonic() + 30
    for pid in job_pids:  # submitit's local job id is the job process's pid
        while Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
            assert time.monotonic() < deadline, f"job {pid} still runs"
            time.sleep(0.2)


def _default_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from planner.cli import cli; "
        "from click.testing import CliRunner; r = CliRunner().invoke(cli, ['calibrate', "
        "'--help']); assert r.exit_code == 0; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "False"
    proc = subprocess.run(
        [str(PLAN_JOB), "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONVERBOSE": "0"},
    )
    assert "calibrate" in proc.stdout
