"""The settings: one frozen pydantic dataclass per section of params.yaml, validated when built.

Each field states its type and the rule it keeps, with the words the one-line error uses
(`<key>: must be <allowed>, got <value>`); rules across fields are the sections' validators.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from dataclasses import asdict, field
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BeforeValidator,
    ConfigDict,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

Remedy = Literal["l1", "l2", "l1_l2"]
PenaltyKind = Literal["none", Remedy]
SelectionMetric = Literal["cv_acc", "cv_loss", "test_acc"]
SelectionRuleName = Literal["best", "one_se"]
PENALTY_KINDS: tuple[str, ...] = typing.get_args(PenaltyKind)
# Where a Gaussian noise layer adds its noise: to the inputs, to the hidden layer's outputs
# before the ReLU, or after it; and where an activity penalty measures the hidden layer.
NoisePlace = Literal["input", "pre_activation", "post_activation"]
ActivityPlace = Literal["pre_activation", "post_activation"]
NOISE_PLACES: tuple[str, ...] = typing.get_args(NoisePlace)
ACTIVITY_PLACES: tuple[str, ...] = typing.get_args(ActivityPlace)
SELECTION_METRICS: tuple[str, ...] = typing.get_args(SelectionMetric)

# What NumPy, scikit-learn and Keras accept as a seed or random state.
SEED_MAX = 2**32 - 1
# Upper bounds from memory, so that an accepted setting runs to the end on a machine like the
# one the project is built on (2 cores, 24 GiB). The stacked loop holds several float32 tensors
# of 16 models x rows x hidden units at once; evaluate holds the fresh sample and a row per
# point of it; every epoch of every seed is kept in memory and in history.csv.
MAX_SAMPLES = 100_000
MAX_FRESH_SAMPLES = 1_000_000
MAX_HIDDEN_UNITS = 10_000
MAX_ROWS_X_UNITS = 5_000_000  # data.n_samples x model.hidden_units: ~0.3 GB per tensor
MAX_EPOCHS = 100_000
MAX_SEEDS = 100
MAX_EPOCHS_X_SEEDS = 1_000_000  # train.epochs x len(train.seeds): the curves of one job
MAX_FOLDS = 100  # select.folds: one model per fold, trained beside the seeds
MAX_DRAWS = 1000  # study.draws: every configuration trains once per draw and size

# Unknown keys are refused; every section is a frozen, hashable value (when it holds no list).
SECTION = ConfigDict(extra="forbid")


def broken(allowed: str, got: Any, key: str = "", kind: str = "rule") -> PydanticCustomError:
    """A refused value, worded by errors.py as `<key>: must be <allowed>, got <got>`; `key` is
    dotted from the section that raised it ("": the section itself). A `rule` is broken by a
    value of the right type; any other kind is a value of the wrong type, which errors.py names
    first."""
    context = {"allowed": allowed, "got": got, "key": key}
    return PydanticCustomError(kind, "must be {allowed}", context)


def require(ok: bool, key: str, allowed: str, got: Any) -> None:
    """A rule across fields, checked by the section that holds them."""
    if not ok:
        raise broken(allowed, got, key)


def rule(ok: Callable[[Any], bool], allowed: str) -> AfterValidator:
    """A field's rule, on its value once it has the field's type."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise broken(allowed, value)
        return value

    return AfterValidator(check)


def between(low: int, high: int, *, each: bool = False) -> AfterValidator:
    what = "a list of integers" if each else "an integer"
    return rule(lambda n: low <= n <= high, f"{what} from {low} to {high:,}")


def _number(value: Any) -> Any:
    # YAML 1.1 reads `1e-3` (no dot) as a string: accept it, as a person would mean it.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise broken("a number", value, kind="number") from None
    return value


# A finite float; an integer is taken as one, true and false are not.
Number = Annotated[float, Strict(), AllowInfNan(False), BeforeValidator(_number)]
NonNegative = Annotated[Number, rule(lambda x: x >= 0, "a number >= 0")]
Positive = Annotated[Number, rule(lambda x: x > 0, "a number > 0")]
Seed = Annotated[StrictInt, between(0, SEED_MAX)]


@dataclass(frozen=True, config=SECTION)
class DataConfig:
    name: Literal["moons", "circles"] = "moons"
    n_samples: Annotated[StrictInt, between(3, MAX_SAMPLES)] = 100
    # Beyond 10 the points are noise alone (the shapes span about 3 units); far beyond, the
    # generator's Gaussian noise overflows to infinity.
    noise: Annotated[Number, rule(lambda x: 0 <= x <= 10, "a number from 0 to 10")] = 0.2
    random_state: Seed = 1
    n_train: Annotated[StrictInt, rule(lambda n: n >= 2, "an integer >= 2")] = 30
    fresh_samples: Annotated[StrictInt, between(1, MAX_FRESH_SAMPLES)] = 10000
    fresh_random_state: Seed = 10
    # make_circles' scale between the inner and the outer circle (circles only).
    factor: Annotated[Number, rule(lambda x: 0 < x < 1, "a number > 0 and < 1")] = 0.8

    @model_validator(mode="after")
    def _split(self) -> DataConfig:
        allowed = f"an integer below data.n_samples ({self.n_samples})"
        require(self.n_train < self.n_samples, "n_train", allowed, self.n_train)
        return self


