"""How sure the sweep's findings are, pure: the draws of a study (each drawn as the article
draws its data, from the next random state), and what the figures of every configuration on
every draw say across draws.

A configuration's effect on a draw is its figure minus the unregularized run's on the same
draw (the same rows, the same seed: paired). Across draws the effects are a sample: their mean
has Student's t interval (SciPy's one-sample t test), and the p-values of a size's
configurations are adjusted together (Benjamini-Hochberg), so that with 28 remedies a chance
"finding" at the 5% level is not written as one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from overfit.config import DataConfig
from overfit.config.schema import SEED_MAX
from overfit.core.data import Points, make_points, split_points
from overfit.core.metrics import DECIMALS
from overfit.core.remedies import Remedy
from overfit.core.selection import Candidate, choose, choose_on_test
from overfit.core.uncertainty import adjusted, t_test
from overfit.reports import ConfigStudy, Effect, SelectionStudy, SizeStudy, Study


def draw_state(random_state: int, draw: int) -> int:
    """Draw k's random state: data.random_state + k (draw 0 is the article's)."""
    return (random_state + draw) % (SEED_MAX + 1)


def draw_seed(seeds: Sequence[int], draw: int) -> int:
    """The one seed draw k's models start from: train.seeds[0] + k."""
    return (seeds[0] + draw) % (SEED_MAX + 1)


def study_split(data: DataConfig, n_train: int, draw: int) -> tuple[Points, Points]:
    """Draw k at a training-set size: the data set drawn from draw k's random state with
    n_train rows more than the test rows, split as the article splits it (the first n_train
    rows train, the rest test). Draw 0 at data.n_train is the article's own split."""
    test_rows = data.n_samples - data.n_train
    state = draw_state(data.random_state, draw)
    points = make_points(data.name, n_train + test_rows, data.noise, state, data.factor)
    return split_points(points, n_train)


def effect_across_draws(differences: Sequence[float], better: float = 1.0) -> Effect:
    """The mean of per-draw differences, its 95% t interval, the t test's two-sided p (adjusted
    later), and the share of draws where the difference goes the way `better` says (+1: up)."""
    d = np.asarray(differences, np.float64)
    mean, low, high, p = t_test(d)
    mean = round(mean, DECIMALS)
    return Effect(
        mean=mean,
        low=min(round(low, DECIMALS), mean),
        high=max(round(high, DECIMALS), mean),
        p=round(p, DECIMALS),
        p_adjusted=round(p, DECIMALS),
        helped=round(float(np.mean(better * d > 0)), DECIMALS),
    )


def _with_adjusted(effects: Mapping[str, Effect]) -> dict[str, Effect]:
    p_adjusted = adjusted({name: e.p for name, e in effects.items()})
    return {
        name: e.model_copy(update={"p_adjusted": round(p_adjusted[name], DECIMALS)})
        for name, e in effects.items()
    }


def size_study(n_train: int, configs: Mapping[str, ConfigStudy], baseline: str) -> SizeStudy:
    """What one training-set size's draws say: every configuration's figures by draw with its
    effects against `baseline` (fresh accuracy: up is better; the gap between train and test
    accuracy: down is better), p adjusted over the configurations."""
    none = configs[baseline]
    none_fresh = np.asarray(none.fresh_acc)
    none_gap = np.asarray(none.train_acc) - np.asarray(none.test_acc)
    fresh_effects, gap_effects = {}, {}
    for name, c in configs.items():
        if name == baseline:
            continue
        fresh_effects[name] = effect_across_draws(np.asarray(c.fresh_acc) - none_fresh)
        gap = np.asarray(c.train_acc) - np.asarray(c.test_acc)
        gap_effects[name] = effect_across_draws(gap - none_gap, better=-1.0)
    fresh_effects, gap_effects = _with_adjusted(fresh_effects), _with_adjusted(gap_effects)
    measured = {
        name: c.model_copy(
            update={"fresh_effect": fresh_effects.get(name), "gap_effect": gap_effects.get(name)}
        )
        for name, c in sorted(configs.items())
    }
    return SizeStudy(n_train=n_train, configs=measured)


