"""Statistics of step times: where warm-up ends, and how well the steady mean is known.

Pure Python on purpose: the login node reuses it (ETA from logs) without numpy or torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# A stretch of steady steps this much slower than the median batch is reported as a slowdown.
SLOWDOWN_RATIO = 1.25
# The series is looked at in means of this many steps (MSER-5's batches).
BATCH = 5


@dataclass(frozen=True)
class Slowdown:
    """Steps first..last (1-based, inclusive) ran ``ratio`` times the median: noise (a load
    spike, another job on the node), kept in the steady mean and its CI, not warm-up."""

    first_step: int
    last_step: int
    ratio: float


# Share of the steady steps clipped at each end of the steady mean, here and in `plan-job eta`
# (planner.eta.steps imports it), so the plan and the ETA mean the same thing by the steady step.
WINSOR = 0.1


@dataclass(frozen=True)
class SteadyEstimate:
    warmup_steps: int  # steps before the steady state begins
    n: int  # steady steps
    mean: float  # winsorized at WINSOR each side: a transient spike does not move it
    median: float
    std: float  # of the winsorized steps
    ci_half_width: float  # 95% confidence half-width of the mean
    p90: float
    slowdowns: tuple[Slowdown, ...] = ()
    raw_mean: float = 0.0  # the plain mean of the steady steps, spike and all

    @property
    def ci_relative(self) -> float:
        return self.ci_half_width / self.mean if self.mean > 0 else math.inf


def t_quantile_975(dof: int) -> float:
    """Two-sided 95% Student-t quantile (Cornish-Fisher expansion, A&S 26.7.5).

    Within 1% of the exact value for dof >= 3; scipy is not a dependency for one number.
    """
    if dof < 1:
        return math.inf
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    if dof == 1:
        return 12.706204736174705  # the expansion diverges at one degree of freedom
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3 + g4 / dof**4


def mser_truncation(values: Sequence[float], batch: int = 5) -> int:
    """Warm-up length by MSER-5 (White 1997; Franklin & White 2008).

    On means of ``batch`` consecutive values, choose the cut d <= n/2 minimising
    var(tail)/(n-d): it trades dropping data against the bias the first values carry, and
    needs no fixed warm-up count or threshold. Batching keeps single noisy steps in the tail
    from pulling the cut late. Short series use single values.
    """
    if len(values) < 4 * batch:
        batch = 1
    means = [
        statistics.fmean(values[i : i + batch]) for i in range(0, len(values) - batch + 1, batch)
    ]
    n = len(means)
    if n < 4:
        return 0
    # Suffix sums give each candidate's tail variance in O(1).
    suffix_sum = [0.0] * (n + 1)
    suffix_sq = [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        suffix_sum[i] = suffix_sum[i + 1] + means[i]
        suffix_sq[i] = suffix_sq[i + 1] + means[i] * means[i]
    best_d, best = 0, math.inf
    for d in range(0, n // 2 + 1):
        m = n - d
        mean = suffix_sum[d] / m
        sse = max(suffix_sq[d] - m * mean * mean, 0.0)
        score = sse / (m * m)
        if score < best:
            best_d, best = d, score
    return best_d * batch


def warmup_cut(values: Sequence[float]) -> int:
    """Warm-up: the steps MSER-5 would cut, kept only as far as they are an initial stretch
    of slow steps that begins at step 1 and ends once the steps have come down.

    MSER minimises the tail's variance, so a slow stretch anywhere in the first half (a load
    spike at steps 40-85) can move its cut past the stretch; charging that as warm-up makes
    every plan pay for one moment of one machine. Warm-up is what every job pays at its
    start: compile, allocator and cache first touches. A slow stretch later is noise, and
    stays in the steady steps (slowdowns() names it; the CI widens with it).
    """
    cut = mser_truncation(values)
    if cut == 0:
        return 0
    size = BATCH if len(values) >= 4 * BATCH else 1
    tail = [
        statistics.fmean(values[i : i + size]) for i in range(cut, len(values) - size + 1, size)
    ]
    if not tail:
        return cut
    mean = statistics.fmean(tail)
    spread = statistics.stdev(tail) if len(tail) > 1 else 0.0
    elevated = mean + 2 * spread
    prefix = 0
    while prefix < cut and statistics.fmean(values[prefix : prefix + size]) > elevated:
        prefix += size
    return min(prefix, cut)


def slowdowns(values: Sequence[float], offset: int = 0) -> tuple[Slowdown, ...]:
    """Stretches of at least two batches whose means exceed the median batch mean by
    SLOWDOWN_RATIO; ``offset`` is the number of steps before ``values`` (the warm-up)."""
    size = BATCH
    means = [statistics.fmean(values[i : i + size]) for i in range(0, len(values) - size + 1, size)]
    if len(means) < 4:
        return ()
    median = statistics.median(means)
    found: list[Slowdown] = []
    start = None
    for index, value in enumerate([*means, 0.0]):  # the sentinel closes a stretch at the end
        slow = median > 0 and value > SLOWDOWN_RATIO * median
        if slow and start is None:
            start = index
        elif not slow and start is not None:
            if index - start >= 2:
                stretch = values[start * size : index * size]
                found.append(
                    Slowdown(
                        offset + start * size + 1,
                        offset + index * size,
                        statistics.fmean(stretch) / median,
                    )
                )
            start = None
    return tuple(found)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its 95% CI half-width; batch means once there are enough values.

    Consecutive step times are correlated (clock boosts, allocator state); means of batches
    of consecutive steps are nearly independent, so their spread gives an honest interval.
    """
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.inf
    if n >= 40:
        size = n // 20
        batches = [statistics.fmean(values[i * size : (i + 1) * size]) for i in range(n // size)]
        sd = statistics.stdev(batches)
        return mean, t_quantile_975(len(batches) - 1) * sd / math.sqrt(len(batches))
    sd = statistics.stdev(values)
    return mean, t_quantile_975(n - 1) * sd / math.sqrt(n)


def winsorize(values: Sequence[float], share: float = WINSOR) -> tuple[list[float], float]:
    """Values clipped to the g-th smallest and largest, g = share x n; and g / n."""
    n = len(values)
    g = int(share * n)
    if g == 0:
        return list(values), 0.0
    ordered = sorted(values)
    low, high = ordered[g], ordered[n - g - 1]
    return [min(max(v, low), high) for v in values], g / n


def steady_estimate(step_times: Sequence[float]) -> SteadyEstimate:
    """Cut the warm-up (warmup_cut) and describe the rest, slowdowns included.

    The mean is winsorized: the slowest and fastest 10% of the steady steps count as the
    90th and 10th percentiles. A load spike during a short calibration (one stretched a
    tiny JiT's mean to 48.9 ms against a 25.9 ms median, and every plan from it 2x) then
    moves it no more than a spike in the run moves `eta`'s; a steady GPU step, whose spread
    is a fraction of a percent, is left where it was. The CI is the batch-means interval of
    the winsorized steps, widened by 1/(1 - 2 x share) (Tukey and McLaughlin's interval
    for a trimmed mean)."""
    if len(step_times) < 2:
        raise ValueError("need at least two step times")
    cut = warmup_cut(step_times)
    steady = list(step_times[cut:])
    clipped, share = winsorize(steady)
    mean, half = mean_ci(clipped)
    half /= 1 - 2 * share
    p90 = statistics.quantiles(steady, n=10, method="inclusive")[-1] if len(steady) > 1 else mean
    return SteadyEstimate(
        warmup_steps=cut,
        n=len(steady),
        mean=mean,
        median=statistics.median(steady),
        std=statistics.stdev(clipped) if len(steady) > 1 else 0.0,
        ci_half_width=half,
        p90=p90,
        slowdowns=slowdowns(steady, cut),
        raw_mean=statistics.fmean(steady),
    )
