"""The reports evaluate and register write, as typed readers and writers:

- evaluate's `reports/metrics.json` (`Headline`: the figures DVC shows and the gate guards),
  `reports/configs.json` (`Evaluation`, a `ConfigSummary` per configuration),
  `reports/evaluation.npz` (arrays for the figures) and the CSV tables behind the DVC plots;
- the register stage's `reports/model.json` (`ModelRecord`).

The JSON formats are pydantic models, checked whenever one is built or read: every figure is a
finite number in its range (accuracies in [0, 1], losses >= 0, ...), every key is there and no
other, and every name a report refers to exists. A file that breaks a rule is an ArtifactError
of one line: the file, the key, what is allowed and what was found.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import (
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    model_serializer,
    model_validator,
)

from overfit import layout
from overfit.artifacts import read_json, read_record, write_bytes, write_json, write_text
from overfit.config import SELECTION_METRICS
from overfit.core.uncertainty import ALPHA
from overfit.validation import (
    NON_NEGATIVE,
    Accuracy,
    ArtifactError,
    Finite,
    OneOf,
    Schema,
    Sha256,
    Strength,
    check_figure,
    describe_error,
    error_line,
    refused,
    shown,
)

# How evaluate chose: params.yaml's select.metric.
SelectionRule = Annotated[str, OneOf(SELECTION_METRICS)]
# The measures every configuration has: the headline and the figures read them.
REQUIRED_MEASURES = ("train_acc", "test_acc", "fresh_acc")


# --- evaluate's reports ----------------------------------------------------------------------


class Spread(Schema):
    """Mean and standard deviation over seeds (over folds for cv_acc and cv_loss); which
    range the mean keeps depends on the measure (`figure_bounds`). An accuracy also has its
    95% interval, `low` to `high` (core.uncertainty): over the points it is measured on (for
    cv_acc, the held-out rows)."""

    mean: Finite
    std: Annotated[float, NON_NEGATIVE]
    low: Accuracy | None = None
    high: Accuracy | None = None

    @model_validator(mode="after")
    def _interval_around_mean(self) -> Spread:
        if (self.low is None) != (self.high is None):
            raise refused("both low and high, or neither", self.low or self.high, "low")
        if self.low is not None and not self.low <= self.mean <= self.high:
            allowed = f"an interval around the mean {self.mean}"
            raise refused(allowed, [self.low, self.high], "low")
        return self

    @model_serializer(mode="wrap")
    def _without_missing_interval(self, handler: Any) -> dict[str, Any]:
        content = handler(self)
        return {k: v for k, v in content.items() if v is not None}


class Paired(Schema):
    """A configuration against the unregularized one on the same points: the points only it
    gets right, those only the unregularized one gets right, exact McNemar's p, and p adjusted
    over every configuration (Benjamini-Hochberg)."""

    gained: Annotated[StrictInt, Field(ge=0)]
    lost: Annotated[StrictInt, Field(ge=0)]
    p: Accuracy
    p_adjusted: Accuracy

    @property
    def distinguishable(self) -> bool:
        return self.p_adjusted < ALPHA


class Comparison(Schema):
    """One configuration against the unregularized one: on the test rows, and on the fresh
    sample."""

    test: Paired
    fresh: Paired


class ConfigSummary(Schema):
    """One configuration in reports/configs.json: its remedy's family (`kind`) and setting
    (`strength`), then every measure's spread over seeds, each under its own key."""

    model_config = ConfigDict(extra="allow")

    kind: StrictStr
    strength: Strength
    __pydantic_extra__: dict[str, Spread] = Field(init=False)

    @model_validator(mode="before")
    @classmethod
    def _measures_in_range(cls, data: Any) -> Any:
        for name, spread in data.items() if isinstance(data, dict) else ():
            values = spread.to_json() if isinstance(spread, Spread) else spread
            if name in ("kind", "strength") or not isinstance(values, dict):
                continue
            for stat in ("mean", "std"):
                if stat in values:
                    check_figure(name, values[stat], stat == "std", f"{name}.{stat}")
        return data

    @model_validator(mode="after")
    def _required_measures(self) -> ConfigSummary:
        for name in REQUIRED_MEASURES:
            if name not in self.measures:
                raise refused("an object with mean, std", None, name, kind="missing")
        return self

    @property
    def measures(self) -> dict[str, Spread]:
        """Every measure's spread, by name, in the file's order."""
        return self.__pydantic_extra__ or {}

    def mean(self, measure: str) -> float:
        return self.measures[measure].mean

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ConfigSummary:
        return cls.model_validate(raw)


