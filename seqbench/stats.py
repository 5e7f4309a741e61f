"""How sure a comparison over seeds is: intervals for each configuration, and who wins.

Every statistic comes from SciPy (`scipy.stats`), none is written out by hand here:

* a configuration's mean: the Student t 95% interval over its seeds (`ttest_1samp`'s
  ``confidence_interval``). With 3 seeds it is wide (the t quantile is 4.30: the mean ± 2.48
  std) and it assumes the seeds' values spread roughly normally; it cannot show a difference
  smaller than that spread.
* a solved count k of n: Wilson's score interval (`binomtest(k, n).proportion_ci`).
* two configurations a and b (one swept key apart, the rest equal): the difference of their
  means with Welch's t interval (`ttest_ind(equal_var=False).confidence_interval`), and the
  probability of improvement P(a better than b) (Agarwal et al. 2021, as in ``rliable``: the
  chance that a seed of a beats a seed of b, ties counting half) with a percentile bootstrap
  interval that resamples each configuration's seeds separately (`bootstrap`, stratified).
  Across the pairs of one table the intervals are Bonferroni-corrected: each is taken at
  1 - 0.05/m for m pairs, so that all of them hold together with 95% confidence. A pair whose
  corrected difference interval includes 0 is a tie.
* seeds enough: for a tie with a non-zero difference, the seeds per configuration that would
  separate the two with 80% power at the corrected level, if the observed means and spreads
  were the truth: the smallest n with (t_(1-alpha/2) + t_0.8) sqrt((s_a^2 + s_b^2) / n) <= |d|,
  the t quantiles at Welch's degrees of freedom for n seeds each (always more than the seeds
  the tie was found with).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
#: Power for the "seeds enough?" estimate.
POWER = 0.8
#: Bootstrap resamples for the interval of the probability of improvement.
RESAMPLES = 2000


def _clean(values: Sequence[float]) -> np.ndarray:
    data = np.asarray(values, dtype=float)
    return data[np.isfinite(data)]


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student t interval of the mean over finite values; NaNs with fewer than 2 of them, the
    mean itself when they are all equal."""
    from scipy import stats

    data = _clean(values)
    if len(data) < 2:
        return math.nan, math.nan
    if np.ptp(data) == 0:
        return float(data[0]), float(data[0])
    low, high = stats.ttest_1samp(data, 0.0).confidence_interval(confidence)
    return float(low), float(high)


def proportion_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of k successes in n (NaNs for n = 0)."""
    from scipy import stats

    if n <= 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def improvement_probability(a: Sequence[float], b: Sequence[float], mode: str) -> float:
    """P(a better than b): the fraction of (seed of a, seed of b) pairs where a's value is the
    better one for `mode` ("min" or "max"), a tie counting half."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = a[:, None] - b[None, :]
    wins = (diff < 0) if mode == "min" else (diff > 0)
    return float(wins.mean() + 0.5 * (diff == 0).mean())


@dataclass
class Pair:
    """Configuration a against configuration b (same setting, one key apart).

    diff: mean(a) - mean(b), with its corrected interval (low, high).
    p_better: P(a better than b), with its corrected bootstrap interval (p_low, p_high).
    verdict: "better" (a is), "worse", "tie", or "n/a" (fewer than 2 seeds on a side).
    seeds_needed: for a tie, the seeds per configuration that would separate them (None when
        the observed means are equal or the spread is zero).
    confidence: the level each interval is taken at (1 - 0.05/m).
    """

    a: str
    b: str
    n_a: int
    n_b: int
    diff: float
    low: float
    high: float
    p_better: float
    p_low: float
    p_high: float
    verdict: str
    seeds_needed: int | None
    confidence: float


def compare_pair(
    a: Sequence[float], b: Sequence[float], mode: str, confidence: float, names=("a", "b")
) -> Pair:
    """The comparison of two configurations' seed values at `confidence`."""
    from scipy import stats

    a, b = _clean(a), _clean(b)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    p = improvement_probability(a, b, mode) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return Pair(*names, len(a), len(b), diff, math.nan, math.nan, p, math.nan, math.nan,
                    "n/a", None, confidence)  # fmt: skip
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread at all: the difference is what it is
        low = high = diff
    else:
        with warnings.catch_warnings():  # one side without spread: SciPy warns, rightly
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ttest_ind(a, b, equal_var=False)
            low, high = (float(v) for v in res.confidence_interval(confidence))
    boot = stats.bootstrap(
        (a, b), lambda x, y: improvement_probability(x, y, mode), paired=False,
        vectorized=False, n_resamples=RESAMPLES, confidence_level=confidence,
        method="percentile", rng=np.random.default_rng(0),
    )  # fmt: skip
    # the percentile method: every resample giving the same value gives that value, not NaN
    p_low, p_high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    if low <= 0 <= high:
        verdict = "tie"
    else:
        a_lower = high < 0
        verdict = "better" if a_lower == (mode == "min") else "worse"
    needed = seeds_needed(a, b, confidence) if verdict == "tie" else None
    return Pair(*names, len(a), len(b), diff, low, high, p, p_low, p_high, verdict, needed,
                confidence)  # fmt: skip


def seeds_needed(a: np.ndarray, b: np.ndarray, confidence: float) -> int | None:
    """Seeds per configuration to separate a and b with POWER at `confidence`, if their
    observed means and spreads were the truth; None for equal means or no spread."""
    from scipy import stats

    diff = abs(float(np.mean(a) - np.mean(b)))
    va, vb = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    if diff == 0 or va + vb == 0:
        return None
    for n in range(2, 100_001):
        df = (n - 1) * (va + vb) ** 2 / (va**2 + vb**2)  # Welch's, n seeds each
        t = stats.t.ppf(1 - (1 - confidence) / 2, df) + stats.t.ppf(POWER, df)
        if t * math.sqrt((va + vb) / n) <= diff:
            return n
    return None


def corrected(pairs: int, confidence: float = CONFIDENCE) -> float:
    """Bonferroni: the level at which each of `pairs` intervals is taken so that all hold
    together at `confidence`."""
    return 1 - (1 - confidence) / max(1, pairs)
