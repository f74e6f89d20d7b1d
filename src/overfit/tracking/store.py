"""The MLflow tracking store: its URI (a SQLite file at the project root, or a server whose
password never reaches a log), whether it answers, and the store and its experiment, created
whole when needed."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from overfit import layout
from overfit.config import ConfigError, TrackingConfig

SQLITE = "sqlite:///"

# The experiment tag MLflow's UI reads to open an experiment on its "Model training" view
# rather than the GenAI one.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


class StoreError(RuntimeError):
    """The tracking store cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class Store:
    """An open tracking store: its client, the experiment's id, and its URI."""

    client: Any
    experiment_id: str
    uri: str


# --- the URI -----------------------------------------------------------------------------------


def tracking_uri(root: Path, tracking: TrackingConfig) -> str:
    """Local: SQLite mlflow.db at the project root (absolute). Server: the URI from the env."""
    if tracking.backend == "local":
        return f"{SQLITE}{layout.mlflow_db(root)}"
    uri = os.environ.get(tracking.uri_env, "").strip()
    if not uri:
        raise ConfigError(
            f"tracking.uri_env: environment variable {tracking.uri_env} is not set "
            "(tracking=server needs the server's URI there)"
        )
    if not well_formed(uri):  # said without any of it: a malformed URI may split a password
        raise ConfigError(
            f"tracking.uri_env: {tracking.uri_env} is not a well-formed URI "
            "(scheme://[user:password@]host[:port][/path], a port from 0 to 65535; a '/', '#', "
            "'?' or '@' in a user or password must be percent-encoded)"
        )
    return uri


def well_formed(uri: str) -> bool:
    """Whether `uri` has a scheme, a host (but for file-like schemes) and a numeric port, if
    any, in range."""
    parts = urlsplit(uri)
    try:
        parts.port  # noqa: B018 - reading it checks it
    except ValueError:
        return False
    local = parts.scheme.lower() in ("file", "sqlite")
    return bool(parts.scheme) and (local or bool(parts.hostname))


def artifact_location(root: Path, tracking: TrackingConfig) -> str | None:
    """Local: mlartifacts/ beside mlflow.db (MLflow would use ./mlruns in the working
    directory). Server: None, the server decides."""
    if tracking.backend != "local":
        return None
    return layout.mlflow_artifacts(root).as_uri()


def redact(uri: str) -> str:
    """The URI without user:password, query string or fragment (any may hold a secret), fit
    for messages, logs and records."""
    parts = urlsplit(uri)
    if not well_formed(uri):  # its parts cannot be told apart: nothing of it is safe to show
        return f"{parts.scheme}://(a malformed URI)"
    if parts.username is None and parts.password is None and not parts.query + parts.fragment:
        return uri
    return urlunsplit((parts.scheme, _host_and_port(parts), parts.path, "", ""))


def _host_and_port(parts: SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address goes back in brackets
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


def credentials_to_env(uri: str) -> str:
    """Move user:password@ from a server URI into MLflow's own variables; the URI without it.

    MLflow prints its tracking URI ("View run ... at: <uri>/#/...") when a run ends, so a
    password left in the URI would land in every log.
    """
    parts = urlsplit(uri)
    if parts.username is None:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username)
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password or "")
    return urlunsplit(parts._replace(netloc=_host_and_port(parts)))


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer."""
    if urlsplit(uri).scheme.lower() not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(redact(uri).rstrip("/") + "/health", timeout=timeout):
            pass
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConnectionError(
            f"cannot reach the MLflow tracking server at {redact(uri)}: {reason}"
        ) from None


# --- the client --------------------------------------------------------------------------------


def client(uri: str) -> Any:
    """An MlflowClient of the store at `uri`, for runs and for the registry (which lives in
    the store); a SQLite store's connections are closed at exit."""
    from mlflow.tracking import MlflowClient

    uri = credentials_to_env(uri)
    mlflow_client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if uri.startswith(SQLITE):
        _close_at_exit(uri)
    return mlflow_client


# The SQLite stores whose connections are closed at exit, by URI.
_closed_at_exit: set[str] = set()


def _close_at_exit(uri: str) -> None:
    """At exit, close the SQLite connections MLflow keeps pooled for this store: the last one
    to close folds the -wal file into the store, which is then whole in its one file. A stage
    process skips the interpreter's final collection, which would close them
    (runtime.stage_process).

    MLflow's stores share one SQLAlchemy engine per URI (one for runs, one for the registry):
    a store of each kind built here gives the client's engines, and only those are disposed,
    with no hook on other engines. Building them costs ~70 ms (MLflow checks the schema again);
    MLflow's NullPool setting, closing each connection after use, doubled the time of a sweep's
    store calls.
    """
    if uri in _closed_at_exit:
        return
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # A store needs an artifact root; only its engine is used here.
    artifacts = (Path(uri.removeprefix(SQLITE)).parent / layout.MLFLOW_ARTIFACTS).as_uri()
    for engine in (SqlAlchemyStore(uri, artifacts).engine, RegistryStore(uri).engine):
        atexit.register(engine.dispose)
    _closed_at_exit.add(uri)


