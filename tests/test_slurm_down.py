"""Slurm's client installed but unusable: a controller that does not answer, or commands on
PATH that cannot run. The planning commands (plan, emit, resubmit --dry-run) go on as without
Slurm and say why in one line; the ones that submit (submit, resubmit, calibrate --executor
slurm) exit 2 with the reason before they write or claim anything.

The real Slurm client binaries are used, pointed at a slurm.conf whose controller port has
nothing listening (the state of a login node while slurmctld restarts)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from planner.errors import CommandError, ControllerUnreachableError, SlurmUnavailableError
from planner.slurm.client import classify
from tests.builders import TINY_JIT, reference_files, write_spec
from tests.processes import cli_env, run_cli
from tests.run_folders import stopped_folder
from tests.slurm_cluster import SlurmCluster

CLIENTS = ("scontrol", "sinfo", "squeue", "sbatch", "scancel", "sacct")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_conf(folder: Path) -> Path:
    """A slurm.conf whose controller is not running. MessageTimeout=10, Slurm's default: each
    client call retries the dead controller for about that long."""
    conf = folder / "slurm.conf"
    conf.write_text(
        "ClusterName=down\nSlurmctldHost=localhost(127.0.0.1)\n"
        f"SlurmctldPort={free_port()}\nMessageTimeout=10\n"
        "NodeName=n1 NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN\n"
        "PartitionName=gpu Nodes=n1 Default=YES MaxTime=30 State=UP\n"
    )
    return conf


def logging_clients(folder: Path) -> Path:
    """A PATH folder whose Slurm commands log their arguments, then run the real ones."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for name in CLIENTS:
        real = shutil.which(name)
        if real is None:
            pytest.fail(f"{name} not found: this test needs Slurm's client installed")
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {folder}/calls.log\nexec {real} "$@"\n')
        script.chmod(0o755)
    return bin_dir


