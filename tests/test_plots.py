"""The figures and the summary, from small made-up numbers: shapes, panels, sentences."""

from __future__ import annotations

import numpy as np

from overfit.artifacts import Evaluation
from overfit.data import make_moons_points, split_points
from overfit.figures import boundaries_figure, comparable_pair, weights_figure
from overfit.metrics import decision_grid, evaluation, summarize_run
from overfit.summary import summary_markdown

RUNS = {"none": ("none", 0.0), "l1_1e-02": ("l1", 0.01), "l2_1e-02": ("l2", 0.01)}


def report(test_acc: dict[str, float]) -> Evaluation:
    configs = {
        name: summarize_run(
            [
                {
                    "train_acc": 1.0,
                    "test_acc": acc,
                    "fresh_acc": acc - 0.01,
                    "gap": 1.0 - acc,
                    "test_loss": 0.3,
                    "near_zero_share": 0.9 if kind == "l1" else 0.1,
                }
                for _ in range(2)
            ],
            kind,
            strength,
        )
        for (name, (kind, strength)), acc in zip(RUNS.items(), test_acc.values(), strict=True)
    }
    return evaluation(configs)


def test_decision_boundaries_have_one_panel_per_configuration() -> None:
    train, test = split_points(make_moons_points(100, 0.2, 1), 30)
    grid = decision_grid([train, test], size=20)
    probabilities = {name: np.linspace(0, 1, len(grid)) for name in RUNS}
    scores = {name: {"train_acc": 1.0, "test_acc": 0.9} for name in RUNS}
    fig = boundaries_figure(grid, probabilities, scores, train, test)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(RUNS)
    assert [ax.get_title().split("\n")[0] for ax in panels] == list(RUNS)


def test_summary_names_the_overfit_and_the_best() -> None:
    summary = summary_markdown(report({"none": 0.914, "l1": 0.929, "l2": 0.943}))
    assert "train accuracy 1.000, test 0.914 (a gap of 0.086)" in summary
    assert "The best penalty, l2_1e-02, reaches test 0.943 (+0.029)" in summary
    assert summary.count("\n| ") == 1 + len(RUNS)  # header + one row per configuration


def test_l1_and_l2_at_the_same_strength_are_paired() -> None:
    r = report({"none": 0.914, "l1": 0.929, "l2": 0.943})
    kinds = {name: kind for name, (kind, _) in RUNS.items()}
    assert comparable_pair(r.configs) == ("l1_1e-02", "l2_1e-02")
    rng = np.random.default_rng(0)
    kernels = {
        "l1_1e-02": rng.laplace(0, 1e-4, (5, 2, 50)),
        "l2_1e-02": rng.normal(0, 0.1, (5, 2, 50)),
    }
    fig = weights_figure(kernels, kinds, {"l1_1e-02": 0.9, "l2_1e-02": 0.1}, 1e-2)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["l1_1e-02: 90% of weights below 0.01", "l2_1e-02: 10% of weights below 0.01"]
