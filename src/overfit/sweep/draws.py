"""The sweep's configurations on other draws of the data: every configuration trains once per
draw and training-set size (one seed per draw), each model on its own rows, all stacked in the
same compiled calls (`core.trainer.train_draws`), and is measured on the one fresh sample.

Each configuration follows the sweep's own procedure on every draw: early stopping on cv
trains the draw's folds first, then the final model for the median of their epochs; with the
study's selection every configuration trains its folds on every draw. Study models are not
saved: only their figures are kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from overfit.config import Config, DataConfig
from overfit.core.data import Points
from overfit.core.metrics import measure, probabilities
from overfit.core.remedies import remedy_of, run_name
from overfit.core.selection import folds as fold_masks
from overfit.core.study import config_study, draw_seed, study_split
from overfit.sweep.stacked import cv_epochs, stopping_rule


@dataclass(frozen=True)
class Job:
    """One configuration on one draw of one size: its data, its start, its folds' draws."""

    config: Config
    size: int
    draw: int
    start: Any  # ModelStart
    data: Any  # Draw
    folds: list[Any]  # Draw per fold

    @property
    def waits_for_folds(self) -> bool:
        """Early stopping on cv: the final model trains after its folds, for their epochs."""
        return self.config.train.early_stopping.watch == "cv"


