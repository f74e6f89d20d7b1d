"""The sweep's first step: plan it as Hydra multiruns, one override list per job, each job
composed and checked before anything runs.

The train stage's sweep is params.yaml's `sweep` section, one multirun per family: `kinds` x
`strengths` (plus one unregularized run), `dropout_rates`, `patiences`, `constraints`
(max_norm x `max_norms`, unit_norm), `noise_stddevs` (at `noise_at`) and `activity_kinds` x
`activity_strengths` (at `activity_at`). By hand it is whatever multirun overrides the user gives.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overfit import layout
from overfit.config import (
    ComposedJob,
    Config,
    ConfigError,
    LauncherConfig,
    SweepConfig,
    compose_jobs,
    expand_presets,
    parse_overrides,
    parse_params,
)
from overfit.core.remedies import run_name


def _values(values: Sequence[Any]) -> str:
    return ",".join(repr(v) if isinstance(v, float) else str(v) for v in values)


def check_families(params: Config) -> None:
    """The sweep's families, against the base configuration they vary. With early stopping
    on in the base, every configuration stops early, the baseline too: the patience family
    would repeat it (and a job of the family may not judge this: it has early stopping on)."""
    if params.sweep.patiences and params.train.early_stopping.watch != "none":
        raise ConfigError(
            "sweep.patiences: must be empty when train.early_stopping.watch is cv or test "
            "(every configuration then stops early, the baseline too; the family sets early "
            f"stopping on cv beside the other remedies), got {params.sweep.patiences!r}"
        )


def sweep_overrides(sweep: SweepConfig) -> list[list[str]]:
    """The sweep in params.yaml as Hydra multiruns, one per family; each varies one setting
    of the base configuration (early stopping's family: on cv, at each patience)."""
    multiruns = []
    specs = ["{kind:none,strength:0.0}"] if sweep.baseline else []
    specs += [f"{{kind:{k},strength:{s!r}}}" for k in sweep.kinds for s in sweep.strengths]
    if specs:
        multiruns.append(["penalty=" + ",".join(specs)])
    if sweep.dropout_rates:
        multiruns.append([f"model.dropout={_values(sweep.dropout_rates)}"])
    if sweep.patiences:
        multiruns.append(
            [
                "train.early_stopping.watch=cv",
                f"train.early_stopping.patience={_values(sweep.patiences)}",
            ]
        )
    for constraint in sweep.constraints:
        overrides = [f"model.constraint={constraint}"]
        if constraint == "max_norm":
            overrides.append(f"model.max_norm={_values(sweep.max_norms)}")
        multiruns.append(overrides)
    if sweep.noise_stddevs:
        multiruns.append(
            [f"model.noise={_values(sweep.noise_stddevs)}", f"model.noise_at={sweep.noise_at}"]
        )
    for kind in sweep.activity_kinds:
        multiruns.append(
            [
                f"model.activity={kind}",
                f"model.activity_strength={_values(sweep.activity_strengths)}",
                f"model.activity_at={sweep.activity_at}",
            ]
        )
    return multiruns


def job_overrides(overrides: Sequence[str]) -> list[list[str]]:
    """Expand sweep syntax (`a=1,2`, `range(...)`) into one override list per job, by Hydra's
    basic sweeper (the product of the sweeps, left to right), as `--multirun` would."""
    from hydra.core.plugins import Plugins
    from hydra.errors import HydraException
    from hydra.plugins.sweeper import Sweeper

    [basic] = [s for s in Plugins.instance().discover(Sweeper) if s.__name__ == "BasicSweeper"]
    try:
        [jobs] = basic.split_arguments(parse_overrides(overrides), None)
    except HydraException as error:
        raise ConfigError(f"{' '.join(overrides)}: {error}") from None
    return jobs


def check_unique_names(configs: Sequence[Config]) -> list[str]:
    """Every job's run name; two jobs may not share one (they would share a folder)."""
    names = [run_name(c) for c in configs]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(
                f"sweep: two jobs would both be named {name!r}; sweep distinct values of "
                "the settings a run name shows (penalty, model.dropout, model.constraint, "
                "model.max_norm, model.noise/noise_at, model.activity/activity_strength/"
                "activity_at, train.early_stopping.watch/patience/monitor)"
            )
    return names


def launcher_overrides(launcher: LauncherConfig) -> list[str]:
    """params.yaml's `launcher` as Hydra overrides: which launcher, how many jobs at once.

    `basic` runs every job in the train stage's own process, trained together: no Hydra
    launcher is involved.
    """
    if launcher.name == "basic":
        return []
    settings = [f"hydra/launcher={launcher.name}"]
    if launcher.name == "joblib":
        return [*settings, f"hydra.launcher.n_jobs={launcher.n_jobs}"]
    settings += [
        f"hydra.launcher.timeout_min={launcher.timeout_min}",
        f"hydra.launcher.cpus_per_task={max(launcher.threads, 1)}",
    ]
    if launcher.name == "submitit_slurm":  # the local executor starts every job at once
        settings.append(f"hydra.launcher.array_parallelism={launcher.n_jobs}")
        if launcher.partition:
            settings.append(f"hydra.launcher.partition={launcher.partition}")
    return settings


def uses_hydra_launcher(overrides: Sequence[str]) -> bool:
    """Whether the jobs go to a Hydra launcher plugin (other processes) rather than being
    trained together in this one."""
    return any(o.lstrip("+").startswith("hydra/launcher") for o in overrides)


def stack_groups(configs: Sequence[Any]) -> dict[tuple[Any, ...], list[int]]:
    """Indices of the jobs whose models can train in one stack: same data and width (each
    model trains its own number of epochs)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, config in enumerate(configs):
        shape = (config.data, config.model.hidden_units)
        groups.setdefault(shape, []).append(index)
    return groups


@dataclass(frozen=True)
class Plan:
    """A sweep, planned and checked: its jobs, the multiruns they came from, its name."""

    jobs: list[ComposedJob]
    multiruns: list[list[str]]
    name: str

    @property
    def configs(self) -> list[Config]:
        return [job.config for job in self.jobs]


def plan_sweep(root: Path, params_text: str, args: Sequence[str]) -> Plan:
    """The sweep's jobs, composed from `params_text` (params.yaml as read once: a params.yaml
    rewritten meanwhile cannot mix two sweeps) and checked. By hand (`args`): the user's Hydra
    overrides; as the DVC stage: params.yaml's `sweep` and `launcher`."""
    params = parse_params(params_text, root / layout.PARAMS)
    if args:
        multiruns = [expand_presets(root, args)]
    else:
        check_families(params)
        launcher = launcher_overrides(params.launcher)
        multiruns = [[*launcher, *m] for m in sweep_overrides(params.sweep)]
    with tempfile.TemporaryDirectory() as snapshot:  # Hydra composes from a folder
        config_dir = Path(snapshot)
        (config_dir / layout.PARAMS.name).write_text(params_text, encoding="utf-8")
        jobs = compose_jobs(config_dir, [job for m in multiruns for job in job_overrides(m)])
    check_unique_names([job.config for job in jobs])
    return Plan(jobs, multiruns, "by-hand" if args else params.sweep.name)
