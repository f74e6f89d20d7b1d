"""The configuration: a typed schema, loading params.yaml, composing conf/, one-line errors.

Every stage reads params.yaml through `load_params`; nothing reads conf/ except `compose_params`,
which writes params.yaml exactly as `dvc exp run` does (Hydra compose, resolve, OmegaConf YAML),
and the presets a by-hand override names (`penalty=l2`). A sweep's jobs are composed from
params.yaml and their overrides by `compose_jobs`, once each, and checked before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from overfit import layout

PENALTY_KINDS = ("none", "l1", "l2", "l1_l2")
ROOT_ENV = "OVERFIT_ROOT"

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


class ConfigError(ValueError):
    """A setting that is not allowed; the message names the key and what is allowed."""


@dataclass(frozen=True)
class DataConfig:
    name: Literal["moons", "circles"] = "moons"
    n_samples: int = 100
    noise: float = 0.2
    random_state: int = 1
    n_train: int = 30
    fresh_samples: int = 10000
    fresh_random_state: int = 10
    # make_circles' scale between the inner and the outer circle (circles only).
    factor: float = 0.8

    def check(self) -> None:
        _in_range("data.n_samples", self.n_samples, 3, MAX_SAMPLES)
        _require(self.noise >= 0, "data.noise", "a number >= 0", self.noise)
        _require(0 < self.factor < 1, "data.factor", "a number > 0 and < 1", self.factor)
        _require(self.n_train >= 2, "data.n_train", "an integer >= 2", self.n_train)
        _require(
            self.n_train < self.n_samples,
            "data.n_train",
            f"an integer below data.n_samples ({self.n_samples})",
            self.n_train,
        )
        _in_range("data.fresh_samples", self.fresh_samples, 1, MAX_FRESH_SAMPLES)
        _in_range("data.random_state", self.random_state, 0, SEED_MAX)
        _in_range("data.fresh_random_state", self.fresh_random_state, 0, SEED_MAX)


@dataclass(frozen=True)
class ModelConfig:
    hidden_units: int = 500
    learning_rate: float = 0.001
    # The rate of a Dropout layer between the hidden and the output layer (0: no layer).
    dropout: float = 0.0
    # Keras' constraint on each hidden unit's incoming weights, and MaxNorm's max_value.
    constraint: Literal["none", "max_norm", "unit_norm"] = "none"
    max_norm: float = 2.0

    def check(self) -> None:
        _in_range("model.hidden_units", self.hidden_units, 1, MAX_HIDDEN_UNITS)
        _require(self.learning_rate > 0, "model.learning_rate", "a number > 0", self.learning_rate)
        _require(0 <= self.dropout < 1, "model.dropout", "a rate in [0, 1)", self.dropout)
        _require(self.max_norm > 0, "model.max_norm", "a number > 0", self.max_norm)


@dataclass(frozen=True)
class PenaltyConfig:
    kind: Literal["none", "l1", "l2", "l1_l2"] = "none"
    strength: float = 0.0
    apply_to: Literal["hidden", "all"] = "hidden"

    def check(self) -> None:
        _require(self.strength >= 0, "penalty.strength", "a number >= 0", self.strength)
        _require(
            self.kind != "none" or self.strength == 0,
            "penalty.strength",
            "0 when penalty.kind is none",
            self.strength,
        )


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Keras' EarlyStopping, and which rows it watches: `none` (off), `cv` (each fold's
    held-out rows; the final models then train for the median of the folds' epochs) or
    `test` (the test rows, as tutorials do: optimistic, since the test set then chooses)."""

    watch: Literal["none", "cv", "test"] = "none"
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = 20
    min_delta: float = 0.0
    restore_best_weights: bool = True

    def check(self) -> None:
        _in_range("train.early_stopping.patience", self.patience, 1, MAX_EPOCHS)
        _require(
            self.min_delta >= 0, "train.early_stopping.min_delta", "a number >= 0", self.min_delta
        )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4000
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)

    def check(self) -> None:
        self.early_stopping.check()
        _require(self.epochs > 0, "train.epochs", "an integer > 0", self.epochs)
        _in_range("train.epochs", self.epochs, 1, MAX_EPOCHS)
        _require(len(self.seeds) > 0, "train.seeds", "a non-empty list of integers", self.seeds)
        _require(
            len(self.seeds) <= MAX_SEEDS,
            "train.seeds",
            f"a list of at most {MAX_SEEDS} seeds",
            f"{len(self.seeds)} seeds",
        )
        _require(
            len(set(self.seeds)) == len(self.seeds),
            "train.seeds",
            "a list of distinct integers",
            self.seeds,
        )
        for seed in self.seeds:
            _require(
                0 <= seed <= SEED_MAX,
                "train.seeds",
                f"a list of integers from 0 to {SEED_MAX:,}",
                seed,
            )
        _require(
            self.epochs * len(self.seeds) <= MAX_EPOCHS_X_SEEDS,
            "train.epochs",
            f"at most {MAX_EPOCHS_X_SEEDS:,} epochs in all over train.seeds "
            f"({len(self.seeds)} seeds: at most {MAX_EPOCHS_X_SEEDS // len(self.seeds):,})",
            self.epochs,
        )


