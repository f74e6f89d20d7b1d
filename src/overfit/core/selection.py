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


def choose(candidates: Sequence[Candidate], metric: str) -> str:
    """The run the rule picks: the first of `rank`."""
    if not candidates:
        raise ValueError("no configuration to choose from")
    return rank(candidates, metric)[0]


def strength_of(config: ConfigSummary) -> float:
    """A configuration's setting as an amount of regularization (larger: stronger), so that a
    patience or a max norm ranks the right way round."""
    return Remedy(config.kind, config.strength).strength


def candidates(configs: Mapping[str, ConfigSummary]) -> list[Candidate]:
    """What the rule may see of each configuration: no test or fresh figure."""
    return [
        Candidate(name, c.kind, strength_of(c), c.mean("cv_acc"), c.mean("cv_loss"))
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


def describe(metric: str, folds_count: int) -> str:
    """How a rule chose, as every report says it."""
    if metric == "test_acc":
        return f"highest test accuracy, {OPTIMISTIC}"
    best = "highest mean held-out accuracy" if metric == "cv_acc" else "lowest held-out loss"
    return f"{best} in {folds_count}-fold cross-validation on the training rows"
