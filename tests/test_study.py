"""The study across draws of the data: its draws, its statistics (against published values), its
report's schema, and its training (each draw's models as they would train alone)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import false_discovery_control

from overfit.artifacts import ArtifactError
from overfit.config import compose_jobs, parse_config
from overfit.core.data import drawn_split, make_points
from overfit.core.study import (
    config_study,
    effect_across_draws,
    selection_study,
    size_study,
    study_split,
)
from overfit.reports import ConfigStudy, Effect, Study
from overfit.sweep.plan import job_overrides

from .conftest import ROOT

# Student's sleep data (Cushny and Peebles 1905): extra hours of sleep, drug 2 minus drug 1,
# paired by patient. R's `t.test(extra ~ group, data = sleep, paired = TRUE)` publishes
# t = -4.0621, df = 9, p-value = 0.002833, 95% interval -2.4598858 to -0.7001142, mean -1.58.
SLEEP_DIFFERENCES = [1.2, 2.4, 1.3, 1.3, 0.0, 1.0, 1.8, 0.8, 4.6, 1.4]


def base_config(**sections: dict) -> object:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for section, values in sections.items():
        raw[section] |= values
    return parse_config(raw)


def test_an_effect_across_draws_is_students_t_as_published() -> None:
    effect = effect_across_draws(SLEEP_DIFFERENCES)
    assert effect.mean == pytest.approx(1.58)
    assert (effect.low, effect.high) == pytest.approx((0.7001142, 2.4598858), abs=1e-6)
    assert effect.p == pytest.approx(0.002833, abs=1e-6)
    assert effect.helped == 0.9  # one patient slept no longer
    # The gap: lower is better, so a draw helped when the difference is negative.
    gap = effect_across_draws([-d for d in SLEEP_DIFFERENCES], better=-1.0)
    assert (gap.mean, gap.low, gap.helped) == (-effect.mean, -effect.high, 0.9)


def test_an_effect_without_spread_is_its_mean_alone() -> None:
    same = effect_across_draws([0.0, 0.0, 0.0])
    assert (same.mean, same.low, same.high, same.p, same.helped) == (0, 0, 0, 1.0, 0.0)
    constant = effect_across_draws([0.02, 0.02])
    assert (constant.low, constant.high, constant.p, constant.helped) == (0.02, 0.02, 0.0, 1.0)


def figures(kind: str, fresh: list[float], train: float = 1.0, test: float = 0.9) -> ConfigStudy:
    n = len(fresh)
    per_draw = {"train_acc": [train] * n, "test_acc": [test] * n, "fresh_acc": fresh}
    per_draw |= {"test_loss": [0.3] * n, "hidden_l2": [1.0] * n}
    return config_study(kind, 0.01 if kind != "none" else 0.0, per_draw)


def test_effects_are_paired_by_draw_and_adjusted_over_the_configurations() -> None:
    rng = np.random.default_rng(0)
    none = list(0.85 + 0.05 * rng.random(8))
    table = {
        "none": figures("none", none),
        "l2_1e-02": figures("l2", [v + 0.02 + 0.01 * rng.random() for v in none], test=0.95),
        "l1_1e-02": figures("l1", [v + 0.01 * (rng.random() - 0.5) for v in none]),
    }
    study = size_study(30, table, "none")
    assert study.configs["none"].fresh_effect is None
    baseline = table["none"].fresh_acc  # as the report keeps it: rounded to 6 decimals
    raw = {
        n: effect_across_draws(np.subtract(table[n].fresh_acc, baseline))
        for n in table
        if n != "none"
    }
    assert {n: study.configs[n].fresh_effect.p for n in raw} == {n: e.p for n, e in raw.items()}
    names = sorted(raw)
    expected = false_discovery_control([raw[n].p for n in names], method="bh")
    got = [study.configs[n].fresh_effect.p_adjusted for n in names]
    assert got == pytest.approx(list(expected), abs=1e-6)
    better = study.configs["l2_1e-02"]
    assert better.fresh_effect.distinguishable and better.fresh_effect.helped == 1.0
    # Its gap shrank by 0.05 on every draw: lower is better.
    assert (better.gap_effect.mean, better.gap_effect.helped) == (-0.05, 1.0)
    assert not study.configs["l1_1e-02"].fresh_effect.distinguishable


def test_the_selection_on_every_draw_measures_the_winners_curse() -> None:
    def with_cv(f: ConfigStudy, cv: list[float]) -> ConfigStudy:
        n = len(cv)
        folds = {"cv_acc": cv, "cv_loss": [0.3] * n, "cv_acc_se": [0.0] * n}
        return f.model_copy(update=folds | {"cv_loss_se": [0.0] * n})

    table = {
        "none": with_cv(figures("none", [0.80, 0.80, 0.80]), [0.90, 0.90, 0.90]),
        "a": with_cv(figures("l2", [0.85, 0.70, 0.86]), [0.95, 0.97, 0.96]),
        "b": with_cv(figures("l1", [0.90, 0.90, 0.80]), [0.93, 0.93, 0.97]),
    }
    study = selection_study(table, "none", "cv_acc")
    assert study.picks == ["a", "a", "b"]  # the best cv score on each draw
    assert study.versus_baseline.mean == pytest.approx((0.05 - 0.10 + 0.00) / 3, abs=1e-6)
    # In hindsight b, b, a were best: 0.90, 0.90, 0.86.
    assert study.versus_hindsight.mean == pytest.approx((-0.05 - 0.20 - 0.06) / 3, abs=1e-6)
    assert study.overstatement.mean == pytest.approx((0.10 + 0.27 + 0.17) / 3, abs=1e-6)
    assert study.overstatement.helped == 0.0  # the score never understated the fresh accuracy


def test_the_first_draw_is_the_articles_own_and_the_test_rows_stay() -> None:
    config = base_config()
    train, test = study_split(config.data, config.data.n_train, 0)
    article = drawn_split(config.data)
    np.testing.assert_array_equal(train.x, article[0].x)
    np.testing.assert_array_equal(test.y, article[1].y)
    other, other_test = study_split(config.data, config.data.n_train, 1)
    assert not np.array_equal(other.x, train.x)
    larger, larger_test = study_split(config.data, 100, 1)
    assert (len(larger), len(larger_test)) == (100, len(test))


def test_a_study_model_starts_where_its_own_keras_model_would() -> None:
    """The study builds one Keras model per configuration and gives it each draw's seed: the
    same start as building that configuration's model with that seed."""
    from overfit.core.keras_state import read_start
    from overfit.core.model import build_configured, build_model
    from overfit.sweep.draws import seeded_start

    for overrides in (
        {"model": {"dropout": 0.3}},
        {"model": {"constraint": "max_norm", "max_norm": 0.5}},
        {"penalty": {"kind": "l1_l2", "strength": 1e-3, "apply_to": "all"}},
    ):
        model = {"hidden_units": 16, **overrides.get("model", {})}
        config = base_config(**{**overrides, "model": model})
        template = read_start(build_configured(config, 1))
        for seed in (2, 9):
            weights = read_start(build_model(16, seed=seed)).weights
            ours, theirs = (
                seeded_start(template, weights, seed),
                read_start(build_configured(config, seed)),
            )
            for a, b in zip(ours.weights, theirs.weights, strict=True):
                np.testing.assert_array_equal(a, b)
            assert (ours.dropout, ours.penalties, ours.constraint) == (
                theirs.dropout, theirs.penalties, theirs.constraint
            )  # fmt: skip


