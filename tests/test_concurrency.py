"""Pipelines side by side: two queued DVC experiments logging to one store, and a second
pipeline in a folder where one runs (real DVC, real MLflow store, real subprocesses)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from .conftest import SHRUNK, TWO_CONFIGURATIONS, wait_for
from .test_reliability import runs_by_status, start


def test_two_queued_experiments_share_one_store(tmp_path: Path, shrunk_pipeline) -> None:
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    # The shared pipeline's data (its stages are skipped), two configurations of one seed,
    # up to the stage that logs every run.
    settings = ["data.fresh_samples=500", "sweep=article", "train.seeds=[1]"]
    for epochs in (50, 70):
        overrides = [*settings, f"train.epochs={epochs}"]
        run("dvc", "exp", "run", "--queue", *(a for o in overrides for a in ("-S", o)), "train")
    run("dvc", "queue", "start", "-j", "2")

    def sweeps_ended() -> bool:  # read from the store: `dvc queue status` costs a DVC start
        if not (root / "mlflow.db").is_file():
            return False
        with contextlib.closing(sqlite3.connect(root / "mlflow.db")) as db:
            ended = db.execute(
                "SELECT COUNT(*) FROM runs WHERE name LIKE 'sweep-%' AND status != 'RUNNING'"
            ).fetchone()[0]
        return ended == 2

    statuses: list[str] = []

    def queue_done() -> bool:
        statuses.append(run("dvc", "queue", "status").stdout)
        return "Queued" not in statuses[-1] and "Running" not in statuses[-1]

    try:
        wait_for(sweeps_ended, 400, "both queued experiments' sweeps", interval=0.5)
        wait_for(queue_done, 120, "DVC to collect both experiments", interval=1)
    finally:
        run("dvc", "queue", "stop", "--kill", check=False)
    assert statuses[-1].count("Success") == 2, statuses[-1]

    with sqlite3.connect(root / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        parents = db.execute(
            "SELECT run_uuid FROM runs WHERE name LIKE 'sweep-%' AND status = 'FINISHED'"
        ).fetchall()
        assert len(parents) == 2
        for (parent,) in parents:
            children = db.execute(
                "SELECT COUNT(*) FROM tags WHERE key = 'mlflow.parentRunId' AND value = ?",
                (parent,),
            ).fetchone()[0]
            assert children == 2
        epochs = {
            value for (value,) in db.execute("SELECT value FROM params WHERE key = 'train.epochs'")
        }
        assert epochs == {"50", "70"}


def listing(folder: Path) -> list[str] | None:
    """Every file and folder under `folder` (None: there is none)."""
    if not folder.is_dir():
        return None
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def busy(root: Path, holder: str) -> str:
    return (
        f"error: another pipeline process (pid {holder}) is running in {root}; "
        "wait for it to end, or stop it"
    )


@pytest.mark.parametrize("first_by", ["dvc repro", "hand"])
def test_one_pipeline_per_project_folder(tmp_path: Path, shrunk_pipeline, first_by: str) -> None:
    """While a train runs, a second train, or a `dvc repro`, stops at once and deletes none of
    its outputs, whether the first was started by `dvc repro` (DVC's own lock stops a second
    one; once that `dvc` is killed, the train it started goes on, and the project lock stops
    the next) or by hand; the first ends as if alone."""
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    # The first only has to hold the lock: a sweep of two configurations.
    run(sys.executable, "-m", "overfit.commands.params", *SHRUNK, *TWO_CONFIGURATIONS)
    train = [sys.executable, "-m", "overfit.stages.train"]
    dvc_repro = ["dvc", "repro", "--force", "--single-item", "train"]
    first = start(root, *(dvc_repro if first_by == "dvc repro" else train))
    lock = root / ".overfit.lock"
    try:
        wait_for(lambda: lock.is_file() and lock.read_text().strip(), 60, "the lock's holder")
        holder = lock.read_text().strip()
        # The first is paused while the others try: it holds its locks whatever their speed.
        os.killpg(first.pid, signal.SIGSTOP)
        kept = listing(root / "models")  # the earlier sweep's, or what the first wrote
        # A second that waited for the lock instead of stopping would hang: the timeouts.
        second = run(*train, check=False, timeout=120)
        assert second.returncode == 1
        assert second.stderr.splitlines() == [busy(root, holder)]
        again = run(*dvc_repro, check=False, timeout=120)
        if first_by == "dvc repro":  # DVC's own lock, before it touches the first's outputs
            assert again.returncode != 0 and "lock" in again.stderr.lower(), again.stderr
            os.kill(first.pid, signal.SIGKILL)  # that `dvc` alone: its train goes on
            first.wait(timeout=10)
            again = run(*dvc_repro, check=False, timeout=120)
        assert again.returncode != 0 and busy(root, holder) in again.stderr, again.stderr
        assert listing(root / "models") == kept
    finally:
        os.killpg(first.pid, signal.SIGCONT)

    # Until the train ends, it holds the write end of the output pipe.
    output, _ = first.communicate(timeout=180)
    wait_for(lambda: not lock.read_text().strip(), 30, "the train to end")
    assert first_by != "hand" or first.returncode == 0, output
    assert "2 configurations in" in output, output
    assert set(runs_by_status(root).values()) == {"FINISHED"}
    assert sorted(p.name for p in (root / "models").iterdir()) == ["l2_1e-03", "none"]


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    from overfit import runtime

    lock = tmp_path / ".overfit.lock"
    lock.write_text("4194303\n")  # a pid that held it, and died: the kernel freed its lock
    with runtime.project_lock(lock):
        assert lock.read_text() == f"{os.getpid()}\n"
        busy = pytest.raises(runtime.FolderBusy, match=rf"\(pid {os.getpid()}\) is running")
        with busy, runtime.project_lock(lock):
            pass


def test_params_rewritten_while_the_sweep_trains_fail_the_stage(
    tmp_path: Path, shrunk_pipeline
) -> None:
    """`make params` while `dvc repro` trains: the stage fails in one line, its parent run
    FAILED, no sweep record; dvc.lock keeps the params of the last sweep that finished, and
    `dvc status` says the stage must run again."""
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    run(sys.executable, "-m", "overfit.commands.params", *SHRUNK, *TWO_CONFIGURATIONS)
    lock_before = (root / "dvc.lock").read_text()
    first = start(root, "dvc", "repro", "--force", "--single-item", "train")
    before = set(runs_by_status(root))
    try:  # paused once the sweep has read params.yaml and started its parent run
        wait_for(lambda: set(runs_by_status(root)) - before, 60, "the sweep's parent run")
        os.killpg(first.pid, signal.SIGSTOP)
        run(sys.executable, "-m", "overfit.commands.params", "train.epochs=10")
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    output, _ = first.communicate(timeout=180)
    assert first.returncode != 0, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert errors[0].startswith(f"error: {root / 'params.yaml'} changed while the sweep trained")
    assert not (root / "reports/sweep.json").exists()
    with contextlib.closing(sqlite3.connect(root / "mlflow.db")) as db:
        parents = db.execute("SELECT run_uuid, status FROM runs WHERE name LIKE 'sweep-%'")
        assert {s for r, s in parents.fetchall() if r not in before} == {"FAILED"}
    assert (root / "dvc.lock").read_text() == lock_before
    assert "train" in run("dvc", "status").stdout
