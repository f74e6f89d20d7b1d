"""Promotion reads a version's figures as the gate reads a report: a figure tag that is missing,
not a number or out of its range is refused in one line, exit 2, and no alias moves. A real
SQLite MLflow store with registered versions and their tags; no training."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from overfit.commands.promote import main as promote_main

from .conftest import ROOT

NAME = "overfit-moons"
# The tags the register stage writes, for a good candidate selected by cross-validation.
GOOD = {
    "overfit.run": "l1_l2_1e-03",
    "overfit.selection_rule": "cv_acc: highest mean held-out accuracy in 5-fold cross-validation",
    "cv_acc": "0.966667",
    "test_acc": "0.948571",
    "fresh_acc": "0.939440",
    "baseline_test_acc": "0.914286",
}
MISSING = object()
# A tag replaced (MISSING: not there), and the start of the one error line.
BROKEN = {
    "test_acc not a number": (
        {"test_acc": "abc"},
        'tag test_acc must be a number in [0, 1], got "abc"',
    ),
    "test_acc missing": (
        {"test_acc": MISSING},
        "tag test_acc is missing (must be a number in [0, 1])",
    ),
    "test_acc empty": ({"test_acc": ""}, 'tag test_acc must be a number in [0, 1], got ""'),
    "test_acc above 1": ({"test_acc": "1.5"}, "tag test_acc must be a number in [0, 1], got 1.5"),
    "fresh_acc NaN": ({"fresh_acc": "nan"}, "tag fresh_acc must be a number in [0, 1], got nan"),
    "fresh_acc infinite": (
        {"fresh_acc": "inf"},
        "tag fresh_acc must be a number in [0, 1], got inf",
    ),
    "cv_acc negative": (
        {"cv_acc": "-0.2"},
        "tag cv_acc must be a number in [0, 1] or null, got -0.2",
    ),
    "cv_acc missing": (
        {"cv_acc": MISSING},
        "tag cv_acc is missing (must be a number in [0, 1] or null)",
    ),
    "cv_acc empty under a cv rule": (
        {"cv_acc": ""},
        "tag cv_acc must be a number in [0, 1] (rule cv_acc selects by cross-validation)",
    ),
    "run missing": ({"overfit.run": MISSING}, "tag overfit.run is missing (must be a string)"),
    "rule unknown": (
        {"overfit.selection_rule": "best: on test"},
        "tag overfit.selection_rule must be one of cv_acc, cv_loss, test_acc",
    ),
}


def with_changes(changes: dict[str, Any]) -> dict[str, str]:
    tags = dict(GOOD)
    for key, value in changes.items():
        if value is MISSING:
            del tags[key]
        else:
            tags[key] = value
    return tags


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, dict[str, str]]:
    """A project folder with params.yaml and a store holding one version per case (broken
    tags), a good version and a worse one; the case's name -> its version."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("promote") / "project"
    root.mkdir()
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    (root / "dvc.yaml").write_text("stages: {}\n", encoding="utf-8")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    source = (root / "model").as_uri()
    cases = {"good": GOOD, "worse": GOOD | {"fresh_acc": "0.900000"}}
    cases |= {case: with_changes(changes) for case, (changes, _) in BROKEN.items()}
    versions = {}
    for case, tags in cases.items():
        created = client.create_model_version(NAME, source, tags=tags)
        versions[case] = str(created.version)
    return root, client, versions


def point(client: Any, **moves: str | None) -> None:
    """Set (a version) or remove (None) each alias."""
    for alias, version in moves.items():
        if version is None:
            if alias in client.get_registered_model(NAME).aliases:
                client.delete_registered_model_alias(NAME, alias)
        else:
            client.set_registered_model_alias(NAME, alias, version)


def aliases(client: Any) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()}


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("champion", [False, True], ids=["first candidate", "over a champion"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_candidate_with_a_broken_figure_is_refused(store, entry, case, champion) -> None:
    root, client, versions = store
    point(client, candidate=versions[case], previous=None)
    point(client, champion=versions["good"] if champion else None)
    before = aliases(client)

    status, out, err = entry(promote_main, root)

    assert status == 2, out + err
    version = versions[case]
    message = f"error: {NAME} version {version}: {BROKEN[case][1]}"
    assert one_error_line(err).startswith(message), err
    assert aliases(client) == before


def test_a_champion_with_a_broken_figure_cannot_be_compared(store, entry) -> None:
    root, client, versions = store
    point(client, candidate=versions["good"], champion=versions["test_acc not a number"])
    before = aliases(client)

    status, _, err = entry(promote_main, root)

    assert status == 2
    champion = versions["test_acc not a number"]
    assert one_error_line(err).startswith(f"error: {NAME} version {champion}: tag test_acc")
    assert aliases(client) == before


def test_good_figures_are_compared_by_the_gates_rules(store, entry) -> None:
    """The rules themselves: a worse fresh accuracy fails, an equal candidate passes."""
    root, client, versions = store
    point(client, candidate=versions["worse"], champion=versions["good"])
    status, out, _ = entry(promote_main, root)
    assert status == 1, out
    assert "FAIL  selected_fresh_accuracy: 0.9394 (l1_l2_1e-03, cv_acc) -> 0.9000" in out
    assert "pass  selected_test_accuracy" in out
    assert out.splitlines()[-1] == f"version {versions['worse']} stays a candidate"

    point(client, candidate=versions["good"], champion=versions["worse"])
    status, out, err = entry(promote_main, root)
    assert status == 0, out + err
    promoted = f"version {versions['good']} is the champion (over {versions['worse']})"
    assert out.splitlines()[-1] == promoted
    assert aliases(client)["champion"] == versions["good"]


def test_a_move_while_another_holds_the_registry_stops_at_once(store, entry) -> None:
    """Promotion and rollback take `.overfit-registry.lock`: while another process holds it
    (here a child process holding its flock), each exits 1 at once in one line naming the
    holder, and nothing moves; once it is free, the move is made."""
    root, client, versions = store
    point(client, candidate=versions["good"], champion=versions["worse"], previous=None)
    before = aliases(client)
    lock = root / ".overfit-registry.lock"
    lock.touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in ([], ["--rollback"]):
            status, out, err = entry(promote_main, root, *argv)
            assert status == 1, out + err
            assert one_error_line(err) == (
                f"error: another promotion or rollback (pid {holder.pid}) is running in "
                f"{root}; wait for it to end, or stop it"
            )
            assert aliases(client) == before
    finally:
        holder.kill()
        holder.wait()
    status, out, err = entry(promote_main, root)
    assert status == 0, out + err
    assert aliases(client) == {
        "candidate": versions["good"], "champion": versions["good"], "previous": versions["worse"]
    }  # fmt: skip


# Holds a file's flock, as a running promotion does, and writes its pid in it.
HOLD_LOCK = """
import fcntl, os, sys, time
with open(sys.argv[1], "a+") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    handle.truncate(0)
    handle.write(f"{os.getpid()}\\n")
    handle.flush()
    print("held", flush=True)
    time.sleep(600)
"""
