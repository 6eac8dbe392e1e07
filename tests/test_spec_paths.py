"""`~` and `$VAR` in the spec's path fields are expanded when the spec is read (and said so),
an unset variable is refused by name; a checkpoint folder one node keeps to itself is warned
about when the run has several jobs or nodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from planner.errors import SpecError
from planner.spec.checkpoint_dir import node_local_reason, node_local_warning
from planner.spec.paths import expand_path
from tests.builders import TINY_JIT, reference_files, write_spec
from tests.in_process import invoke
from tests.processes import cli_env

ENV = {"HOME": "/home/ada", "SCRATCH": "/lustre/ada", "EMPTY": ""}


@pytest.mark.parametrize(
    ("value", "expanded"),
    [
        ("~/ckpt", "/home/ada/ckpt"),
        ("~", "/home/ada"),
        ("$SCRATCH/ckpt", "/lustre/ada/ckpt"),
        ("${SCRATCH}/runs/$SCRATCH", "/lustre/ada/runs//lustre/ada"),
        ("ckpt/~x", "ckpt/~x"),  # only a leading ~ is a home
        ("/data/ckpt$", "/data/ckpt$"),  # a $ without a name stays
    ],
)
def test_expansion(value: str, expanded: str) -> None:
    found, note = expand_path("checkpoint.dir", value, "run.yaml", ENV)
    assert found == expanded
    if expanded == value:
        assert note is None
    else:
        assert (
            note == f"checkpoint.dir: {value!r} read as {expanded!r} (~ and $VARIABLES are "
            "expanded)"
        )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("$NOPE/ckpt", "$NOPE is not set here"),
        ("$EMPTY/ckpt", "$EMPTY is empty here"),  # never /ckpt
        ("${a-b}/x", "${a-b} is not a variable name"),
        ("~no-such-user-here/x", "~no-such-user-here: no such user here"),
    ],
)
def test_what_cannot_be_expanded_is_refused_by_name(value: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        expand_path("checkpoint.dir", value, "run.yaml", ENV)
    assert info.value.field == "checkpoint.dir"
    assert message in str(info.value)


def test_cli_expands_and_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    spec, record = reference_files(tmp_path, checkpoint={"dir": "~/ckpt"})
    env = cli_env({"PATH": str(tmp_path), "HOME": str(home)})
    out = tmp_path / "run"
    proc = invoke(
        ["emit", str(spec), "--calibration", str(record), "-o", str(out)], cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert f"note: checkpoint.dir: '~/ckpt' read as '{home}/ckpt'" in proc.stderr
    assert json.loads((out / "train.json").read_text())["checkpoint_dir"] == f"{home}/ckpt"
    assert yaml.safe_load((out / "plan.yaml").read_text())["spec"]["checkpoint"]["dir"] == (
        f"{home}/ckpt"
    )
    assert not (tmp_path / "~").exists()


def test_an_unset_variable_stops_calibrate_before_anything(tmp_path: Path) -> None:
    spec = dict(TINY_JIT, checkpoint={"dir": "$PLANJOB_TEST_UNSET/ckpt"})
    env = cli_env({"PATH": str(tmp_path)})
    env.pop("PLANJOB_TEST_UNSET", None)
    proc = invoke(["calibrate", str(write_spec(tmp_path, spec))], cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "checkpoint.dir: got '$PLANJOB_TEST_UNSET/ckpt'; $PLANJOB_TEST_UNSET is not set" in (
        proc.stderr
    )
    assert not (tmp_path / ".plan-job").exists() and not (tmp_path / "$PLANJOB_TEST_UNSET").exists()


# /proc/mounts lines as Linux writes them.
MOUNTS = """\
/dev/nvme0n1p2 / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0
nfs01:/export/home /home nfs4 rw,relatime,vers=4.2 0 0
10.0.0.5@o2ib:/lustre /lustre lustre rw,flock 0 0
/dev/md0 /local\\040scratch xfs rw 0 0
overlay /work overlay rw,lowerdir=/a,upperdir=/b 0 0
"""


@pytest.mark.parametrize(
    ("folder", "environ", "reason"),
    [
        ("/home/ada/ckpt", {}, None),
        ("/lustre/proj/ckpt", {}, None),
        ("/lustre/proj/not/yet/made", {}, None),
        ("/data/ckpt", {}, "on a local ext4 disk (/dev/nvme0n1p2 mounted at /)"),
        ("/local scratch/ckpt", {}, "on a local xfs disk (/dev/md0 mounted at /local scratch)"),
        ("/work/ckpt", {}, "on an overlay filesystem (a container's own layer)"),
        ("/dev/shm/ckpt", {}, "under /dev/shm, which is node-local"),
        ("/tmp/ckpt", {}, "under /tmp, which is node-local"),
        ("/home/ada/jobtmp/ckpt", {"TMPDIR": "/home/ada/jobtmp"}, "under $TMPDIR"),
        ("/lustre/scratch/local/ckpt", {}, "node-local scratch"),
        ("/lscratch/ada/ckpt", {}, "node-local scratch"),
    ],
)
def test_node_local_folders(folder: str, environ: dict[str, str], reason: str | None) -> None:
    found = node_local_reason(Path(folder), environ, MOUNTS)
    assert (found is None) if reason is None else (found is not None and reason in found)


def test_one_job_on_one_node_is_not_warned() -> None:
    assert node_local_warning(Path("/tmp/ckpt"), 1, 1, {}) is None
    warning = node_local_warning(Path("/tmp/ckpt"), 3, 1, {})
    assert warning is not None and "may not be seen by the next job" in warning


def test_plan_warns_about_a_node_local_folder_over_several_nodes(tmp_path: Path) -> None:
    spec, record = reference_files(tmp_path, checkpoint={"dir": "/dev/shm/plan-job-test-ckpt"})
    env = cli_env({"PATH": str(tmp_path)})
    args = ["plan", str(spec), "--calibration", str(record)]
    one = invoke([*args, "--nodes", "1"], cwd=tmp_path, env=env)
    assert one.returncode == 0, one.stderr
    assert "may not be seen" not in one.stderr  # one job on one node: nothing to warn of
    two = invoke([*args, "--nodes", "2"], cwd=tmp_path, env=env)
    assert two.returncode == 0, two.stderr
    assert (
        "warning: checkpoint.dir /dev/shm/plan-job-test-ckpt is under /dev/shm, which is "
        "node-local on most clusters: this run has 2 nodes"
    ) in " ".join(two.stderr.split())
