"""Stage plot: the figures and the summary a reader looks at, from what evaluate wrote (the
register stage attaches them to the sweep's parent MLflow run)."""

from __future__ import annotations

import sys
from pathlib import Path

from overfit import layout
from overfit.artifacts import ArtifactError, write_bytes, write_text
from overfit.config import load_params, project_root
from overfit.core import figures
from overfit.core.data import DataError, load_train_test
from overfit.core.metrics import NEAR_ZERO
from overfit.core.study import selection_on_draws
from overfit.core.summary import summary_markdown
from overfit.reports import read_arrays, read_curves_table, read_evaluation, read_study
from overfit.runtime import run_stage


def plot(root: Path) -> list[Path]:
    """Every figure and the summary; returns the files written."""
    config = load_params(root)
    report = read_evaluation(root)
    configs = report.configs
    arrays = read_arrays(root, configs)
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
    for n, summary in configs.items():  # the test accuracy's 95% interval, where reported
        spread = summary.measures["test_acc"]
        if spread.low is not None:
            scores[n] |= {"test_low": spread.low, "test_high": spread.high}
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
    study = read_study(root)
    for size in study.sizes:
        drawn[f"study_effects_{size.n_train}"] = figures.effects_figure(
            size, study.draws, study.baseline or ""
        )
    if len(study.sizes) > 1:
        drawn["study_training_rows"] = figures.learning_curve_figure(study.sizes, study.draws)
    written = []
    for name, fig in drawn.items():
        path = layout.figure_file(root, name)
        write_bytes(path, figures.png_bytes(fig))
        written.append(path)
    n_train = config.data.n_train
    selection = selection_on_draws(study, n_train, report.rule, report.one_se)
    summary = summary_markdown(report, config.select.folds, study, n_train, selection)
    write_text(root / layout.SUMMARY, summary)
    return [*written, root / layout.SUMMARY]


def main(argv: list[str] | None = None) -> None:
    if sys.argv[1:] if argv is None else argv:
        print(
            "usage: python -m overfit.stages.plot (no arguments: it reads params.yaml)",
            file=sys.stderr,
        )
        raise SystemExit(2)

    def work() -> tuple[Path, list[Path]]:
        root = project_root()
        return root, plot(root)

    root, files = run_stage(work, (ArtifactError, DataError, KeyError))
    for path in files:
        print(f"wrote {path.relative_to(root)}")
    print("the register stage logs them, and the selection, to the sweep's MLflow runs")


if __name__ == "__main__":
    main()