class Baseline(Schema):
    """The unregularized configuration's mean train and test accuracy: how much it overfits."""

    train: Accuracy
    test: Accuracy


class Selected(Schema):
    """The configuration the selection rule chose, and its figures: mean held-out accuracy in
    cross-validation (None without it), then test and fresh-sample accuracy, read after."""

    run: StrictStr
    cv: Accuracy | None
    test: Accuracy
    fresh: Accuracy


class Headline(Schema):
    """reports/metrics.json: the few figures `dvc metrics show` prints and the gate guards.

    The unregularized baseline and the selected configuration; every figure is a mean
    accuracy (over seeds; cv over folds). Kept to what fits a 120-column terminal (119): the
    rule, the baseline's fresh accuracy and the rest are in configs.json.
    """

    baseline: Baseline
    selected: Selected


class Evaluation(Schema):
    """Everything evaluate reports: reports/configs.json, with metrics.json's `headline` (None
    without a baseline run to compare with, and then `{}`).

    Per configuration; the selection (`selected` by `rule`; side by side, `cv_choice`, what
    cross-validation picks, None without it, and `test_choice`, what the highest test accuracy
    picks). Every name is a configuration, the selection is the rule's choice, and the headline
    holds the configurations' own means."""

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    # The unregularized configuration (kind none), under the file's key `baseline`.
    baseline_run: StrictStr | None = Field(alias="baseline")
    selected: StrictStr
    rule: SelectionRule
    # Whether the rule took the simplest configuration within one standard error of the best.
    one_se: bool = False
    cv_choice: StrictStr | None
    test_choice: StrictStr
    configs: dict[str, ConfigSummary]
    # Each configuration against the baseline (none without a baseline).
    versus_baseline: dict[str, Comparison] = {}
    headline: Headline | None = Field(exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> Evaluation:
        if not self.configs:
            raise refused("an object with at least one configuration", {}, "configs")
        named = {
            "baseline": self.baseline_run,
            "selected": self.selected,
            "cv_choice": self.cv_choice,
            "test_choice": self.test_choice,
        }
        for key, run in named.items():
            if run is not None and run not in self.configs:
                raise refused("the name of a configuration in configs", run, key)
        for run in self.versus_baseline:
            if run not in self.configs:
                raise refused("the name of a configuration in configs", run, "versus_baseline")
        if self.baseline_run is not None and self.configs[self.baseline_run].kind != "none":
            allowed = "a configuration of kind none (the unregularized one)"
            raise refused(allowed, self.baseline_run, "baseline")
        _check_choice(self)
        _check_headline(self)
        return self

    def to_json(self) -> dict[str, Any]:
        """configs.json's content, configurations by name."""
        content = self.model_dump()
        content["configs"] = dict(sorted(content["configs"].items()))
        content["versus_baseline"] = dict(sorted(content["versus_baseline"].items()))
        return content


def _check_choice(evaluation: Evaluation) -> None:
    """The selection is what the rule picks; cross-validation's pick needs every
    configuration's cross-validation scores."""
    needs_cv = evaluation.rule != "test_acc"
    if needs_cv and evaluation.cv_choice is None:
        allowed = f"a configuration: rule {evaluation.rule} chooses by cross-validation"
        raise refused(allowed, None, "cv_choice")
    if evaluation.cv_choice is not None:
        for name, config in evaluation.configs.items():
            for measure in ("cv_acc", "cv_loss"):
                if measure not in config.measures:
                    allowed = "an object with mean, std (cv_choice is set)"
                    raise refused(allowed, None, f"configs.{name}.{measure}", kind="missing")
    chooser = "cv_choice" if needs_cv else "test_choice"
    if evaluation.selected != getattr(evaluation, chooser):
        picked = shown(getattr(evaluation, chooser))
        allowed = f"{chooser} ({picked}), what rule {evaluation.rule} picks"
        raise refused(allowed, evaluation.selected, "selected")


def _check_headline(evaluation: Evaluation) -> None:
    """metrics.json holds the baseline's and the selection's means as configs.json does."""
    headline, baseline, selected = evaluation.headline, evaluation.baseline_run, evaluation.selected
    if headline is None or baseline is None:
        if headline is not None:
            raise refused("{} (configs.json's baseline is null)", headline.to_json(), "headline")
        if baseline is not None:
            named = f"configs.json names baseline {shown(baseline)}"
            raise refused(f"an object with baseline, selected ({named})", {}, "headline")
        return
    if headline.selected.run != selected:
        allowed = f"{shown(selected)} (configs.json's selected)"
        raise refused(allowed, headline.selected.run, "headline.selected.run")
    figures = {
        "baseline.train": (baseline, "train_acc"),
        "baseline.test": (baseline, "test_acc"),
        "selected.cv": (selected, "cv_acc"),
        "selected.test": (selected, "test_acc"),
        "selected.fresh": (selected, "fresh_acc"),
    }
    for key, (run, measure) in figures.items():
        spread = evaluation.configs[run].measures.get(measure)
        want = spread.mean if spread else None
        entry, _, figure = key.partition(".")
        got = getattr(getattr(headline, entry), figure)
        if got != want:
            allowed = f"{shown(want)} (configs.json's mean {measure} of {run})"
            raise refused(allowed, got, f"headline.{key}")


def write_evaluation(root: Path, evaluation: Evaluation) -> None:
    write_json(root / layout.CONFIGS, evaluation.to_json())
    headline = evaluation.headline
    write_json(root / layout.METRICS, headline.to_json() if headline else {})


def parse_evaluation(
    configs: Any, metrics: Any, configs_name: str, metrics_name: str
) -> Evaluation:
    """configs.json's and metrics.json's content (parsed JSON) as one Evaluation. The
    ArtifactError names the file at fault; metrics.json when it disagrees with configs.json."""
    headline = None if metrics == {} else Headline.parse(metrics, metrics_name)
    content = {**configs, "headline": headline} if isinstance(configs, dict) else configs
    try:
        return Evaluation.model_validate(content)
    except ValidationError as error:
        key, problem = describe_error(Evaluation, error)
    if key.split(".")[0] == "headline":
        key = key.removeprefix("headline").removeprefix(".")
        raise ArtifactError(error_line(metrics_name, key, problem))
    raise ArtifactError(error_line(configs_name, key, problem))


def read_evaluation(root: Path) -> Evaluation:
    missing = "run the evaluate stage first"
    configs, metrics = root / layout.CONFIGS, root / layout.METRICS
    return parse_evaluation(
        read_json(configs, missing), read_json(metrics, missing), str(configs), str(metrics)
    )


# --- the study across draws ------------------------------------------------------------------


class Effect(Schema):
    """A configuration's effect against the unregularized run across draws: the mean of its
    per-draw differences, their 95% t interval, the t test's p and p adjusted over the size's
    configurations (Benjamini-Hochberg), and the share of draws where it helped."""

    mean: Finite
    low: Finite
    high: Finite
    p: Accuracy
    p_adjusted: Accuracy
    helped: Accuracy

    @model_validator(mode="after")
    def _interval_around_mean(self) -> Effect:
        if not self.low <= self.mean <= self.high:
            allowed = f"an interval around the mean {self.mean}"
            raise refused(allowed, [self.low, self.high], "low")
        return self

    @property
    def distinguishable(self) -> bool:
        return self.p_adjusted < ALPHA


Draws = list[Accuracy]
PerDraw = list[Annotated[float, NON_NEGATIVE]]


class ConfigStudy(Schema):
    """One configuration on every draw of one size, lists by draw: its accuracies, test loss
    (without the penalty) and hidden weights' size (hidden_l2); with the study's selection its
    cross-validation (the folds' mean held-out accuracy and loss, and their standard errors);
    and its effects against the unregularized run across draws, on fresh accuracy (up is
    better) and on the gap between train and test accuracy (down is better), none for the
    unregularized run itself."""

    kind: StrictStr
    strength: Strength
    train_acc: Draws
    test_acc: Draws
    fresh_acc: Draws
    test_loss: PerDraw
    hidden_l2: PerDraw
    cv_acc: Draws | None = None
    cv_loss: PerDraw | None = None
    cv_acc_se: PerDraw | None = None
    cv_loss_se: PerDraw | None = None
    fresh_effect: Effect | None = None
    gap_effect: Effect | None = None

    @model_serializer(mode="wrap")
    def _without_missing(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

    @property
    def per_draw(self) -> dict[str, list[float]]:
        """Every figure it has by draw, by name."""
        names = ("train_acc", "test_acc", "fresh_acc", "test_loss", "hidden_l2")
        names += ("cv_acc", "cv_loss", "cv_acc_se", "cv_loss_se")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class SelectionStudy(Schema):
    """The selection repeated on every draw: its pick by draw; the pick's fresh accuracy
    against the unregularized run's and against the best one's in hindsight; and how far the
    score it was picked on overstates its fresh accuracy (the winner's curse)."""

    picks: list[StrictStr]
    versus_baseline: Effect
    versus_hindsight: Effect
    overstatement: Effect


class SizeStudy(Schema):
    n_train: StrictInt
    configs: dict[str, ConfigStudy]


class Study(Schema):
    """reports/study.json: the sweep on `draws` draws of the data at each training-set size,
    each draw with its own seed and random state, all measured on the one fresh sample. Empty
    (`draws` 0, no sizes) when the study is off."""

    draws: StrictInt
    baseline: StrictStr | None
    seeds: list[StrictInt]
    random_states: list[StrictInt]
    test_rows: StrictInt
    fresh_samples: StrictInt
    sizes: list[SizeStudy]

    @model_validator(mode="after")
    def _consistent(self) -> Study:
        for key in ("seeds", "random_states"):
            if len(getattr(self, key)) != self.draws:
                raise refused(f"a list of {self.draws} (one per draw)", getattr(self, key), key)
        for i, size in enumerate(self.sizes):
            if self.baseline not in size.configs:
                raise refused("a configuration of every size", self.baseline, "baseline")
            for name, config in size.configs.items():
                for measure, values in config.per_draw.items():
                    if len(values) != self.draws:
                        key = f"sizes.{i}.configs.{name}.{measure}"
                        raise refused(f"a list of {self.draws} (one per draw)", values, key)
                measured = name == self.baseline or config.fresh_effect is not None
                if not measured:
                    key = f"sizes.{i}.configs.{name}.fresh_effect"
                    raise refused("an effect against the baseline", None, key, kind="missing")
        return self

    def size(self, n_train: int) -> SizeStudy | None:
        return next((s for s in self.sizes if s.n_train == n_train), None)


def write_study(root: Path, study: Study) -> None:
    write_json(root / layout.STUDY, study.to_json())


def read_study(root: Path) -> Study:
    return read_record(Study, root / layout.STUDY, "run the study stage first (dvc repro)")


# --- the registered model --------------------------------------------------------------------


class ModelRecord(Schema):
    """reports/model.json: the model the register stage registered (or found already
    registered): which configuration and seed, the rule that chose it, its figures (the
    configuration's means; `seed_test` is this seed's own test accuracy) and its content digest.
    The version number is the store's, so it lives in the store only."""

    name: StrictStr
    run: StrictStr
    seed: StrictInt
    rule: SelectionRule
    cv: Accuracy | None
    test: Accuracy
    fresh: Accuracy
    seed_test: Accuracy
    # What the model is made of (the .keras file and the model code): its version in the
    # registry is the one tagged overfit.model_sha256 with this value.
    model_sha256: Sha256


def write_model_record(root: Path, record: ModelRecord) -> None:
    write_json(root / layout.MODEL_RECORD, record.to_json())


def read_model_record(root: Path) -> ModelRecord:
    missing = "run the register stage first (dvc repro)"
    return read_record(ModelRecord, root / layout.MODEL_RECORD, missing)


def write_arrays(root: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """reports/evaluation.npz: decision-boundary grids and hidden kernels, for the figures."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes(root / layout.EVALUATION, buffer.getvalue())


def read_arrays(root: Path, runs: Iterable[str]) -> dict[str, np.ndarray]:
    """evaluation.npz, with pickling off (nothing read from disk is unpickled), checked: the
    grid, and each run's probabilities and hidden kernels, all finite numbers. Anything else
    is an ArtifactError naming the file and what is wrong."""
    path = root / layout.EVALUATION
    again = "rerun the evaluate stage (dvc repro -f evaluate)"
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; run the evaluate stage first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise ArtifactError(
            f"{path}: not an archive of numeric arrays (pickled data is never loaded); {again}"
        ) from None
    for name in ["grid", *(f"{kind}/{run}" for run in runs for kind in ("proba", "kernels"))]:
        if name not in arrays:
            raise ArtifactError(f"{path}: no array {name!r}; {again}")
        if arrays[name].dtype.kind not in "fiu" or not np.isfinite(arrays[name]).all():
            raise ArtifactError(f"{path}: array {name!r} must hold finite numbers; {again}")
    return arrays


# --- the tables behind the DVC plots ---------------------------------------------------------

STRENGTH_COLUMNS = (
    "run",
    "kind",
    "strength",
    "cv_acc",
    "test_acc",
    "fresh_acc",
    "train_acc",
    "gap",
)
CURVE_COLUMNS = ("train_accuracy", "test_accuracy", "train_std", "test_std")


def write_strength_table(root: Path, configs: Mapping[str, ConfigSummary]) -> None:
    """Accuracy against penalty strength, one row per regularized configuration (cv_acc empty
    without cross-validation)."""
    rows = [",".join(STRENGTH_COLUMNS)]
    for name, c in sorted(configs.items(), key=lambda kv: (kv[1].kind, kv[1].strength)):
        values = [c.mean(k) if k in c.measures else "" for k in STRENGTH_COLUMNS[3:]]
        rows.append(f"{name},{c.kind},{c.strength!r}," + ",".join(map(str, values)))
    write_text(root / layout.STRENGTH_TABLE, "\n".join(rows) + "\n")


def write_curves_table(root: Path, curves: Mapping[str, np.ndarray]) -> None:
    """Per-epoch accuracy by label (baseline, selected): [epochs, 4], CURVE_COLUMNS' columns."""
    rows = ["epoch,run," + ",".join(CURVE_COLUMNS)]
    for label, table in curves.items():
        rows += [
            f"{epoch},{label}," + ",".join(f"{v:.6g}" for v in values)
            for epoch, values in enumerate(table.tolist(), start=1)
        ]
    write_text(root / layout.CURVES_TABLE, "\n".join(rows) + "\n")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; run the evaluate stage first") from None
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


def read_curves_table(root: Path) -> dict[str, np.ndarray]:
    by_label: dict[str, list[list[float]]] = {}
    for row in _csv_rows(root / layout.CURVES_TABLE):
        by_label.setdefault(row["run"], []).append([float(row[k]) for k in CURVE_COLUMNS])
    return {label: np.array(rows) for label, rows in by_label.items()}
