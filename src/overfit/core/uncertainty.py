"""How sure a figure is: 95% intervals for accuracies, and paired tests of two configurations
on the same points, from SciPy's published tests (no test written by hand).

- An accuracy on n points is a binomial proportion: Wilson's score interval (good at the
  accuracies near 1 this experiment reaches, where the normal approximation is not).
  Cross-validation's accuracy is one too: every training row is held out once. (Student's t
  over 5 folds of 6 rows is no interval when the folds agree, and very wide when they do not.)
- A drop of an accuracy between two revisions, each with its interval, is told from noise with
  Newcombe's interval for the difference (the gate and promotion decide with it).
- A figure measured on each of several draws of the data is a sample: its mean has Student's
  t interval, and a t test against 0 tells an effect across draws from noise.
- Two configurations measured on the same points are compared on the points where exactly one
  is right (exact McNemar: a binomial test of those at one half), and the p-values of a family
  of comparisons are adjusted with Benjamini-Hochberg.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
# Below this adjusted p-value a difference is told apart from noise.
ALPHA = 0.05


def proportion_interval(accuracy: float, n: int) -> tuple[float, float]:
    """Wilson's 95% interval for an accuracy measured on `n` points (a mean over seeds is
    taken as its nearest whole number of points)."""
    from scipy.stats import binomtest

    correct = min(n, max(0, round(accuracy * n)))
    ci = binomtest(correct, n).proportion_ci(confidence_level=LEVEL, method="wilson")
    return float(ci.low), float(ci.high)


def drop_noise(
    before: float,
    before_interval: tuple[float, float],
    after: float,
    after_interval: tuple[float, float],
) -> float:
    """How far an accuracy may drop, from `before` to `after`, and still be told apart from
    nothing: the lower 95% limit of the drop (before - after) is above zero only beyond this.
    Newcombe's interval for a difference of two independent proportions, from their Wilson
    intervals (Newcombe 1998, Statistics in Medicine 17:873-890, method 10)."""
    return math.hypot(before - before_interval[0], after_interval[1] - after)


@dataclass(frozen=True)
class Paired:
    """One configuration against another on the same points: the points only it gets right
    (`gained`), those only the other gets right (`lost`), and exact McNemar's two-sided p."""

    gained: int
    lost: int
    p: float


def paired_test(ours: np.ndarray, theirs: np.ndarray) -> Paired:
    """Exact McNemar test of two classifiers' per-point correctness (boolean arrays over the
    same points)."""
    from scipy.stats import binomtest

    ours, theirs = np.asarray(ours, bool), np.asarray(theirs, bool)
    if ours.shape != theirs.shape:
        raise ValueError("paired correctness needs the same points on both sides")
    gained, lost = int((ours & ~theirs).sum()), int((~ours & theirs).sum())
    p = 1.0 if gained + lost == 0 else float(binomtest(gained, gained + lost, 0.5).pvalue)
    return Paired(gained, lost, p)


def adjusted(p_values: Mapping[str, float]) -> dict[str, float]:
    """Benjamini-Hochberg adjusted p-values of a family of comparisons, by name."""
    from scipy.stats import false_discovery_control

    if not p_values:
        return {}
    names = sorted(p_values)
    q = false_discovery_control([p_values[n] for n in names], method="bh")
    return {n: float(v) for n, v in zip(names, q, strict=True)}


def t_test(values: Sequence[float]) -> tuple[float, float, float, float]:
    """The mean of a sample across draws, its 95% t interval and the two-sided p of a t test
    against 0 (SciPy's). No spread (every draw the same): the mean alone, p 1 at 0, else 0."""
    from scipy.stats import ttest_1samp

    a = np.asarray(values, np.float64)
    mean = float(a.mean())
    if np.ptp(a) == 0:
        return mean, mean, mean, 1.0 if mean == 0 else 0.0
    test = ttest_1samp(a, 0.0)
    interval = test.confidence_interval(LEVEL)
    return mean, float(interval.low), float(interval.high), float(test.pvalue)


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """A mean across draws with its 95% t interval."""
    return t_test(values)[:3]
