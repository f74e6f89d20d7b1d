"""How sure a figure is: the intervals and paired tests against published values, the reports
that carry them, and the one-standard-error rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from overfit import layout
from overfit.artifacts import ArtifactError
from overfit.core.metrics import evaluation, summarize_run
from overfit.core.selection import Candidate, choose, describe
from overfit.core.summary import summary_markdown
from overfit.core.uncertainty import adjusted, drop_noise, paired_test, proportion_interval
from overfit.reports import parse_evaluation, read_evaluation

from .conftest import sweep_ids


@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    [  # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_accuracy_intervals_are_wilsons_as_published(correct, n, low, high) -> None:
    found = proportion_interval(correct / n, n)
    assert found == pytest.approx((low, high), abs=5e-5)


def test_a_mean_over_seeds_is_taken_as_its_nearest_whole_number_of_points() -> None:
    assert proportion_interval(65.2 / 70, 70) == proportion_interval(65 / 70, 70)
    assert proportion_interval(1.0, 70)[1] == 1.0


def exact_mcnemar(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p, summed from the binomial coefficients."""
    n, k = gained + lost, min(gained, lost)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(("gained", "lost"), [(6, 1), (1, 6), (2, 0), (12, 3), (241, 128)])
def test_the_paired_test_is_exact_mcnemar_on_the_points_one_side_gets_right(
    gained: int, lost: int
) -> None:
    same = 40  # points both get right, or both wrong: they do not count
    ours = np.array([True] * gained + [False] * lost + [True] * same + [False] * 5)
    theirs = np.array([False] * gained + [True] * lost + [True] * same + [False] * 5)
    found = paired_test(ours, theirs)
    assert (found.gained, found.lost) == (gained, lost)
    assert found.p == pytest.approx(exact_mcnemar(gained, lost), rel=1e-9)


def test_two_classifiers_that_agree_everywhere_are_not_different() -> None:
    same = np.array([True, False, True])
    assert paired_test(same, same).p == 1.0


