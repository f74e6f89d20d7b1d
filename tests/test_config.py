"""The schema, params.yaml against conf/, and the one-line errors for bad settings."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
import yaml

from overfit.commands import params as config_entry
from overfit.config import ConfigError, compose_params, parse_config
from overfit.stages import prepare, train
from overfit.sweep.plan import check_families

from .conftest import ROOT


def test_params_yaml_is_conf_composed() -> None:
    committed = (ROOT / "params.yaml").read_text(encoding="utf-8")
    assert committed == compose_params(ROOT), "params.yaml is stale: run `make params`"


def test_defaults_are_the_article() -> None:
    config = parse_config(yaml.safe_load(compose_params(ROOT)))
    assert (config.data.n_samples, config.data.noise, config.data.random_state) == (100, 0.2, 1)
    assert config.data.n_train == 30
    assert config.model.hidden_units == 500
    assert config.train.epochs == 4000
    assert config.penalty.kind == "none"
    assert len(config.sweep.kinds) * len(config.sweep.strengths) + config.sweep.baseline == 19
    assert (config.sweep.dropout_rates, config.sweep.patiences) == ([0.1, 0.3, 0.5], [20, 100, 500])


def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("penalty", "colour", "red", "penalty.colour: unknown key"),
        ("penalty", "kind", "l3", "penalty.kind: must be one of none, l1, l2, l1_l2"),
        ("penalty", "strength", -0.1, "penalty.strength: must be a number >= 0"),
        ("penalty", "strength", "abc", "penalty.strength: must be a number"),
        ("data", "n_train", 100, "data.n_train: must be an integer below data.n_samples"),
        ("data", "n_train", 1, "data.n_train: must be an integer >= 2"),
        ("data", "noise", -0.2, "data.noise: must be a number from 0 to 10, got -0.2"),
        ("data", "name", "squares", "data.name: must be one of moons, circles, got 'squares'"),
        ("data", "factor", 1.5, "data.factor: must be a number > 0 and < 1, got 1.5"),
        ("data", "factor", 0, "data.factor: must be a number > 0 and < 1, got 0.0"),
        ("train", "epochs", 0, "train.epochs: must be an integer > 0"),
        ("model", "hidden_units", 0, "model.hidden_units: must be an integer from 1 to 10,000"),
        # Every accepted setting runs to the end: seeds and random states as NumPy takes them,
        # sizes within what memory holds.
        ("train", "seeds", [-1], "train.seeds: must be a list of integers from 0 to 4,294,967,295"),
        ("train", "seeds", [2**32], "train.seeds: must be a list of integers from 0 to"),
        ("train", "seeds", list(range(101)), "train.seeds: must be a list of at most 100 seeds"),
        ("data", "random_state", -1, "data.random_state: must be an integer from 0 to"),
        ("data", "fresh_random_state", 2**32, "data.fresh_random_state: must be an integer from"),
        ("train", "epochs", 10**11, "train.epochs: must be an integer from 1 to 100,000"),
        ("data", "fresh_samples", 10**10, "data.fresh_samples: must be an integer from 1 to"),
        ("data", "n_samples", 10**6, "data.n_samples: must be an integer from 3 to 100,000"),
        ("model", "hidden_units", 10**5, "model.hidden_units: must be an integer from 1 to 10,000"),
        ("model", "learning_rate", "inf", "model.learning_rate: must be a finite number"),
        ("penalty", "strength", "nan", "penalty.strength: must be a finite number"),
        ("train", "seeds", [], "train.seeds: must be a non-empty list"),
        ("sweep", "strengths", [], "sweep.strengths: must be a non-empty list"),
        ("model", "dropout", 1.0, "model.dropout: must be a rate in [0, 1), got 1.0"),
        ("model", "dropout", -0.1, "model.dropout: must be a rate in [0, 1), got -0.1"),
        ("model", "constraint", "non_neg", "model.constraint: must be one of none, max_norm,"),
        ("model", "max_norm", 0, "model.max_norm: must be a number > 0, got 0.0"),
        ("sweep", "dropout_rates", [0.5, 1.0], "sweep.dropout_rates: must be a list of rates"),
        ("sweep", "patiences", [0], "sweep.patiences: must be a list of integers from 1 to"),
        ("sweep", "constraints", ["non_neg"], "sweep.constraints: must be one of max_norm,"),
        ("sweep", "max_norms", [-1.0], "sweep.max_norms: must be a list of numbers > 0"),
        ("sweep", "kinds", ["l2", "elastic"], "sweep.kinds: must be one of l1, l2, l1_l2"),
        ("select", "folds", 1, "select.folds: must be 0 (no cross-validation) or an integer"),
        ("select", "folds", 101, "select.folds: must be 0 (no cross-validation) or an integer"),
        ("select", "folds", 31, "select.folds: must be at most data.n_train (30)"),
        (
            "select",
            "metric",
            "fresh_acc",
            "select.metric: must be one of cv_acc, cv_loss, test_acc",
        ),
        ("select", "random_state", -1, "select.random_state: must be an integer from 0 to"),
        ("data", "n_samples", 3.0, "data.n_samples: must be an integer, got 3.0"),
        ("sweep", "baseline", "yes", "sweep.baseline: must be true or false, got 'yes'"),
        ("train", "early_stopping", 5, "train.early_stopping: must be a mapping, got 5"),
        ("study", "draws", 1, "study.draws: must be 0 (no study) or an integer from 2 to 1000"),
        ("study", "draws", -1, "study.draws: must be 0 (no study) or an integer from 2 to"),
        ("study", "n_train", [], "study.n_train: must be a non-empty list of integers"),
        ("study", "n_train", [30, 30], "study.n_train: must be a list of distinct integers"),
        ("study", "n_train", [1], "study.n_train: must be a list of integers from 2 to"),
        ("study", "n_train", [3], "study.n_train: must be a list of integers >= select.folds (5)"),
        ("study", "n_train", [10**4], "study.n_train: must be a list of integers n with (n + 70"),
        ("study", "select", "yes", "study.select: must be true or false, got 'yes'"),
        ("model", "noise", -0.1, "model.noise: must be a number from 0 to 1, got -0.1"),
        ("model", "noise", 1.5, "model.noise: must be a number from 0 to 1, got 1.5"),
        ("model", "noise_at", "output", "model.noise_at: must be one of input, pre_activation,"),
        ("model", "activity", "l3", "model.activity: must be one of none, l1, l2, l1_l2"),
        ("model", "activity_strength", -1e-3, "model.activity_strength: must be a number >= 0"),
        ("model", "activity_strength", 1e-3, "model.activity_strength: must be 0 when model.act"),
        ("model", "activity_at", "input", "model.activity_at: must be one of pre_activation,"),
        ("sweep", "noise_stddevs", [0.1, 0.0], "sweep.noise_stddevs: must be a list of numbers >"),
        ("sweep", "noise_stddevs", [-0.1], "sweep.noise_stddevs: must be a list of numbers > 0"),
        ("sweep", "noise_at", "hidden", "sweep.noise_at: must be one of input, pre_activation,"),
        ("sweep", "activity_kinds", ["l3"], "sweep.activity_kinds: must be one of l1, l2, l1_l2"),
        ("sweep", "activity_strengths", [-1e-3], "sweep.activity_strengths: must be a list of"),
        ("sweep", "activity_strengths", [], "sweep.activity_strengths: must be a non-empty list"),
        ("sweep", "activity_at", "input", "sweep.activity_at: must be one of pre_activation,"),
    ],
)
def test_bad_setting_is_named(section: str, key: str, value: object, message: str) -> None:
    raw = raw_params()
    raw[section][key] = value
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        parse_config(raw)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("patience", 0, "train.early_stopping.patience: must be an integer from 1 to 100,000"),
        ("monitor", "loss", "train.early_stopping.monitor: must be one of val_loss, val_accuracy"),
        ("watch", "train", "train.early_stopping.watch: must be one of none, cv, test"),
        ("min_delta", -0.1, "train.early_stopping.min_delta: must be a number >= 0"),
    ],
)
def test_bad_early_stopping_is_named(key: str, value: object, message: str) -> None:
    raw = raw_params()
    raw["train"]["early_stopping"][key] = value
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        parse_config(raw)


def test_early_stopping_needs_validation_rows() -> None:
    """On cv it watches the folds' held-out rows: without folds there are none."""
    for watch, patiences, key in (
        ("cv", [], "train.early_stopping.watch"),
        ("none", [20], "sweep.patiences"),
    ):
        raw = raw_params()
        raw["select"]["folds"] = 0
        raw["select"]["metric"] = "test_acc"
        raw["train"]["early_stopping"]["watch"] = watch
        raw["sweep"]["patiences"] = patiences
        with pytest.raises(ConfigError, match="^" + re.escape(f"{key}: must be")):
            parse_config(raw)
    raw["train"]["early_stopping"]["watch"] = "test"  # the test rows are always there
    raw["sweep"]["patiences"] = []
    assert parse_config(raw).train.early_stopping.watch == "test"