@dataclass(frozen=True, config=SECTION)
class ModelConfig:
    hidden_units: Annotated[StrictInt, between(1, MAX_HIDDEN_UNITS)] = 500
    learning_rate: Positive = 0.001
    # The rate of a Dropout layer between the hidden and the output layer (0: no layer).
    dropout: Annotated[Number, rule(lambda x: 0 <= x < 1, "a rate in [0, 1)")] = 0.0
    # Keras' constraint on each hidden unit's incoming weights, and MaxNorm's max_value.
    constraint: Literal["none", "max_norm", "unit_norm"] = "none"
    max_norm: Positive = 2.0
    # A Keras GaussianNoise layer (its standard deviation; 0: no layer) at `noise_at`: active
    # in training only. Keras refuses a standard deviation above 1.
    noise: Annotated[Number, rule(lambda x: 0 <= x <= 1, "a number from 0 to 1")] = 0.0
    noise_at: NoisePlace = "input"
    # A penalty on the hidden layer's outputs (Keras' activity_regularizer, averaged over the
    # batch), measured before or after the ReLU.
    activity: PenaltyKind = "none"
    activity_strength: NonNegative = 0.0
    activity_at: ActivityPlace = "post_activation"

    @model_validator(mode="after")
    def _no_strength_without_activity(self) -> ModelConfig:
        ok = self.activity != "none" or self.activity_strength == 0
        require(ok, "activity_strength", "0 when model.activity is none", self.activity_strength)
        return self


@dataclass(frozen=True, config=SECTION)
class PenaltyConfig:
    kind: PenaltyKind = "none"
    strength: NonNegative = 0.0
    apply_to: Literal["hidden", "all"] = "hidden"

    @model_validator(mode="after")
    def _no_strength_without_kind(self) -> PenaltyConfig:
        ok = self.kind != "none" or self.strength == 0
        require(ok, "strength", "0 when penalty.kind is none", self.strength)
        return self


@dataclass(frozen=True, config=SECTION)
class EarlyStoppingConfig:
    """Keras' EarlyStopping, and which rows it watches: `none` (off), `cv` (each fold's
    held-out rows; the final models then train for the median of the folds' epochs) or
    `test` (the test rows, as tutorials do: optimistic, since the test set then chooses)."""

    watch: Literal["none", "cv", "test"] = "none"
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: Annotated[StrictInt, between(1, MAX_EPOCHS)] = 20
    min_delta: NonNegative = 0.0
    restore_best_weights: StrictBool = True


@dataclass(frozen=True, config=SECTION)
class TrainConfig:
    epochs: Annotated[
        StrictInt, rule(lambda n: n > 0, "an integer > 0"), between(1, MAX_EPOCHS)
    ] = 4000
    seeds: list[Annotated[StrictInt, between(0, SEED_MAX, each=True)]] = field(
        default_factory=lambda: [1, 2, 3, 4, 5]
    )
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)

    @model_validator(mode="after")
    def _seeds(self) -> TrainConfig:
        seeds = self.seeds
        require(len(seeds) > 0, "seeds", "a non-empty list of integers", seeds)
        at_most = f"a list of at most {MAX_SEEDS} seeds"
        require(len(seeds) <= MAX_SEEDS, "seeds", at_most, f"{len(seeds)} seeds")
        require(len(set(seeds)) == len(seeds), "seeds", "a list of distinct integers", seeds)
        allowed = (
            f"at most {MAX_EPOCHS_X_SEEDS:,} epochs in all over train.seeds "
            f"({len(seeds)} seeds: at most {MAX_EPOCHS_X_SEEDS // len(seeds):,})"
        )
        require(self.epochs * len(seeds) <= MAX_EPOCHS_X_SEEDS, "epochs", allowed, self.epochs)
        return self