@dataclass(frozen=True)
class SweepConfig:
    """The train stage's sweep: one family of configurations per remedy, each varying one
    setting from the base configuration, plus the unregularized baseline."""

    name: str = "default"
    kinds: list[Literal["l1", "l2", "l1_l2"]] = field(default_factory=lambda: ["l1", "l2"])
    strengths: list[float] = field(default_factory=lambda: [0.01])
    baseline: bool = True
    dropout_rates: list[float] = field(default_factory=list)
    patiences: list[int] = field(default_factory=list)
    constraints: list[Literal["max_norm", "unit_norm"]] = field(default_factory=list)
    max_norms: list[float] = field(default_factory=list)

    def check(self) -> None:
        _require(
            not self.kinds or len(self.strengths) > 0,
            "sweep.strengths",
            "a non-empty list of numbers > 0 when sweep.kinds is not empty",
            self.strengths,
        )
        for s in self.strengths:
            _require(s > 0, "sweep.strengths", "a list of numbers > 0", self.strengths)
        for rate in self.dropout_rates:
            _require(0 < rate < 1, "sweep.dropout_rates", "a list of rates in (0, 1)", rate)
        for patience in self.patiences:
            _require(
                1 <= patience <= MAX_EPOCHS,
                "sweep.patiences",
                f"a list of integers from 1 to {MAX_EPOCHS:,}",
                patience,
            )
        for value in self.max_norms:
            _require(value > 0, "sweep.max_norms", "a list of numbers > 0", value)
        _require(
            "max_norm" not in self.constraints or len(self.max_norms) > 0,
            "sweep.max_norms",
            "a non-empty list of numbers > 0 when sweep.constraints has max_norm",
            self.max_norms,
        )
        sizes = (self.kinds, self.dropout_rates, self.patiences, self.constraints)
        _require(
            self.baseline or any(sizes),
            "sweep",
            "at least one configuration (a baseline, kinds, dropout_rates, patiences or "
            "constraints)",
            "an empty sweep",
        )


@dataclass(frozen=True)
class TrackingConfig:
    backend: Literal["local", "server"] = "local"
    experiment: str = "overfit"
    uri_env: str = "MLFLOW_TRACKING_URI"
    # Per-epoch curves go to MLflow every this many epochs (history.csv keeps every epoch).
    history_every: int = 20
    # Set by the sweep launcher so that each job's run nests under the sweep's parent run.
    parent_run_id: str | None = None

    def check(self) -> None:
        _require(
            bool(self.experiment.strip()),
            "tracking.experiment",
            "a non-empty name",
            self.experiment,
        )
        _require(
            self.history_every >= 1,
            "tracking.history_every",
            "an integer >= 1 (epochs between logged points)",
            self.history_every,
        )


