"""Stage evaluate: load every saved model and measure it on train, test and fresh points.

Writes reports/metrics.json (the headline figures: the DVC metrics file the gate guards),
reports/configs.json (every configuration's measures), the tables behind the DVC plots in
reports/plots/, and reports/evaluation.npz (decision-boundary grids and hidden weights) for the
plot stage, which then needs no TensorFlow. Everything is computed before the first file is
written: no half-updated reports.
"""

from __future__ import annotations

import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from overfit import layout
from overfit.artifacts import (
    ArtifactError,
    JobResult,
    file_digest,
    read_accuracy_history,
    read_result,
    read_sweep,
    weights_digest,
)
from overfit.config import (
    Config,
    load_job_config,
    load_params,
    project_root,
)
from overfit.core.data import DataError, Points, load_fresh, load_train_test
from overfit.core.metrics import (
    EvaluationError,
    accuracy_curves,
    correctness,
    decision_grid,
    evaluation,
    measure,
    probabilities,
    summarize_run,
    weight_stats,
)
from overfit.core.remedies import TEST_WATCH_LABEL, watched_test
from overfit.core.selection import describe
from overfit.reports import (
    ConfigSummary,
    Evaluation,
    write_arrays,
    write_curves_table,
    write_evaluation,
    write_strength_table,
)
from overfit.runtime import run_stage


def expected_architecture(config: Config) -> list[dict[str, object]]:
    """The architecture a job's configuration describes, from a model built as training does."""
    from overfit.core.model import architecture, build_configured

    return architecture(build_configured(config, seed=0))


def load_checked(path: Path, architecture: list[dict[str, object]], digest: str) -> Any:
    """A saved model, once it is shown to be the model training saved there: a Keras file
    (loaded in safe mode), of the configured architecture, with the recorded weights."""
    import keras

    from overfit.core.model import architecture as architecture_of

    if not zipfile.is_zipfile(path):  # Keras would say "File not found"
        raise EvaluationError(f"{path}: not a readable Keras model (not a .keras zip archive)")
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises many kinds for a file it cannot read
        reason = (str(error).strip().splitlines() or [""])[0][:160]
        raise EvaluationError(
            f"{path}: not a readable Keras model ({type(error).__name__}: {reason})"
        ) from None
    found = architecture_of(model)
    if found != architecture:
        differs = first_difference(found, architecture)
        raise EvaluationError(f"{path}: not the model its configuration describes: {differs}")
    if weights_digest(model.get_weights()) != digest:
        raise EvaluationError(
            f"{path}: not the weights training saved there (their SHA-256 differs from "
            "result.json's); rerun the train stage"
        )
    return model


def first_difference(found: list[dict[str, object]], expected: list[dict[str, object]]) -> str:
    """Where two architectures part: `layer 1's activation is tanh, not relu`."""
    for number, (ours, theirs) in enumerate(zip(found, expected, strict=False), start=1):
        for key in theirs:
            if ours.get(key) != theirs[key]:
                return f"layer {number}'s {key} is {ours.get(key)!r}, not {theirs[key]!r}"
    return f"{len(found)} layers, not {len(expected)}"


@dataclass(frozen=True)
class Measured:
    """One configuration as evaluate measured it: its summary over seeds, its seeds' mean
    probabilities on the grid, their hidden kernels, and which test and fresh points its
    seeds' mean probability gets right."""

    summary: ConfigSummary
    grid: np.ndarray
    kernels: np.ndarray
    correct: dict[str, np.ndarray]


def measure_configuration(
    folder: Path, digest: str, train: Points, test: Points, fresh: Points, grid: np.ndarray
) -> Measured:
    """Per-seed measures of one configuration (whose result.json the sweep recorded with SHA-256
    `digest`), with what `Measured` holds besides."""
    result = checked_result(folder, digest)
    architecture = expected_architecture(load_job_config(folder))
    per_seed, grids, kernels = [], [], []
    outputs: dict[str, list[np.ndarray]] = {"test": [], "fresh": []}
    for seed in result.seeds:
        path = layout.model_file(folder, seed)
        model = load_checked(path, architecture, result.weights_sha256.get(str(seed), ""))
        weights = model.get_weights()
        penalty = float(sum(np.asarray(loss) for loss in model.losses)) if model.losses else 0.0
        output = {
            split: probabilities(weights, points.x)
            for split, points in (("train", train), ("test", test), ("fresh", fresh))
        }
        on = {
            split: measure(output[split], penalty, points)
            for split, points in (("train", train), ("test", test), ("fresh", fresh))
        }
        for split in outputs:
            outputs[split].append(output[split])
        check_accuracies(path, on, result.per_seed[str(seed)], train, test)
        kernel = weights[0]
        per_seed.append(
            {
                "train_acc": on["train"]["acc"],
                "test_acc": on["test"]["acc"],
                "fresh_acc": on["fresh"]["acc"],
                "gap": on["train"]["acc"] - on["test"]["acc"],
                "train_loss": on["train"]["loss"],
                "test_loss": on["test"]["loss"],
                "fresh_loss": on["fresh"]["loss"],
            }
            | weight_stats(kernel)
        )
        grids.append(probabilities(weights, grid))
        kernels.append(kernel)
    remedy = result.remedy
    per_fold = result.cv["per_fold"] if result.cv else ()
    points = {"train_acc": len(train), "test_acc": len(test), "fresh_acc": len(fresh)}
    points["cv_acc"] = len(train)  # each training row is held out once
    summary = summarize_run(
        per_seed, remedy["kind"], float(remedy["setting"]), per_fold, folder.name, points
    )
    correct = {
        split: correctness(np.mean(outputs[split], axis=0), points_of)
        for split, points_of in (("test", test), ("fresh", fresh))
    }
    return Measured(summary, np.mean(grids, axis=0), np.stack(kernels), correct)


