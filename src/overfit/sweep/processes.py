"""Jobs in other processes through a Hydra launcher plugin (joblib, submitit): Hydra's own
command line started on a copy of params.yaml, stopped with the stage, and each job's
TensorFlow kept to its share of the cores. The sweep's jobs (sweep/launcher.py) and the
study's groups of draws (sweep/study_groups.py) go this way.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from overfit import runtime

# How long stopped jobs get to mark their runs before they are killed.
STOP_GRACE_SECONDS = 30


class LaunchFailed(RuntimeError):
    """A launched job failed; Hydra has printed why."""


def launch(root: Path, overrides: Sequence[str], app: str, snapshot: Path, subdir: str) -> None:
    """Run the multirun `overrides` of the Hydra app `app` (a module) through Hydra's command
    line, composed from the params.yaml copy `snapshot`, each job in `subdir` of the
    snapshot's folder's parent (the sweep: models/.partial/<run>/); Ctrl-C or SIGTERM
    (recorded by the stage) is passed on to it."""
    snapshot = root / snapshot
    command = [
        sys.executable, "-m", app, "--multirun",
        f"--config-dir={snapshot.parent}", f"--config-name={snapshot.stem}",
        f"hydra.sweep.dir={snapshot.parent.parent}",
        f"hydra.sweep.subdir={subdir}",
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


def run_as_hydra_app(task: Callable[[Any], None]) -> None:
    """`task` as a Hydra application, its command line this process's: what the launched jobs
    run (`launch`). Ctrl-C, which reaches the whole process group, exits 130: the stage that
    launched them reports it."""
    import hydra

    try:
        hydra.main(config_path=None, config_name=None, version_base=None)(task)()
    except KeyboardInterrupt:
        raise SystemExit(128 + signal.SIGINT) from None