@dataclass(frozen=True, config=SECTION)
class SweepConfig:
    """The train stage's sweep: one family of configurations per remedy, each varying one
    setting from the base configuration, plus the unregularized baseline."""

    name: StrictStr = "default"
    kinds: list[Remedy] = field(default_factory=lambda: ["l1", "l2"])
    strengths: Annotated[
        list[Number], rule(lambda xs: all(x > 0 for x in xs), "a list of numbers > 0")
    ] = field(default_factory=lambda: [0.01])
    baseline: StrictBool = True
    dropout_rates: list[
        Annotated[Number, rule(lambda x: 0 < x < 1, "a list of rates in (0, 1)")]
    ] = field(default_factory=list)
    patiences: list[Annotated[StrictInt, between(1, MAX_EPOCHS, each=True)]] = field(
        default_factory=list
    )
    constraints: list[Literal["max_norm", "unit_norm"]] = field(default_factory=list)
    max_norms: list[Annotated[Number, rule(lambda x: x > 0, "a list of numbers > 0")]] = field(
        default_factory=list
    )
    # Gaussian noise at one place, by standard deviation.
    noise_stddevs: list[
        Annotated[Number, rule(lambda x: 0 < x <= 1, "a list of numbers > 0 and <= 1")]
    ] = field(default_factory=list)
    noise_at: NoisePlace = "input"
    # Activity penalties of each kind at one place, by strength.
    activity_kinds: list[Remedy] = field(default_factory=list)
    activity_strengths: list[Annotated[Number, rule(lambda x: x > 0, "a list of numbers > 0")]] = (
        field(default_factory=list)
    )
    activity_at: ActivityPlace = "post_activation"

    @model_validator(mode="after")
    def _families(self) -> SweepConfig:
        require(
            not self.kinds or len(self.strengths) > 0,
            "strengths",
            "a non-empty list of numbers > 0 when sweep.kinds is not empty",
            self.strengths,
        )
        require(
            "max_norm" not in self.constraints or len(self.max_norms) > 0,
            "max_norms",
            "a non-empty list of numbers > 0 when sweep.constraints has max_norm",
            self.max_norms,
        )
        require(
            not self.activity_kinds or len(self.activity_strengths) > 0,
            "activity_strengths",
            "a non-empty list of numbers > 0 when sweep.activity_kinds is not empty",
            self.activity_strengths,
        )
        families = (
            self.kinds, self.dropout_rates, self.patiences, self.constraints,
            self.noise_stddevs, self.activity_kinds,
        )  # fmt: skip
        require(
            self.baseline or any(families),
            "",  # the section itself
            "at least one configuration (a baseline, kinds, dropout_rates, patiences, "
            "constraints, noise_stddevs or activity_kinds)",
            "an empty sweep",
        )
        return self


@dataclass(frozen=True, config=SECTION)
class TrackingConfig:
    backend: Literal["local", "server"] = "local"
    experiment: Annotated[StrictStr, rule(lambda s: bool(s.strip()), "a non-empty name")] = (
        "overfit"
    )
    uri_env: StrictStr = "MLFLOW_TRACKING_URI"
    # Per-epoch curves go to MLflow every this many epochs (history.csv keeps every epoch).
    history_every: Annotated[
        StrictInt, rule(lambda n: n >= 1, "an integer >= 1 (epochs between logged points)")
    ] = 20
    # Set by the sweep launcher so that each job's run nests under the sweep's parent run.
    parent_run_id: StrictStr | None = None


@dataclass(frozen=True, config=SECTION)
class LauncherConfig:
    name: Literal["basic", "joblib", "submitit_local", "submitit_slurm"] = "basic"
    n_jobs: Annotated[StrictInt, rule(lambda n: n >= 1, "an integer >= 1")] = 1
    threads: Annotated[StrictInt, rule(lambda n: n >= 0, "an integer >= 0 (0: every core)")] = 0
    timeout_min: Annotated[StrictInt, rule(lambda n: n >= 1, "an integer >= 1")] = 30
    partition: StrictStr | None = None


# select.folds, named outside SelectConfig, whose field `rule` would hide the function `rule`.
FoldCount = Annotated[
    StrictInt,
    rule(
        lambda k: k == 0 or 2 <= k <= MAX_FOLDS,
        f"0 (no cross-validation) or an integer from 2 to {MAX_FOLDS}",
    ),
]


@dataclass(frozen=True, config=SECTION)
class SelectConfig:
    """How the configuration to ship is chosen: K-fold cross-validation inside the training
    rows (`folds` 0: none), and the figure the choice maximises (`test_acc`: the article's
    way, on the test set, reported as optimistic)."""

    folds: FoldCount = 5
    random_state: Seed = 0
    metric: SelectionMetric = "cv_acc"
    # best: the best mean score; one_se: the simplest configuration within one standard error
    # of the best (cross-validation only).
    rule: SelectionRuleName = "best"

    @model_validator(mode="after")
    def _metric_needs_folds(self) -> SelectConfig:
        require(
            self.folds > 0 or not self.metric.startswith("cv_"),
            "metric",
            "test_acc when select.folds is 0 (cv_acc and cv_loss need cross-validation)",
            self.metric,
        )
        require(
            self.rule == "best" or self.metric.startswith("cv_"),
            "rule",
            "best when select.metric is test_acc (one_se needs cross-validation's folds)",
            self.rule,
        )
        return self