def test_p_values_are_adjusted_as_benjamini_and_hochberg_did() -> None:
    # Sorted 0.005, 0.01, 0.03, 0.04 of 4: p * 4 / rank, then the running minimum from the top.
    found = adjusted({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert found == pytest.approx({"a": 0.02, "b": 0.04, "c": 0.04, "d": 0.02})


def per_seed(train: float, test: float, fresh: float) -> dict[str, float]:
    return {
        "train_acc": train,
        "test_acc": test,
        "fresh_acc": fresh,
        "gap": train - test,
        "train_loss": 0.1,
        "test_loss": 0.3,
        "fresh_loss": 0.3,
        "hidden_l1": 10.0,
        "hidden_l2": 2.0,
        "near_zero_share": 0.1,
    }


POINTS = {"train_acc": 30, "test_acc": 70, "fresh_acc": 10_000, "cv_acc": 30}


def test_every_accuracy_gets_its_interval_and_other_measures_none() -> None:
    folds = [{"acc": 1.0, "loss": 0.1}] * 4 + [{"acc": 5 / 6, "loss": 0.4}]
    summary = summarize_run([per_seed(1.0, 64 / 70, 0.93)], "none", 0.0, folds, "none", POINTS)
    for measure, n in POINTS.items():
        spread = summary.measures[measure]
        assert (spread.low, spread.high) == pytest.approx(
            proportion_interval(spread.mean, n), abs=1e-6
        )
    for measure in ("gap", "test_loss", "hidden_l2"):
        assert summary.measures[measure].low is None
        assert "low" not in summary.measures[measure].to_json()


def configs_json(tmp_path) -> dict:
    folds = [{"acc": 1.0, "loss": 0.1}] * 5
    configs = {
        "none": summarize_run([per_seed(1.0, 0.9, 0.9)], "none", 0.0, folds, "none", POINTS),
        "l2_1e-03": summarize_run([per_seed(1.0, 0.95, 0.94)], "l2", 1e-3, folds, "l2", POINTS),
    }
    rng = np.random.default_rng(0)
    base = {"test": rng.random(70) < 0.9, "fresh": rng.random(1000) < 0.9}
    better = {split: base[split] | (rng.random(len(base[split])) < 0.5) for split in base}
    report = evaluation(configs, "cv_acc", {"none": base, "l2_1e-03": better})
    return report.to_json()


def parse(content: dict):
    metrics = {"baseline": {"train": 1.0, "test": 0.9}}
    metrics["selected"] = {"run": "l2_1e-03", "cv": 1.0, "test": 0.95, "fresh": 0.94}
    return parse_evaluation(content, metrics, "configs.json", "metrics.json")


def test_configs_json_compares_every_configuration_with_no_remedy(tmp_path) -> None:
    content = configs_json(tmp_path)
    assert list(content["versus_baseline"]) == ["l2_1e-03"]
    fresh = content["versus_baseline"]["l2_1e-03"]["fresh"]
    assert fresh["lost"] == 0 and fresh["gained"] > 20 and fresh["p_adjusted"] < 0.001
    assert parse(content).to_json() == content


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["configs"]["none"]["test_acc"].update(low=0.95),
            "configs.json: configs.none.test_acc.low must be an interval around the mean 0.9",
        ),
        (
            lambda c: c["configs"]["none"]["test_acc"].pop("high"),
            "configs.json: configs.none.test_acc.low must be both low and high, or neither",
        ),
        (
            lambda c: c["configs"]["none"]["fresh_acc"].update(high=1.5),
            "configs.json: configs.none.fresh_acc.high must be",
        ),
        (
            lambda c: c["versus_baseline"].update(nosuch=c["versus_baseline"]["l2_1e-03"]),
            "configs.json: versus_baseline must be the name of a configuration in configs",
        ),
        (
            lambda c: c["versus_baseline"]["l2_1e-03"]["test"].update(p=float("nan")),
            "configs.json: versus_baseline.l2_1e-03.test.p must be",
        ),
        (
            lambda c: c["versus_baseline"]["l2_1e-03"]["test"].update(gained=-1),
            "configs.json: versus_baseline.l2_1e-03.test.gained",
        ),
    ],
)
def test_a_corrupt_interval_or_comparison_is_one_line_naming_the_key(
    tmp_path, edit, message: str
) -> None:
    content = configs_json(tmp_path)
    edit(content)
    with pytest.raises(ArtifactError) as refused:
        parse(content)
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)


def candidate(run: str, cv_acc: float, std: float, hidden_l2: float) -> Candidate:
    return Candidate(run, "l2", 1e-3, cv_acc, 0.3, std, 0.05, hidden_l2)


def test_one_se_takes_the_simplest_within_one_standard_error_of_the_best() -> None:
    table = [
        candidate("best", 0.967, 0.03, 9.0),
        candidate("inside", 0.94, 0.05, 4.0),  # 0.027 below: within the best's 0.03
        candidate("simplest_outside", 0.93, 0.05, 1.0),  # 0.037 below: outside
        candidate("bigger", 0.95, 0.01, 6.0),
    ]
    assert choose(table, "cv_acc") == "best"
    assert choose(table, "cv_acc", one_se=True) == "inside"
    # No spread over the folds: one standard error is nothing, and the best stays.
    flat = [candidate("best", 0.967, 0.0, 9.0), candidate("close", 0.966, 0.0, 1.0)]
    assert choose(flat, "cv_acc", one_se=True) == "best"


def test_one_se_on_the_loss_looks_upward() -> None:
    table = [
        Candidate("best", "l2", 1e-3, 0.9, 0.20, 0.0, 0.05, 9.0),
        Candidate("inside", "l2", 1e-2, 0.9, 0.24, 0.0, 0.05, 3.0),
        Candidate("outside", "l2", 1e-1, 0.9, 0.26, 0.0, 0.05, 1.0),
    ]
    assert choose(table, "cv_loss", one_se=True) == "inside"


