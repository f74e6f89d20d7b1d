"""MLflow through its public client, on a real SQLite store: sampled metric histories, URIs."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from overfit import layout
from overfit.config import TrackingConfig
from overfit.tracking import runs, store

from .conftest import wait_for


def test_sampled_epochs_keep_the_first_and_the_last() -> None:
    assert runs.sampled_epochs(60, 20) == [1, 20, 40, 60]
    assert runs.sampled_epochs(65, 20) == [1, 20, 40, 60, 65]
    assert runs.sampled_epochs(4000, 20)[:3] == [1, 20, 40]
    assert len(runs.sampled_epochs(4000, 20)) == 201
    assert runs.sampled_epochs(5, 1) == [1, 2, 3, 4, 5]
    assert runs.sampled_epochs(1, 20) == [1]


def test_histories_read_back_sampled_with_the_last_epoch_latest(tmp_path) -> None:
    client = store.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = store.experiment_id(client, "histories", (tmp_path / "artifacts").as_uri())
    with_nan = np.linspace(0.5, 1.0, 1500)
    with_nan[99] = np.nan  # epoch 100, a sampled one
    curves = {"train_loss": np.linspace(1.0, 0.1, 1500), "test_accuracy": with_nan}

    run = client.create_run(exp).info.run_id
    runs.log_metric_histories(client, run, curves, every=50, start_ms=1000)

    epochs = runs.sampled_epochs(1500, 50)
    for name, values in curves.items():
        points = sorted(client.get_metric_history(run, name), key=lambda m: m.step)
        assert [m.step for m in points] == epochs
        for point in points:
            expected = values[point.step - 1]
            if math.isnan(expected):
                assert math.isnan(point.value)
            else:
                assert point.value == pytest.approx(expected, rel=1e-12)
    # The latest values, which the runs table and search use, are the last epoch's.
    assert client.get_run(run).data.metrics == {"train_loss": 0.1, "test_accuracy": 1.0}
    found = client.search_runs([exp], "metrics.train_loss < 0.2")
    assert [r.info.run_id for r in found] == [run]


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://user:secret@127.0.0.1:5001", "http://127.0.0.1:5001"),
        ("HTTPS://user:secret@example.org/mlflow", "https://example.org/mlflow"),
        ("http://127.0.0.1:5001/?token=secret", "http://127.0.0.1:5001/"),
        ("http://127.0.0.1:5001/#secret", "http://127.0.0.1:5001/"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ],
)
def test_redact_drops_every_place_a_secret_can_hide(uri: str, shown: str) -> None:
    assert store.redact(uri) == shown


@pytest.mark.parametrize(
    "uri",
    [
        "http://alice:abc/defSECRET@127.0.0.1:1",  # a '/' in the password ends the host part
        "http://alice:pa#ssSECRET@127.0.0.1:1",  # a '#' starts a fragment
        "http://alice:SECRET@127.0.0.1:99999",  # a port out of range
        "http://alice:SECRET@",  # no host
    ],
)
def test_a_malformed_uri_is_shown_as_its_scheme_alone(uri: str) -> None:
    assert not store.well_formed(uri)
    assert store.redact(uri) == "http://(a malformed URI)"


def test_an_upper_case_scheme_is_still_checked(tmp_path) -> None:
    with pytest.raises(ConnectionError) as caught:
        store.check_reachable("HTTP://user:secret@127.0.0.1:1/?token=secret", timeout=1)
    assert "secret" not in str(caught.value)
    assert "http://127.0.0.1:1" in str(caught.value)


# --- a store no crash can break ----------------------------------------------------------------

CREATE = "import sys; from overfit.tracking import store; store.ensure_store(sys.argv[1])"


def usable(database) -> bool:
    import sqlite3

    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    names = [e.name for e in store.client(f"sqlite:///{database}").search_experiments()]
    return names == ["Default"]


def store_files(folder: Path) -> tuple[Path, Path, list[Path]]:
    """A store's lock, the store itself, and its drafts (one rename from being the store)."""
    database = folder / "mlflow.db"
    drafts = list(folder.glob(f".mlflow.db.*{layout.DRAFT_SUFFIX}"))
    return layout.store_lock(database), database, drafts


