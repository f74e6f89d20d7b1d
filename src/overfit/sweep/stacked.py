"""The sweep's second step: every job's models, and their cross-validation folds, trained
stacked in compiled calls (one per group of jobs sharing data and shape), handed over job by
job as each finishes, so that saving a job overlaps training the others.

A model's result does not depend on what it is stacked with: each job gets exactly what it
would have trained alone.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from overfit import runtime
from overfit.artifacts import CURVES
from overfit.config import Config, ModelConfig
from overfit.core.data import Points, load_train_test
from overfit.core.selection import cv_scores, fold_seed, folds
from overfit.sweep.phases import Phases
from overfit.sweep.plan import stack_groups

# The trainer's curve names (Keras' `fit` history keys) as MLflow and the reports name them.
CURVE_NAMES = dict(zip(("loss", "accuracy", "val_loss", "val_accuracy"), CURVES, strict=True))


@dataclass(frozen=True)
class Trained:
    """A job's models, one per seed, and their training histories; and its cross-validation
    folds' histories (validated on each fold's held-out rows; the fold models are not kept)."""

    models: list[Any]
    histories: list[Any]
    fold_histories: list[Any] = dataclasses.field(default_factory=list)
    # Early stopping on cv: the epochs the final models trained (the folds' median).
    final_epochs: int | None = None

    def stopping(self, config: Config) -> dict[str, Any] | None:
        """What early stopping did: each fold's and each seed's epochs and best epoch, and
        the epochs cross-validation chose for the final models (watch: cv)."""
        watch = config.train.early_stopping.watch
        if watch == "none":
            return None

        def epochs(history: Any) -> dict[str, Any]:
            return {"epochs": history.epochs, "best_epoch": history.best_epoch}

        seeds = config.train.seeds
        return {
            "watch": watch,
            "monitor": config.train.early_stopping.monitor,
            "patience": config.train.early_stopping.patience,
            "folds": [{"fold": i + 1} | epochs(h) for i, h in enumerate(self.fold_histories)],
            "final_epochs": self.final_epochs,
            "per_seed": {str(s): epochs(h) for s, h in zip(seeds, self.histories, strict=True)},
        }

    def divergence(self, seeds: Sequence[int]) -> str | None:
        """Where a loss first became NaN or infinite, if it did: no model to keep."""
        named = [(f"seed {seed}", h) for seed, h in zip(seeds, self.histories, strict=True)]
        named += [
            (f"fold {i + 1} (seed {fold_seed(seeds, i)})", h)
            for i, h in enumerate(self.fold_histories)
        ]
        for who, history in named:
            for curve in ("loss", "val_loss"):
                values = np.asarray(history.history[curve])
                bad = np.flatnonzero(~np.isfinite(values))
                if bad.size:
                    name = CURVE_NAMES[curve].replace("_", " ")
                    if who.startswith("fold") and curve == "val_loss":
                        name = "held-out loss"
                    return f"the {name} of {who} became {values[bad[0]]} at epoch {bad[0] + 1}"
        return None

    def cv(self, seeds: Sequence[int], held_out: Sequence[np.ndarray]) -> dict[str, Any] | None:
        """Each fold's held-out accuracy and cross-entropy, with mean and spread over folds."""
        if not self.fold_histories:
            return None
        per_fold = [
            {
                "fold": i + 1,
                "seed": fold_seed(seeds, i),
                "rows": int(np.count_nonzero(rows)),
                "acc": h.final["val_accuracy"],
                "loss": h.final["val_crossentropy"],
            }
            for i, (h, rows) in enumerate(zip(self.fold_histories, held_out, strict=True))
        ]
        return cv_scores(per_fold)


class TrainingDiverged(RuntimeError):
    """A configuration's loss became NaN or infinite; the message names it."""


def build_models(config: Config) -> list[Any]:
    """One compiled Keras model per seed, with that seed's initial weights."""
    from overfit.core.model import build_configured  # Keras: imported once there is work for it

    return [build_configured(config, seed) for seed in config.train.seeds]


def held_out_rows(train: Points, config: Config) -> list[np.ndarray]:
    """The job's cross-validation folds: a held-out mask over the training rows per fold."""
    return folds(train.y, config.select) if config.select.folds else []


