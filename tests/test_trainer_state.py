"""jobs.training.trainer_state against a recorded Hugging Face output_dir
(tests/fixtures/hf_output): two complete checkpoints, one being written (no
trainer_state.json yet), a tmp-checkpoint and a tensorboard folder. Git keeps no mtimes:
mtimes.json holds them, set with os.utime."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from jobs.training import trainer_state

FIXTURE = Path(__file__).parent / "fixtures" / "hf_output"
BASE = 1_700_000_000.0


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(FIXTURE, out)
    (out / "mtimes.json").unlink()
    mtimes = json.loads((FIXTURE / "mtimes.json").read_text())
    for name, offset in mtimes.items():
        if not name.startswith("_"):
            os.utime(out / name, (BASE + offset, BASE + offset))
    return out


def test_lists_complete_checkpoints_with_times_and_sizes(output_dir: Path) -> None:
    folders = trainer_state.list_checkpoints(output_dir)
    # checkpoint-12 has no trainer_state.json yet; tmp-checkpoint-16 and runs/ are not ones.
    assert [f.step for f in folders] == [4, 8]
    four, eight = folders
    assert four.save_start == pytest.approx(BASE + 10.0)
    assert four.save_end == pytest.approx(BASE + 10.75)
    assert four.save_s == pytest.approx(0.75)
    state_bytes = (output_dir / "checkpoint-4" / "trainer_state.json").stat().st_size
    assert four.nbytes == 100 + 200 + state_bytes and four.files == 3
    # Files in sub-folders count: the newest is sub/extra.bin.
    assert eight.save_end == pytest.approx(BASE + 21.0) and eight.files == 4
    assert eight.path == str(output_dir / "checkpoint-8")
    assert eight.state.global_step == 8 and eight.state.max_steps == 12


def test_reads_training_losses_only(output_dir: Path) -> None:
    state = trainer_state.read_state(output_dir / "checkpoint-8" / "trainer_state.json")
    assert state is not None
    # The eval entry has no "loss"; the NaN one is dropped.
    assert state.losses == ((2, 2.5), (4, 2.25), (6, 2.0))
    assert trainer_state.loss_at(state, 8) == 2.0
    assert trainer_state.loss_at(state, 5) == 2.25
    assert trainer_state.loss_at(state, 1) is None


def test_newest_skips_a_folder_still_being_written(output_dir: Path) -> None:
    newest = trainer_state.newest_checkpoint(output_dir)
    assert newest is not None and newest.step == 8
    # Once its trainer_state.json lands, checkpoint-12 is the newest.
    state = {"global_step": 12, "max_steps": 12, "log_history": []}
    (output_dir / "checkpoint-12" / "trainer_state.json").write_text(json.dumps(state))
    newest = trainer_state.newest_checkpoint(output_dir)
    assert newest is not None and newest.step == 12


def test_torn_state_file_and_missing_folder(output_dir: Path, tmp_path: Path) -> None:
    (output_dir / "checkpoint-12" / "trainer_state.json").write_text('{"global_step": 12, "lo')
    assert [f.step for f in trainer_state.list_checkpoints(output_dir)] == [4, 8]
    assert trainer_state.describe(output_dir / "checkpoint-12") is None
    assert trainer_state.list_checkpoints(tmp_path / "not-there") == []
    assert trainer_state.newest_checkpoint(tmp_path / "not-there") is None
    assert trainer_state.read_state(output_dir / "runs" / "events.txt") is None


def test_folder_names() -> None:
    assert trainer_state.folder_step("checkpoint-1500") == 1500
    assert trainer_state.folder_step("tmp-checkpoint-1500") is None
    assert trainer_state.folder_step("checkpoint-") is None
    assert trainer_state.folder_step("checkpoint-12.bak") is None
