"""Warm-up detection and confidence intervals of step times."""

from __future__ import annotations

import random
import statistics

import pytest

from jobs.calibration.stats import (
    mean_ci,
    mser_truncation,
    steady_estimate,
    t_quantile_975,
    winsorize,
)

# Exact two-sided 95% Student-t quantiles (any table).
T_TABLE = {2: 4.303, 3: 3.182, 5: 2.571, 10: 2.228, 30: 2.042, 100: 1.984}


@pytest.mark.parametrize(("dof", "exact"), sorted(T_TABLE.items()))
def test_t_quantile(dof: int, exact: float) -> None:
    assert t_quantile_975(dof) == pytest.approx(exact, rel=0.01)


def test_mser_finds_a_warmup_it_was_not_told_about() -> None:
    rng = random.Random(1)
    for warmup in (0, 3, 12, 40):
        slow = [rng.uniform(2.0, 6.0) for _ in range(warmup)]
        steady = [rng.gauss(1.0, 0.02) for _ in range(200)]
        cut = mser_truncation(slow + steady)
        # MSER-5 cuts at a multiple of 5: at most one batch of good steps is dropped.
        assert warmup <= cut <= warmup + 5, (warmup, cut)


def test_mser_does_not_cut_more_than_half() -> None:
    values = [float(i) for i in range(100, 0, -1)]  # a trend, never steady
    assert mser_truncation(values) <= 50


def test_ci_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = random.Random(7)
    hits = 0
    trials = 400
    for _ in range(trials):
        sample = [rng.gauss(10.0, 1.0) for _ in range(25)]
        mean, half = mean_ci(sample)
        hits += abs(mean - 10.0) <= half
    assert 0.90 <= hits / trials <= 0.99


def test_batch_means_widen_the_interval_for_correlated_steps() -> None:
    rng = random.Random(3)
    # A slow drift (e.g. thermal) makes consecutive steps correlated.
    drift = [1.0 + 0.05 * ((i // 50) % 2) + rng.gauss(0, 0.005) for i in range(400)]
    _, half_batched = mean_ci(drift)
    naive = 1.966 * statistics.stdev(drift) / len(drift) ** 0.5
    assert half_batched > naive


def test_steady_estimate_reports_the_steady_part() -> None:
    rng = random.Random(5)
    times = [0.9, 0.5, 0.3] + [rng.gauss(0.1, 0.002) for _ in range(60)]
    est = steady_estimate(times)
    assert 3 <= est.warmup_steps <= 10  # the three slow ones, plus at most a noisy batch
    assert est.n == len(times) - est.warmup_steps
    assert est.mean == pytest.approx(0.1, rel=0.01)
    assert est.p90 > est.median > 0.09
    assert 0 < est.ci_relative < 0.05


def _noisy_steady(count: int, mean: float = 0.1, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [mean * (1 + rng.gauss(0, 0.03)) for _ in range(count)]


def test_a_load_spike_is_noise_not_warm_up() -> None:
    # Steps 1-5 warm up (3.0 s down to 1.1 s), then 0.1 s steps, of which steps 41-85 ran
    # twice as long (a busy node). MSER-5 alone cuts at 85: the spike would be charged to
    # every plan as 85 steps of warm-up.
    warm = [3.0, 2.0, 1.5, 1.2, 1.1]
    steady = _noisy_steady(195)
    spiked = [2 * x if 35 <= i < 80 else x for i, x in enumerate(steady)]
    assert mser_truncation(warm + spiked) == 85
    est = steady_estimate(warm + spiked)
    assert est.warmup_steps == 5
    (slow,) = est.slowdowns
    assert (slow.first_step, slow.last_step) == (41, 85)
    assert slow.ratio == pytest.approx(2.0, rel=0.03)
    # Kept in the steady steps, the spike widens the CI instead of hiding in the warm-up.
    assert est.ci_relative > 10 * steady_estimate(warm + steady).ci_relative


def test_a_spike_without_warm_up_cuts_nothing() -> None:
    spiked = [2 * x if 35 <= i < 80 else x for i, x in enumerate(_noisy_steady(200))]
    est = steady_estimate(spiked)
    assert est.warmup_steps == 0 and len(est.slowdowns) == 1


def test_a_decaying_warm_up_is_still_cut_whole() -> None:
    warm = [0.1 * (1 + 4 * 0.7**k) for k in range(20)]  # 0.5 s decaying towards 0.1 s
    est = steady_estimate(warm + _noisy_steady(200))
    assert 5 <= est.warmup_steps <= 20 and est.slowdowns == ()


def test_a_transient_spike_does_not_stretch_the_steady_mean() -> None:
    # Issue 19: under load, one spike made a tiny JiT's calibrated mean 48.9 ms against a
    # 25.9 ms median, and every plan from it about 2x long. Here 15 of 300 steady steps (5%)
    # ran 18x longer: the plain mean nearly doubles, the steady (winsorized) one does not.
    steady = _noisy_steady(300, mean=0.0259, seed=11)
    spiked = [18 * x if 150 <= i < 165 else x for i, x in enumerate(steady)]
    est = steady_estimate(spiked)
    assert est.raw_mean > 1.8 * 0.0259  # what the mean used to be
    assert est.mean == pytest.approx(statistics.fmean(steady), rel=0.02)
    assert est.slowdowns  # and the spike is reported, not hidden
    # The winsorized CI still knows the mean is less certain than on a quiet run.
    assert est.ci_relative >= steady_estimate(steady).ci_relative


def test_a_steady_gpu_step_is_left_where_it_was() -> None:
    # A GPU step spreads a fraction of a percent: clipping 10% each side moves the mean by a
    # small fraction of that (the H200 runs had the step term right to 0.5%).
    rng = random.Random(2)
    times = [0.0757 * (1 + rng.gauss(0, 0.003)) for _ in range(400)]
    est = steady_estimate(times)
    assert est.mean == pytest.approx(statistics.fmean(times), rel=2e-4)
    assert est.raw_mean == pytest.approx(statistics.fmean(times), rel=1e-12)


def test_winsorizing_clips_a_tenth_at_each_end() -> None:
    values = [float(i) for i in range(1, 21)]  # 1..20: g = 2
    clipped, share = winsorize(values)
    assert share == 0.1
    assert clipped[:3] == [3.0, 3.0, 3.0] and clipped[-3:] == [18.0, 18.0, 18.0]
    assert winsorize([1.0, 2.0, 9.0])[0] == [1.0, 2.0, 9.0]  # too few to clip any