def test_draws_trained_in_groups_are_bit_identical_to_the_whole_study() -> None:
    """The study's models, trained all together or a group of draws at a time, get the same
    figures bit for bit: the rows are padded to counts the settings fix."""
    from overfit.sweep.draws import measure_jobs, plan_jobs, study_rows, train_jobs

    config = base_config(
        model={"hidden_units": 16},
        train={"epochs": 30, "seeds": [1]},
        study={"draws": 3, "n_train": [20, 30], "select": True},
    )
    text = yaml.safe_dump(config.to_dict())
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "params.yaml").write_text(text, encoding="utf-8")
        overrides = [
            *job_overrides(["penalty={kind:none,strength:0.0},{kind:l2,strength:0.01}"]),
            ["model.dropout=0.3"],
            ["train.early_stopping.watch=cv", "train.early_stopping.patience=3"],
        ]
        configs = [job.config for job in compose_jobs(Path(folder), overrides)]
    fresh = make_points("moons", 300, 0.2, 10)
    rows = study_rows(config.data, config.study.n_train, config.select.folds)
    jobs = plan_jobs(configs, config)
    whole = measure_jobs(jobs, *train_jobs(jobs, rows), fresh, True)
    for draw in range(3):
        group = [job for job in jobs if job.draw == draw]
        alone = measure_jobs(group, *train_jobs(group, rows), fresh, True)
        for size, by_name in alone.items():
            for name, figures_alone in by_name.items():
                together = whole[size][name].per_draw
                assert set(figures_alone.per_draw) == set(together)
                for measure, values in figures_alone.per_draw.items():
                    assert values == [together[measure][draw]], (size, name, measure)
    # The draws differ: the figures are not one draw's, repeated.
    assert len(set(whole[30]["none"].fresh_acc)) > 1


