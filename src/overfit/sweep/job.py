"""One job of a sweep: one configuration, every seed, as one child MLflow run.

A job trains its seeds (unless the sweep trained them already, stacked with every other job's),
then saves each seed's `.keras` model, `history.csv`, the learning-curve figure, the job's
configuration and, last, `result.json`, in models/.partial/<run>/, which becomes models/<run>/
with one rename once complete. `hydra_task` is the same job as a Hydra task, for the launchers
that run jobs in other processes (joblib, submitit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from overfit import layout, runtime, tracking
from overfit.artifacts import (
    JobResult,
    nan_padded,
    result_digest,
    weights_digest,
    write_bytes,
    write_history,
    write_result,
    write_text,
)
from overfit.config import Config, parse_config, project_root
from overfit.core import figures
from overfit.core.data import Points, load_train_test
from overfit.core.remedies import remedy_of, run_name
from overfit.core.selection import cv_scores, fold_seed, folds
from overfit.core.summary import progress_line
from overfit.sweep.plan import stack_groups
from overfit.tracking import lineage

# The trainer's curve names (Keras' `fit` history keys) as MLflow and the reports name them.
CURVE_NAMES = {
    "loss": "train_loss",
    "accuracy": "train_accuracy",
    "val_loss": "test_loss",
    "val_accuracy": "test_accuracy",
}


class Phases(dict[str, float]):
    """Seconds spent per phase (build, train, save, plot, log), summed over calls."""

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 3)

    def add(self, other: Mapping[str, float]) -> None:
        for name, seconds in other.items():
            self[name] = round(self.get(name, 0.0) + seconds, 3)


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


# --- training --------------------------------------------------------------------------------


def build_models(config: Config) -> list[Any]:
    """One compiled Keras model per seed, with that seed's initial weights."""
    from overfit.core.model import build_configured  # Keras: imported once there is work for it

    return [build_configured(config, seed) for seed in config.train.seeds]


def held_out_rows(train: Points, config: Config) -> list[np.ndarray]:
    """The job's cross-validation folds: a held-out mask over the training rows per fold."""
    return folds(train.y, config.select) if config.select.folds else []


def stopping_rule(config: Config) -> Any:
    """The job's Keras EarlyStopping, for the trainer; None without early stopping."""
    from overfit.core.trainer import Stopping

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


def compile_ahead(root: Path, configs: Sequence[Config]) -> None:
    """Start compiling, each on a thread of its own, the loops `train_together` will run for
    these jobs (with and without dropout, per stack group), so that XLA's compilation (~3 s
    each) overlaps opening the MLflow store and building the models."""
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
        for dropout in sorted({c.model.dropout > 0 for c in jobs}):
            shape = (count, hidden_units, len(train), len(test), folds, epochs, dropout)
            threading.Thread(target=compile_loop, args=shape, daemon=True).start()


def train_together(
    root: Path,
    configs: Sequence[Config],
    phases: Phases,
    ready: Callable[[int, Trained], None] | None = None,
) -> list[Trained]:
    """Every job's models, and its cross-validation folds, trained in one compiled call per
    group sharing data and shape.

    A model's result does not depend on what it is stacked with, so each job gets exactly
    what it would have trained alone. `ready(index, trained)`, if given, is called as each
    job's models and folds finish, while the other jobs train on.
    """
    trained: dict[int, Trained] = {}
    handed_over = Phases()  # the time `ready` took: its own phases count it, not training's

    def finish(index: int, job: Trained) -> None:
        trained[index] = job
        if ready is not None:
            with handed_over.timed("ready"):
                ready(index, job)

    for (data, _), members in stack_groups(configs).items():
        train, test = load_train_test(root, data)
        _train_jobs(
            [configs[i] for i in members], train, test, phases,
            lambda j, job, members=members: finish(members[j], job),
        )  # fmt: skip
    phases["train"] = round(phases.get("train", 0.0) - handed_over.get("ready", 0.0), 3)
    return [trained[i] for i in range(len(configs))]


