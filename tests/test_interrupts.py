"""Ctrl-C and SIGTERM at every kind of moment of a sweep, in this process: the train stage runs
a tiny sweep (two configurations, one seed, 20 epochs) while a signal is sent to it just as one
of its steps begins, then the MLflow store is read back.

Each time: the stage exits 128 + the signal's number, the parent run ends KILLED, no run is
left RUNNING, and no run ended FINISHED after the signal.

The moments are named by what the stage does through public interfaces (Hydra's `compose`,
MLflow's client, Keras, matplotlib, the atomic rename that puts a file in place, the signal
mask held while a run's status is written), never by the stage's own helpers, which may move.
`signal_at` is this suite's one hook into a running stage; it sends a signal only while
`runtime.records_signals()` says the stage records them.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import hydra
import keras
import mlflow.keras
import pytest
import scipy.special
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from overfit import runtime
from overfit.commands import params as config_entry
from overfit.core import trainer
from overfit.stages import prepare, train

from .conftest import PENALTIES_ONLY, copy_project

TINY = [
    "train.epochs=20",
    "train.seeds=[1]",
    "sweep.kinds=[l2]",
    "sweep.strengths=[1.0e-3]",
    "data.fresh_samples=200",
    *PENALTIES_ONLY,
]


class Nth:
    """The `call`-th call."""

    def __init__(self, call: int) -> None:
        self.call, self.seen = call, 0

    def __call__(self, *args, **kwargs) -> bool:
        self.seen += 1
        return self.seen == self.call


class Blocking(Nth):
    """The `call`-th time signals are blocked: a run's final status is about to be decided."""

    def __call__(self, how, *args, **kwargs) -> bool:
        return how == signal.SIG_BLOCK and super().__call__()


class Into:
    """A rename onto a path ending with `parts`: a file put in place whole."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __call__(self, source, destination, *args, **kwargs) -> bool:
        return Path(destination).parts[-len(self.parts) :] == self.parts


class Published:
    """A job's folder moved from models/.partial/ into models/, whole."""

    def __call__(self, source, destination, *args, **kwargs) -> bool:
        return Path(source).parent.name == ".partial" and Path(destination).parent.name == "models"


Chooser = Nth | Into | Published


# (what the stage is doing, the interface it calls, which call): where the signal arrives.
# Two configurations, so two jobs, two child runs.
MOMENTS = [
    ("composing the jobs", hydra, "compose", Nth(1)),
    ("compiling on a thread of its own", trainer, "compile_ahead", Nth(1)),
    ("opening the store", MlflowClient, "get_experiment_by_name", Nth(1)),
    ("looking for orphaned runs", MlflowClient, "search_runs", Nth(1)),
    ("creating the parent run", MlflowClient, "create_run", Nth(1)),
    ("logging the parent's parameters", MlflowClient, "log_batch", Nth(1)),
    ("logging the parent's datasets", MlflowClient, "log_inputs", Nth(1)),
    # Written back by the worker thread that trained the stack.
    ("a trained stack's weights written back", keras.Model, "set_weights", Nth(1)),
    ("writing the first job's history", os, "replace", Into("history.csv")),
    ("saving its MLflow model", mlflow.keras, "save_model", Nth(1)),
    ("drawing its learning curve", Figure, "savefig", Nth(1)),
    ("writing its result", os, "replace", Into("result.json")),
    ("creating the first child run", MlflowClient, "create_run", Nth(2)),
    ("logging its model", MlflowClient, "create_logged_model", Nth(1)),
    ("logging its datasets", MlflowClient, "log_inputs", Nth(2)),
    ("logging its files", MlflowClient, "log_artifact", Nth(1)),
    ("ending the first child run", signal, "pthread_sigmask", Blocking(1)),
    ("publishing the first job's folder", os, "replace", Published()),
    ("creating the second child run", MlflowClient, "create_run", Nth(3)),
    ("ending the second child run", signal, "pthread_sigmask", Blocking(2)),
    ("logging the sweep's table", MlflowClient, "log_text", Nth(1)),
    ("writing the sweep's record", os, "replace", Into("reports", "sweep.json")),
    ("ending the parent run", signal, "pthread_sigmask", Blocking(3)),
]
SIGNALS = [signal.SIGINT, signal.SIGTERM]


