"""The figures and the summary, from small made-up numbers: shapes, panels, sentences."""

from __future__ import annotations

import numpy as np

from overfit.core.data import make_moons_points, split_points
from overfit.core.figures import boundaries_figure, comparable_pair, strength_figure, weights_figure
from overfit.core.metrics import decision_grid, evaluation, summarize_run
from overfit.core.summary import summary_markdown
from overfit.reports import Evaluation

RUNS = {"none": ("none", 0.0), "l1_1e-02": ("l1", 0.01), "l2_1e-02": ("l2", 0.01)}


def report(
    test_acc: dict[str, float], cv_acc: dict[str, float] | None = None, rule: str = "cv_acc"
) -> Evaluation:
    cv = cv_acc or {"none": 0.9, "l1": 0.95, "l2": 0.93}
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
            [{"acc": cv_value, "loss": 1 - cv_value}] * 3,
        )
        for (name, (kind, strength)), acc, cv_value in zip(
            RUNS.items(), test_acc.values(), cv.values(), strict=True
        )
    }
    return evaluation(configs, rule)


def test_decision_boundaries_have_one_panel_per_configuration() -> None:
    train, test = split_points(make_moons_points(100, 0.2, 1), 30)
    grid = decision_grid([train, test], size=20)
    probabilities = {name: np.linspace(0, 1, len(grid)) for name in RUNS}
    scores = {name: {"train_acc": 1.0, "test_acc": 0.9} for name in RUNS}
    fig = boundaries_figure(grid, probabilities, scores, train, test)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(RUNS)
    assert [ax.get_title().split("\n")[0] for ax in panels] == list(RUNS)


def test_summary_sets_the_two_rules_side_by_side() -> None:
    """Cross-validation picks l1 (0.95), the test set l2 (0.943): both rows, the optimistic
    label, what each reaches on fresh points, and every configuration in the rule's order."""
    summary = summary_markdown(report({"none": 0.914, "l1": 0.929, "l2": 0.943}), folds=3)
    assert "train accuracy 1.000, test 0.914 (a gap of 0.086)" in summary
    assert (
        "Selected: **l1_1e-02**, by highest mean held-out accuracy in 3-fold cross-validation "
        "on the training rows. Its test accuracy is 0.929" in summary
    )
    rows = [line for line in summary.splitlines() if line.startswith("| ")]
    assert rows[1] == (
        "| highest mean held-out accuracy in 3-fold cross-validation on the training rows "
        "| l1_1e-02 | 0.950 | 0.929 | 0.919 | +0.010 |"
    )
    assert rows[2] == (
        "| highest test accuracy, chosen on the test set (optimistic) | l2_1e-02 | 0.930 "
        "| 0.943 | 0.933 | +0.010 |"
    )
    assert (
        "Choosing on the test set picks l2_1e-02 and reports test 0.943, +0.014 above the "
        "cross-validation choice; on fresh points it reaches 0.933, +0.014 against 0.919 for "
        "l1_1e-02." in summary
    )
    # Which remedy closes the gap best: each family at its cross-validation best.
    remedies = rows[3:7]
    assert remedies[0] == "| remedy | its best | cv acc | test acc | fresh acc | gap |"
    assert [row.split(" | ")[:2] for row in remedies[1:]] == [
        ["| no remedy", "none"],
        ["| L1 penalty", "l1_1e-02"],
        ["| L2 penalty", "l2_1e-02"],
    ]
    assert (
        "Best remedy on cross-validation, L1 penalty (0.950); on test, L2 penalty (0.943); "
        "on fresh points, L2 penalty (0.933). The smallest train - test gap: L2 penalty "
        "(0.057)." in summary
    )
    table = rows[7:]
    assert table[0].startswith("| configuration | train acc | cv acc | test acc |")
    names = [row.split(" | ")[0].lstrip("| ") for row in table[1:]]
    assert names == ["l1_1e-02 (selected)", "l2_1e-02 (best on test)", "none"]


def test_the_test_rule_is_labelled_optimistic_wherever_it_decides() -> None:
    r = report({"none": 0.914, "l1": 0.929, "l2": 0.943}, rule="test_acc")
    assert (r.selected, r.cv_choice, r.test_choice) == ("l2_1e-02", "l1_1e-02", "l2_1e-02")
    assert r.headline is not None and r.headline.selected.run == "l2_1e-02"
    summary = summary_markdown(r, folds=3)
    assert (
        "Selected: **l2_1e-02**, by highest test accuracy, chosen on the test set (optimistic)."
        in summary
    )


def test_strength_figure_marks_both_choices() -> None:
    r = report({"none": 0.914, "l1": 0.929, "l2": 0.943})
    fig = strength_figure(r.configs, "none", r.selected, r.test_choice)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["L1 penalty", "L2 penalty"]
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in panels]
    assert legends[0][:3] == ["cross-validation (training rows)", "test", "fresh sample"]
    assert "selected: l1_1e-02" in legends[0]
    assert "best on test (optimistic): l2_1e-02" in legends[1]


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