def test_early_stopping_everywhere_leaves_no_room_for_its_family() -> None:
    """With watch set, every configuration stops early, the baseline too: the patience family
    would repeat it."""
    raw = raw_params()
    raw["train"]["early_stopping"]["watch"] = "test"
    with pytest.raises(ConfigError, match=r"^sweep\.patiences: must be empty when train"):
        check_families(parse_config(raw))
    raw["sweep"]["patiences"] = []
    check_families(parse_config(raw))


def test_limits_across_settings_are_named() -> None:
    raw = raw_params()
    raw["data"]["n_samples"], raw["model"]["hidden_units"] = 100_000, 500
    with pytest.raises(ConfigError, match=r"^model\.hidden_units: must be at most 50 with"):
        parse_config(raw)
    raw = raw_params()
    raw["train"]["epochs"], raw["train"]["seeds"] = 100_000, list(range(20))
    with pytest.raises(ConfigError, match=r"^train\.epochs: must be at most 1,000,000 epochs"):
        parse_config(raw)


def test_a_study_needs_the_unregularized_run() -> None:
    raw = raw_params()
    raw["sweep"]["baseline"] = False
    with pytest.raises(ConfigError, match=r"^study\.draws: must be 0 when sweep\.baseline is"):
        parse_config(raw)
    raw["study"]["draws"] = 0  # no study: no baseline needed
    parse_config(raw)


