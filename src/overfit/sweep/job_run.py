"""The sweep's last step, per job: its child MLflow run under the sweep's parent run.

Parameters, final figures (with cross-validation's), sampled per-epoch curves, the first
seed's logged model, the data it read as datasets, the figure, every epoch of every seed and
the job's configuration; tagged with the digest of its `result.json`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from overfit import layout, runtime
from overfit.artifacts import JobResult, result_digest
from overfit.config import Config
from overfit.core.remedies import run_name
from overfit.core.summary import progress_line
from overfit.sweep.files import mean_curves
from overfit.sweep.phases import Phases
from overfit.sweep.stacked import Trained, TrainingDiverged
from overfit.tracking.model_format import log_model_folder
from overfit.tracking.runs import (
    RESULT_TAG,
    RUN_TAG,
    flatten,
    log_metric_histories,
    log_values,
    tracked_run,
)
from overfit.tracking.store import Store


def log_job_run(
    root: Path,
    store: Store,
    parent: str,
    tags: Mapping[str, str],
    config: Config,
    trained: Trained,
    result: JobResult | None,
    work_dir: Path,
    phases: Phases,
) -> None:
    """The job's child run of `parent`, from its files in `work_dir` (`result` None: it saved
    none, its loss having diverged: the run is marked FAILED with the reason). `phases` holds
    the job's saving time and gets its logging time; both are logged as `seconds_*`."""
    started = time.perf_counter()
    name = run_name(config)
    tags = {RUN_TAG: name, "overfit.sweep": config.sweep.name, **tags}
    tags |= {"overfit.tensorflow_threads": str(tensorflow_threads()), "mlflow.parentRunId": parent}
    runtime.checkpoint()
    with tracked_run(store.client, store.experiment_id, name, tags) as child:
        diverged = trained.divergence(config.train.seeds)
        if diverged or result is None:
            raise TrainingDiverged(
                f"{name}: {diverged}; lower model.learning_rate or the remedy's strength"
            )
        with phases.timed("log"):
            flavor = work_dir / layout.MLFLOW_MODEL_DIR
            model_tags = {RUN_TAG: name, "overfit.seed": str(result.seeds[0])}
            model_id = log_model_folder(
                store.client, store.experiment_id, child, name, flavor, model_tags
            )
            shutil.rmtree(flavor)
            curves = mean_curves(trained.histories)
            log_figures(store.client, child, config, result, curves, model_id)
            # The run's record: what it trained (result.json's digest) and from which data.
            commit = tags.get("git.commit", "unknown")
            store.client.log_inputs(child, datasets=training_data(root, config, commit))
            log_values(store.client, child, tags={RESULT_TAG: result_digest(result)})
            # The figure, and every epoch of every seed (MLflow's curves are sampled from it).
            for artifact in (layout.LEARNING_CURVE_FILE, layout.HISTORY_FILE):
                store.client.log_artifact(child, str(work_dir / artifact))
            store.client.log_artifact(child, str(work_dir / layout.JOB_CONFIG), "config")
        seconds = round(time.perf_counter() - started, 2)  # this run's own time
        timings = {f"seconds_{phase}": value for phase, value in phases.items()}
        log_values(store.client, child, metrics={"seconds": seconds, **timings})
        runtime.checkpoint()
    print(progress_line(result, seconds), flush=True)


def training_data(root: Path, config: Config, commit: str) -> list[Any]:
    """The training and test rows a job read, as MLflow datasets (`moons-train`, `moons-test`)."""
    from overfit.tracking import lineage

    contexts = {lineage.TRAINING: "train", lineage.TEST: "test"}
    return lineage.datasets(root, contexts, config.data.name, commit)


def log_figures(
    mlflow: Any,
    run_id: str,
    config: Config,
    result: JobResult,
    curves: Mapping[str, np.ndarray],
    model_id: str | None = None,
) -> None:
    """Params, final metrics (with cross-validation's; of the logged model `model_id`),
    sampled per-epoch curves."""
    later = ("study", "gate", "registry")  # settings of the stages after this one
    params = flatten({k: v for k, v in config.to_dict().items() if k not in later})
    params.pop("tracking.parent_run_id", None)
    params.pop("select.metric", None)  # the evaluate stage's; the parent run is tagged with it
    # Six decimals: float32 accuracies (0.91428571939...) read badly in the UI's columns.
    metrics = {f"{k}_mean": round(v, 6) for k, v in result.mean.items()}
    metrics |= {f"{k}_std": round(v, 6) for k, v in result.std.items()}
    if result.cv is not None:
        metrics |= {
            f"{k}_{stat}": round(v, 6)
            for stat in ("mean", "std")
            for k, v in result.cv[stat].items()
        }
    if result.stopping is not None:
        metrics["epochs_trained_mean"] = float(
            np.mean([s["epochs"] for s in result.stopping["per_seed"].values()])
        )
    tags = {}
    if config.train.early_stopping.watch == "test":  # the test set chose when to stop
        tags["overfit.optimistic"] = "early stopping watched the test set"
    log_values(mlflow, run_id, params=params, metrics=metrics, tags=tags, model_id=model_id)
    log_metric_histories(mlflow, run_id, curves, config.tracking.history_every)


def tensorflow_threads() -> int:
    """The intra-op threads this job runs with (0: TensorFlow's default, every core)."""
    with runtime.tensorflow_quiet():
        import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads()