def config_study(kind: str, setting: float, per_draw: Mapping[str, Sequence[float]]) -> ConfigStudy:
    """A configuration's figures by draw, rounded as the reports keep them."""
    rounded = {k: [round(float(v), DECIMALS) for v in values] for k, values in per_draw.items()}
    return ConfigStudy(kind=kind, strength=setting, **rounded)


def can_select(configs: Mapping[str, ConfigStudy], metric: str) -> bool:
    """Whether the selection rule can be repeated on every draw: on test accuracy always, on
    cross-validation when the study trained every configuration's folds (study.select)."""
    return metric == "test_acc" or all(c.cv_acc is not None for c in configs.values())


def picks_by_draw(
    configs: Mapping[str, ConfigStudy], metric: str, one_se: bool = False
) -> list[str]:
    """The configuration the selection rule picks on each draw, from that draw's figures alone
    (cross-validation's, or with `test_acc` the draw's test accuracy)."""
    names = sorted(configs)
    draws = len(configs[names[0]].fresh_acc)
    strengths = {n: Remedy(configs[n].kind, configs[n].strength).strength for n in names}
    picks = []
    for k in range(draws):
        if metric == "test_acc":
            picks.append(
                choose_on_test(
                    {n: configs[n].test_acc[k] for n in names},
                    {n: configs[n].kind for n in names},
                    strengths,
                    {n: configs[n].test_loss[k] for n in names},
                )
            )
            continue
        candidates = []
        for n in names:
            c = configs[n]
            if c.cv_acc is None or c.cv_loss is None or c.cv_acc_se is None or c.cv_loss_se is None:
                raise ValueError(f"{n}: the selection needs its cross-validation on every draw")
            candidates.append(
                Candidate(
                    n, c.kind, strengths[n], c.cv_acc[k], c.cv_loss[k],
                    c.cv_acc_se[k], c.cv_loss_se[k], c.hidden_l2[k],
                )
            )  # fmt: skip
        picks.append(choose(candidates, metric, one_se))
    return picks


def selection_study(
    configs: Mapping[str, ConfigStudy], baseline: str, metric: str, one_se: bool = False
) -> SelectionStudy:
    """The selection on every draw: what its pick is worth on fresh points against the
    unregularized run and against the best configuration in hindsight (the best fresh accuracy
    on that draw), and how far the score it was picked on overstates its fresh accuracy (the
    winner's curse)."""
    picks = picks_by_draw(configs, metric, one_se)
    fresh = {n: np.asarray(c.fresh_acc) for n, c in configs.items()}
    draws = range(len(picks))
    picked = np.array([fresh[p][k] for k, p in enumerate(picks)])
    hindsight = np.array([max(fresh[n][k] for n in fresh) for k in draws])
    score_of = "test_acc" if metric == "test_acc" else "cv_acc"
    scores = np.array([getattr(configs[p], score_of)[k] for k, p in enumerate(picks)])
    return SelectionStudy(
        picks=picks,
        versus_baseline=effect_across_draws(picked - fresh[baseline]),
        versus_hindsight=effect_across_draws(picked - hindsight),
        overstatement=effect_across_draws(scores - picked, better=-1.0),
    )


def selection_on_draws(
    study: Study, n_train: int, metric: str, one_se: bool = False
) -> SelectionStudy | None:
    """The selection rule repeated on every draw of the study at `n_train` training rows; None
    where it cannot be (no study, that size not studied, or cross-validation not trained)."""
    size = study.size(n_train)
    if size is None or study.baseline is None or not can_select(size.configs, metric):
        return None
    return selection_study(size.configs, study.baseline, metric, one_se)
