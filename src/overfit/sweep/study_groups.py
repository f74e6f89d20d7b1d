"""A study across many draws, split by groups of draws over a Hydra launcher (joblib on this
machine, submitit locally or on SLURM), as the sweep's jobs are.

The study stage writes params.yaml as it read it to reports/.study/, and starts Hydra's command
line, `python -m overfit.sweep.study_groups --multirun +study_group=0,1,...`: each job trains
its group of `study.group_size` draws stacked and writes their figures to
reports/.study/group_<k>/draws.json; the stage merges the groups in draw order. Every model is
padded to rows the settings fix, so a group trains exactly what one process would.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overfit import layout, runtime
from overfit.artifacts import read_json, write_json, write_text
from overfit.config import Config, parse_config, project_root
from overfit.core.data import Points, load_fresh
from overfit.core.study import config_study
from overfit.reports import ConfigStudy
from overfit.sweep.draws import measure_jobs, plan_jobs, study_rows, train_jobs
from overfit.sweep.plan import launcher_overrides
from overfit.sweep.processes import launch, limit_threads, run_as_hydra_app

# The Hydra override that names a job's group of draws.
GROUP_KEY = "study_group"


def groups(draws: int, group_size: int) -> list[range]:
    """The draws in groups of `group_size`, in order."""
    return [range(a, min(a + group_size, draws)) for a in range(0, draws, group_size)]


def train_draws_of(
    configs: Sequence[Config], base: Config, draws: Sequence[int], fresh: Points
) -> dict[int, dict[str, ConfigStudy]]:
    """The sweep's configurations on `draws` (every size), trained stacked and measured."""
    jobs = plan_jobs(configs, base, draws)
    rows = study_rows(base.data, base.study.n_train, base.select.folds)
    models, folds = train_jobs(jobs, rows, runtime.checkpoint)
    return measure_jobs(jobs, models, folds, fresh, base.study.select)


def launch_groups(
    root: Path, params_text: str, configs: Sequence[Config], base: Config
) -> dict[int, dict[str, ConfigStudy]]:
    """Every group of draws as a job of the configured launcher, merged in draw order. The jobs
    read the sweep's configurations as the stage planned them."""
    parts = root / layout.STUDY_PARTS
    shutil.rmtree(parts, ignore_errors=True)
    write_text(root / layout.STUDY_SNAPSHOT, params_text)
    write_json(root / layout.STUDY_CONFIGS, [c.to_dict() for c in configs])
    try:
        count = len(groups(base.study.draws, base.study.group_size))
        overrides = [*launcher_overrides(base.launcher), f"+{GROUP_KEY}=range(0,{count})"]
        launch(
            root, overrides, __name__, layout.STUDY_SNAPSHOT, f"{parts.name}/group_${{{GROUP_KEY}}}"
        )
        merged: dict[int, dict[str, dict[str, list[float]]]] = {}
        remedies: dict[str, tuple[str, float]] = {}
        for group in range(count):
            path = layout.study_group_dir(root, group) / layout.STUDY_GROUP_FILE
            for size, configs in read_json(path, "the launched study job wrote none").items():
                for name, raw in configs.items():
                    config = ConfigStudy.parse(raw, str(path))
                    remedies[name] = (config.kind, config.strength)
                    figures = merged.setdefault(int(size), {}).setdefault(name, {})
                    for measure, values in config.per_draw.items():
                        figures.setdefault(measure, []).extend(values)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return {
        size: {name: config_study(*remedies[name], f) for name, f in configs.items()}
        for size, configs in merged.items()
    }


def run_group(cfg: Any) -> None:
    """Hydra's task: one group of draws, trained stacked, its figures written for the stage."""
    from omegaconf import OmegaConf

    root = project_root()
    raw = OmegaConf.to_container(cfg, resolve=True)
    group = raw.pop(GROUP_KEY)
    base = parse_config(raw)
    limit_threads(base.launcher.threads)
    planned = read_json(root / layout.STUDY_CONFIGS, "the study stage writes it")
    configs = [parse_config(c) for c in planned]
    draws = groups(base.study.draws, base.study.group_size)[group]
    by_size = train_draws_of(configs, base, draws, load_fresh(root, base.data))
    path = layout.study_group_dir(root, group) / layout.STUDY_GROUP_FILE
    write_json(path, {str(n): {k: c.to_json() for k, c in by.items()} for n, by in by_size.items()})


def main() -> None:
    run_as_hydra_app(run_group)


if __name__ == "__main__":
    main()