def draft_size(folder: Path) -> int:
    """The draft's size in bytes; -1 while there is none."""
    for draft in store_files(folder)[2]:
        with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
            return draft.stat().st_size
    return -1


# The states a creation passes through, in order, each one a moment to kill it at: the lock
# taken (MLflow not yet imported), the draft begun, the draft holding part of the schema
# (MLflow's migrations under way: a finished store is about 950 kB), the store renamed into
# place (WAL mode still to be set).
KILL_MOMENTS = {
    "lock taken": lambda folder: store_files(folder)[0].exists(),
    "draft begun": lambda folder: draft_size(folder) >= 0,
    "draft part-made": lambda folder: draft_size(folder) >= 300_000,
    "store in place": lambda folder: store_files(folder)[1].exists(),
}


def creator(database: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CREATE, f"sqlite:///{database}"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("moment", list(KILL_MOMENTS))
def test_a_store_killed_while_it_is_created_is_missing_or_whole(tmp_path, moment: str) -> None:
    """kill -9 at each state of the creation: no store, or a whole one; never a half-made one
    that every later run refuses."""
    import signal

    database = tmp_path / "mlflow.db"
    process = creator(database)
    try:
        wait_for(lambda: KILL_MOMENTS[moment](tmp_path), 120, moment, interval=0.005)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    _, _, drafts = store_files(tmp_path)
    if moment == "lock taken":
        assert not drafts and not database.exists()
    elif moment == "store in place":
        assert usable(database)
    else:  # killed halfway through: the draft is left, the store's name is free
        assert drafts and not database.exists()
    store.ensure_store(f"sqlite:///{database}")  # the next run gets a whole store
    assert usable(database)
    assert list(tmp_path.glob(".mlflow.db.*")) == [], "a draft store was left behind"


def test_a_creation_passes_through_every_kill_moment(tmp_path) -> None:
    """The moments above are states a creation really passes through, in that order."""
    process = creator(tmp_path / "mlflow.db")
    seen: list[str] = []

    def reached_or_ended(reached) -> bool:
        return reached(tmp_path) or process.poll() is not None

    try:
        for moment, reached in KILL_MOMENTS.items():
            wait_for(lambda r=reached: reached_or_ended(r), 120, moment, interval=0.005)
            if reached(tmp_path):
                seen.append(moment)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert seen == list(KILL_MOMENTS)
    assert usable(tmp_path / "mlflow.db")
    assert list(tmp_path.glob(".mlflow.db.*")) == [], "a draft store was left behind"


def half_made(database) -> None:
    """A SQLite file with some other program's tables in it."""
    import sqlite3

    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE notes (text TEXT)")


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda db: db.write_bytes(b"not a database at all\n" * 50), "file is not a database"),
        (half_made, "no MLflow tables in it"),
    ],
    ids=["garbage", "not an MLflow store"],
)
def test_an_unusable_store_is_one_line_naming_it(
    shrunk_pipeline, tmp_path, entry, spoil, reason: str
) -> None:
    """Refused by reading SQLite's own catalogue, before MLflow is asked: MLflow would retry
    for a minute and a half, a warning on stderr each time."""
    from overfit.stages import train

    root = tmp_path / "project"
    shrunk_pipeline.copy_to(root)
    shutil.rmtree(root / "models")
    (root / "mlflow.db").unlink()
    spoil(root / "mlflow.db")
    status, _, err = entry(train.main, root)
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0] == (
        f"error: {root / 'mlflow.db'}: not a usable MLflow store ({reason}); "
        "move it aside or delete it, and rerun to start a new one"
    )
    assert not (root / "models").exists()


def test_an_empty_store_file_is_replaced_by_a_whole_store(tmp_path) -> None:
    database = tmp_path / "mlflow.db"
    database.touch()
    store.ensure_store(f"sqlite:///{database}")
    assert usable(database)