def experiment_id(mlflow_client: Any, name: str, artifacts: str | None = None) -> str:
    """The experiment's id, created if needed (under the lock: another process may race us),
    tagged as a model-training experiment."""
    key, value = EXPERIMENT_KIND
    with store_lock(mlflow_client.tracking_uri):
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            return mlflow_client.create_experiment(
                name, artifact_location=artifacts, tags={key: value}
            )
        if experiment.tags.get(key) != value:  # a store made before the tag was set
            mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id


# --- the store ---------------------------------------------------------------------------------


def open_store(root: Path, tracking: TrackingConfig) -> Store:
    """The configured store, created if needed, with the experiment created if needed."""
    uri = tracking_uri(root, tracking)
    ensure_store(uri)
    try:
        mlflow = client(uri)
        exp_id = experiment_id(mlflow, tracking.experiment, artifact_location(root, tracking))
    except Exception as error:  # MLflow's, SQLAlchemy's or the server's: all mean the same
        raise StoreError(_unusable(uri, error)) from None
    return Store(mlflow, exp_id, uri)


def existing_store(root: Path, tracking: TrackingConfig, writes: bool = True) -> Any:
    """A client of the configured store, which must exist already (nothing is created);
    StoreError if it is missing, not an MLflow store, unreachable, or (`writes`) a SQLite
    store this process cannot write."""
    uri = tracking_uri(root, tracking)
    if uri.startswith(SQLITE):
        database = layout.mlflow_db(root)
        # MLflow would create an empty store here rather than say there is none.
        if not database.is_file():
            raise StoreError(f"no MLflow store at {database}")
        check_sqlite_store(database)
        use_wal(database)
        if writes:
            check_writable(database)
        follow_move(database)
    try:
        check_reachable(uri)
    except ConnectionError as error:
        raise StoreError(str(error).splitlines()[0]) from None
    return client(uri)


def check_writable(database: Path) -> None:
    """Refuse at once a SQLite store this process cannot write (the file or its folder
    read-only): MLflow would fail at its first write, with a run half-logged."""
    try:
        with contextlib.closing(sqlite3.connect(database, 60, isolation_level=None)) as db:
            # A write rolled back: SQLite opens a file it cannot write read-only, and only a
            # write says so.
            db.execute("BEGIN IMMEDIATE")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            try:
                db.execute(f"PRAGMA user_version = {int(version)}")
            finally:
                db.execute("ROLLBACK")
    except sqlite3.Error as error:
        raise StoreError(f"{database}: cannot write to the MLflow store ({error})") from None


def store_failure(uri: str, error: BaseException) -> StoreError:
    """A failure of MLflow while it used the store (a full disk, a file made read-only, a
    server gone), as one line: the store and the innermost cause, such as SQLite's message."""
    cause: BaseException = error
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    where = uri.removeprefix(SQLITE) if uri.startswith(SQLITE) else redact(uri)
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
    return StoreError(f"{where}: the MLflow store failed ({reason})")


@contextlib.contextmanager
def store_failures(uri: str) -> Iterator[None]:
    """MLflow's failures inside the block, as one StoreError line (`store_failure`)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        raise store_failure(uri, error) from None


def _unusable(uri: str, error: BaseException) -> str:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    if uri.startswith(SQLITE):
        return (
            f"{uri.removeprefix(SQLITE)}: not a usable MLflow store ({reason}); move it "
            "aside or delete it, and rerun to start a new one"
        )
    return f"cannot use the MLflow store at {redact(uri)}: {reason}"


def _exists(database: Path) -> bool:
    """A store file with something in it (SQLite reads an empty file as an empty database)."""
    return database.is_file() and database.stat().st_size > 0


def check_sqlite_store(database: Path) -> None:
    """Refuse at once a file that is not an MLflow store: MLflow itself would retry for
    minutes before giving up. Reads SQLite's own catalogue, read-only."""
    uri = f"{SQLITE}{database}"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as error:
        raise StoreError(_unusable(uri, error)) from None
    if not {"alembic_version", "experiments", "runs"} <= tables:
        raise StoreError(_unusable(uri, ValueError("no MLflow tables in it")))


def use_wal(database: Path) -> None:
    """Put a SQLite store in WAL mode, which the file keeps: several pipelines may log to one
    store at once (`dvc queue start -j 2`), readers and a writer working together. A writer
    waits for the lock: MLflow gives each of its sessions a busy timeout (20 s)."""
    with contextlib.closing(sqlite3.connect(database, timeout=60)) as db:
        db.execute("PRAGMA journal_mode=WAL")