def test_unknown_top_level_key() -> None:
    raw = raw_params() | {"optimizer": {"name": "sgd"}}
    with pytest.raises(ConfigError, match="^optimizer: unknown key"):
        parse_config(raw)
    with pytest.raises(ConfigError, match="^the configuration: must be a mapping, got None$"):
        parse_config(None)  # an empty params.yaml


def test_a_wrong_type_is_named_before_a_broken_rule() -> None:
    raw = raw_params()
    raw["data"]["noise"], raw["gate"]["baseline_min_gap"] = -1, "high"
    with pytest.raises(
        ConfigError, match=r"^gate\.baseline_min_gap: must be a number, got 'high'$"
    ):
        parse_config(raw)


def test_settings_are_frozen_checked_values() -> None:
    """A section built or replaced in code is checked as params.yaml is; equal ones hash alike."""
    config = parse_config(raw_params())
    assert hash(config.data) == hash(parse_config(raw_params()).data)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.data.noise = 0.5  # type: ignore[misc]
    with pytest.raises(ValueError, match="must be a number >= 0"):
        dataclasses.replace(config.penalty, strength=-1.0)
    # YAML 1.1 reads 1e-3 as a string: it is the number a person means.
    assert parse_config({"penalty": {"kind": "l2", "strength": "1e-3"}}).penalty.strength == 1e-3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("penalty.strength=-1", "error: penalty.strength: must be a number >= 0, got -1.0"),
        ("penalty.kind=l3", "error: penalty.kind: must be one of none, l1, l2, l1_l2, got 'l3'"),
        ("data.n_train=100", "error: data.n_train: must be an integer below data.n_samples (100)"),
        ("train.epochs=0", "error: train.epochs: must be an integer > 0, got 0"),
        ("data.name=squares", "error: data.name: must be one of moons, circles, got 'squares'"),
        ("data.factor=1.5", "error: data.factor: must be a number > 0 and < 1, got 1.5"),
        ("train.seeds=[]", "error: train.seeds: must be a non-empty list of integers, got []"),
        ("+penalty.colour=red", "error: penalty.colour: unknown key"),
    ],
)
def test_stages_exit_2_with_one_line_and_write_nothing(
    project: tuple[Path, object], entry, override: str, message: str
) -> None:
    root, _ = project
    params = root / "params.yaml"
    raw = yaml.safe_load(params.read_text(encoding="utf-8"))
    section, key = override.lstrip("+").split("=")[0].split(".")
    raw[section][key] = yaml.safe_load(override.split("=", 1)[1])
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")
    for stage in ("generate", "split"):
        status, _, err = entry(prepare.main, root, stage)
        assert status == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), err
    assert not (root / "data/raw").exists() and not (root / "data/split").exists()


