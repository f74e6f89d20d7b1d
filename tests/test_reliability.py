"""Interruption, crashes, determinism and concurrency, with real subprocesses and a real store."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import env_for


def runs_by_status(root: Path) -> dict[str, str]:
    """{run_id: status} of every run in the project's SQLite store."""
    with sqlite3.connect(root / "mlflow.db") as db:
        return dict(db.execute("SELECT run_uuid, status FROM runs").fetchall())


def wait_for(condition, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


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
    names = json.loads((clean_root / "reports/sweep.json").read_text())["runs"]
    assert set(json.loads((root / "reports/sweep.json").read_text())["runs"]) == set(names)
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
    job has finished or as soon as the sweep's parent run exists; check the sweep stopped
    within seconds, its runs ended KILLED, nothing is half-written."""
    shutil.rmtree(root / "models")  # so a finished job below is one of this run's
    repro = start(root, "dvc", "repro", "--force", "--single-item", "train")
    if after_a_job:
        wait_for(lambda: finished_jobs(root), 120, "the first finished job")
    else:
        wait_for(lambda: "RUNNING" in running_or_not(root), 120, "the sweep's parent run")
    os.killpg(repro.pid, signum)
    sent = time.monotonic()
    output, _ = repro.communicate(timeout=30)
    assert repro.returncode != 0
    wait_for(
        lambda: "RUNNING" not in runs_by_status(root).values(), 15, f"no RUNNING run: {output}"
    )
    assert time.monotonic() - sent < 15, "the sweep did not stop within seconds"
    statuses = runs_by_status(root)
    assert "KILLED" in statuses.values(), output
    assert set(statuses.values()) <= {"FINISHED", "KILLED"}
    assert "Traceback" not in output and "Exception ignored" not in output, output
    assert_no_half_written_job(root)
    return output


def test_ctrl_c_ends_the_runs_killed_and_the_rerun_is_clean(
    tmp_path: Path, shrunk_pipeline
) -> None:
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    interrupt_training(root, signal.SIGINT, after_a_job=True)
    # A plain `dvc repro train` trains again (the interrupted stage left no sweep record) and
    # trains exactly what the clean run did.
    assert "Running stage 'train'" in run("dvc", "repro", "train").stdout
    assert_same_training(root, shrunk_pipeline.root)


def test_sigterm_ends_the_runs_killed(tmp_path: Path, shrunk_pipeline) -> None:
    root = tmp_path / "project"
    shrunk_pipeline.copy_to(root)
    output = interrupt_training(root, signal.SIGTERM, after_a_job=False)
    assert "error: interrupted by SIGTERM; the sweep's MLflow runs are marked KILLED" in output


def test_after_kill_9_the_next_run_fails_the_orphans(tmp_path: Path, shrunk_pipeline) -> None:
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    train = start(root, sys.executable, "-m", "overfit.train")
    wait_for(lambda: "RUNNING" in running_or_not(root), 120, "the sweep's parent run")
    os.killpg(train.pid, signal.SIGKILL)
    train.wait(timeout=10)
    orphans = {r for r, s in runs_by_status(root).items() if s == "RUNNING"}
    assert orphans, "kill -9 should leave the parent run RUNNING"
    assert_no_half_written_job(root)

    # A plain `dvc repro`: the killed stage left no sweep record, so DVC runs it again (it is
    # never restored from the run cache), and the new run finds the orphans.
    result = run("dvc", "repro", "train")
    assert "Running stage 'train'" in result.stdout, result.stdout
    assert all(f"marked run {o} FAILED" in result.stdout for o in orphans), result.stdout
    statuses = runs_by_status(root)
    assert all(statuses[o] == "FAILED" for o in orphans)
    assert "RUNNING" not in statuses.values()
    assert_same_training(root, shrunk_pipeline.root)


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

    def queue_done() -> bool:
        status = run("dvc", "queue", "status").stdout
        return "Queued" not in status and "Running" not in status

    try:
        wait_for(sweeps_ended, 400, "both queued experiments' sweeps", interval=0.5)
        wait_for(queue_done, 120, "DVC to collect both experiments", interval=1)
    finally:
        run("dvc", "queue", "stop", "--kill", check=False)
    status = run("dvc", "queue", "status").stdout
    assert status.count("Success") == 2, status

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


def test_one_pipeline_per_project_folder(tmp_path: Path, shrunk_pipeline) -> None:
    """A second train, or a second `dvc repro`, stops at once; the first is unaffected."""
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    first = start(root, "dvc", "repro", "--force", "--single-item", "train")
    lock = root / ".overfit.lock"
    wait_for(lambda: lock.is_file() and lock.read_text().strip(), 60, "the lock's holder")
    holder = lock.read_text().strip()

    started = time.monotonic()
    second = run(sys.executable, "-m", "overfit.train", check=False)
    assert time.monotonic() - started < 15
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        f"error: another pipeline process (pid {holder}) is running in {root}; "
        "wait for it to end, or stop it"
    ]
    # DVC's own lock stops a second `dvc repro` before it touches the first one's outputs.
    again = run("dvc", "repro", check=False)
    assert again.returncode != 0 and "lock" in again.stderr.lower(), again.stderr

    output, _ = first.communicate(timeout=180)
    assert first.returncode == 0, output
    assert set(runs_by_status(root).values()) == {"FINISHED"}
    assert not lock.read_text().strip(), "the lock still names a holder"


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    from overfit import runtime

    lock = tmp_path / ".overfit.lock"
    lock.write_text("4194303\n")  # a pid that held it, and died: the kernel freed its lock
    with runtime.project_lock(lock):
        assert lock.read_text() == f"{os.getpid()}\n"
        busy = pytest.raises(runtime.FolderBusy, match=rf"\(pid {os.getpid()}\) is running")
        with busy, runtime.project_lock(lock):
            pass