def effect(**values: float) -> dict:
    return {
        "mean": 0.01,
        "low": -0.01,
        "high": 0.03,
        "p": 0.3,
        "p_adjusted": 0.5,
        "helped": 0.6,
    } | values


def study_json(**changes: object) -> dict:
    figures = {"train_acc": [1.0, 1.0], "test_acc": [0.9, 0.8], "test_loss": [0.3, 0.4]}
    figures |= {"hidden_l2": [1.0, 2.0]}
    config = {"kind": "l2", "strength": 0.01, **figures, "fresh_acc": [0.9, 0.91]}
    config |= {"fresh_effect": effect(), "gap_effect": effect()}
    none = {"kind": "none", "strength": 0.0, **figures, "fresh_acc": [0.89, 0.9]}
    raw = {
        "draws": 2,
        "baseline": "none",
        "seeds": [1, 2],
        "random_states": [1, 2],
        "test_rows": 70,
        "fresh_samples": 500,
        "sizes": [{"n_train": 30, "configs": {"none": none, "l2_1e-02": config}}],
    }
    return raw | changes


def test_the_study_report_refuses_what_it_cannot_be() -> None:
    Study.parse(study_json(), "study.json")
    with pytest.raises(ArtifactError, match=r"^study\.json: seeds must be a list of 2"):
        Study.parse(study_json(seeds=[1]), "study.json")
    raw = study_json()
    raw["sizes"][0]["configs"]["l2_1e-02"]["fresh_acc"] = [0.9]
    with pytest.raises(ArtifactError, match=r"configs\.l2_1e-02\.fresh_acc must be a list of 2"):
        Study.parse(raw, "study.json")
    raw = study_json()
    raw["sizes"][0]["configs"]["l2_1e-02"]["fresh_effect"] = effect(mean=0.05)
    with pytest.raises(
        ArtifactError, match=r"fresh_effect\.low must be an interval around the mean 0\.05,"
    ):
        Study.parse(raw, "study.json")
    with pytest.raises(ArtifactError, match=r"^study\.json: baseline must be a configuration"):
        Study.parse(study_json(baseline="l1"), "study.json")
    raw = study_json()
    del raw["sizes"][0]["configs"]["l2_1e-02"]["fresh_effect"]
    with pytest.raises(ArtifactError, match=r"fresh_effect is missing"):
        Study.parse(raw, "study.json")
    raw = study_json()
    raw["sizes"][0]["configs"]["l2_1e-02"]["fresh_acc"] = [0.9, 1.5]
    with pytest.raises(ArtifactError, match=r"fresh_acc\.1"):
        Study.parse(raw, "study.json")
    assert Effect(**effect(p_adjusted=0.01)).distinguishable