def down_env(folder: Path) -> dict[str, str]:
    bin_dir = logging_clients(folder)
    return cli_env(
        {"SLURM_CONF": str(dead_conf(folder)), "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    )


def not_executable_env(folder: Path) -> dict[str, str]:
    """Slurm's commands on PATH without the execute bit (a copied bin folder, a bad mount)."""
    bin_dir = folder / "noexec"
    bin_dir.mkdir()
    for name in CLIENTS:
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o644)
    return cli_env({"PATH": str(bin_dir)})


def calls(folder: Path) -> list[str]:
    log = folder / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


ENVS = {"controller down": down_env, "not executable": not_executable_env}
REASONS = {
    "controller down": "Slurm's controller does not answer (scontrol ping: Slurmctld(primary)",
    "not executable": "scontrol is not executable",
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(ENVS))
def test_plan_and_emit_go_on_without_the_partition(tmp_path: Path, case: str) -> None:
    env = ENVS[case](tmp_path)
    spec, record = reference_files(tmp_path)
    proc = run_cli(["plan", str(spec), "--calibration", str(record)], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert REASONS[case] in proc.stderr
    assert "so the partition's MaxTime and node limits are not checked" in proc.stderr
    slurm_lines = [line for line in proc.stderr.splitlines() if "Slurm" in line]
    assert len(slurm_lines) == 1 and "Traceback" not in proc.stderr  # one line, no traceback
    # One ping, not a partition read that retries the dead controller for MessageTimeout
    # (nor an sbatch --test-only or sacct for the queue).
    assert calls(tmp_path) == (["scontrol ping"] if case == "controller down" else [])
    # The queue is unknown, said in the plan; the node count is chosen by run time.
    text = " ".join(proc.stdout.split())
    queue = text[text.index(" queue unknown: ") :]
    assert REASONS[case] in queue and "the node count is chosen by run time" in queue, text
    out = tmp_path / "run"
    proc = run_cli(
        ["emit", str(spec), "--calibration", str(record), "-o", str(out)], cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "segment-01.sbatch").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(ENVS))
def test_submit_refuses_before_claiming_anything(tmp_path: Path, case: str) -> None:
    spec, record = reference_files(tmp_path)
    out = tmp_path / "run"
    emitted = run_cli(
        ["emit", str(spec), "--calibration", str(record), "-o", str(out)],
        cwd=tmp_path,
        env=cli_env({"PATH": str(tmp_path)}),  # no Slurm at all
    )
    assert emitted.returncode == 0, emitted.stderr
    before = sorted(p.name for p in out.iterdir())
    env = ENVS[case](tmp_path)
    proc = run_cli(["submit", str(out)], cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "submit needs Slurm" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == before  # no jobs.yaml
    assert not (tmp_path / "checkpoints").exists()  # not created, so not claimed
    assert not any("sbatch" in call for call in calls(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(ENVS))
def test_calibrate_on_slurm_refuses_and_writes_nothing(tmp_path: Path, case: str) -> None:
    env = ENVS[case](tmp_path)
    path = write_spec(tmp_path, TINY_JIT)
    proc = run_cli(["calibrate", str(path), "--executor", "slurm"], cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "--executor slurm needs Slurm" in proc.stderr and "--executor local" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".plan-job").exists() and not (tmp_path / "ck").exists()


@pytest.mark.slow
def test_resubmit_previews_from_the_folder_and_refuses_for_real(tmp_path: Path) -> None:
    run = stopped_folder(tmp_path)
    env = down_env(tmp_path)
    proc = run_cli(["resubmit", str(run), "--dry-run"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Slurm's controller does not answer (scontrol ping: Slurmctld(primary)" in proc.stderr
    assert "# dry run: would submit" in proc.stdout
    assert "not read" in proc.stdout
    assert calls(tmp_path) == ["scontrol ping"]  # the preview asked nothing that retries
    proc = run_cli(["resubmit", str(run)], cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "resubmit needs Slurm, and its controller does not answer" in proc.stderr
    assert not list(run.glob("resubmit-*.yaml")) and not (run / "segment-06.sbatch").exists()


# Recorded from Slurm 22.05's clients (stderr), each with what it means.
RECORDED = [
    ("slurm_load_partitions: Unable to contact slurm controller (connect failure)", 1, "down"),
    (
        "scontrol: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host\n"
        "scontrol: error: fetch_config: DNS SRV lookup failed\n"
        "scontrol: error: _establish_config_source: failed to fetch config\n"
        "scontrol: fatal: Could not establish a configuration source",
        1,
        "down",
    ),
    (
        "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
        1,
        "down",
    ),
    ("timed out after 30 s", 124, "down"),
    ("/opt/slurm/bin/scontrol: cannot run it: Permission denied", 126, "missing"),
    ("scontrol: command not found", 127, "missing"),
    ("Partition gpus not found", 1, "real"),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition", 1, "real"),
]


@pytest.mark.parametrize(("stderr", "code", "meaning"), RECORDED)
def test_a_client_failure_is_classified(stderr: str, code: int, meaning: str) -> None:
    found = classify(CommandError(["scontrol", "show"], code, "", stderr), "what")
    if meaning == "real":
        assert found is None
    elif meaning == "down":
        assert isinstance(found, ControllerUnreachableError)
        assert stderr.splitlines()[-1] in str(found)
    else:
        assert isinstance(found, SlurmUnavailableError)
        assert not isinstance(found, ControllerUnreachableError)


@pytest.mark.slurm
def test_the_test_clusters_conf_with_its_controller_gone(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    # The real cluster's configuration (munge, accounting) with a controller port that
    # nothing listens on: what a login node sees while slurmctld restarts.
    text = slurm_cluster.conf_path.read_text()
    port = slurm_cluster.ports.slurmctld if slurm_cluster.ports else 0
    conf = tmp_path / "slurm.conf"
    conf.write_text(text.replace(f"SlurmctldPort={port}", f"SlurmctldPort={free_port()}"))
    env = cli_env({"SLURM_CONF": str(conf)})
    spec, record = reference_files(tmp_path)
    proc = run_cli(["plan", str(spec), "--calibration", str(record)], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Slurm's controller does not answer (scontrol ping:" in proc.stderr
    out = tmp_path / "run"
    proc = run_cli(
        ["emit", str(spec), "--calibration", str(record), "-o", str(out)], cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(["submit", str(out)], cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "its controller does not answer" in proc.stderr
    assert not (out / "jobs.yaml").exists() and not (tmp_path / "checkpoints").exists()
    # The same folder submits once the controller is back (the cluster's own conf).
    proc = run_cli(["submit", str(out), "--dry-run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
