"""emit and submit check that checkpoint.dir has room for checkpoint.keep + 1 checkpoints of
the calibration's measured size, and say how much is missing (exit 2, nothing written or
submitted); emit warns when the calibration record ran another command than the spec's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from planner.calibration.record import save_record
from planner.errors import NoSpaceError
from planner.runs.chain import checkpoint_size
from planner.spec.checkpoint_dir import check_space
from planner.units import fmt_bytes
from tests.builders import SPEC, record_for, spec_with, write_spec
from tests.in_process import invoke
from tests.processes import cli_env, run_cli
from tests.slurm_cluster import SlurmCluster

PETABYTE = 10**15  # more than any test machine has free


def project(tmp_path: Path, checkpoint_bytes: int, **spec: Any) -> Path:
    write_spec(tmp_path, {**SPEC, "checkpoint": {"dir": "ckpt", "keep": 2}, **spec}, "spec.yaml")
    record = record_for(spec_with(**{"checkpoint__dir": "ckpt"}), checkpoint_bytes=checkpoint_bytes)
    save_record(record, tmp_path / "cal.yaml")
    return tmp_path


def emit(folder: Path, out: str = "run") -> Any:
    env = cli_env({"PATH": str(Path(sys.executable).parent)})
    return invoke(["emit", "spec.yaml", "--calibration", "cal.yaml", "-o", out], folder, env)


def test_emit_refuses_a_checkpoint_dir_without_room_and_says_how_much_is_missing(
    tmp_path: Path,
) -> None:
    folder = project(tmp_path, PETABYTE)
    proc = emit(folder)
    assert proc.returncode == 2, proc.stderr
    needed = fmt_bytes(3 * PETABYTE)
    assert f"{needed} needed" in proc.stderr and "missing" in proc.stderr
    assert "checkpoint.keep = 2" in proc.stderr and str(folder / "ckpt") in proc.stderr
    assert not (folder / "run").exists() and not (folder / "ckpt").exists()
    # The same spec with the calibration's real size fits.
    project(tmp_path, 2 << 20)
    assert emit(folder).returncode == 0


def set_train_json(folder: Path, checkpoint_bytes: int | None) -> None:
    train = folder / "run" / "train.json"
    config = json.loads(train.read_text())
    config.pop("checkpoint_bytes", None)
    if checkpoint_bytes is not None:
        config["checkpoint_bytes"] = checkpoint_bytes
    train.write_text(json.dumps(config))


def queued_names() -> list[str]:
    # The slurm_cluster fixture points os.environ at the test cluster.
    out = subprocess.run(
        ["squeue", "--noheader", "--format=%j"],
        text=True,
        capture_output=True,
        check=True,
    )
    return out.stdout.split()


def test_submit_refuses_before_any_sbatch_when_the_folder_has_no_room(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    # On the real cluster: submit needs a controller before it looks at the folder's room.
    folder = project(tmp_path, 2 << 20)
    assert emit(folder).returncode == 0
    assert checkpoint_size(folder / "run") == 2 << 20  # train.json's, from the calibration
    set_train_json(folder, PETABYTE)
    proc = run_cli(["submit", "run"], folder, cli_env())
    assert proc.returncode == 2, proc.stderr
    assert f"{fmt_bytes(3 * PETABYTE)} needed" in proc.stderr and "missing" in proc.stderr
    assert not (folder / "run" / "jobs.yaml").exists()
    assert not [name for name in queued_names() if name.startswith("spec")]


def test_an_older_run_folder_takes_the_size_from_its_record(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """A train.json without checkpoint_bytes (emitted before issue 20): the calibration
    record plan.yaml names."""
    folder = project(tmp_path, 2 << 20)
    assert emit(folder).returncode == 0
    set_train_json(folder, None)
    assert checkpoint_size(folder / "run") == 2 << 20
    project(tmp_path, PETABYTE)  # the record on disk now says a petabyte
    proc = run_cli(["submit", "run"], folder, cli_env())
    assert proc.returncode == 2 and f"{fmt_bytes(3 * PETABYTE)} needed" in proc.stderr


def test_the_runs_own_checkpoints_count_toward_what_it_keeps(tmp_path: Path) -> None:
    from jobs.contract.checkpoint_owner import Owner, write_owner

    folder = tmp_path / "ckpt"
    folder.mkdir()
    free = shutil.disk_usage(folder).free
    size = free // 2  # 3 of them do not fit in what is free...
    with pytest.raises(NoSpaceError, match="missing"):
        check_space(folder, 2, size, "run-1")
    # ...but with two of the run's own already there, only one more must fit.
    for step in (100, 200):
        with open(folder / f"ckpt-{step:09d}.pt", "wb") as handle:
            handle.truncate(size)  # sparse: takes no room, counts its size
    write_owner(folder, Owner("run-1", str(tmp_path)))
    check_space(folder, 2, size, "run-1")
    with pytest.raises(NoSpaceError):
        check_space(folder, 2, size, "another-run")
    check_space(folder, 2, None, "run-1")  # unknown size: not checked


def test_emit_warns_when_the_record_ran_another_command(tmp_path: Path) -> None:
    command = {"run": "python train.py --lr 1e-3", "report": "progress"}
    spec = {**SPEC, "command": command}
    del spec["workload"]
    write_spec(tmp_path, {**spec, "checkpoint": {"dir": "ckpt"}}, "spec.yaml")
    measured = {**spec, "command": {**command, "run": "python other.py --lr 1e-3"}}
    write_spec(tmp_path, measured, "measured.yaml")
    from planner.spec.load import load_spec

    record = record_for(load_spec(tmp_path / "measured.yaml"))
    save_record(record, tmp_path / "cal.yaml")
    proc = emit(tmp_path)
    assert proc.returncode == 0, proc.stderr
    (warning,) = [line for line in proc.stderr.splitlines() if "measured the command" in line]
    assert "python other.py --lr 1e-3" in warning and "python train.py --lr 1e-3" in warning
    # The same command: no warning.
    record = record_for(load_spec(tmp_path / "spec.yaml"))
    save_record(record, tmp_path / "cal.yaml")
    proc = emit(tmp_path, "run2")
    assert proc.returncode == 0 and "measured the command" not in proc.stderr
