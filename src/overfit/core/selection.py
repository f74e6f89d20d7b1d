"""Choosing a configuration: cross-validation folds inside the training rows, and the rule.

The rule sees only what a `Candidate` holds: what a configuration is and its cross-validation
figures. No test or fresh-sample figure can reach it, so the test set is read once, after the
choice, to report it. `choose_on_test` is the article's way, kept to show what it costs: it
chooses on the test set, and every report labels that choice optimistic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from overfit.config import ConfigError, SelectConfig
from overfit.core.remedies import Remedy
from overfit.reports import ConfigSummary

OPTIMISTIC = "chosen on the test set (optimistic)"
PENALTY_TERMS = {"none": 0, "l1": 1, "l2": 1, "l1_l2": 2}
# Two mean accuracies closer than this are a tie (the same count of rows, summed differently).
TIE = 1e-9


def folds(y: np.ndarray, select: SelectConfig) -> list[np.ndarray]:
    """Stratified, shuffled K-fold split of the training rows: one boolean held-out mask per
    fold; together they partition the rows."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.ravel(y)
    check_folds(labels, select)
    splitter = StratifiedKFold(select.folds, shuffle=True, random_state=select.random_state)
    masks = []
    for _, held_out in splitter.split(np.zeros((len(labels), 1)), labels):
        mask = np.zeros(len(labels), bool)
        mask[held_out] = True
        masks.append(mask)
    return masks


def check_folds(y: np.ndarray, select: SelectConfig) -> None:
    """Every fold must hold out at least one row of each class."""
    if select.folds == 0:
        return
    classes, counts = np.unique(np.ravel(y), return_counts=True)
    if len(classes) < 2 or counts.min() < select.folds:
        raise ConfigError(
            f"select.folds: must be at most {int(counts.min()) if len(classes) > 1 else 0} "
            "(the training rows' smallest class), so that every fold holds out each class, "
            f"got {select.folds}"
        )


def fold_seed(seeds: Sequence[int], fold: int) -> int:
    """Fold i trains from the initial weights of seed i mod len(seeds): the folds' scores
    then average over initialisations as well as over rows."""
    return seeds[fold % len(seeds)]