def test_the_reports_name_the_one_se_rule_and_set_the_best_beside_it() -> None:
    # none: the lowest held-out loss (0.14, one standard error 0.0245); l2_1e-01: 0.15, within
    # it, with smaller hidden weights.
    best = [{"acc": 1.0, "loss": v} for v in (0.1, 0.1, 0.1, 0.2, 0.2)]
    close = [{"acc": 1.0, "loss": v} for v in (0.1, 0.1, 0.15, 0.2, 0.2)]
    simple = per_seed(1.0, 0.93, 0.93) | {"hidden_l2": 1.0}
    configs = {
        "none": summarize_run([per_seed(1.0, 0.9, 0.9)], "none", 0.0, best, "none", POINTS),
        "l2_1e-01": summarize_run([simple], "l2", 0.1, close, "l2", POINTS),
    }
    assert evaluation(configs, "cv_loss", folds=5).selected == "none"
    report = evaluation(configs, "cv_loss", one_se=True, folds=5)
    assert report.one_se and report.selected == "l2_1e-01"
    text = summary_markdown(report, 5)
    rule = describe("cv_loss", 5, one_se=True)
    assert rule.startswith("smallest hidden weights within one standard error of the lowest")
    assert f"Selected: **l2_1e-01**, by {rule}." in text
    assert f"| {describe('cv_loss', 5)} | none |" in text


def test_the_pipeline_reports_intervals_and_comparisons_everywhere(shrunk_pipeline) -> None:
    """configs.json, the summary and the MLflow child runs carry each accuracy's interval and
    each configuration's comparison with no remedy."""
    from mlflow.tracking import MlflowClient

    root = shrunk_pipeline.root
    report = read_evaluation(root)
    n_test = len((root / layout.TEST_CSV).read_text().splitlines()) - 1
    for config in report.configs.values():
        spread = config.measures["test_acc"]
        assert (spread.low, spread.high) == pytest.approx(
            proportion_interval(spread.mean, n_test), abs=1e-6
        )
    assert set(report.versus_baseline) == set(report.configs) - {report.baseline_run}
    summary = (root / layout.SUMMARY).read_text()
    assert "## Which differences are more than noise" in summary
    uri = f"sqlite:///{root / layout.MLFLOW_DB}"
    client = MlflowClient(tracking_uri=uri)
    selected = sweep_ids(root)["runs"][report.selected]
    logged = client.get_run(selected).data.metrics
    chosen = report.configs[report.selected].measures
    assert logged["test_acc_low"] == chosen["test_acc"].low
    assert logged["fresh_acc_high"] == chosen["fresh_acc"].high
    if report.selected != report.baseline_run:
        compared = report.versus_baseline[report.selected].fresh
        assert logged["fresh_vs_baseline_p_adjusted"] == compared.p_adjusted
        assert logged["fresh_vs_baseline_gained"] == compared.gained
    assert json.loads((root / layout.CONFIGS).read_text())["one_se"] is False


@pytest.mark.parametrize(
    ("before", "after", "low", "high"),
    [  # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10
        ((56, 70), (48, 80), 0.0524, 0.3339),
        ((9, 10), (3, 10), 0.1705, 0.8090),
    ],
)
def test_the_drop_noise_is_newcombes_interval_for_a_difference(before, after, low, high) -> None:
    (a, m), (b, n) = before, after
    p1, p2 = a / m, b / n
    w1, w2 = proportion_interval(p1, m), proportion_interval(p2, n)
    assert p1 - p2 - drop_noise(p1, w1, p2, w2) == pytest.approx(low, abs=5e-5)
    assert p1 - p2 + drop_noise(p2, w2, p1, w1) == pytest.approx(high, abs=5e-5)
