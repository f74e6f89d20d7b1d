"""Interruption, crashes, determinism and concurrency, with real subprocesses and a real store."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import SHRUNK, copy_project, env_for


def runs_by_status(root: Path) -> dict[str, str]:
    """{run_id: status} of every run in the project's SQLite store."""
    with sqlite3.connect(root / "mlflow.db") as db:
        return dict(db.execute("SELECT run_uuid, status FROM runs").fetchall())


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


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


def same_metrics(root: Path, clean_root: Path) -> bool:
    """Byte for byte: the rerun's metrics.json against the clean run's."""
    metrics = "reports/metrics.json"
    return (root / metrics).read_bytes() == (clean_root / metrics).read_bytes()


def assert_no_half_written_job(root: Path) -> None:
    for folder in (root / "models").iterdir():
        if folder.is_dir() and not folder.name.startswith("."):
            assert (folder / "result.json").is_file(), f"{folder} looks complete but is not"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_sweep_ends_killed_and_reruns_cleanly(
    tmp_path: Path, shrunk_pipeline, signum: int
) -> None:
    clean_root, _, _ = shrunk_pipeline
    root = tmp_path / "project"
    run = copy_project(root, SHRUNK)
    repro = start(root, "dvc", "repro")
    wait_for(lambda: finished_jobs(root), 120, "the first finished job")
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
    assert_no_half_written_job(root)

    run("dvc", "repro")
    assert same_metrics(root, clean_root)


def test_after_kill_9_the_next_run_fails_the_orphans(tmp_path: Path, shrunk_pipeline) -> None:
    clean_root, _, _ = shrunk_pipeline
    root = tmp_path / "project"
    run = copy_project(root, SHRUNK)
    run("dvc", "repro", "split")
    train = start(root, sys.executable, "-m", "overfit.train")
    wait_for(lambda: finished_jobs(root), 120, "the first finished job")
    os.killpg(train.pid, signal.SIGKILL)
    train.wait(timeout=10)
    orphans = {r for r, s in runs_by_status(root).items() if s == "RUNNING"}
    assert orphans, "kill -9 should leave the parent run RUNNING"
    assert_no_half_written_job(root)

    result = run("dvc", "repro")
    assert all(f"marked run {o} FAILED" in result.stdout for o in orphans), result.stdout
    statuses = runs_by_status(root)
    assert all(statuses[o] == "FAILED" for o in orphans)
    assert "RUNNING" not in statuses.values()
    assert same_metrics(root, clean_root)


def test_two_clean_runs_give_byte_identical_metrics(tmp_path: Path, shrunk_pipeline) -> None:
    clean_root, _, _ = shrunk_pipeline
    root = tmp_path / "project"
    run = copy_project(root, SHRUNK)
    run("dvc", "repro")
    first = (clean_root / "reports/metrics.json").read_bytes()
    assert (root / "reports/metrics.json").read_bytes() == first
    assert json.loads(first)["baseline"]["run"] == "none"


def test_two_queued_experiments_share_one_store(tmp_path: Path) -> None:
    root = tmp_path / "project"
    run = copy_project(root, SHRUNK)
    shrink = [arg for override in SHRUNK for arg in ("-S", override)]
    for epochs in (50, 70):
        run("dvc", "exp", "run", "--queue", *shrink, "-S", f"train.epochs={epochs}")
    run("dvc", "queue", "start", "-j", "2")

    def queue_done() -> bool:
        status = run("dvc", "queue", "status").stdout
        return "Queued" not in status and "Running" not in status

    try:
        wait_for(queue_done, 400, "both queued experiments")
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
            assert children == 5
        epochs = {
            value for (value,) in db.execute("SELECT value FROM params WHERE key = 'train.epochs'")
        }
        assert epochs == {"50", "70"}
