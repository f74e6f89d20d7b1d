"""What evaluate measures, as pure functions: accuracy and loss from a model's weights, weight
statistics, the spread over seeds, the selection and the headline figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from overfit.core.data import Points
from overfit.core.selection import candidates, choose, choose_on_test, strength_of
from overfit.core.uncertainty import adjusted, paired_test, proportion_interval
from overfit.reports import (
    Baseline,
    Comparison,
    ConfigSummary,
    Evaluation,
    Headline,
    Paired,
    Selected,
    Spread,
)

# A hidden weight this small no longer moves the output: Adam keeps L1-penalized weights
# jittering within about one learning rate (1e-3) of zero instead of landing exactly on it.
NEAR_ZERO = 1e-2
GRID_SIZE = 150
DECIMALS = 6
# The measures a training run logs itself, as the compiled loop computed them (losses from the
# logits): evaluate measures them again from the saved models (accuracies the same; losses from
# clipped probabilities, as Keras' evaluate does), but one MLflow key has one writer, so the
# register stage logs only evaluate's other measures (fresh points, weight statistics).
LOGGED_BY_TRAINING = (
    "train_acc",
    "test_acc",
    "gap",
    "train_loss",
    "test_loss",
    "cv_acc",
    "cv_loss",
)


class EvaluationError(RuntimeError):
    """What was saved is not what was trained, or nothing can be compared."""


def probabilities(weights: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """The MLP's output, Dense(relu) then Dense(sigmoid), in float32 from its Keras weights.

    Numpy on the loaded weights rather than calling the Keras model: eager Keras calls cost
    ~10 ms each, and the stage makes four per model (train, test, fresh, the plot's grid).
    """
    from scipy.special import expit

    w1, b1, w2, b2 = (np.asarray(w, dtype=np.float32) for w in weights)
    x = np.asarray(x, dtype=np.float32)
    logits = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), 1024):  # hidden activations in cache-sized blocks: 3x faster
        hidden = x[start : start + 1024] @ w1
        hidden += b1
        np.maximum(hidden, 0, out=hidden)
        logits[start : start + 1024] = (hidden @ w2).ravel()
    return expit(logits + b2[0])


def measure(output: np.ndarray, penalty: float, points: Points) -> dict[str, float]:
    """Accuracy and loss (binary cross-entropy plus the penalty) in float32, as Keras does."""
    y = points.y.astype(np.float32)
    accuracy = float(np.mean((output > 0.5) == (y == 1)))
    # Keras' binary_crossentropy on probabilities: clipped to [1e-7, 1 - 1e-7] first.
    eps = np.float32(1e-7)
    p = np.clip(output.astype(np.float32), eps, np.float32(1) - eps)
    bce = -(y * np.log(p) + (np.float32(1) - y) * np.log(np.float32(1) - p))
    return {"acc": accuracy, "loss": float(np.mean(bce, dtype=np.float32)) + penalty}


def weight_stats(hidden_kernel: np.ndarray) -> dict[str, float]:
    """L1 and L2 norms of the hidden weights and the share of them that are near zero."""
    w = np.asarray(hidden_kernel, dtype=np.float64).ravel()
    return {
        "hidden_l1": float(np.abs(w).sum()),
        "hidden_l2": float(np.sqrt((w**2).sum())),
        "near_zero_share": float(np.mean(np.abs(w) < NEAR_ZERO)),
    }


def spread(values: Sequence[float], interval: tuple[float, float] | None = None) -> Spread:
    """Mean and standard deviation of `values`, with the interval around the mean if given."""
    a = np.asarray(values, dtype=np.float64)
    mean, std = round(float(a.mean()), DECIMALS), round(float(a.std()), DECIMALS)
    if interval is None:
        return Spread(mean=mean, std=std)
    # Rounded outward, so the interval still holds the rounded mean.
    low, high = (round(float(v), DECIMALS) for v in interval)
    return Spread(mean=mean, std=std, low=min(low, mean), high=max(high, mean))


def summarize_run(
    per_seed: Sequence[Mapping[str, float]],
    kind: str,
    strength: float,
    per_fold: Sequence[Mapping[str, float]] = (),
    name: str = "a configuration",
    points: Mapping[str, int] | None = None,
) -> ConfigSummary:
    """Mean and spread over seeds of every per-seed measure; over folds, of the held-out
    accuracy and loss (cv_acc, cv_loss) when there was cross-validation. An accuracy measured
    on `points[measure]` points gets its 95% interval as a proportion of them (cv_acc: of the
    held-out rows, every training row once). ArtifactError, naming the configuration `name`,
    when a measure is out of its range (a NaN loss, ...)."""
    points = points or {}

    def summarized(measure: str, values: Sequence[float]) -> Spread:
        n = points.get(measure)
        # From the mean as reported (rounded), so that a reader gets the same interval from it.
        reported = round(float(np.mean(values)), DECIMALS)
        return spread(values, proportion_interval(reported, n) if n else None)

    measures = {m: summarized(m, [s[m] for s in per_seed]) for m in per_seed[0]}
    if per_fold:
        # Every training row is held out once: the folds' mean is a proportion of those rows.
        measures["cv_acc"] = summarized("cv_acc", [f["acc"] for f in per_fold])
        measures["cv_loss"] = spread([f["loss"] for f in per_fold])
    return ConfigSummary.parse({"kind": kind, "strength": strength, **measures}, name)


def test_choice(configs: Mapping[str, ConfigSummary]) -> str:
    """What the highest mean test accuracy picks (the article's rule, optimistic)."""
    loss = "cv_loss" if all("cv_loss" in c.measures for c in configs.values()) else "test_loss"
    return choose_on_test(
        {n: c.mean("test_acc") for n, c in configs.items()},
        {n: c.kind for n, c in configs.items()},
        {n: strength_of(c) for n, c in configs.items()},
        {n: c.mean(loss) for n, c in configs.items()},
    )


# The points a configuration is compared with the baseline on, paired.
PAIRED_SPLITS = ("test", "fresh")


def correctness(mean_probability: np.ndarray, points: Points) -> np.ndarray:
    """Which points a configuration gets right, by its seeds' mean probability of class 1."""
    return (np.ravel(mean_probability) > 0.5) == (np.ravel(points.y) > 0.5)


def versus_baseline(
    correct: Mapping[str, Mapping[str, np.ndarray]], baseline: str
) -> dict[str, Comparison]:
    """Every other configuration against `baseline`, paired on each split's points (exact
    McNemar), the p-values adjusted over the configurations, split by split."""
    others = sorted(n for n in correct if n != baseline)
    tests = {
        split: {n: paired_test(correct[n][split], correct[baseline][split]) for n in others}
        for split in PAIRED_SPLITS
    }
    q = {split: adjusted({n: t.p for n, t in tests[split].items()}) for split in PAIRED_SPLITS}

    def paired(split: str, name: str) -> Paired:
        t = tests[split][name]
        p, p_adjusted = (round(v, DECIMALS) for v in (t.p, q[split][name]))
        return Paired(gained=t.gained, lost=t.lost, p=p, p_adjusted=p_adjusted)

    return {n: Comparison(test=paired("test", n), fresh=paired("fresh", n)) for n in others}


def evaluation(
    configs: dict[str, ConfigSummary],
    rule: str,
    correct: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    one_se: bool = False,
    folds: int = 0,
) -> Evaluation:
    """Per-configuration summaries, the configuration `rule` selects (the unregularized one
    is a candidate too; `one_se`: the simplest within one standard error of the best over
    `folds` folds), the test set's choice beside it, and, when there is an unregularized run,
    the headline and (given each configuration's per-point `correct`ness on the test and
    fresh points) every configuration compared with it."""
    if not configs:
        raise EvaluationError("no configuration to evaluate")
    on_test = test_choice(configs)
    missing = sorted(n for n, c in configs.items() if "cv_acc" not in c.measures)
    if missing and rule != "test_acc":
        raise EvaluationError(
            f"{missing[0]}: no cross-validation scores to select on ({rule}); rerun the "
            "train stage with select.folds >= 2"
        )
    # What cross-validation picks, beside the test set's pick even when the rule is test_acc.
    on_cv = None
    if not missing:
        one_se = one_se and rule != "test_acc"
        on_cv = choose(candidates(configs, folds), rule.replace("test_acc", "cv_acc"), one_se)
    chosen = on_test if rule == "test_acc" else on_cv
    baseline = next((n for n in sorted(configs) if configs[n].kind == "none"), None)
    headline = None
    if baseline is not None:
        base, pick = configs[baseline], configs[chosen]
        headline = Headline(
            baseline=Baseline(train=base.mean("train_acc"), test=base.mean("test_acc")),
            selected=Selected(
                run=chosen,
                cv=pick.mean("cv_acc") if "cv_acc" in pick.measures else None,
                test=pick.mean("test_acc"),
                fresh=pick.mean("fresh_acc"),
            ),
        )
    compared = versus_baseline(correct, baseline) if correct and baseline is not None else {}
    return Evaluation(
        configs=configs,
        versus_baseline=compared,
        one_se=one_se,
        baseline_run=baseline,
        headline=headline,
        rule=rule,
        selected=chosen,
        cv_choice=on_cv,
        test_choice=on_test,
    )


def decision_grid(points: Sequence[Points], size: int = GRID_SIZE) -> np.ndarray:
    """A size x size grid of inputs covering every point with a margin, as (size*size, 2)."""
    xy = np.concatenate([p.x for p in points])
    lo, hi = xy.min(axis=0) - 0.5, xy.max(axis=0) + 0.5
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], size), np.linspace(lo[1], hi[1], size))
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def accuracy_curves(per_seed: np.ndarray) -> np.ndarray:
    """[seeds, epochs, 2] train/test accuracy -> [epochs, 4]: means, then spreads over the
    seeds still training at each epoch (NaN marks a seed early stopping had stopped)."""
    return np.concatenate([np.nanmean(per_seed, axis=0), np.nanstd(per_seed, axis=0)], axis=1)
