"""Planning a sweep, pure: run names, the sweep as Hydra overrides, one override list per job.

The train stage's sweep is params.yaml's `sweep` section: `kinds` x `strengths`, plus one
unregularized run. By hand it is whatever multirun overrides the user gives.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from overfit.config import ConfigError, LauncherConfig, PenaltyConfig, SweepConfig, parse_overrides


def run_name(penalty: PenaltyConfig | Any) -> str:
    """`none`, `l2_1e-03`, `l1_2p50e-01`: no dots, since DVC flattens metric keys on dots."""
    if penalty.kind == "none":
        return "none"
    strength = float(penalty.strength)
    text = f"{strength:.0e}"
    if float(text) != strength:
        text = f"{strength:.6e}".rstrip("0").replace(".", "p")
    suffix = "" if penalty.apply_to == "hidden" else f"_{penalty.apply_to}"
    return f"{penalty.kind}_{text}{suffix}"


def sweep_overrides(sweep: SweepConfig) -> list[str]:
    """The sweep in params.yaml as one Hydra multirun argument: a list of whole penalties."""
    specs = ["{kind:none,strength:0.0}"] if sweep.baseline else []
    specs += [f"{{kind:{k},strength:{s!r}}}" for k in sweep.kinds for s in sweep.strengths]
    return ["penalty=" + ",".join(specs)]


def job_overrides(overrides: Sequence[str]) -> list[list[str]]:
    """Expand sweep syntax (`a=1,2`, `range(...)`) into one override list per job, in the
    order Hydra's basic sweeper gives (the product of the sweeps, left to right)."""
    per_key: dict[str, list[str]] = {}
    for override in parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            per_key[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            per_key[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise ConfigError(f"{override.input_line}: only lists and ranges can be swept here")
    return [list(job) for job in itertools.product(*per_key.values())]


def check_unique_names(penalties: Sequence[PenaltyConfig]) -> list[str]:
    """Every job's run name; two jobs may not share one (they would share a folder)."""
    names = [run_name(p) for p in penalties]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(
                f"penalty: two jobs would both be named {name!r}; sweep distinct values"
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
    """Indices of the jobs whose models can train in one stack: same data, width and epochs."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, config in enumerate(configs):
        shape = (config.data, config.model.hidden_units, config.train.epochs)
        groups.setdefault(shape, []).append(index)
    return groups