def cv_scores(per_fold: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Per-fold held-out accuracy and loss, and their mean and spread over folds."""
    table = {
        "cv_acc": np.array([f["acc"] for f in per_fold], np.float64),
        "cv_loss": np.array([f["loss"] for f in per_fold], np.float64),
    }
    return {
        "per_fold": [dict(f) for f in per_fold],
        "mean": {name: float(v.mean()) for name, v in table.items()},
        "std": {name: float(v.std()) for name, v in table.items()},
    }


@dataclass(frozen=True)
class Candidate:
    """What the rule may see of a configuration: what it is and its cross-validation figures."""

    run: str
    kind: str
    strength: float
    cv_acc: float
    cv_loss: float
    # The standard errors of the two means over the folds, and the size of the hidden
    # weights (hidden_l2, measured on the model trained on the training rows): what the
    # one-standard-error rule reads.
    cv_acc_se: float = 0.0
    cv_loss_se: float = 0.0
    hidden_l2: float = 0.0


def _tie_break(run: str, kind: str, strength: float, loss: float) -> tuple[Any, ...]:
    """Among equal accuracies: the lower held-out loss (the same held-out predictions, read
    more finely: on a few held-out rows many configurations miss the same row), then the
    stronger penalty, then the simpler one (fewer penalty terms), then the name (so the
    choice never depends on order). Strength comes after the loss because strengths of
    different penalties are not comparable: l2 at 0.1 is not "stronger" than l1 at 0.01."""
    return (loss if math.isfinite(loss) else math.inf, -strength, PENALTY_TERMS.get(kind, 3), run)


def rank(candidates: Sequence[Candidate], metric: str) -> list[str]:
    """Runs from best to worst by the rule: the highest mean cv_acc (or lowest mean cv_loss),
    ties broken by `_tie_break`. Sees no test or fresh figure: a Candidate has none."""
    if metric not in ("cv_acc", "cv_loss"):
        raise ValueError(f"the rule ranks on cv_acc or cv_loss, not {metric!r}")
    sign = -1.0 if metric == "cv_acc" else 1.0
    # Scores within TIE of each other are one score (counts of rows, summed differently).
    ordered = sorted(candidates, key=lambda c: sign * getattr(c, metric))
    ranked: list[list[Candidate]] = []
    for c in ordered:
        if ranked and sign * getattr(c, metric) <= sign * getattr(ranked[-1][0], metric) + TIE:
            ranked[-1].append(c)
        else:
            ranked.append([c])
    tie_key = lambda c: _tie_break(c.run, c.kind, c.strength, c.cv_loss)  # noqa: E731
    return [c.run for tied in ranked for c in sorted(tied, key=tie_key)]


def choose(candidates: Sequence[Candidate], metric: str, one_se: bool = False) -> str:
    """The run the rule picks: the first of `rank`, or (`one_se`) the simplest within one
    standard error of it (`within_one_se`)."""
    if not candidates:
        raise ValueError("no configuration to choose from")
    ranked = rank(candidates, metric)
    return within_one_se(candidates, metric, ranked)[0] if one_se else ranked[0]


def within_one_se(candidates: Sequence[Candidate], metric: str, ranked: Sequence[str]) -> list[str]:
    """The one-standard-error rule (Breiman et al. 1984; Hastie, Tibshirani and Friedman,
    The Elements of Statistical Learning, 7.10): the configurations whose mean score is within
    one standard error (over the folds) of the best one's, simplest first. Simplest means the
    smallest hidden weights (hidden_l2), a size every remedy's models share, where penalty
    strengths of different remedies are not comparable; ties keep `ranked`'s order."""
    by_run = {c.run: c for c in candidates}
    best = by_run[ranked[0]]
    sign = -1.0 if metric == "cv_acc" else 1.0
    bound = sign * getattr(best, metric) + getattr(best, f"{metric}_se") + TIE
    pool = [run for run in ranked if sign * getattr(by_run[run], metric) <= bound]
    return sorted(pool, key=lambda run: (by_run[run].hidden_l2, ranked.index(run)))


def strength_of(config: ConfigSummary) -> float:
    """A configuration's setting as an amount of regularization (larger: stronger), so that a
    patience or a max norm ranks the right way round."""
    return Remedy(config.kind, config.strength).strength


def candidates(configs: Mapping[str, ConfigSummary], folds: int = 0) -> list[Candidate]:
    """What the rule may see of each configuration: no test or fresh figure. With the number
    of `folds`, the standard errors of its cross-validation means too."""

    def se(c: ConfigSummary, measure: str) -> float:
        # The spread is the folds' standard deviation (n in the denominator): n - 1 for the
        # sample's, over the square root of n for the mean's.
        return c.measures[measure].std / math.sqrt(folds - 1) if folds > 1 else 0.0

    return [
        Candidate(
            name,
            c.kind,
            strength_of(c),
            c.mean("cv_acc"),
            c.mean("cv_loss"),
            se(c, "cv_acc"),
            se(c, "cv_loss"),
            c.mean("hidden_l2") if "hidden_l2" in c.measures else 0.0,
        )
        for name, c in configs.items()
    ]


def choose_on_test(
    test_acc: Mapping[str, float],
    kinds: Mapping[str, str],
    strengths: Mapping[str, float],
    losses: Mapping[str, float],
) -> str:
    """The article's rule: the highest mean test accuracy, ties broken as `choose` breaks them
    (with the test loss when there is no cross-validation loss). Optimistic by construction."""
    best = max(test_acc.values())
    tied = [run for run, acc in test_acc.items() if acc >= best - TIE]
    return min(tied, key=lambda r: _tie_break(r, kinds[r], strengths[r], losses[r]))


def describe(metric: str, folds_count: int, one_se: bool = False) -> str:
    """How a rule chose, as every report says it."""
    if metric == "test_acc":
        return f"highest test accuracy, {OPTIMISTIC}"
    best = "highest mean held-out accuracy" if metric == "cv_acc" else "lowest held-out loss"
    text = f"{best} in {folds_count}-fold cross-validation on the training rows"
    if one_se:
        return f"smallest hidden weights within one standard error of the {text}"
    return text
