"""Interruption and crashes of a real sweep: subprocesses, signals from outside, a real store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from .conftest import env_for, wait_for


def runs_by_status(root: Path) -> dict[str, str]:
    """{run_id: status} of every run in the project's SQLite store."""
    with sqlite3.connect(root / "mlflow.db") as db:
        return dict(db.execute("SELECT run_uuid, status FROM runs").fetchall())


def running_or_not(root: Path) -> set[str]:
    """The statuses in the store, or none while it does not exist yet."""
    return set(runs_by_status(root).values()) if (root / "mlflow.db").is_file() else set()


def finished_jobs(root: Path) -> list[Path]:
    return [p for p in (root / "models").glob("*/result.json") if ".partial" not in p.parts]


def start(root: Path, *cmd: str) -> subprocess.Popen:
    """A command in its own process group, as a terminal would run it."""
    return subprocess.Popen(
        list(cmd),
        cwd=root,
        env=env_for(root),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def assert_same_training(root: Path, clean_root: Path) -> None:
    """Every job's per-seed results and per-epoch curves, as the clean run trained them."""
    names = json.loads((clean_root / "reports/sweep.json").read_text())["results"]
    assert json.loads((root / "reports/sweep.json").read_text())["results"] == names
    for name in names:
        ours, clean = (root / "models" / name, clean_root / "models" / name)
        assert (
            json.loads((ours / "result.json").read_text())["per_seed"]
            == json.loads((clean / "result.json").read_text())["per_seed"]
        ), name
        assert (ours / "history.csv").read_bytes() == (clean / "history.csv").read_bytes(), name


def assert_no_half_written_job(root: Path) -> None:
    models = root / "models"
    for folder in models.iterdir() if models.is_dir() else []:
        if folder.is_dir() and not folder.name.startswith("."):
            assert (folder / "result.json").is_file(), f"{folder} looks complete but is not"


def interrupt_training(root: Path, signum: int, after_a_job: bool) -> str:
    """Train again (the data stages are done) and send `signum` to the process group, once a
    job has finished or as soon as the sweep's parent run exists; check the sweep stopped,
    its runs ended KILLED, nothing is half-written."""
    shutil.rmtree(root / "models")  # so a finished job below is one of this run's
    repro = start(root, "dvc", "repro", "--force", "--single-item", "train")
    if after_a_job:
        wait_for(lambda: finished_jobs(root), 120, "the first finished job")
    else:
        wait_for(lambda: "RUNNING" in running_or_not(root), 120, "the sweep's parent run")
    os.killpg(repro.pid, signum)
    # A safety net, not a measure: the sweep stops at its next safe point.
    output, _ = repro.communicate(timeout=120)
    assert repro.returncode != 0
    wait_for(
        lambda: "RUNNING" not in runs_by_status(root).values(), 60, f"no RUNNING run: {output}"
    )
    statuses = runs_by_status(root)
    assert "KILLED" in statuses.values(), output
    assert set(statuses.values()) <= {"FINISHED", "KILLED"}
    assert "Traceback" not in output and "Exception ignored" not in output, output
    assert_no_half_written_job(root)
    return output


def test_sigterm_ends_the_runs_killed(tmp_path: Path, shrunk_pipeline) -> None:
    root = tmp_path / "project"
    shrunk_pipeline.copy_to(root)
    output = interrupt_training(root, signal.SIGTERM, after_a_job=False)
    assert "error: interrupted by SIGTERM; the sweep's MLflow runs are marked KILLED" in output


def test_after_ctrl_c_and_kill_9_the_next_repro_cleans_up_and_trains_the_same(
    tmp_path: Path, shrunk_pipeline
) -> None:
    """Ctrl-C ends the runs KILLED; kill -9 leaves them RUNNING; the next plain `dvc repro`
    runs the train stage again (a stage that did not finish left no sweep record, and DVC
    never restores it from the run cache), marks the orphans FAILED, and trains exactly what
    a clean run trained."""
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    interrupt_training(root, signal.SIGINT, after_a_job=True)

    before = len(runs_by_status(root))
    train = start(root, sys.executable, "-m", "overfit.stages.train")
    wait_for(lambda: len(runs_by_status(root)) > before, 120, "the next sweep's parent run")
    os.killpg(train.pid, signal.SIGKILL)
    train.wait(timeout=10)
    orphans = {r for r, s in runs_by_status(root).items() if s == "RUNNING"}
    assert orphans, "kill -9 should leave the parent run RUNNING"
    assert_no_half_written_job(root)

    result = run("dvc", "repro", "train")
    assert "Running stage 'train'" in result.stdout, result.stdout
    assert all(f"marked run {o} FAILED" in result.stdout for o in orphans), result.stdout
    statuses = runs_by_status(root)
    assert all(statuses[o] == "FAILED" for o in orphans)
    assert "RUNNING" not in statuses.values()
    assert_same_training(root, shrunk_pipeline.root)


def test_a_stage_pauses_garbage_collection_and_leaves_its_objects_to_the_os_at_exit() -> None:
    """`stage_process`: no automatic collection while a stage runs (on again after it), and no
    last collection when its process exits (seconds, once TensorFlow is imported), so an object
    kept alive only by a cycle is never finalized; without it, it is."""
    program = """
import gc, os, sys
from overfit import runtime
class Cycle:
    def __del__(self, write=os.write):
        write(1, b"finalized")
cycle = Cycle()
cycle.itself = cycle
del cycle
if sys.argv[1] == "stage":
    with runtime.stage_process():
        assert not gc.isenabled()
    assert gc.isenabled()
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    outputs = {
        mode: subprocess.run(
            [sys.executable, "-c", program, mode], env=env, capture_output=True, check=True
        ).stdout
        for mode in ("stage", "plain")
    }
    assert outputs == {"stage": b"", "plain": b"finalized"}
