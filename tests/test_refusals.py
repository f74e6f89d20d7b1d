"""Settings that are accepted run to the end, or fail clearly: a loss that becomes NaN or
infinite, a tracking server that does not answer (its secrets never shown)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from overfit.commands import params as config_entry
from overfit.commands.promote import main as promote_main
from overfit.stages import prepare, train

from .conftest import PENALTIES_ONLY

TINY = [
    "train.epochs=20",
    "train.seeds=[1]",
    "sweep.kinds=[l2]",
    "data.fresh_samples=200",
    *PENALTIES_ONLY,
]


def with_data(root: Path, entry, *overrides: str) -> None:
    """params.yaml with these settings, and the data stages run."""
    assert entry(config_entry.main, root, *TINY, *overrides)[0] == 0
    for stage in ("generate", "split"):
        assert entry(prepare.main, root, stage)[0] == 0


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        (["model.learning_rate=1.0e+30", "sweep.strengths=[1.0e-3]"], "none"),
        (["sweep.strengths=[1.0e+308]"], "l2_1e+308"),
    ],
    ids=["learning rate 1e30", "strength 1e308"],
)
def test_a_loss_that_becomes_nan_fails_clearly(project, entry, overrides, culprit) -> None:
    """The configuration's run ends FAILED, one line names it, nothing downstream is written."""
    root, _ = project
    with_data(root, entry, *overrides)
    status, _, err = entry(train.main, root)
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {culprit}: the train loss of seed 1 became ")
    assert lines[0].endswith("lower model.learning_rate or the remedy's strength")
    with sqlite3.connect(root / "mlflow.db") as db:
        statuses = dict(db.execute("SELECT name, status FROM runs").fetchall())
    # The diverged job failed first: no other job was logged, and the sweep failed with it.
    assert statuses == {culprit: "FAILED", "sweep-default": "FAILED"}
    assert not (root / "reports/sweep.json").exists()
    assert not any((root / "models").glob("*/result.json"))
    assert json.loads((root / "reports/metrics.json").read_text()) != {}  # untouched


SECRET = "secret"


@pytest.mark.parametrize(
    "uri",
    [
        f"HTTP://user:{SECRET}@127.0.0.1:1",
        f"http://127.0.0.1:1/?token={SECRET}",
        f"https://127.0.0.1:1/mlflow#{SECRET}",
    ],
    ids=["upper-case scheme, password", "token in the query", "fragment"],
)
def test_an_unreachable_server_is_named_without_its_secret(
    project, entry, monkeypatch, uri: str
) -> None:
    root, _ = project
    with_data(root, entry, "tracking=server")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    status, out, err = entry(train.main, root)
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: cannot reach the MLflow tracking server at http")
    assert "127.0.0.1:1" in lines[0]
    assert SECRET not in out + err
    assert not (root / "mlflow.db").exists() and not (root / "models").exists()


@pytest.mark.parametrize("command", ["train", "promote"])
def test_a_malformed_server_uri_is_one_line_without_any_of_it(
    project, entry, monkeypatch, command: str
) -> None:
    """A password holding a '/' splits the URI elsewhere than meant: whatever part of it a
    parser would take for a host or a port, none of it is printed; exit 2 before any work."""
    root, _ = project
    with_data(root, entry, "tracking=server")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:abc/def{SECRET}@127.0.0.1:1")
    status, out, err = entry(train.main if command == "train" else promote_main, root)
    assert status == 2, out + err
    assert err.strip() == (
        "error: tracking.uri_env: MLFLOW_TRACKING_URI is not a well-formed URI "
        "(scheme://[user:password@]host[:port][/path], a port from 0 to 65535; a '/', '#', '?' "
        "or '@' in a user or password must be percent-encoded)"
    )
    assert "abc" not in out + err and SECRET not in out + err
    assert not (root / "mlflow.db").exists() and not (root / "models").exists()


def test_folds_that_cannot_hold_out_each_class_stop_the_sweep_before_any_run(
    project, entry
) -> None:
    """Known only once the data is read: the 30 training rows hold 14 of one class. (`make
    params` refuses it too, from the rows the data settings draw: here params.yaml is edited
    by hand.)"""
    root, _ = project
    with_data(root, entry)
    params = root / "params.yaml"
    text = params.read_text(encoding="utf-8")
    assert "  folds: 5\n" in text
    params.write_text(text.replace("  folds: 5\n", "  folds: 16\n"), encoding="utf-8")
    status, _, err = entry(train.main, root)
    assert status == 2
    assert err.strip() == (
        "error: select.folds: must be at most 14 (the training rows' smallest class), so that "
        "every fold holds out each class, got 16"
    )
    assert not (root / "mlflow.db").exists() and not (root / "models").exists()