def stopping_rule(config: Config) -> Any:
    """The job's Keras EarlyStopping, for the trainer; None without early stopping."""
    from overfit.core.stack import Stopping

    es = config.train.early_stopping
    if es.watch == "none":
        return None
    return Stopping(es.monitor, es.patience, es.min_delta, es.restore_best_weights)


def cv_epochs(fold_histories: Sequence[Any], restore_best_weights: bool) -> int:
    """The epochs a final model trains under early stopping on cv: the median over folds of
    the epochs that made each fold's kept weights (its best epoch when the best weights are
    restored, else the epoch it stopped at), rounded half up."""
    counts = [h.best_epoch if restore_best_weights else h.epochs for h in fold_histories]
    return max(1, int(np.floor(np.median(counts) + 0.5)))


def loop_variant(model: ModelConfig) -> tuple[bool, tuple[int, ...], bool]:
    """The variant of the loop (`stack.variant`) a stack of this model's seeds compiles."""
    from overfit.core.loop import PLACES

    noise = (PLACES[model.noise_at],) if model.noise > 0 else ()
    return model.dropout > 0, noise, model.activity != "none"


def compile_ahead(root: Path, configs: Sequence[Config]) -> None:
    """Start compiling, each on a thread of its own, the loops `train_together` will run for
    these jobs (one per variant of the loop their remedies need, per stack group), so that
    XLA's compilation (~3 s each) overlaps opening the MLflow store and building the models."""
    from overfit.core.trainer import compile_ahead as compile_loop

    for (data, hidden_units), members in stack_groups(configs).items():
        jobs = [configs[i] for i in members]
        train, test = load_train_test(root, data)
        # Early stopping on cv: the final models train in a second pass (one stack).
        first_pass = [
            0 if c.train.early_stopping.watch == "cv" else len(c.train.seeds) for c in jobs
        ]
        count = sum(first_pass) + sum(c.select.folds for c in jobs)
        folds = any(c.select.folds for c in jobs)
        epochs = max(c.train.epochs for c in jobs)
        for variant in sorted({loop_variant(c.model) for c in jobs}):
            shape = (count, hidden_units, len(train), len(test), folds, epochs, variant)
            thread = threading.Thread(target=compile_loop, args=shape, daemon=True)
            thread.start()
            _compiling.append(thread)


# The compilations compile_ahead started. Training waits for them: a call that arrives while
# its loop is still being traced traces and compiles it a second time (~3 s of CPU each).
_compiling: list[threading.Thread] = []


def finish_compiling() -> None:
    """Wait for the compilations compile_ahead started. A process must, before it exits: the
    interpreter stops a thread that is still inside XLA at exit, and C++ then aborts it."""
    while _compiling:
        _compiling.pop().join()


def train_together(
    root: Path, configs: Sequence[Config], phases: Phases
) -> Iterator[tuple[int, Trained]]:
    """Every job's models and folds, trained stacked: yields (job index, trained) as each job
    finishes, while the other jobs train on. `phases` gets the time spent building the models
    and training them (not the time the caller spends between two jobs)."""
    with phases.timed("build"):
        groups = [
            (members, *load_train_test(root, data), [build_models(configs[i]) for i in members])
            for (data, _), members in stack_groups(configs).items()
        ]
    with phases.timed("train"):  # compiling the loops is part of training
        finish_compiling()
    for members, train, test, models in groups:
        jobs = _train_group([configs[i] for i in members], models, train, test)
        while True:
            with phases.timed("train"):
                finished = next(jobs, None)
            if finished is None:
                break
            j, trained = finished
            yield members[j], trained