def ensure_store(uri: str) -> None:
    """Create a new SQLite store whole or not at all: its schema is built in a draft file
    beside it, which one rename puts in place, so a crash at any moment leaves no store or a
    complete one (never a half-made one that every later run refuses)."""
    if not uri.startswith(SQLITE):
        return
    database = Path(uri.removeprefix(SQLITE))
    if _exists(database):
        check_sqlite_store(database)
    else:
        with store_lock(uri):
            if not _exists(database):
                _create_store(database)
    use_wal(database)
    check_writable(database)
    follow_move(database)


def _create_store(database: Path) -> None:
    """The schema in a draft, renamed into place. The draft keeps SQLite's rollback journal,
    so all of it is in its one file when it is renamed (WAL could leave some in a -wal file)."""
    from mlflow.tracking import MlflowClient

    for left in database.parent.glob(f".{database.name}.*{layout.DRAFT_SUFFIX}*"):
        left.unlink(missing_ok=True)  # a draft whose creator died
    draft = layout.store_draft(database, os.getpid())
    try:
        with quiet("mlflow"):  # its table-by-table account of the creation
            MlflowClient(f"{SQLITE}{draft}").search_experiments(max_results=1)
    except Exception as error:
        draft.unlink(missing_ok=True)
        raise StoreError(f"{database}: could not create the MLflow store: {error}") from None
    os.replace(draft, database)
    print(f"created the MLflow store {database}", flush=True)


# --- a moved or copied project ------------------------------------------------------------------

# The MLflow schemas (alembic revisions) whose artifact locations `follow_move` knows, and the
# columns that hold them there: every absolute artifact path the store records.
KNOWN_SCHEMAS = frozenset({"dc11669786a5"})
ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)


def follow_move(database: Path) -> None:
    """Keep a moved or copied project's store pointing at its own artifacts: mlartifacts/
    beside mlflow.db.

    MLflow records artifact locations as absolute paths, and no public API changes them (`mlflow
    db move-resources` retargets a workspace's experiments only, not their runs, models or
    versions): a moved project would go on writing into its old folder, recreated, and serve
    from there. So the store's records under the old folder's mlartifacts/ are rewritten to this
    one, in one transaction, for an MLflow schema known to hold them in ARTIFACT_COLUMNS; any
    other schema, or artifacts left behind, is refused in one line.
    """
    here = (database.parent / layout.MLFLOW_ARTIFACTS).as_uri()
    try:
        with _connect(database) as db:  # a read: a store that has not moved is left alone
            if not _moved_from(db, here):
                return
        with store_lock(f"{SQLITE}{database}"), _connect(database) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                moves = _moved_from(db, here)  # again, under the lock: another may have done it
                for old in moves:
                    _check_movable(db, database, old, here)
                    for table, column in ARTIFACT_COLUMNS:
                        db.execute(
                            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                            f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                            (here, len(old) + 1, old, len(old) + 1, f"{old}/"),
                        )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
    except (sqlite3.Error, OSError) as error:
        raise StoreError(f"{database}: cannot update the MLflow store ({error})") from None
    for old in moves:
        print(
            f"{database}: the project was moved or copied from {Path(_path(old)).parent}; the "
            f"store's artifact locations now name {_path(here)}",
            flush=True,
        )


def _connect(database: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(database, 60, isolation_level=None))


def _path(uri: str) -> str:
    return unquote(urlsplit(uri).path)


def _moved_from(db: sqlite3.Connection, here: str) -> list[str]:
    """The other projects' mlartifacts/ this store's experiments name (its old folders)."""
    rows = db.execute("SELECT artifact_location FROM experiments").fetchall()
    ours = {location for (location,) in rows if location.startswith("file://")}
    return sorted(
        location
        for location in ours
        if location != here and location.endswith(f"/{layout.MLFLOW_ARTIFACTS}")
    )


def _check_movable(db: sqlite3.Connection, database: Path, old: str, here: str) -> None:
    """Refuse a schema whose columns are not known, and artifacts left in the old folder."""
    (schema,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    if schema not in KNOWN_SCHEMAS:
        raise StoreError(
            f"{database}: its artifacts are recorded under {_path(old)}, and its MLflow schema "
            f"{schema} is not one overfit updates: move the project back there, or start a new "
            "store (move mlflow.db and mlartifacts/ aside)"
        )
    logged = db.execute(
        "SELECT count(*) FROM runs WHERE substr(artifact_uri, 1, ?) = ?", (len(old) + 1, f"{old}/")
    ).fetchone()[0]
    if logged and not Path(_path(here)).is_dir():
        raise StoreError(
            f"{database}: its runs' artifacts are recorded under {_path(old)}, and there is no "
            f"{layout.MLFLOW_ARTIFACTS}/ beside it: move or copy {layout.MLFLOW_ARTIFACTS}/ "
            "along with mlflow.db"
        )


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on <db>.lock for a SQLite store; nothing for any other store."""
    import fcntl

    if not uri.startswith(SQLITE):
        yield
        return
    with open(layout.store_lock(Path(uri.removeprefix(SQLITE))), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def quiet(logger: str) -> Iterator[None]:
    """Only warnings and errors from `logger` within the block."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)
