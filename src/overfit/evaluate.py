"""Stage evaluate: load every saved model and measure it on train, test and fresh points.

Writes reports/metrics.json (the headline figures: the DVC metrics file the gate guards),
reports/configs.json (every configuration's measures), the tables behind the DVC plots in
reports/plots/, and reports/evaluation.npz (decision-boundary grids and hidden weights) for the
plot stage, which then needs no TensorFlow. Everything is computed before the first file is
written: no half-updated reports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from overfit import layout
from overfit.artifacts import (
    ArtifactError,
    ConfigSummary,
    Evaluation,
    read_accuracy_history,
    read_result,
    read_sweep,
    write_arrays,
    write_curves_table,
    write_evaluation,
    write_strength_table,
)
from overfit.config import ConfigError, exit_on_config_error, load_params, project_root
from overfit.data import DataError, Points, load_fresh, load_train_test
from overfit.metrics import (
    EvaluationError,
    accuracy_curves,
    decision_grid,
    evaluation,
    measure,
    probabilities,
    summarize_run,
    weight_stats,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def evaluate_run(
    folder: Path, train: Points, test: Points, fresh: Points, grid: np.ndarray
) -> tuple[ConfigSummary, np.ndarray, np.ndarray]:
    """Per-seed measures of one configuration; its mean grid probabilities and hidden kernels."""
    import keras

    result = read_result(folder)
    per_seed, grids, kernels = [], [], []
    for seed in result.seeds:
        path = layout.model_file(folder, seed)
        model = keras.models.load_model(path, safe_mode=True, compile=False)
        weights = model.get_weights()
        penalty = float(sum(np.asarray(loss) for loss in model.losses)) if model.losses else 0.0
        on = {
            split: measure(probabilities(weights, points.x), penalty, points)
            for split, points in (("train", train), ("test", test), ("fresh", fresh))
        }
        reported = result.per_seed[str(seed)]
        for split, points in (("train", train), ("test", test)):
            # Compare counts of correct points: training reports float32 accuracies.
            if round(on[split]["acc"] * len(points)) != round(
                reported[f"{split}_acc"] * len(points)
            ):
                raise EvaluationError(
                    f"{path}: {split} accuracy {on[split]['acc']:.4f} recomputed, "
                    f"{reported[f'{split}_acc']:.4f} reported by training"
                )
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
    summary = summarize_run(per_seed, result.penalty["kind"], float(result.penalty["strength"]))
    return summary, np.mean(grids, axis=0), np.stack(kernels)


def evaluate(root: Path) -> Evaluation:
    config = load_params(root)
    runs = sorted(read_sweep(root).runs)
    train, test = load_train_test(root, config.data)
    fresh = load_fresh(root, config.data)
    grid = decision_grid([train, test])

    configs, arrays = {}, {"grid": grid}
    for name in runs:
        folder = layout.run_dir(root, name)
        configs[name], arrays[f"proba/{name}"], arrays[f"kernels/{name}"] = evaluate_run(
            folder, train, test, fresh, grid
        )
    report = evaluation(configs)

    curves = {}
    if report.headline is not None and report.baseline_run is not None:
        for label, name in (("baseline", report.baseline_run), ("best", report.headline.best_run)):
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
            "usage: python -m overfit.evaluate (no arguments: it reads params.yaml)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    try:
        report = evaluate(project_root())
    except ConfigError as error:
        exit_on_config_error(error)
    except (DataError, EvaluationError, ArtifactError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    if report.headline is not None:
        configs = report.configs
        for label, name in (("baseline", report.baseline_run), ("best", report.headline.best_run)):
            c = configs[name]
            print(
                f"{label:<8} {name}: train {c.mean('train_acc'):.3f} "
                f"test {c.mean('test_acc'):.3f} fresh {c.mean('fresh_acc'):.3f}"
            )


if __name__ == "__main__":
    main()