def checked_result(folder: Path, digest: str) -> JobResult:
    """The job's result.json, if it is the one the sweep recorded and its folder holds only
    the job's seeds' models."""
    result = read_result(folder)
    if file_digest(folder / layout.RESULT_FILE) != digest:
        raise EvaluationError(
            f"{folder}: left by another sweep (its result.json is not the one reports/sweep.json "
            "records); rerun the train stage"
        )
    expected = {layout.model_file(folder, seed) for seed in result.seeds}
    strays = sorted(set(folder.glob(layout.MODEL_FILES)) - expected)
    if strays:
        raise EvaluationError(f"{strays[0]}: not one of the job's seeds {result.seeds}")
    return result


def check_accuracies(
    path: Path, measured: dict, reported: dict, train: Points, test: Points
) -> None:
    """The saved model's train and test accuracy, recomputed, against training's: compared as
    counts of correct points (training reports float32 accuracies)."""
    for split, points in (("train", train), ("test", test)):
        if round(measured[split]["acc"] * len(points)) != round(
            reported[f"{split}_acc"] * len(points)
        ):
            raise EvaluationError(
                f"{path}: {split} accuracy {measured[split]['acc']:.4f} recomputed, "
                f"{reported[f'{split}_acc']:.4f} reported by training"
            )


def evaluate(root: Path) -> Evaluation:
    config = load_params(root)
    sweep = read_sweep(root)
    train, test = load_train_test(root, config.data)
    fresh = load_fresh(root, config.data)
    grid = decision_grid([train, test])

    configs, arrays, correct = {}, {"grid": grid}, {}
    for name, digest in sorted(sweep.results.items()):
        folder = layout.run_dir(root, name)
        measured = measure_configuration(folder, digest, train, test, fresh, grid)
        configs[name], correct[name] = measured.summary, measured.correct
        arrays[f"proba/{name}"], arrays[f"kernels/{name}"] = measured.grid, measured.kernels
    select = config.select
    report = evaluation(configs, select.metric, correct, select.rule == "one_se", select.folds)

    curves = {}
    if report.baseline_run is not None:
        for label, name in (("baseline", report.baseline_run), ("selected", report.selected)):
            curves[label] = accuracy_curves(read_accuracy_history(layout.run_dir(root, name)))
    regularized = {n: c for n, c in configs.items() if c.kind != "none"}
    write_strength_table(root, regularized)
    write_curves_table(root, curves)
    write_arrays(root, arrays)
    write_evaluation(root, report)
    return report


def main(argv: list[str] | None = None) -> None:
    if sys.argv[1:] if argv is None else argv:
        print(
            "usage: python -m overfit.stages.evaluate (no arguments: it reads params.yaml)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    report = run_stage(
        lambda: evaluate(project_root()), (DataError, EvaluationError, ArtifactError)
    )
    configs = report.configs
    rows = [("baseline", report.baseline_run), ("selected", report.selected)]
    if report.test_choice != report.selected:
        rows.append(("on test", report.test_choice))
    for label, name in rows:
        if name is None:
            continue
        c = configs[name]
        cv = f"cv {c.mean('cv_acc'):.3f} " if "cv_acc" in c.measures else ""
        optimistic = f" ({TEST_WATCH_LABEL})" if watched_test(name) else ""
        print(
            f"{label:<8} {name}: train {c.mean('train_acc'):.3f} {cv}"
            f"test {c.mean('test_acc'):.3f} fresh {c.mean('fresh_acc'):.3f}{optimistic}"
        )
    folds = load_params(project_root()).select.folds
    print(f"selected by {describe(report.rule, folds, report.one_se)}")


if __name__ == "__main__":
    main()