@dataclass(frozen=True)
class LauncherConfig:
    name: Literal["basic", "joblib", "submitit_local", "submitit_slurm"] = "basic"
    n_jobs: int = 1
    threads: int = 0
    timeout_min: int = 30
    partition: str | None = None

    def check(self) -> None:
        _require(self.n_jobs >= 1, "launcher.n_jobs", "an integer >= 1", self.n_jobs)
        _require(
            self.threads >= 0, "launcher.threads", "an integer >= 0 (0: every core)", self.threads
        )
        _require(self.timeout_min >= 1, "launcher.timeout_min", "an integer >= 1", self.timeout_min)


SELECTION_METRICS = ("cv_acc", "cv_loss", "test_acc")


@dataclass(frozen=True)
class SelectConfig:
    """How the configuration to ship is chosen: K-fold cross-validation inside the training
    rows (`folds` 0: none), and the figure the choice maximises (`test_acc`: the article's
    way, on the test set, reported as optimistic)."""

    folds: int = 5
    random_state: int = 0
    metric: Literal["cv_acc", "cv_loss", "test_acc"] = "cv_acc"

    def check(self) -> None:
        _require(
            self.folds == 0 or 2 <= self.folds <= MAX_FOLDS,
            "select.folds",
            f"0 (no cross-validation) or an integer from 2 to {MAX_FOLDS}",
            self.folds,
        )
        _in_range("select.random_state", self.random_state, 0, SEED_MAX)
        _require(
            self.folds > 0 or not self.metric.startswith("cv_"),
            "select.metric",
            "test_acc when select.folds is 0 (cv_acc and cv_loss need cross-validation)",
            self.metric,
        )


@dataclass(frozen=True)
class RegistryConfig:
    """Where the selected model is registered (MLflow's Model Registry, in the tracking store)
    and the local port `make serve` serves its champion on."""

    name: str = "overfit-moons"
    port: int = 5002

    def check(self) -> None:
        _require(
            bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", self.name)),
            "registry.name",
            "a model name of letters, digits, '_', '.', '-' (at most 100)",
            self.name,
        )
        _in_range("registry.port", self.port, 1024, 65535)


