"""The sweep's third step, per job: its files, in models/.partial/<run>/ until its run is
logged, then moved to models/<run>/ with one rename.

Every seed's `.keras` model (byte for byte the same for the same weights), every epoch of
every seed (`history.csv`), the learning-curve figure, the first seed's model in MLflow's
Keras flavor (for its logged model) and, last, `result.json`: what the job trained.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from overfit import layout, runtime
from overfit.artifacts import (
    JobResult,
    nan_padded,
    weights_digest,
    write_bytes,
    write_history,
    write_result,
    write_text,
)
from overfit.config import Config
from overfit.core import figures
from overfit.core.data import Points
from overfit.core.remedies import remedy_of, run_name
from overfit.sweep.phases import Phases
from overfit.sweep.stacked import CURVE_NAMES, Trained, held_out_rows
from overfit.tracking.model_format import save_keras_flavor


def save_job(
    work_dir: Path, config: Config, trained: Trained, train: Points, phases: Phases
) -> JobResult:
    """A trained job's files in `work_dir` (its configuration already there); its result."""
    from overfit.core.model import save_reproducibly  # Keras: imported once there is work

    # Keras and MLflow write through file objects: an error of theirs (a full disk) names no
    # file, so it is given the folder being written.
    with phases.timed("save"), runtime.located(work_dir):
        for seed, model in zip(config.train.seeds, trained.models, strict=True):
            save_reproducibly(model, layout.model_file(work_dir, seed))
        write_history(work_dir, config.train.seeds, [named_curves(h) for h in trained.histories])
        # The logged model's input example: the first training rows.
        flavor = work_dir / layout.MLFLOW_MODEL_DIR
        save_keras_flavor(trained.models[0], train.x[:5], flavor)
    runtime.checkpoint()
    with phases.timed("plot"):
        png = figures.learning_curves().png(mean_curves(trained.histories), run_name(config))
        write_bytes(work_dir / layout.LEARNING_CURVE_FILE, png)
    runtime.checkpoint()
    result = job_result(config, trained, train)
    write_result(work_dir, result)
    return result


def job_result(config: Config, trained: Trained, train: Points) -> JobResult:
    """What the job trained: per-seed final figures with their mean and spread, the
    cross-validation scores, what early stopping did, and each seed's weights digest."""
    summary = summarize(config.train.seeds, [h.final for h in trained.histories])
    return JobResult(
        run=run_name(config),
        penalty=config.to_dict()["penalty"],
        remedy=dataclasses.asdict(remedy_of(config)),
        seeds=list(config.train.seeds),
        **summary,
        cv=trained.cv(config.train.seeds, held_out_rows(train, config)),
        weights_sha256={
            str(seed): weights_digest(model.get_weights())
            for seed, model in zip(config.train.seeds, trained.models, strict=True)
        },
        stopping=trained.stopping(config),
    )


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


def write_job_config(work_dir: Path, config_yaml: str, overrides: Sequence[str]) -> None:
    """The job's resolved configuration and overrides, where Hydra keeps them (.hydra/)."""
    write_text(work_dir / layout.JOB_CONFIG, config_yaml)
    write_text(work_dir / layout.JOB_OVERRIDES, yaml.safe_dump(list(overrides)))


def publish(staging: Path, final: Path) -> None:
    """Move a finished job's folder into place with one rename."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
