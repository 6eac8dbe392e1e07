"""The time model's fixed terms against what the training entry really does: the saves it
makes, the evaluation it pays, its start-up and warm-up. CPU, tiny presets, real runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from jobs import train
from planner.timemodel import job_saves, run_saves
from tests.test_train import events, make_config, run_in_process


def _count_probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The probe saves of the jobs run in this process (the probe leaves no file or event)."""
    probes: list[int] = []
    real = train.Run._probe_save

    def counted(self: train.Run) -> float:
        probes.append(self.saved_step)
        return real(self)

    monkeypatch.setattr(train.Run, "_probe_save", counted)
    return probes


@pytest.mark.parametrize(
    ("interval", "saved_at"),
    [
        # 12 steps, a save every 4: 4, 8 and 12, the last step being a multiple (no extra).
        (4, [4, 8, 12]),
        # every 5: 5, 10 and the last step, 12: ceil(12 / 5) = 3 as well.
        (5, [5, 10, 12]),
    ],
)
def test_one_job_saves_as_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: int, saved_at: list[int]
) -> None:
    probes = _count_probes(monkeypatch)
    config = make_config(tmp_path, "jit", checkpoint_interval_steps=interval)
    # A stop time, as every emitted segment has ($PLANJOB_STOP_AT): the job probes one save.
    assert run_in_process(config, stop_at=time.time() + 3600) == train.EXIT_OK
    made = [e["step"] for e in events(tmp_path, "checkpoint")]
    assert made == saved_at
    assert probes == [0]
    # The plan's count: 3 saves + the probe = 4, for the job and for the one-job run.
    assert job_saves(0, 12, interval, first_job=True) == len(made) + len(probes) == 4
    assert run_saves(12, interval, segments=1) == 4


def test_without_a_stop_time_no_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A direct `python -m jobs.train` with neither --stop-at nor $PLANJOB_STOP_AT: 3 saves,
    # no probe. A benchmark comparing with the plan must give its run a stop time.
    probes = _count_probes(monkeypatch)
    config = make_config(tmp_path, "jit", checkpoint_interval_steps=5)
    assert run_in_process(config) == train.EXIT_OK
    assert len(events(tmp_path, "checkpoint")) == 3 and probes == []


def test_two_jobs_save_as_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probes = _count_probes(monkeypatch)
    # Steps of 0.25 s against a stop time 3.5 s away: the first job stops part-way.
    config = make_config(
        tmp_path, "jit", slow="slower", stop_lead_s=1.0, checkpoint_interval_steps=4
    )
    assert run_in_process(config, time.time() + 3.5) == train.EXIT_OK
    stopped = events(tmp_path, "stop")[-1]["step"]
    assert 0 < stopped < 12
    first: list[Any] = [e["step"] for e in events(tmp_path, "checkpoint")]
    assert run_in_process(config, time.time() + 3600) == train.EXIT_OK
    second = [e["step"] for e in events(tmp_path, "checkpoint")][len(first) :]
    # The second job reads the first one's save time from the progress file: no probe.
    assert probes == [0]
    assert len(first) + 1 == job_saves(0, stopped, 4, first_job=True)
    assert len(second) == job_saves(stopped, 12, 4, first_job=False)
    if stopped % 4:
        # e.g. a stop at 6: 4 and 6, then 8 and 12; the plan's 2 jobs: ceil(12 / 4) + 1 stop
        # save + the probe = 5 = 2 + 2 + the probe.
        assert run_saves(12, 4, segments=2) == len(first) + len(second) + 1