def test_a_process_leaves_the_sqlite_store_whole_in_its_one_file(tmp_path) -> None:
    """A stage process that creates the store, logs a run and registers a model closes the
    store's connections at exit, though it skips the final garbage collection: the -wal file
    is folded in, so a copy of mlflow.db alone holds everything logged (and stays in WAL
    mode)."""
    program = """
import sys
from overfit import runtime
from overfit.tracking import store
with runtime.stage_process():
    store.ensure_store(sys.argv[1])
    client = store.client(sys.argv[1])
    experiment = client.create_experiment("whole")
    run = client.create_run(experiment, run_name="logged-before-exit").info.run_id
    client.log_metric(run, "accuracy", 0.914)
    client.set_terminated(run)
    client.create_registered_model("whole")
"""
    database = tmp_path / "mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    subprocess.run(
        [sys.executable, "-c", program, f"sqlite:///{database}"],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )
    assert not list(tmp_path.glob("mlflow.db-*")), "SQLite's -wal or -shm file left beside it"
    copy = tmp_path / "copy" / "mlflow.db"
    copy.parent.mkdir()
    shutil.copy2(database, copy)
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT key, value FROM metrics").fetchall() == [("accuracy", 0.914)]
        assert db.execute("SELECT name FROM registered_models").fetchall() == [("whole",)]


def test_values_beyond_one_batch_are_all_logged(tmp_path) -> None:
    """MlflowClient.log_batch splits what it is given into batches the store accepts (100
    params, 100 tags, 1000 metrics): one call logs them all."""
    client = store.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = store.experiment_id(client, "many", (tmp_path / "artifacts").as_uri())
    run = client.create_run(exp).info.run_id
    params = {f"p{i}": i for i in range(250)}
    metrics = {f"m{i}": i / 10 for i in range(2500)}
    tags = {f"t{i}": str(i) for i in range(150)}

    runs.log_values(client, run, params=params, metrics=metrics, tags=tags)

    logged = client.get_run(run).data
    assert logged.params == {k: str(v) for k, v in params.items()}
    assert logged.metrics == metrics
    assert {k: v for k, v in logged.tags.items() if not k.startswith("mlflow.")} == tags