def _train_group(
    configs: Sequence[Config], per_job: Sequence[list[Any]], train: Points, test: Points
) -> Iterator[tuple[int, Trained]]:
    """Jobs sharing data and shape, stacked; yields (j, trained) as job j's stacks end."""
    from overfit.core.trainer import Fold, train_stack_by_stack

    # Early stopping on cv: the final models wait (0 epochs) until their folds have said how
    # long to train; the folds start from their initial state meanwhile.
    waiting = {j for j, c in enumerate(configs) if c.train.early_stopping.watch == "cv"}
    models, epochs, stopping, cv_folds, first = [], [], [], [], []
    for j, (config, job_models) in enumerate(zip(configs, per_job, strict=True)):
        first.append(len(models))
        seeds = list(config.train.seeds)
        rule = stopping_rule(config)
        for i, rows in enumerate(held_out_rows(train, config)):
            start = len(models) + seeds.index(fold_seed(seeds, i))
            cv_folds.append(Fold(start, rows, rule, i + 1, config.train.epochs))
        models += job_models
        epochs += [0 if j in waiting else config.train.epochs] * len(job_models)
        stopping += [None if j in waiting else rule] * len(job_models)
    progress = _Progress(per_job, first, [config.select.folds for config in configs])
    runtime.checkpoint()
    stacks = train_stack_by_stack(
        models, cv_folds, train.x, train.y, test.x, test.y, epochs, runtime.checkpoint, stopping
    )
    for stack in stacks:
        for j in progress.record(stack.models, stack.folds, folds_only=waiting):
            if j not in waiting:
                yield j, progress.trained(j)
        # Early stopping on cv, second pass, as soon as every waiting job's folds are in.
        if waiting and all(progress.folds_done(j) for j in waiting):
            order = sorted(waiting)
            waiting.clear()
            jobs = [progress.trained(j) for j in order]
            finals = _train_final_models(
                jobs, [configs[j] for j in order], train, test, stack.layout
            )
            yield from zip(order, finals, strict=True)


class _Progress:
    """Which jobs of a stack group have all their models and folds trained."""

    def __init__(
        self, per_job: Sequence[list[Any]], first: Sequence[int], fold_counts: Sequence[int]
    ) -> None:
        self.per_job = per_job
        self.fold_counts = fold_counts
        self.histories: list[dict[int, Any]] = [{} for _ in per_job]
        self.folds: list[dict[int, Any]] = [{} for _ in per_job]
        # Model index -> (job, seed position); fold index -> (job, fold position).
        self.model_of = {
            first[j] + k: (j, k) for j, models in enumerate(per_job) for k in range(len(models))
        }
        fold_first = np.cumsum([0, *fold_counts])
        self.fold_of = {
            int(fold_first[j]) + k: (j, k) for j, n in enumerate(fold_counts) for k in range(n)
        }

    def folds_done(self, j: int) -> bool:
        return len(self.folds[j]) == self.fold_counts[j]

    def record(
        self,
        model_histories: Mapping[int, Any],
        fold_histories: Mapping[int, Any],
        folds_only: Set[int],
    ) -> list[int]:
        """Record a finished stack; return the jobs it completed (for jobs in `folds_only`,
        whose models wait for a second pass: their folds)."""
        touched = set()
        for i, history in model_histories.items():
            j, k = self.model_of[i]
            self.histories[j][k] = history
            touched.add(j)
        for i, history in fold_histories.items():
            j, k = self.fold_of[i]
            self.folds[j][k] = history
            touched.add(j)
        complete = [
            j
            for j in touched
            if self.folds_done(j)
            and (j in folds_only or len(self.histories[j]) == len(self.per_job[j]))
        ]
        return sorted(complete)

    def trained(self, j: int) -> Trained:
        histories = [self.histories[j].get(k) for k in range(len(self.per_job[j]))]
        folds = [self.folds[j][k] for k in range(self.fold_counts[j])]
        return Trained(self.per_job[j], histories, folds)


def _train_final_models(
    jobs: list[Trained], configs: Sequence[Config], train: Points, test: Points, layout: Any
) -> list[Trained]:
    """Early stopping on cv, second pass: each job's models train, on every training row, for
    the epochs its folds chose (`cv_epochs`), in stacks laid out as the first pass's
    (`layout`), so that they reuse its compiled loop whatever those epochs are: padding a
    stack costs less than compiling another (~3 s)."""
    from overfit.core.trainer import train_with_folds

    models, epochs, counts = [], [], []
    for job, config in zip(jobs, configs, strict=True):
        restore = config.train.early_stopping.restore_best_weights
        counts.append(cv_epochs(job.fold_histories, restore))
        models += job.models
        epochs += [counts[-1]] * len(job.models)
    runtime.checkpoint()
    histories, _ = train_with_folds(
        models, [], train.x, train.y, test.x, test.y, epochs, runtime.checkpoint, layout=layout
    )
    by_model = iter(histories)
    return [
        dataclasses.replace(job, histories=[next(by_model) for _ in job.models], final_epochs=n)
        for job, n in zip(jobs, counts, strict=True)
    ]
