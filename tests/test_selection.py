"""Choosing a configuration: folds inside the training rows, and the rule on hand-made tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml

from overfit.config import ConfigError, PenaltyConfig, SelectConfig, parse_config
from overfit.core.remedies import Remedy, remedy_of, run_name, watched_test
from overfit.core.selection import (
    Candidate,
    check_folds,
    choose,
    choose_on_test,
    cv_scores,
    describe,
    fold_seed,
    folds,
    rank,
)
from overfit.sweep.plan import job_overrides, sweep_overrides

from .conftest import ROOT

LABELS = np.array([0, 1] * 15)


@pytest.mark.parametrize("k", [2, 3, 5, 15])
def test_folds_partition_the_training_rows_and_are_stratified(k):
    held_out = folds(LABELS, SelectConfig(folds=k, random_state=7))
    assert len(held_out) == k
    counts = np.sum(held_out, axis=0)
    assert counts.tolist() == [1] * len(LABELS)  # every row held out exactly once
    for mask in held_out:
        # Each fold holds out the classes in the proportions of the training rows (15/15).
        ones, zeros = int(LABELS[mask].sum()), int((1 - LABELS[mask]).sum())
        assert abs(ones - zeros) <= 1
        assert ones >= 1 and zeros >= 1


def test_folds_are_shuffled_by_the_random_state_and_repeatable():
    a = folds(LABELS, SelectConfig(folds=5, random_state=0))
    b = folds(LABELS, SelectConfig(folds=5, random_state=0))
    c = folds(LABELS, SelectConfig(folds=5, random_state=1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # Shuffled: the first fold is not the first rows.
    assert not a[0][: int(a[0].sum())].all()


def test_more_folds_than_a_class_has_rows_is_refused_in_one_line():
    labels = np.array([0] * 27 + [1] * 3)
    with pytest.raises(ConfigError) as error:
        check_folds(labels, SelectConfig(folds=5))
    assert str(error.value) == (
        "select.folds: must be at most 3 (the training rows' smallest class), so that every "
        "fold holds out each class, got 5"
    )
    check_folds(labels, SelectConfig(folds=3))  # enough rows of each class


def test_fold_seeds_cycle_through_the_training_seeds():
    assert [fold_seed([1, 2], i) for i in range(5)] == [1, 2, 1, 2, 1]
    assert [fold_seed([4, 5, 6, 7, 8], i) for i in range(5)] == [4, 5, 6, 7, 8]


def test_cv_scores_are_mean_and_spread_over_folds():
    scores = cv_scores([{"acc": 1.0, "loss": 0.1}, {"acc": 0.5, "loss": 0.3}])
    assert scores["mean"] == {"cv_acc": 0.75, "cv_loss": pytest.approx(0.2)}
    assert scores["std"] == {"cv_acc": 0.25, "cv_loss": pytest.approx(0.1)}


def c(run, kind, strength, acc, loss):
    return Candidate(run, kind, strength, acc, loss)


def test_the_rule_picks_the_highest_cv_accuracy():
    table = [
        c("none", "none", 0.0, 0.90, 0.30),
        c("l2_1e-03", "l2", 1e-3, 0.95, 0.40),
        c("l1_1e-02", "l1", 1e-2, 0.93, 0.10),
    ]
    assert choose(table, "cv_acc") == "l2_1e-03"
    assert choose(table, "cv_loss") == "l1_1e-02"
    assert rank(table, "cv_acc") == ["l2_1e-03", "l1_1e-02", "none"]


def test_ties_go_to_the_lower_loss_then_the_stronger_then_the_simpler_penalty():
    # Equal accuracy (29 of 30, summed in different orders): the held-out loss decides.
    table = [
        c("l1_1e-04", "l1", 1e-4, 29 / 30, 0.30),
        c("l2_1e-01", "l2", 1e-1, (1 + 1 + 1 + 1 + 5 / 6) / 5, 0.29),
        c("l1_l2_1e-03", "l1_l2", 1e-3, 29 / 30, 0.27),
        c("none", "none", 0.0, 28 / 30, 0.01),
    ]
    assert table[1].cv_acc != table[0].cv_acc  # a float tie, not an exact one
    assert rank(table, "cv_acc") == ["l1_l2_1e-03", "l2_1e-01", "l1_1e-04", "none"]
    # Equal loss too: the stronger penalty; equal strength: the one with fewer terms.
    same = [
        c("l1_1e-03", "l1", 1e-3, 0.9, 0.2),
        c("l1_l2_1e-02", "l1_l2", 1e-2, 0.9, 0.2),
        c("l1_l2_1e-03", "l1_l2", 1e-3, 0.9, 0.2),
        c("none", "none", 0.0, 0.9, 0.2),
    ]
    assert rank(same, "cv_acc") == ["l1_l2_1e-02", "l1_1e-03", "l1_l2_1e-03", "none"]
    # Equal in everything: by name, whatever the order given.
    twins = [c("l2_1e-03", "l2", 1e-3, 0.9, 0.2), c("l1_1e-03", "l1", 1e-3, 0.9, 0.2)]
    assert choose(twins, "cv_acc") == choose(twins[::-1], "cv_acc") == "l1_1e-03"


def test_the_rule_cannot_see_test_or_fresh_figures():
    fields = {f.name for f in dataclasses.fields(Candidate)}
    assert fields == {
        "run", "kind", "strength", "cv_acc", "cv_loss", "cv_acc_se", "cv_loss_se", "hidden_l2"
    }  # fmt: skip
    table = [c("l1_1e-03", "l1", 1e-3, 0.9, 0.2)]
    with pytest.raises(ValueError, match="cv_acc or cv_loss"):
        choose(table, "test_acc")


def test_the_articles_rule_picks_on_test_and_breaks_ties_the_same_way():
    test = {"none": 0.914, "l1_1e-03": 0.949, "l2_1e-03": 0.949}
    kinds = {"none": "none", "l1_1e-03": "l1", "l2_1e-03": "l2"}
    strengths = {"none": 0.0, "l1_1e-03": 1e-3, "l2_1e-03": 1e-3}
    assert choose_on_test(test, kinds, strengths, {"none": 0, "l1_1e-03": 2, "l2_1e-03": 1}) == (
        "l2_1e-03"
    )
    assert choose_on_test(test, kinds, strengths, {"none": 0, "l1_1e-03": 1, "l2_1e-03": 1}) == (
        "l1_1e-03"
    )


def test_every_report_labels_the_test_rule_optimistic():
    assert describe("test_acc", 5) == "highest test accuracy, chosen on the test set (optimistic)"
    assert describe("cv_acc", 5) == (
        "highest mean held-out accuracy in 5-fold cross-validation on the training rows"
    )
    assert "optimistic" not in describe("cv_loss", 3)


def test_run_names_name_every_remedy_without_dots() -> None:
    base = parse_config(yaml.safe_load((ROOT / "params.yaml").read_text()))

    def named(**changes: object) -> str:
        model = dataclasses.replace(base.model, **{k: v for k, v in changes.items() if k in (
            "dropout", "constraint", "max_norm")})  # fmt: skip
        stopping = dataclasses.replace(base.train.early_stopping, **{
            k: v for k, v in changes.items() if k in ("watch", "patience", "monitor")})  # fmt: skip
        train = dataclasses.replace(base.train, early_stopping=stopping)
        return run_name(dataclasses.replace(base, model=model, train=train))

    assert named() == "none"
    assert named(dropout=0.25) == "dropout_0p25"
    assert named(constraint="max_norm", max_norm=0.5) == "max_norm_0p5"
    assert named(constraint="unit_norm") == "unit_norm"
    assert named(watch="cv", patience=20) == "patience_20"
    assert named(watch="test", patience=20, monitor="val_accuracy") == "patience_20_acc_test"
    assert watched_test("patience_20_acc_test") and not watched_test("patience_20")
    assert remedy_of(base).kind == "none"
    with_two = dataclasses.replace(base, model=dataclasses.replace(base.model, dropout=0.5))
    with_two = dataclasses.replace(with_two, penalty=PenaltyConfig("l2", 1e-3))
    assert run_name(with_two) == "l2_1e-03_dropout_0p5"
    assert remedy_of(with_two) == Remedy("l2", 1e-3)


def test_the_default_sweep_has_every_family() -> None:
    config = parse_config(yaml.safe_load((ROOT / "params.yaml").read_text()))
    multiruns = sweep_overrides(config.sweep)
    jobs = [job for m in multiruns for job in job_overrides(m)]
    assert len(jobs) == 1 + 3 * 6 + 3 + 3 + 3 + 1 + 3 + 4
    assert ["model.dropout=0.1"] in jobs
    assert ["train.early_stopping.watch=cv", "train.early_stopping.patience=20"] in jobs
    assert ["model.constraint=max_norm", "model.max_norm=0.25"] in jobs
    assert ["model.constraint=unit_norm"] in jobs
    assert ["model.noise=0.3", "model.noise_at=input"] in jobs
    activity = ["model.activity=l1", "model.activity_strength=1e-05"]
    assert [*activity, "model.activity_at=post_activation"] in jobs


def test_a_smaller_patience_or_norm_counts_as_stronger() -> None:
    """Across a tie, the rule prefers the stronger setting: a higher rate, a lower patience or
    max norm."""
    assert Remedy("early_stopping", 20).strength > Remedy("early_stopping", 500).strength
    assert Remedy("max_norm", 0.25).strength > Remedy("max_norm", 1.0).strength
    assert Remedy("dropout", 0.5).strength > Remedy("dropout", 0.1).strength
    tie = [
        Candidate(
            "patience_500", "early_stopping", Remedy("early_stopping", 500).strength, 0.9, 0.3
        ),
        Candidate("patience_20", "early_stopping", Remedy("early_stopping", 20).strength, 0.9, 0.3),
    ]
    assert choose(tie, "cv_acc") == "patience_20"