def test_the_stage_entry_runs_as_a_program(project: tuple[Path, object]) -> None:
    """The same refusal through `python -m`, as DVC runs a stage."""
    root, run = project
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("epochs: 4000", "epochs: 0"), encoding="utf-8")
    result = run(sys.executable, "-m", "overfit.stages.prepare", "generate", check=False)
    assert result.returncode == 2
    assert result.stderr == "error: train.epochs: must be an integer > 0, got 0\n"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("penalty.strength=abc", "error: penalty.strength: must be a number, got 'abc'"),
        ("penalty.colour=red", "error: penalty.colour: unknown key; allowed here: kind, strength"),
        ("penalty=foo", "error: penalty=foo: no such option; choose one of l1, l1_l2, l2, none"),
        ("sweep=nosuch", "error: sweep=nosuch: no such option; choose one of article, default"),
        ("hydra/launcher=nosuch", "error: hydra/launcher=nosuch: In 'hydra/config': Could not"),
        ("train.epochs=[1", "error: bad override 'train.epochs=[1': "),
        ("optimizer.name=sgd", "error: optimizer.name: unknown key; allowed here: data, model"),
        # What the train stage refuses, make params refuses too: a setting across jobs ...
        (
            "train.early_stopping.watch=test",
            "error: sweep.patiences: must be empty when train.early_stopping.watch is cv or test",
        ),
        # ... and folds against the training rows the data settings draw (14 of one class),
        ("select.folds=15", "error: select.folds: must be at most 14 (the training rows'"),
        # a deleted setting (DVC would fail on the params it tracks), and noise that would
        # overflow the generator.
        ("~registry.name", "error: ~registry.name: every setting is required, none can be"),
        ("data.noise=1e308", "error: data.noise: must be a number from 0 to 10, got 1e+308"),
    ],
)
def test_make_params_refuses_a_bad_override(
    project: tuple[Path, object], entry, override: str, message: str
) -> None:
    root, _ = project
    before = (root / "params.yaml").read_text(encoding="utf-8")
    status, _, err = entry(config_entry.main, root, override)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), err
    assert (root / "params.yaml").read_text(encoding="utf-8") == before


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("penalty.strength=abc", "error: penalty.strength: must be a number, got 'abc'"),
        ("penalty.strength=1e-3,-1", "error: penalty.strength: must be a number >= 0, got -1.0"),
        ("penalty=elastic", "error: penalty=elastic: no such option; choose one of l1, l1_l2, l2,"),
        ("penalty.colour=red", "error: penalty.colour: unknown key; allowed here: kind, strength"),
        ("hydra/launcher=nosuch", "error: hydra/launcher=nosuch: In 'hydra/config': Could not"),
        ("penalty.kind=l2,l2", "error: sweep: two jobs would both be named 'l2_1e-03'"),
        (
            "train.early_stopping.pat=3",
            "error: train.early_stopping.pat: unknown key; allowed here: watch, monitor, "
            "patience, min_delta, restore_best_weights",
        ),
        ("train.early_stopping.patience=0", "error: train.early_stopping.patience: must be an"),
        ("penalty.strength=[", "error: bad override 'penalty.strength=[': no viable alternative"),
    ],
)
def test_bad_overrides_stop_the_sweep_before_any_run(
    project: tuple[Path, object], entry, override: str, message: str
) -> None:
    root, _ = project
    args = ("--multirun", "penalty.kind=l2", "penalty.strength=1e-3", override)
    status, _, err = entry(train.main, root, *args)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), err
    assert not (root / "mlflow.db").exists() and not (root / "models").exists()


def test_choosing_on_cross_validation_needs_folds() -> None:
    raw = {"select": {"folds": 0, "metric": "cv_loss"}}
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert str(error.value) == (
        "select.metric: must be test_acc when select.folds is 0 (cv_acc and cv_loss need "
        "cross-validation), got 'cv_loss'"
    )
    assert parse_config({"select": {"folds": 0, "metric": "test_acc"}}).select.folds == 0


def test_nested_settings_can_be_overridden() -> None:
    """`dvc exp run -S train.early_stopping.patience=50` composes as any other key."""
    text = compose_params(ROOT, ["train.early_stopping.patience=50", "model.dropout=0.3"])
    config = parse_config(yaml.safe_load(text))
    assert (config.train.early_stopping.patience, config.model.dropout) == (50, 0.3)
