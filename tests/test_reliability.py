"""Interruption, crashes, determinism and concurrency, with real subprocesses and a real store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

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


def interrupt_training(root: Path, signum: int) -> str:
    """Train again (the data stages are done) and send `signum` once a job has finished;
    check the sweep stopped within seconds, its runs ended KILLED, nothing is half-written."""
    shutil.rmtree(root / "models")  # so a finished job below is one of this run's
    repro = start(root, "dvc", "repro", "--force", "--single-item", "train")
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
    return output


def test_ctrl_c_ends_the_runs_killed_and_the_rerun_is_clean(
    tmp_path: Path, shrunk_pipeline
) -> None:
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    interrupt_training(root, signal.SIGINT)
    # Trained again, not restored from the DVC cache: the rerun reproduces the clean run.
    run("dvc", "repro", "--force", "--downstream", "train")
    assert same_metrics(root, shrunk_pipeline.root)


def test_sigterm_ends_the_runs_killed(tmp_path: Path, shrunk_pipeline) -> None:
    root = tmp_path / "project"
    shrunk_pipeline.copy_to(root)
    output = interrupt_training(root, signal.SIGTERM)
    assert "interrupted; the sweep's MLflow runs are marked KILLED" in output


def test_after_kill_9_the_next_run_fails_the_orphans(tmp_path: Path, shrunk_pipeline) -> None:
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    shutil.rmtree(root / "models")  # so a finished job below is one of this run's
    train = start(root, sys.executable, "-m", "overfit.train")
    wait_for(lambda: finished_jobs(root), 120, "the first finished job")
    os.killpg(train.pid, signal.SIGKILL)
    train.wait(timeout=10)
    orphans = {r for r, s in runs_by_status(root).items() if s == "RUNNING"}
    assert orphans, "kill -9 should leave the parent run RUNNING"
    assert_no_half_written_job(root)

    result = run(sys.executable, "-m", "overfit.train")
    assert all(f"marked run {o} FAILED" in result.stdout for o in orphans), result.stdout
    statuses = runs_by_status(root)
    assert all(statuses[o] == "FAILED" for o in orphans)
    assert "RUNNING" not in statuses.values()
    # The rerun trained every job as the clean run did.
    for name in json.loads((shrunk_pipeline.root / "models/sweep.json").read_text())["runs"]:
        ours, clean = (
            json.loads((r / "models" / name / "result.json").read_text())
            for r in (root, shrunk_pipeline.root)
        )
        assert ours["per_seed"] == clean["per_seed"], name


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

    def queue_done() -> bool:
        status = run("dvc", "queue", "status").stdout
        return "Queued" not in status and "Running" not in status

    try:
        wait_for(queue_done, 400, "both queued experiments", interval=2)
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