@dataclass(frozen=True, config=SECTION)
class StudyConfig:
    """The sweep again on `draws` other draws of the data (draw k: data.random_state + k, so the
    first is the article's own), one seed per draw, at every training-set size of `n_train`;
    `select`: cross-validation picks a configuration on every draw too (every configuration
    then trains its folds on every draw)."""

    draws: Annotated[
        StrictInt,
        rule(
            lambda n: n == 0 or 2 <= n <= MAX_DRAWS,
            f"0 (no study) or an integer from 2 to {MAX_DRAWS}",
        ),
    ] = 10
    n_train: list[Annotated[StrictInt, between(2, MAX_SAMPLES, each=True)]] = field(
        default_factory=lambda: [30]
    )
    select: StrictBool = False
    # Draws per job when a Hydra launcher (launcher.name other than basic) runs the study: each
    # job trains its group of draws stacked, and the stage merges them.
    group_size: Annotated[StrictInt, between(1, MAX_DRAWS)] = 10

    @model_validator(mode="after")
    def _sizes(self) -> StudyConfig:
        sizes = self.n_train
        require(len(sizes) > 0, "n_train", "a non-empty list of integers", sizes)
        require(len(set(sizes)) == len(sizes), "n_train", "a list of distinct integers", sizes)
        return self


@dataclass(frozen=True, config=SECTION)
class RegistryConfig:
    """Where the selected model is registered (MLflow's Model Registry, in the tracking store)
    and the local port `make serve` serves its champion on."""

    name: Annotated[
        StrictStr,
        rule(
            lambda s: bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", s)),
            "a model name of letters, digits, '_', '.', '-' (at most 100)",
        ),
    ] = "overfit-moons"
    port: Annotated[StrictInt, between(1024, 65535)] = 5002
    # The largest request body `make serve` accepts (about 40 bytes a row of x1, x2).
    max_request_kb: Annotated[StrictInt, between(1, 1048576)] = 1024


@dataclass(frozen=True, config=SECTION)
class GateConfig:
    selected_cv_drop: NonNegative = 1 / 30
    selected_test_drop: NonNegative = 1 / 70
    selected_fresh_drop: NonNegative = 0.01
    baseline_min_train: NonNegative = 0.99
    baseline_min_gap: NonNegative = 0.03
    selected_beats_baseline_by: NonNegative = 0.0


@dataclass(frozen=True, config=SECTION)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    @model_validator(mode="after")
    def _across_sections(self) -> Config:
        folds, watch = self.select.folds, self.train.early_stopping.watch
        require(
            watch != "cv" or folds > 0,
            "train.early_stopping.watch",
            "none or test when select.folds is 0 (early stopping on cv watches the folds' "
            "held-out rows)",
            watch,
        )
        require(
            not self.sweep.patiences or folds > 0,
            "sweep.patiences",
            "empty when select.folds is 0 (the family stops early on cv, which watches the "
            "folds' held-out rows)",
            self.sweep.patiences,
        )
        n_train = self.data.n_train
        allowed = f"at most data.n_train ({n_train}): every fold holds out a training row"
        require(folds <= n_train, "select.folds", allowed, folds)
        n_samples, units = self.data.n_samples, self.model.hidden_units
        require(
            n_samples * units <= MAX_ROWS_X_UNITS,
            "model.hidden_units",
            f"at most {MAX_ROWS_X_UNITS // n_samples:,} with data.n_samples {n_samples} "
            f"(data.n_samples x model.hidden_units at most {MAX_ROWS_X_UNITS:,})",
            units,
        )
        _check_study(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_study(config: Config) -> None:
    """A study's draws are drawn as the data settings draw theirs, at each size."""
    study, folds = config.study, config.select.folds
    if study.draws == 0:
        return
    require(
        config.sweep.baseline,
        "study.draws",
        "0 when sweep.baseline is false (the study measures every remedy against the "
        "unregularized run on the same draw)",
        study.draws,
    )
    test_rows = config.data.n_samples - config.data.n_train
    for n in study.n_train:
        allowed = f"a list of integers >= select.folds ({folds}): every fold holds out a row"
        require(folds <= n, "study.n_train", allowed, study.n_train)
        rows = (n + test_rows) * config.model.hidden_units
        allowed = (
            f"a list of integers n with (n + {test_rows} test rows) x model.hidden_units "
            f"at most {MAX_ROWS_X_UNITS:,}"
        )
        require(rows <= MAX_ROWS_X_UNITS, "study.n_train", allowed, study.n_train)