def artifact_locations(database: Path) -> list[str]:
    """Every artifact location the store records, but the Default experiment's (MLflow's own,
    never logged to)."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        return [
            location
            for table, column in store.ARTIFACT_COLUMNS
            for (location,) in db.execute(f"SELECT {column} FROM {table}")
            if location.startswith("file:")
        ]


@pytest.fixture
def current_uri_restored() -> Iterator[None]:
    import mlflow

    previous = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(previous)


def logged_project(root: Path) -> tuple[str, str]:
    """A project folder whose store holds a run with a file, and a registered version of a
    logged model: (run id, the model's id)."""
    import mlflow

    root.mkdir()
    # The registry finds a models:/ source through MLflow's current tracking URI (put back
    # by the fixture `current_uri_restored`).
    mlflow.set_tracking_uri(f"sqlite:///{root / layout.MLFLOW_DB}")
    opened = store.open_store(root, TrackingConfig())
    client = opened.client
    run = client.create_run(opened.experiment_id).info.run_id
    card = root.parent / "card.md"
    card.write_text("logged before the move")
    client.log_artifact(run, str(card))
    model = client.create_logged_model(opened.experiment_id, name="m", source_run_id=run)
    files = root.parent / "model"
    files.mkdir()
    (files / "MLmodel").write_text("flavors: {}\n")
    client.log_model_artifacts(model.model_id, str(files))
    client.create_registered_model("m")
    client.create_model_version("m", f"models:/{model.model_id}", run, model_id=model.model_id)
    client.set_terminated(run)
    return run, model.model_id


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_moved_or_copied_project_reads_and_writes_its_own_artifacts(
    tmp_path, capsys, current_uri_restored, how: str
) -> None:
    """MLflow records artifact locations as absolute paths: opened in its new folder, the
    store's records follow the project there, so nothing is read from or written to the old
    folder (which a move leaves gone and a copy leaves as it was)."""
    first, here = tmp_path / "first", tmp_path / how
    run, model = logged_project(first)
    recorded = artifact_locations(first / layout.MLFLOW_DB)
    capsys.readouterr()  # what creating it printed
    (shutil.copytree if how == "copied" else os.rename)(first, here)

    opened = store.open_store(here, TrackingConfig())
    assert capsys.readouterr().out == (
        f"{here / layout.MLFLOW_DB}: the project was moved or copied from {first}; the store's "
        f"artifact locations now name {here / layout.MLFLOW_ARTIFACTS}\n"
    )
    client = opened.client
    later = client.create_run(opened.experiment_id).info.run_id
    client.log_artifact(later, str(tmp_path / "card.md"))
    client.set_terminated(later)

    ours = (here / layout.MLFLOW_ARTIFACTS).as_uri()
    assert len(artifact_locations(here / layout.MLFLOW_DB)) == len(recorded) + 1
    assert all(u.startswith(ours) for u in artifact_locations(here / layout.MLFLOW_DB))
    assert (here / layout.MLFLOW_ARTIFACTS / later / "artifacts" / "card.md").is_file()
    download = tmp_path / "download"
    download.mkdir()
    card = Path(client.download_artifacts(run, "card.md", str(download)))
    assert card.read_text() == "logged before the move"
    assert client.get_model_version_download_uri("m", "1").startswith(f"{ours}/models/{model}")
    if how == "moved":
        assert not first.exists(), "MLflow recreated the old folder"
    else:
        assert artifact_locations(first / layout.MLFLOW_DB) == recorded
        assert not (first / layout.MLFLOW_ARTIFACTS / later).exists()
    store.open_store(here, TrackingConfig())  # once followed, nothing more to do
    assert capsys.readouterr().out == ""


def test_a_store_copied_without_its_artifacts_is_refused_in_one_line(
    tmp_path, current_uri_restored
) -> None:
    first, copy = tmp_path / "first", tmp_path / "copy"
    logged_project(first)
    copy.mkdir()
    with (  # SQLite's backup: what the -wal file holds too
        contextlib.closing(sqlite3.connect(first / layout.MLFLOW_DB)) as original,
        contextlib.closing(sqlite3.connect(copy / layout.MLFLOW_DB)) as copied,
    ):
        original.backup(copied)
    recorded = artifact_locations(copy / layout.MLFLOW_DB)

    with pytest.raises(store.StoreError) as refused:
        store.existing_store(copy, TrackingConfig())

    assert str(refused.value) == (
        f"{copy / layout.MLFLOW_DB}: its runs' artifacts are recorded under "
        f"{first / layout.MLFLOW_ARTIFACTS}, and there is no mlartifacts/ beside it: move or "
        "copy mlartifacts/ along with mlflow.db"
    )
    assert artifact_locations(copy / layout.MLFLOW_DB) == recorded


def test_a_moved_store_of_an_unknown_schema_is_refused_unchanged(
    tmp_path, current_uri_restored
) -> None:
    """The rewrite knows where one MLflow schema keeps artifact locations; another schema may
    keep them elsewhere, so a move is refused rather than half-followed."""
    first, moved = tmp_path / "first", tmp_path / "moved"
    logged_project(first)
    os.rename(first, moved)
    database = moved / layout.MLFLOW_DB
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("UPDATE alembic_version SET version_num = 'f00df00df00d'")
    recorded = artifact_locations(database)

    with pytest.raises(store.StoreError) as refused:
        store.existing_store(moved, TrackingConfig(), writes=False)

    assert str(refused.value) == (
        f"{database}: its artifacts are recorded under {first / layout.MLFLOW_ARTIFACTS}, and "
        "its MLflow schema f00df00df00d is not one overfit updates: move the project back "
        "there, or start a new store (move mlflow.db and mlartifacts/ aside)"
    )
    assert artifact_locations(database) == recorded


def test_the_installed_mlflow_makes_a_schema_whose_artifact_columns_are_known(tmp_path) -> None:
    """An MLflow upgrade with a new schema fails here: check ARTIFACT_COLUMNS against it, then
    add its revision to KNOWN_SCHEMAS."""
    database = tmp_path / layout.MLFLOW_DB
    store.ensure_store(f"sqlite:///{database}")
    with contextlib.closing(sqlite3.connect(database)) as db:
        (schema,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
        for table, column in store.ARTIFACT_COLUMNS:
            assert column in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    assert schema in store.KNOWN_SCHEMAS