def _train_jobs(
    configs: Sequence[Config],
    train: Points,
    test: Points,
    phases: Phases,
    finish: Callable[[int, Trained], None],
) -> None:
    """Jobs sharing data and shape, stacked; `finish(j, trained)` as job j's stacks end."""
    from overfit.core.trainer import Fold, train_with_folds

    with phases.timed("build"):
        per_job = [build_models(config) for config in configs]
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

    def done(model_histories: dict[int, Any], fold_histories: dict[int, Any]) -> None:
        for j in progress.record(model_histories, fold_histories, folds_only=waiting):
            if j not in waiting:
                finish(j, progress.trained(j))
        # Early stopping on cv, second pass, as soon as every waiting job's folds are in.
        if waiting and all(progress.folds_done(j) for j in waiting):
            order = sorted(waiting)
            waiting.clear()
            jobs = [progress.trained(j) for j in order]
            finals = _train_final_models(jobs, [configs[j] for j in order], train, test)
            for j, job in zip(order, finals, strict=True):
                finish(j, job)

    runtime.checkpoint()
    with phases.timed("train"):
        train_with_folds(
            models, cv_folds, train.x, train.y, test.x, test.y, epochs, runtime.checkpoint,
            stopping, done=done,
        )  # fmt: skip


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
    jobs: list[Trained], configs: Sequence[Config], train: Points, test: Points
) -> list[Trained]:
    """Early stopping on cv, second pass: each job's models train, on every training row, for
    the epochs its folds chose (`cv_epochs`)."""
    from overfit.core.trainer import MAX_GROUP, train_with_folds

    models, epochs, counts = [], [], []
    for job, config in zip(jobs, configs, strict=True):
        restore = config.train.early_stopping.restore_best_weights
        counts.append(cv_epochs(job.fold_histories, restore))
        models += job.models
        epochs += [counts[-1]] * len(job.models)
    runtime.checkpoint()
    # More than half a stack: one full stack, laid out as the first pass's stacks, so that it
    # reuses their compiled loop when it trains as many epochs.
    full = MAX_GROUP if len(models) > MAX_GROUP // 2 else None
    histories, _ = train_with_folds(
        models, [], train.x, train.y, test.x, test.y, epochs, runtime.checkpoint,
        stack_size=full, with_training_rows=True,
    )  # fmt: skip
    by_model = iter(histories)
    return [
        dataclasses.replace(job, histories=[next(by_model) for _ in job.models], final_epochs=n)
        for job, n in zip(jobs, counts, strict=True)
    ]