@dataclass(frozen=True)
class GateConfig:
    selected_cv_drop: float = 1 / 30
    selected_test_drop: float = 1 / 70
    selected_fresh_drop: float = 0.01
    baseline_min_train: float = 0.99
    baseline_min_gap: float = 0.03
    selected_beats_baseline_by: float = 0.0

    def check(self) -> None:
        for f in dataclasses.fields(self):
            _require(
                getattr(self, f.name) >= 0, f"gate.{f.name}", "a number >= 0", getattr(self, f.name)
            )


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def check(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).check()
        watch = self.train.early_stopping.watch
        _require(
            watch != "cv" or self.select.folds > 0,
            "train.early_stopping.watch",
            "none or test when select.folds is 0 (early stopping on cv watches the folds' "
            "held-out rows)",
            watch,
        )
        _require(
            not self.sweep.patiences or self.select.folds > 0,
            "sweep.patiences",
            "empty when select.folds is 0 (the family stops early on cv, which watches the "
            "folds' held-out rows)",
            self.sweep.patiences,
        )
        _require(
            self.select.folds <= self.data.n_train,
            "select.folds",
            f"at most data.n_train ({self.data.n_train}): every fold holds out a training row",
            self.select.folds,
        )
        _require(
            self.data.n_samples * self.model.hidden_units <= MAX_ROWS_X_UNITS,
            "model.hidden_units",
            f"at most {MAX_ROWS_X_UNITS // self.data.n_samples:,} with data.n_samples "
            f"{self.data.n_samples} (data.n_samples x model.hidden_units at most "
            f"{MAX_ROWS_X_UNITS:,})",
            self.model.hidden_units,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _require(ok: bool, key: str, allowed: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: must be {allowed}, got {got!r}")


def _in_range(key: str, value: int, low: int, high: int) -> None:
    _require(low <= value <= high, key, f"an integer from {low} to {high:,}", value)


# --- parsing a plain mapping into the schema -------------------------------------------------

T = TypeVar("T")


def parse_config(raw: Any) -> Config:
    """Build and check a Config from a plain mapping (params.yaml or a Hydra job's config)."""
    config = _parse_dataclass(Config, raw, "")
    config.check()
    return config


def _parse_dataclass(cls: type[T], raw: Any, prefix: str) -> T:
    where = prefix.rstrip(".") or "the configuration"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key; allowed here: {', '.join(names)}")
    values = {
        name: _parse_value(hints[name], raw[name], f"{prefix}{name}")
        for name in names
        if name in raw
    }
    return cls(**values)


def _parse_value(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _parse_dataclass(hint, value, key + ".")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(allowed)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _parse_value(inner, value, key)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: must be a list, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [_parse_value(inner, v, key) for v in value]
    parser = _SCALARS.get(hint)
    if parser is None:  # pragma: no cover - a schema mistake, not user input
        raise TypeError(f"unsupported schema type {hint!r} for {key}")
    return parser(value, key)


def _parse_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: must be an integer, got {value!r}")
    return value


def _parse_float(value: Any, key: str) -> float:
    # YAML 1.1 reads `1e-3` (no dot) as a string: accept it, as a person would mean it.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key}: must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    return float(value)


def _parse_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string, got {value!r}")
    return value


def _parse_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    return value


_SCALARS: dict[Any, Callable[[Any, str], Any]] = {
    int: _parse_int,
    float: _parse_float,
    str: _parse_str,
    bool: _parse_bool,
}


# --- the project root and params.yaml --------------------------------------------------------


def project_root() -> Path:
    """The project root: $OVERFIT_ROOT, else the nearest folder upwards holding dvc.yaml."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / layout.DVC_YAML).is_file():
            return folder
    raise ConfigError(f"no dvc.yaml in {here} or above: run from inside the project")


def read_params(root: Path) -> str:
    """params.yaml's text."""
    path = root / layout.PARAMS
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run `make params`") from None


def load_params(root: Path | None = None) -> Config:
    """Read and check params.yaml (safe YAML loader)."""
    root = root or project_root()
    return parse_params(read_params(root), root / layout.PARAMS)


def parse_params(text: str, path: Path) -> Config:
    """Check params.yaml's text; `path` names the file in error messages."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_config(raw)


def load_job_config(folder: Path) -> Config:
    """The resolved configuration a job saved beside its models (.hydra/config.yaml)."""
    path = folder / layout.JOB_CONFIG
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing; the job's folder is incomplete") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_config(raw)


def compose_params(root: Path, overrides: list[str] | None = None) -> str:
    """conf/ composed by Hydra and resolved, as YAML: what `dvc exp run` writes to params.yaml."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    overrides = overrides or []
    check_override_keys(parse_overrides(overrides), root)
    try:
        with initialize_config_dir(str((root / layout.CONF_DIR).resolve()), version_base=None):
            cfg = compose(config_name="config", overrides=overrides)
        OmegaConf.resolve(cfg)
    except HydraException as error:
        raise ConfigError(hydra_error(error, overrides)) from None
    return OmegaConf.to_yaml(cfg)


# --- overrides: Hydra's grammar, checked against the schema ------------------------------------


def parse_overrides(texts: Sequence[str]) -> list[Any]:
    """Hydra `Override`s of override strings; a malformed one is a ConfigError naming it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in texts:
        try:
            parsed.append(parser.parse_override(text))
        except HydraException as error:
            raise ConfigError(f"bad override {text!r}: {_first_line(error)}") from None
    return parsed


def check_override_keys(overrides: Sequence[Any], root: Path | None = None) -> None:
    """Name an unknown key, or an unknown preset (`penalty=foo`), before Hydra sees it.

    With `root`, a bare section name picks a preset in conf/<section>/, which must exist.
    """
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    for override in overrides:
        key = override.key_or_group
        if key.startswith("hydra") or override.is_delete():
            continue
        section, _, rest = key.partition(".")
        if section not in sections:
            raise ConfigError(f"{key}: unknown key; allowed here: {', '.join(sections)}")
        if not rest:
            if root is not None:
                for choice in _choices(override):
                    if isinstance(choice, str):
                        preset_file(root, section, choice)
            continue
        schema = hints[section]
        for part in rest.split("."):  # nested sections: train.early_stopping.patience
            if not dataclasses.is_dataclass(schema):
                raise ConfigError(f"{key}: unknown key; {schema.__name__} settings have no keys")
            fields = {f.name: f for f in dataclasses.fields(schema)}
            if part not in fields:
                raise ConfigError(f"{key}: unknown key; allowed here: {', '.join(fields)}")
            schema = typing.get_type_hints(schema)[part]


def _choices(override: Any) -> list[Any]:
    if override.is_sweep_override():
        return list(override.sweep_iterator())
    return [override.value()]


def preset_file(root: Path, section: str, name: str) -> Path:
    """conf/<section>/<name>.yaml, or a ConfigError listing the presets there."""
    folder = root / layout.CONF_DIR / section
    path = folder / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(
            f"{section}={name}: no such option; choose one of {', '.join(options)} "
            f"({layout.CONF_DIR}/{section}/), or set its keys ({section}.<key>=<value>)"
        )
    return path


def expand_presets(root: Path, overrides: Sequence[str]) -> list[str]:
    """`penalty=l2` (or `penalty=l1,l2`) picks conf/penalty/l2.yaml, as it would in conf/.

    params.yaml has no defaults list, so a group choice becomes that preset's values. Every
    key is checked against the schema first.
    """
    parsed = parse_overrides(overrides)
    check_override_keys(parsed)
    expanded = []
    for text, override in zip(overrides, parsed, strict=True):
        section = override.key_or_group
        choices = _choices(override)
        if "." in section or section.startswith("hydra") or override.is_delete():
            expanded.append(text)
        elif all(isinstance(c, str) for c in choices):
            presets = [
                _hydra_literal(yaml.safe_load(preset_file(root, section, c).read_text()) or {})
                for c in choices
            ]
            expanded.append(f"{section}={','.join(presets)}")
        else:
            expanded.append(text)
    return expanded


def _hydra_literal(value: Any) -> str:
    """A value written in Hydra's override grammar."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_literal(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class ComposedJob:
    """One job of a sweep: its overrides, its checked settings, its configuration as YAML."""

    overrides: list[str]
    config: Config
    yaml: str


def compose_jobs(config_dir: Path, jobs: Sequence[Sequence[str]]) -> list[ComposedJob]:
    """Each job's configuration: params.yaml in `config_dir` plus the job's overrides,
    composed once, then checked."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    composed = []
    with initialize_config_dir(str(config_dir.resolve()), version_base=None):
        for job in jobs:
            try:
                cfg = compose(config_name=layout.PARAMS.stem, overrides=list(job))
            except HydraException as error:
                raise ConfigError(hydra_error(error, job)) from None
            config = parse_config(OmegaConf.to_container(cfg, resolve=True))
            composed.append(ComposedJob(list(job), config, OmegaConf.to_yaml(cfg)))
    return composed


def hydra_error(error: BaseException, overrides: Sequence[str]) -> str:
    """One line for an error Hydra raised while composing: the override, the reason, and the
    options Hydra offers when it names a missing preset."""
    from hydra.errors import MissingConfigException

    reason = _first_line(error)
    culprit = " ".join(overrides)
    if isinstance(error, MissingConfigException):
        if error.options:
            reason += f"; available: {', '.join(error.options)}"
        missing = error.missing_cfg_file or ""
        named = [o for o in overrides if missing.startswith(o.split("=")[0].lstrip("+~") + "/")]
        culprit = named[0] if named else culprit
    return f"{culprit}: {reason}" if culprit else reason


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def exit_on_config_error(error: ConfigError) -> typing.NoReturn:
    """The one-line error and exit status 2 shared by every entry point."""
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2)
