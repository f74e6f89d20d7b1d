"""Stage plot: the figures and the summary a reader looks at, from what evaluate wrote, also
attached to the sweep's parent MLflow run."""

from __future__ import annotations

import sys
from pathlib import Path

from overfit import figures, layout, tracking
from overfit.artifacts import (
    ArtifactError,
    ConfigSummary,
    Evaluation,
    SweepRecord,
    read_arrays,
    read_curves_table,
    read_evaluation,
    read_sweep,
    write_bytes,
    write_text,
)
from overfit.config import load_params, project_root
from overfit.data import DataError, load_train_test
from overfit.metrics import NEAR_ZERO
from overfit.runtime import run_stage, skip_final_collection
from overfit.selection import describe
from overfit.summary import summary_markdown


def plot(root: Path) -> list[Path]:
    """Every figure and the summary; returns the files written."""
    config = load_params(root)
    report = read_evaluation(root)
    configs = report.configs
    arrays = read_arrays(root)
    train, test = load_train_test(root, config.data)

    drawn = {}
    if report.baseline_run is not None:
        names = {"baseline": report.baseline_run, "selected": report.selected}
        drawn["learning_curves"] = figures.comparison_curves_figure(read_curves_table(root), names)
        drawn["accuracy_vs_strength"] = figures.strength_figure(
            configs, report.baseline_run, report.selected, report.test_choice
        )
    order = figures.config_order(configs)
    scores = {n: {k: configs[n].mean(k) for k in ("train_acc", "test_acc")} for n in configs}
    drawn["decision_boundaries"] = figures.boundaries_figure(
        arrays["grid"], {n: arrays[f"proba/{n}"] for n in order}, scores, train, test
    )
    pair = figures.comparable_pair(configs)
    if pair:
        drawn["weights_l1_vs_l2"] = figures.weights_figure(
            {n: arrays[f"kernels/{n}"] for n in pair},
            {n: configs[n].kind for n in pair},
            {n: configs[n].mean("near_zero_share") for n in pair},
            NEAR_ZERO,
        )
    written = []
    for name, fig in drawn.items():
        path = layout.figure_file(root, name)
        write_bytes(path, figures.png_bytes(fig))
        written.append(path)
    write_text(root / layout.SUMMARY, summary_markdown(report, config.select.folds))
    return [*written, root / layout.SUMMARY]


def log_to_mlflow(root: Path, files: list[Path]) -> str | None:
    """Attach the figures and summary to the sweep's parent MLflow run, tag it with the
    selection, and give each child run what evaluate measured; when the store has the sweep."""
    sweep = read_sweep(root)
    config = load_params(root)
    try:
        mlflow = tracking.sweep_store(root, config.tracking, sweep.parent_run_id)
    except tracking.StoreError as error:
        # A clone that pulled models/ from a DVC remote has no store holding the sweep.
        print(f"warning: figures not logged to MLflow: {error}", file=sys.stderr)
        return None
    report = read_evaluation(root)
    for name, run_id in sweep.runs.items():
        tracking.log_values(mlflow, run_id, metrics=evaluation_metrics(report.configs[name]))
    tags = selection_tags(report, sweep, config.select.folds)
    tracking.log_values(mlflow, sweep.parent_run_id, tags=tags)
    for path in files:
        mlflow.log_artifact(sweep.parent_run_id, str(path), "reports")
    return sweep.parent_run_id


def evaluation_metrics(summary: ConfigSummary) -> dict[str, float]:
    """What evaluate measured of a configuration, as its child run's metrics: every measure's
    mean and spread (fresh accuracy, losses, weight statistics, cross-validation)."""
    return {
        f"{name}_{stat}": round(getattr(spread, stat), 6)
        for name, spread in summary.measures.items()
        for stat in ("mean", "std")
    }


def selection_tags(report: Evaluation, sweep: SweepRecord, folds: int) -> dict[str, str]:
    """The parent run's record of the choice: which run, by which rule."""
    tags = {
        "overfit.selected_run": report.selected,
        "overfit.selected_run_id": sweep.runs[report.selected],
        "overfit.selection_rule": f"{report.rule}: {describe(report.rule, folds)}",
        "overfit.test_choice": report.test_choice,
    }
    return tags


def main(argv: list[str] | None = None) -> None:
    skip_final_collection()
    if sys.argv[1:] if argv is None else argv:
        print("usage: python -m overfit.plot (no arguments: it reads params.yaml)", file=sys.stderr)
        raise SystemExit(2)

    def work() -> tuple[Path, list[Path], str | None]:
        root = project_root()
        files = plot(root)
        return root, files, log_to_mlflow(root, files)

    root, files, parent = run_stage(work, (ArtifactError, DataError, KeyError))
    for path in files:
        print(f"wrote {path.relative_to(root)}")
    if parent is not None:
        print(f"logged them, and the selection, to MLflow parent run {parent}")


if __name__ == "__main__":
    main()
