"""A sweep's jobs through a Hydra launcher plugin (joblib, submitit): each job trains alone,
saves its files and logs its run in the process the launcher gives it.

The train stage starts Hydra's own command line, `python -m overfit.sweep.launcher --multirun
...`, on its snapshot of params.yaml: Hydra then composes each job, writes its .hydra/ folder
in models/.partial/<run>/ and hands it to the launcher, as it would for any Hydra app.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overfit import layout
from overfit.config import parse_config, project_root
from overfit.core.data import load_train_test
from overfit.core.remedies import run_name
from overfit.sweep.files import publish, save_job
from overfit.sweep.job_run import log_job_run
from overfit.sweep.phases import Phases
from overfit.sweep.processes import launch, limit_threads, run_as_hydra_app
from overfit.sweep.stacked import train_together
from overfit.tracking.lineage import run_tags
from overfit.tracking.store import open_store


def launch_jobs(root: Path, overrides: Sequence[str]) -> None:
    """The multirun `overrides` through Hydra's command line, each job in models/.partial/<run>/."""
    subdir = f"{layout.PARTIAL_DIR.name}/${{run_name:}}"
    launch(root, overrides, __name__, layout.PARAMS_SNAPSHOT, subdir)


def run_job_alone(cfg: Any) -> None:
    """Hydra's task: the job Hydra composed, trained alone, saved in the folder Hydra made
    for it, logged as a child of `tracking.parent_run_id`, then published."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    root = project_root()
    config = parse_config(OmegaConf.to_container(cfg, resolve=True))
    limit_threads(config.launcher.threads)
    store = open_store(root, config.tracking)
    work_dir = Path(HydraConfig.get().runtime.output_dir)
    phases = Phases()
    [(_, trained)] = list(train_together(root, [config], phases))
    result = None
    if trained.divergence(config.train.seeds) is None:
        result = save_job(work_dir, config, trained, load_train_test(root, config.data)[0], phases)
    parent = config.tracking.parent_run_id or ""
    tags = run_tags(root)
    log_job_run(root, store, parent, tags, config, trained, result, work_dir, phases)
    publish(work_dir, layout.run_dir(root, run_name(config)))


def main() -> None:
    from omegaconf import OmegaConf

    # `${run_name:}` in Hydra's settings: each job's folder is named after its run.
    OmegaConf.register_new_resolver("run_name", lambda *, _root_: run_name(_root_), use_cache=False)
    run_as_hydra_app(run_job_alone)


if __name__ == "__main__":
    main()