@pytest.fixture(scope="module")
def data_ready(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with the tiny sweep's settings and its data; its store grows run by run."""
    root = tmp_path_factory.mktemp("interrupts") / "project"
    copy_project(root)
    cwd = Path.cwd()
    os.chdir(root)
    try:
        config_entry.main(TINY)
        prepare.main(["generate"])
        prepare.main(["split"])
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def project(data_ready: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project, as the working directory, with no finished sweep recorded (the committed
    one's, or an earlier test's)."""
    (data_ready / "reports/sweep.json").unlink(missing_ok=True)
    monkeypatch.chdir(data_ready)
    for variable in ("OVERFIT_ROOT", "DVC_ROOT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(variable, raising=False)
    return data_ready


def signal_at(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, chosen: Chooser, signum: int
) -> list[float]:
    """Send `signum` to this process as the first call of `owner.name` that `chosen` picks
    begins; the list gets the time it was sent."""
    original = getattr(owner, name)
    sent: list[float] = []

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if not sent and chosen(*args[1:] if isinstance(owner, type) else args, **kwargs):
            # Only ever while the stage records signals: pytest's own handler would stop the
            # whole session, and SIGTERM's default would kill this process.
            assert runtime.records_signals(), "the stage does not record signals here"
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
    ids=[m[0] for m in MOMENTS],
)
def test_a_signal_at_any_moment_ends_the_sweep_killed(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys, moment, signum: int
) -> None:
    what, owner, name, chosen = moment
    sent = signal_at(monkeypatch, owner, name, copy.copy(chosen), signum)
    started_ms = int(time.time() * 1000) - 1

    with pytest.raises(SystemExit) as stopped:
        train.main([])

    assert sent, f"the stage never reached the moment: {what} ({name})"
    assert stopped.value.code == 128 + signum
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: interrupted by {signal.Signals(signum).name}; "
        "the sweep's MLflow runs are marked KILLED"
    )
    assert not runtime.records_signals(), "the handlers were not restored"
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


def test_the_tiny_sweep_finishes_without_a_signal(project: Path) -> None:
    """The same sweep, undisturbed: what the moments above interrupt is a sweep that works."""
    started_ms = int(time.time() * 1000) - 1
    train.main([])
    found = runs(project, started_ms)
    assert sorted((n, s) for n, s, _, _ in found) == [
        ("l2_1e-03", "FINISHED"),
        ("none", "FINISHED"),
        ("sweep-default", "FINISHED"),
    ]
    record = json.loads((project / "reports/sweep.json").read_text(encoding="utf-8"))
    assert set(record["results"]) == {"none", "l2_1e-03"}
    assert not runtime.records_signals()


class Printing:
    """The print of the sweep's last line: its parent run has ended FINISHED."""

    def __call__(self, *args, **kwargs) -> bool:
        return any("configurations in" in str(a) for a in args)


@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
def test_a_signal_after_the_sweep_ended_still_exits_128_plus_its_number(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys, signum: int
) -> None:
    """Past the last safe point nothing stops: the runs stay FINISHED and the record written,
    yet the exit status says the signal came."""
    import builtins

    sent = signal_at(monkeypatch, builtins, "print", Printing(), signum)
    started_ms = int(time.time() * 1000) - 1
    with pytest.raises(SystemExit) as stopped:
        train.main([])
    assert sent, "the stage never printed its last line"
    assert stopped.value.code == 128 + signum
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: interrupted by {signal.Signals(signum).name} after the sweep ended; "
        "its runs and files are complete"
    )
    assert {s for _, s, _, _ in runs(project, started_ms)} == {"FINISHED"}
    assert (project / "reports/sweep.json").is_file()
    assert not runtime.records_signals()


# (moment, owner, name, chosen, whether the study is then written whole)
STUDY_MOMENTS = [
    ("building a configuration's start", keras.utils, "set_random_seed", Nth(1), False),
    ("measuring the fresh points", scipy.special, "expit", Nth(1), False),
    ("writing the study", os, "replace", Into("reports", "study.json"), True),
]


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("moment", STUDY_MOMENTS, ids=lambda m: m[0].replace(" ", "-"))
def test_a_signal_during_the_study_leaves_no_half_written_study(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys, moment, signum: int
) -> None:
    """The study stage (the tiny sweep on its default 10 draws) stopped by Ctrl-C or SIGTERM:
    it exits 128 + the signal's number in one line, and reports/study.json is the earlier one
    or the new one whole, never part of one."""
    from overfit.reports import read_study
    from overfit.stages import study

    before = project / "reports/study.json"
    before.unlink(missing_ok=True)
    what, owner, name, chosen, whole = moment
    sent = signal_at(monkeypatch, owner, name, copy.copy(chosen), signum)
    with pytest.raises(SystemExit) as stopped:
        study.main([])
    assert sent, f"the stage never reached the moment: {what} ({name})"
    assert stopped.value.code == 128 + signum
    [line] = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith(f"error: interrupted by {signal.Signals(signum).name}; ")
    if whole:  # the signal came after the last safe point: the file is whole
        assert line.endswith("reports/study.json is complete")
        assert read_study(project).draws == 10
    else:
        assert line.endswith("no study written") and not before.exists()
    assert not runtime.records_signals(), "the handlers were not restored"
    assert not (project / "reports/.study").exists()