def summarize(seeds: Sequence[int], finals: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Per-seed final metrics, and their mean and spread (standard deviation over seeds)."""
    per_seed = {
        str(seed): {
            "train_acc": f["accuracy"],
            "test_acc": f["val_accuracy"],
            "train_loss": f["loss"],
            "test_loss": f["val_loss"],
        }
        for seed, f in zip(seeds, finals, strict=True)
    }
    for values in per_seed.values():
        values["gap"] = values["train_acc"] - values["test_acc"]
    names = list(next(iter(per_seed.values())))
    table = np.array([[v[n] for n in names] for v in per_seed.values()], dtype=np.float64)
    return {
        "per_seed": per_seed,
        "mean": dict(zip(names, table.mean(axis=0).tolist(), strict=True)),
        "std": dict(zip(names, table.std(axis=0).tolist(), strict=True)),
    }


def named_curves(history: Any) -> dict[str, np.ndarray]:
    return {CURVE_NAMES[key]: values for key, values in history.history.items()}


def mean_curves(histories: Sequence[Any]) -> dict[str, np.ndarray]:
    """Per-epoch curves averaged over the seeds still training at each epoch (early stopping
    may stop seeds at different epochs), named as MLflow shows them."""
    return {
        CURVE_NAMES[c]: np.nanmean(nan_padded([h.history[c] for h in histories]), axis=0)
        for c in CURVE_NAMES
    }


# --- one job ---------------------------------------------------------------------------------


def save_job(
    work_dir: Path, config: Config, trained: Trained, phases: Phases, train: Points
) -> None:
    """A trained job's files in its folder: every seed's model (byte for byte the same for the
    same weights), every epoch of every seed (history.csv) and the learning-curve figure; and
    the first seed's model in MLflow's flavor, for `run_job` to log (its input example: the
    first training rows)."""
    from overfit.core.model import save_reproducibly

    with phases.timed("save"):
        for seed, model in zip(config.train.seeds, trained.models, strict=True):
            save_reproducibly(model, layout.model_file(work_dir, seed))
        write_history(work_dir, config.train.seeds, [named_curves(h) for h in trained.histories])
        flavor = work_dir / layout.MLFLOW_MODEL_DIR
        tracking.save_keras_flavor(trained.models[0], train.x[:5], flavor)
    runtime.checkpoint()
    with phases.timed("plot"):
        png = figures.learning_curves().png(mean_curves(trained.histories), run_name(config))
        write_bytes(work_dir / layout.LEARNING_CURVE_FILE, png)


def run_job(
    root: Path,
    config: Config,
    store: tracking.Store,
    tags: Mapping[str, str],
    work_dir: Path,
    trained: Trained | None = None,
    saved: Phases | None = None,
) -> tuple[JobResult, Phases]:
    """Train (unless `trained` is given), save (unless `saved`, the phases of a `save_job`
    already done in `work_dir`), and log one configuration as a child run of
    `config.tracking.parent_run_id`; then move `work_dir` to models/<run>/. The job's result
    and where its time went (also logged to the run, as `seconds_*` metrics)."""
    started = time.perf_counter()
    name = run_name(config)
    phases = Phases(saved or {})
    tags = {tracking.RUN_TAG: name, "overfit.sweep": config.sweep.name, **tags}
    tags["overfit.tensorflow_threads"] = str(tensorflow_threads())
    if config.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = config.tracking.parent_run_id
    train, test = load_train_test(root, config.data)
    runtime.checkpoint()
    with tracking.tracked_run(store.client, store.experiment_id, name, tags) as child:
        if trained is None:
            trained = train_together(root, [config], phases)[0]
        diverged = trained.divergence(config.train.seeds)
        if diverged:
            raise TrainingDiverged(
                f"{name}: {diverged}; lower model.learning_rate or the remedy's strength"
            )
        summary = summarize(config.train.seeds, [h.final for h in trained.histories])
        cv = trained.cv(config.train.seeds, held_out_rows(train, config))
        stopping = trained.stopping(config)
        if saved is None:
            save_job(work_dir, config, trained, phases, train)
        runtime.checkpoint()
        result = JobResult(
            run=name,
            penalty=config.to_dict()["penalty"],
            remedy=dataclasses.asdict(remedy_of(config)),
            seeds=list(config.train.seeds),
            **summary,
            cv=cv,
            weights_sha256={
                str(seed): weights_digest(model.get_weights())
                for seed, model in zip(config.train.seeds, trained.models, strict=True)
            },
            stopping=stopping,
        )
        curves = mean_curves(trained.histories)
        with phases.timed("log"):
            flavor = work_dir / layout.MLFLOW_MODEL_DIR
            model_tags = {tracking.RUN_TAG: name, "overfit.seed": str(result.seeds[0])}
            model_id = tracking.log_model_folder(
                store.client, store.experiment_id, child, name, flavor, model_tags
            )
            shutil.rmtree(flavor)
            log_child_run(store.client, child, config, summary, cv, curves, stopping, model_id)
            # The run's record: what it trained (result.json's digest) and from which data.
            commit = tags.get("git.commit", "unknown")
            store.client.log_inputs(child, datasets=training_data(root, config, commit))
            tracking.log_values(
                store.client, child, tags={tracking.RESULT_TAG: result_digest(result)}
            )
            # The figure, and every epoch of every seed (MLflow's curves are sampled from it).
            for artifact in (layout.LEARNING_CURVE_FILE, layout.HISTORY_FILE):
                store.client.log_artifact(child, str(work_dir / artifact))
            store.client.log_artifact(child, str(work_dir / layout.JOB_CONFIG), "config")
        seconds = round(time.perf_counter() - started, 2)
        timings = {f"seconds_{phase}": value for phase, value in phases.items()}
        tracking.log_values(store.client, child, metrics={"seconds": seconds, **timings})
        runtime.checkpoint()
        write_result(work_dir, result)
        publish(work_dir, layout.run_dir(root, name))
    print(progress_line(result, seconds), flush=True)
    return result, phases


def training_data(root: Path, config: Config, commit: str) -> list[Any]:
    """The training and test rows a job read, as MLflow datasets (`moons-train`, `moons-test`)."""
    contexts = {lineage.TRAINING: "train", lineage.TEST: "test"}
    return lineage.datasets(root, contexts, config.data.name, commit)


def write_job_config(work_dir: Path, config_yaml: str, overrides: Sequence[str]) -> None:
    """The job's resolved configuration and overrides, where Hydra keeps them (.hydra/)."""
    write_text(work_dir / layout.JOB_CONFIG, config_yaml)
    write_text(work_dir / layout.JOB_OVERRIDES, yaml.safe_dump(list(overrides)))


def log_child_run(
    mlflow: Any,
    run_id: str,
    config: Config,
    summary: Mapping[str, Any],
    cv: Mapping[str, Any] | None,
    curves: Mapping[str, np.ndarray],
    stopping: Mapping[str, Any] | None = None,
    model_id: str | None = None,
) -> None:
    """Params, final metrics (with cross-validation's; of the logged model `model_id`),
    sampled per-epoch curves."""
    later = ("gate", "registry")  # settings of the stages after this one
    params = tracking.flatten({k: v for k, v in config.to_dict().items() if k not in later})
    params.pop("tracking.parent_run_id", None)
    params.pop("select.metric", None)  # the evaluate stage's; the parent run is tagged with it
    # Six decimals: float32 accuracies (0.91428571939...) read badly in the UI's columns.
    metrics = {f"{k}_mean": round(v, 6) for k, v in summary["mean"].items()}
    metrics |= {f"{k}_std": round(v, 6) for k, v in summary["std"].items()}
    if cv is not None:
        metrics |= {
            f"{k}_{stat}": round(v, 6) for stat in ("mean", "std") for k, v in cv[stat].items()
        }
    if stopping is not None:
        metrics["epochs_trained_mean"] = float(
            np.mean([s["epochs"] for s in stopping["per_seed"].values()])
        )
    tags = {}
    if config.train.early_stopping.watch == "test":  # the test set chose when to stop
        tags["overfit.optimistic"] = "early stopping watched the test set"
    tracking.log_values(
        mlflow, run_id, params=params, metrics=metrics, tags=tags, model_id=model_id
    )
    tracking.log_metric_histories(mlflow, run_id, curves, config.tracking.history_every)


def publish(staging: Path, final: Path) -> None:
    """Move a finished job's folder into place with one rename."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)


def limit_threads(threads: int) -> None:
    """Cap TensorFlow's thread pools, so parallel jobs do not fight over the cores."""
    if threads <= 0:
        return
    with runtime.tensorflow_quiet():
        import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started in this process: keep its pools
        pass


def tensorflow_threads() -> int:
    """The intra-op threads this job runs with (0: TensorFlow's default, every core)."""
    with runtime.tensorflow_quiet():
        import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads()


# --- the same job under a Hydra launcher -----------------------------------------------------


def _register_run_name_resolver() -> None:
    """`${run_name:}` in Hydra's settings: each job's folder is named after its run."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver(
            "run_name", lambda *, _root_: run_name(_root_), use_cache=False
        )


_register_run_name_resolver()


def hydra_task(cfg: Any) -> None:
    """Hydra task for launchers that run each job in its own process: Hydra composed the
    job's configuration, saved it in .hydra/ and made the job's folder; the job does the rest.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    root = project_root()
    config = parse_config(OmegaConf.to_container(cfg, resolve=True))
    limit_threads(config.launcher.threads)
    store = tracking.open_store(root, config.tracking)
    work_dir = Path(HydraConfig.get().runtime.output_dir)
    run_job(root, config, store, tracking.run_tags(root), work_dir)
