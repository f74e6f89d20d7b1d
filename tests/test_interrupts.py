"""Ctrl-C and SIGTERM at every kind of moment of a sweep, in this process: the train stage runs
a tiny sweep (two configurations, one seed, 20 epochs) while a signal is sent to it just as one
of its steps begins, then the MLflow store is read back.

Each time: the stage exits 128 + the signal's number, the parent run ends KILLED, no run is
left RUNNING, and no run ended FINISHED after the signal.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from overfit import artifacts, runtime, tracking
from overfit.commands import params as config_entry
from overfit.core import figures, trainer
from overfit.stages import prepare, train
from overfit.sweep.plan import job

from .conftest import PENALTIES_ONLY

TINY = [
    "train.epochs=20",
    "train.seeds=[1]",
    "sweep.kinds=[l2]",
    "sweep.strengths=[1.0e-3]",
    "data.fresh_samples=200",
    *PENALTIES_ONLY,
]

# (where, which call): the step the signal arrives at. Two configurations, so two jobs.
MOMENTS = [
    (train, "compose_jobs", 1),  # while the sweep's jobs are composed
    (tracking, "open_store", 1),
    (tracking, "fail_orphaned_runs", 1),
    (MlflowClient, "create_run", 1),  # the parent run is being created
    (tracking, "log_values", 1),  # the parent's parameters
    (train, "train_together", 1),
    (trainer, "_train_group", 1),  # models training, in a worker thread
    (train, "run_job", 1),  # the first job starts
    (MlflowClient, "create_run", 2),  # its child run is being created
    (job, "write_history", 1),
    (figures, "png_bytes", 1),
    (tracking, "log_values", 2),
    (tracking, "log_metric_histories", 1),
    (tracking, "save_keras_flavor", 1),
    (tracking, "log_model_folder", 1),
    (job, "write_result", 1),
    (job, "publish", 1),
    (tracking, "end_run", 1),  # the first child run is ending
    (train, "run_job", 2),  # the second job starts
    (tracking, "end_run", 2),  # the second child run is ending
    (MlflowClient, "log_text", 1),  # the sweep's table
    (train, "write_sweep", 1),
    (tracking, "end_run", 3),  # the parent run is ending
]
SIGNALS = [signal.SIGINT, signal.SIGTERM]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with the tiny sweep's settings and its data; its store grows run by run."""
    from .conftest import copy_project

    root = tmp_path_factory.mktemp("interrupts") / "project"
    copy_project(root)
    (root / "reports/sweep.json").unlink()  # the committed sweep's record: none here yet
    cwd = Path.cwd()
    os.chdir(root)
    try:
        config_entry.main(TINY)
        prepare.main(["generate"])
        prepare.main(["split"])
    finally:
        os.chdir(cwd)
    return root


def signal_at(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, call: int, signum: int
) -> list[float]:
    """Send `signum` to this process as the `call`-th call of `owner.name` begins; the list
    gets the time it was sent."""
    original = getattr(owner, name)
    sent: list[float] = []
    calls = 0

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == call:
            # Only ever while the stage records signals: pytest's own handler would stop the
            # whole session, and SIGTERM's default would kill this process.
            assert signal.getsignal(signum) is runtime._record, "no handler for the signal"
            sent.append(time.time())
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return sent


def runs(root: Path, since_ms: int) -> list[tuple[str, str, str, int | None]]:
    """(name, status, parent id or '', end time) of the runs created since `since_ms`."""
    with sqlite3.connect(root / "mlflow.db") as db:
        return db.execute(
            "SELECT r.name, r.status, COALESCE(t.value, ''), r.end_time FROM runs r "
            "LEFT JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId' "
            "WHERE r.start_time >= ?",
            (since_ms,),
        ).fetchall()


@pytest.mark.parametrize(
    ("moment", "signum"),
    [(m, SIGNALS[i % 2]) for i, m in enumerate(MOMENTS)],
    ids=[f"{m[0].__name__.split('.')[-1]}.{m[1]}#{m[2]}" for m in MOMENTS],
)
def test_a_signal_at_any_moment_ends_the_sweep_killed(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys, moment, signum: int
) -> None:
    owner, name, call = moment
    sent = signal_at(monkeypatch, owner, name, call, signum)
    monkeypatch.chdir(project)
    for variable in ("OVERFIT_ROOT", "DVC_ROOT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(variable, raising=False)
    started_ms = int(time.time() * 1000) - 1

    with pytest.raises(SystemExit) as stopped:
        train.main([])

    assert sent, f"{name} was not called {call} times"
    assert stopped.value.code == 128 + signum
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: interrupted by {signal.Signals(signum).name}; "
        "the sweep's MLflow runs are marked KILLED"
    )
    assert signal.getsignal(signum) is not runtime._record, "the handler was not restored"
    found = runs(project, started_ms) if (project / "mlflow.db").exists() else []
    assert all(status != "RUNNING" for _, status, _, _ in found), found
    # Nothing ended FINISHED after the signal (a millisecond of clock resolution aside).
    sent_ms = int(sent[0] * 1000)
    assert all(status != "FINISHED" or end <= sent_ms + 1 for _, status, _, end in found), (
        found,
        sent_ms,
    )
    parents = [(n, s) for n, s, parent, _ in found if not parent]
    assert len(parents) <= 1
    if parents:
        assert parents[0][1] == "KILLED", found
    else:  # stopped before the parent run existed: nothing was created at all
        assert found == []
    # The sweep never recorded itself as done.
    assert not (project / "reports/sweep.json").exists()


def test_the_tiny_sweep_finishes_without_a_signal(project: Path, monkeypatch, capsys) -> None:
    """The same sweep, undisturbed: what the moments above interrupt is a sweep that works."""
    monkeypatch.chdir(project)
    started_ms = int(time.time() * 1000) - 1
    train.main([])
    found = runs(project, started_ms)
    assert sorted((n, s) for n, s, _, _ in found) == [
        ("l2_1e-03", "FINISHED"),
        ("none", "FINISHED"),
        ("sweep-default", "FINISHED"),
    ]
    record = artifacts.read_sweep(project)
    assert set(record.results) == {"none", "l2_1e-03"}
    (project / "reports/sweep.json").unlink()  # the next moment starts from an unfinished sweep