def study_rows(data: DataConfig, sizes: Sequence[int], folds: int) -> tuple[int, int]:
    """The (training, validation) rows every study model is padded to, from the settings alone,
    so that a model's result never depends on which others it trains with: the largest size,
    and the test rows (or a fold's held-out rows, if more)."""
    largest = max(sizes)
    held_out = -(-largest // folds) if folds else 0
    return largest, max(data.n_samples - data.n_train, held_out)


def seeded_start(template: Any, weights: list[np.ndarray], seed: int) -> Any:
    """A configuration's start (its penalties, dropout, constraint, noise, learning rate) with
    another seed's initial weights and dropout and noise seeds: `build_configured(config,
    seed)`'s start, without building a Keras model per seed (its Glorot draws depend on the
    seed and widths alone)."""
    rate, (stddev, place, _) = template.dropout[0], template.noise
    return dataclasses.replace(
        template,
        weights=weights,
        dropout=(rate, seed if rate else 0),
        noise=(stddev, place, seed if stddev else 0),
    )


def plan_jobs(
    configs: Sequence[Config], base: Config, draws: Sequence[int] | None = None
) -> list[Job]:
    """Every configuration on every draw of every size of `base.study` (or on `draws` of
    them), with its folds where its procedure (or the study's selection) needs them."""
    from overfit.core.keras_state import read_start
    from overfit.core.model import build_configured, build_model
    from overfit.core.trainer import Draw

    study, data = base.study, base.data
    templates = [read_start(build_configured(c, c.train.seeds[0])) for c in configs]
    draws = range(study.draws) if draws is None else draws
    seeds = {k: draw_seed(base.train.seeds, k) for k in draws}
    initial = {}
    for units in sorted({c.model.hidden_units for c in configs}):
        for seed in seeds.values():
            initial[units, seed] = read_start(build_model(units, seed=seed)).weights
    jobs = []
    for size in study.n_train:
        for k, seed in seeds.items():
            train, test = study_split(data, size, k)
            on_draw = Draw(train.x, train.y, test.x, test.y)
            masks = fold_masks(train.y, base.select) if base.select.folds else []
            fold_draws = [Draw(train.x[~h], train.y[~h], train.x[h], train.y[h]) for h in masks]
            for config, template in zip(configs, templates, strict=True):
                start = seeded_start(template, initial[config.model.hidden_units, seed], seed)
                needs_folds = study.select or config.train.early_stopping.watch == "cv"
                folds = fold_draws if needs_folds else []
                jobs.append(Job(config, size, k, start, on_draw, folds))
    return jobs


def train_jobs(
    jobs: Sequence[Job],
    rows: tuple[int, int],
    checkpoint: Callable[[], None] | None = None,
    curves: bool = False,
) -> tuple[list[Any], list[list[Any]]]:
    """Every job's final model and folds, stacked: the models and all folds first, then the
    models that wait for their folds' epochs. Returns each job's history (with its weights)
    and its folds' histories; validation curves only with `curves` (the same weights, slower:
    the benchmark's comparison)."""
    from overfit.core.trainer import OnDraw, train_draws

    first: list[Any] = []
    where: list[tuple[int, int | None]] = []  # (job, fold or None) of each model of `first`
    for j, job in enumerate(jobs):
        rule = stopping_rule(job.config)
        epochs = job.config.train.epochs
        if not job.waits_for_folds:
            first.append(OnDraw(job.start, job.data, epochs, rule, curves=curves))
            where.append((j, None))
        for i, fold in enumerate(job.folds):
            first.append(OnDraw(job.start, fold, epochs, rule, stream=i + 1))
            where.append((j, i))
    histories = train_draws(first, rows, checkpoint)
    models: list[Any] = [None] * len(jobs)
    folds: list[list[Any]] = [[None] * len(job.folds) for job in jobs]
    for (j, i), history in zip(where, histories, strict=True):
        if i is None:
            models[j] = history
        else:
            folds[j][i] = history
    waiting = [j for j, job in enumerate(jobs) if job.waits_for_folds]
    second = []
    for j in waiting:
        restore = jobs[j].config.train.early_stopping.restore_best_weights
        epochs = cv_epochs(folds[j], restore)
        second.append(OnDraw(jobs[j].start, jobs[j].data, epochs, curves=curves))
    for j, history in zip(waiting, train_draws(second, rows, checkpoint), strict=True):
        models[j] = history
    return models, folds


def _fold_means(histories: Sequence[Any]) -> dict[str, float]:
    """The folds' mean held-out accuracy and loss, and the standard errors of those means."""
    acc = np.array([h.final["val_accuracy"] for h in histories], np.float64)
    loss = np.array([h.final["val_crossentropy"] for h in histories], np.float64)
    n = len(histories)
    se = (lambda a: float(a.std() / np.sqrt(n - 1))) if n > 1 else (lambda a: 0.0)
    return {
        "cv_acc": float(acc.mean()),
        "cv_loss": float(loss.mean()),
        "cv_acc_se": se(acc),
        "cv_loss_se": se(loss),
    }


def measure_jobs(
    jobs: Sequence[Job],
    models: Sequence[Any],
    folds: Sequence[Sequence[Any]],
    fresh: Points,
    with_cv: bool,
) -> dict[int, dict[str, Any]]:
    """Every configuration's figures by draw, per size (a `ConfigStudy` without its effects):
    train and test accuracy as the loop measured them, fresh accuracy from the trained
    weights, cross-validation's (`with_cv`: the study selects)."""
    rows: dict[tuple[int, str], dict[str, list[float]]] = {}
    remedies: dict[str, tuple[str, float]] = {}
    for job, history, job_folds in zip(jobs, models, folds, strict=True):
        name = run_name(job.config)
        remedy = remedy_of(job.config)
        remedies[name] = (remedy.kind, remedy.setting)
        figures = rows.setdefault((job.size, name), {})
        output = probabilities(history.weights, fresh.x)
        values = {
            "train_acc": history.final["accuracy"],
            "test_acc": history.final["val_accuracy"],
            "test_loss": history.final["val_crossentropy"],
            "fresh_acc": measure(output, 0.0, fresh)["acc"],
            "hidden_l2": float(np.sqrt(np.sum(np.square(history.weights[0], dtype=np.float64)))),
        }
        if with_cv:
            values |= _fold_means(job_folds)
        for key, value in values.items():
            figures.setdefault(key, []).append(float(value))
    by_size: dict[int, dict[str, Any]] = {}
    for (size, name), figures in rows.items():
        by_size.setdefault(size, {})[name] = config_study(*remedies[name], figures)
    return by_size
