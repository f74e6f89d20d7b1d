"""The configuration: a typed schema, loading params.yaml, composing conf/, one-line errors.

Every stage reads params.yaml through `load_params`; nothing reads conf/ except `compose_params`,
which writes params.yaml exactly as `dvc exp run` does (Hydra compose, resolve, OmegaConf YAML),
and the presets a by-hand override names (`penalty=l2`). A sweep's jobs are composed from
params.yaml and their overrides by `compose_jobs`, once each, and checked before anything runs.
The settings and their rules are in `schema` (pydantic), the wording of errors in `errors`;
the two import nothing of each other, this module joins them.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from overfit import layout
from overfit.config.errors import (
    ConfigError,
    exit_on_config_error,
    first_line,
    hydra_error,
    setting_error,
    unknown_key,
)
from overfit.config.schema import (
    ACTIVITY_PLACES,
    NOISE_PLACES,
    PENALTY_KINDS,
    SELECTION_METRICS,
    Config,
    DataConfig,
    EarlyStoppingConfig,
    GateConfig,
    LauncherConfig,
    ModelConfig,
    PenaltyConfig,
    RegistryConfig,
    SelectConfig,
    StudyConfig,
    SweepConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "ACTIVITY_PLACES",
    "NOISE_PLACES",
    "PENALTY_KINDS",
    "ROOT_ENV",
    "SELECTION_METRICS",
    "ComposedJob",
    "Config",
    "ConfigError",
    "DataConfig",
    "EarlyStoppingConfig",
    "GateConfig",
    "LauncherConfig",
    "ModelConfig",
    "PenaltyConfig",
    "RegistryConfig",
    "SelectConfig",
    "StudyConfig",
    "SweepConfig",
    "TrackingConfig",
    "TrainConfig",
    "check_override_keys",
    "compose_jobs",
    "compose_params",
    "exit_on_config_error",
    "expand_presets",
    "hydra_error",
    "load_job_config",
    "load_params",
    "parse_config",
    "parse_overrides",
    "parse_params",
    "preset_file",
    "project_root",
    "read_params",
]

ROOT_ENV = "OVERFIT_ROOT"

_CONFIG = TypeAdapter(Config)


def parse_config(raw: Any) -> Config:
    """Build and check a Config from a plain mapping (params.yaml or a Hydra job's config)."""
    try:
        return _CONFIG.validate_python(raw)
    except ValidationError as error:
        raise setting_error(error, Config) from None


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


def params_changed(root: Path, read: str) -> bool:
    """Whether params.yaml now says something else than `read` (its text when the stage
    read it); layout and comments aside."""
    try:
        return yaml.safe_load(read_params(root)) != yaml.safe_load(read)
    except (ConfigError, yaml.YAMLError):
        return True


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
            raise ConfigError(f"bad override {text!r}: {first_line(error)}") from None
    return parsed


def check_override_keys(overrides: Sequence[Any], root: Path | None = None) -> None:
    """Name an unknown key, or an unknown preset (`penalty=foo`), before Hydra sees it.

    With `root`, a bare section name picks a preset in conf/<section>/, which must exist.
    """
    for override in overrides:
        key = override.key_or_group
        if key.startswith("hydra"):
            continue
        if override.is_delete():  # DVC's params and every stage read each one
            raise ConfigError(
                f"~{key}: every setting is required, none can be deleted; set a value instead"
            )
        schema: Any = Config
        for part in key.split("."):  # nested sections: train.early_stopping.patience
            if not dataclasses.is_dataclass(schema):
                name = getattr(schema, "__name__", schema)
                raise ConfigError(f"{key}: unknown key; {name} settings have no keys")
            names = [f.name for f in dataclasses.fields(schema)]
            if part not in names:
                raise ConfigError(unknown_key(key, names))
            schema = typing.get_type_hints(schema)[part]
        if root is not None and "." not in key:
            for choice in _choices(override):
                if isinstance(choice, str):
                    preset_file(root, key, choice)


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
