"""A sweep's jobs through a Hydra launcher plugin (joblib, submitit): each job trains alone,
saves its files and logs its run in the process the launcher gives it.

The train stage starts Hydra's own command line, `python -m overfit.sweep.launcher --multirun
...`, on its snapshot of params.yaml: Hydra then composes each job, writes its .hydra/ folder
in models/.partial/<run>/ and hands it to the launcher, as it would for any Hydra app.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overfit import layout, runtime
from overfit.config import parse_config, project_root
from overfit.core.data import load_train_test
from overfit.core.remedies import run_name
from overfit.sweep.files import publish, save_job
from overfit.sweep.job_run import log_job_run
from overfit.sweep.phases import Phases
from overfit.sweep.stacked import train_together
from overfit.tracking.lineage import run_tags
from overfit.tracking.store import open_store

# How long stopped jobs get to mark their runs before they are killed.
STOP_GRACE_SECONDS = 30


class LaunchFailed(RuntimeError):
    """A launched job failed; Hydra has printed why."""


def launch(root: Path, overrides: Sequence[str]) -> None:
    """Run the multirun `overrides` through Hydra's command line, each job in
    models/.partial/<run>/; Ctrl-C or SIGTERM (recorded by the stage) is passed on to it."""
    snapshot = root / layout.PARAMS_SNAPSHOT
    command = [
        sys.executable, "-m", __name__, "--multirun",
        f"--config-dir={snapshot.parent}", f"--config-name={snapshot.stem}",
        f"hydra.sweep.dir={root / layout.MODELS_DIR}",
        f"hydra.sweep.subdir={layout.PARTIAL_DIR.name}/${{run_name:}}",
        "hydra.job.chdir=False",
        *overrides,
    ]  # fmt: skip
    with subprocess.Popen(command, cwd=root) as process:
        try:
            while process.poll() is None:
                runtime.checkpoint()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.1)
            runtime.checkpoint()
        except runtime.Interrupted as stop:
            process.send_signal(stop.signum)
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
    if process.returncode:
        raise LaunchFailed(f"the launched jobs failed (exit status {process.returncode})")


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


def limit_threads(threads: int) -> None:
    """Cap TensorFlow's thread pools, so parallel jobs do not fight over the cores."""
    if threads <= 0:
        return
    with runtime.tensorflow_quiet():
        import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started in this process: keep its pools
        pass


def main() -> None:
    import hydra
    from omegaconf import OmegaConf

    # `${run_name:}` in Hydra's settings: each job's folder is named after its run.
    OmegaConf.register_new_resolver("run_name", lambda *, _root_: run_name(_root_), use_cache=False)
    task = hydra.main(config_path=None, config_name=None, version_base=None)(run_job_alone)
    try:
        task()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the stage reports it
        raise SystemExit(128 + signal.SIGINT) from None


if __name__ == "__main__":
    main()
