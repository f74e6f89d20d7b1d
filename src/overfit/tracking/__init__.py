"""MLflow through its public client: the store URI, parent and child runs, sampled metric
histories, run status on exit."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from overfit import layout, runtime
from overfit.artifacts import SweepRecord
from overfit.config import ConfigError, TrackingConfig
from overfit.tracking import lineage

# MLflow caps one log_batch call at 1000 metrics, 100 params and 100 tags.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100


def tracking_uri(root: Path, tracking: TrackingConfig) -> str:
    """Local: SQLite mlflow.db at the project root (absolute). Server: the URI from the env."""
    if tracking.backend == "local":
        return f"sqlite:///{layout.mlflow_db(root)}"
    uri = os.environ.get(tracking.uri_env, "").strip()
    if not uri:
        raise ConfigError(
            f"tracking.uri_env: environment variable {tracking.uri_env} is not set "
            "(tracking=server needs the server's URI there)"
        )
    return uri


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
    if parts.username is None and parts.password is None and not parts.query + parts.fragment:
        return uri
    return urlunsplit((parts.scheme, _host_and_port(parts), parts.path, "", ""))


def _without_userinfo(uri: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=_host_and_port(parts)))


def _host_and_port(parts: Any) -> str:
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address goes back in brackets
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


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


# Several pipelines may log to one SQLite file at once (`dvc queue start -j 2`): WAL lets readers
# and a writer work together, and a writer waits for the lock instead of failing at once.
SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=60000")


# This process's open SQLite connections, by id (they cannot be weakly referenced).
_sqlite_connections: dict[int, Any] = {}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        path = cursor.execute("PRAGMA database_list").fetchone()[2]
        # A draft store keeps SQLite's rollback journal: when it is renamed into place, all of
        # it is in its one file (with WAL, some could still be in the -wal file beside it).
        for pragma in SQLITE_PRAGMAS[Path(path).name.endswith(layout.DRAFT_SUFFIX) :]:
            cursor.execute(pragma)
        cursor.close()
        _sqlite_connections[id(dbapi_connection)] = dbapi_connection


def _sqlite_closed(dbapi_connection: Any, _record: Any) -> None:
    _sqlite_connections.pop(id(dbapi_connection), None)


def _close_sqlite_connections() -> None:
    """At exit, close the connections SQLAlchemy's pool still holds: the last one to close
    folds the -wal file into the store, which is then whole in its one file (a stage process
    does not leave them to the interpreter's final collection: runtime.stage_process)."""
    for connection in list(_sqlite_connections.values()):
        with contextlib.suppress(Exception):  # already closed, or in use by a dying thread
            connection.close()
    _sqlite_connections.clear()


def client(uri: str) -> Any:
    """An MlflowClient; a SQLite store gets WAL mode and a busy timeout on every connection,
    and its connections closed at exit."""
    from mlflow.tracking import MlflowClient
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if uri.startswith("sqlite:") and not event.contains(Engine, "connect", _sqlite_pragmas):
        event.listen(Engine, "connect", _sqlite_pragmas)
        event.listen(Engine, "close", _sqlite_closed)
        atexit.register(_close_sqlite_connections)
    uri = credentials_to_env(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)  # the registry lives in the store


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
    return _without_userinfo(uri)


# The experiment tag MLflow's UI reads to open an experiment on its "Model training" view
# rather than the GenAI one.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


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


@dataclass(frozen=True)
class Store:
    """An open tracking store: its client, the experiment's id, and its URI."""

    client: Any
    experiment_id: str
    uri: str


class StoreError(RuntimeError):
    """The tracking store cannot be used; the message names it and says what to do."""


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


def existing_store(root: Path, tracking: TrackingConfig) -> Any:
    """A client of the configured store, which must exist already (nothing is created);
    StoreError if it is missing, not an MLflow store, or unreachable."""
    uri = tracking_uri(root, tracking)
    if uri.startswith("sqlite:///"):
        database = layout.mlflow_db(root)
        # MLflow would create an empty store here rather than say there is none.
        if not database.is_file():
            raise StoreError(f"no MLflow store at {database}")
        check_sqlite_store(database)
    try:
        check_reachable(uri)
    except ConnectionError as error:
        raise StoreError(str(error).splitlines()[0]) from None
    return client(uri)


def _unusable(uri: str, error: BaseException) -> str:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    if uri.startswith("sqlite:///"):
        return (
            f"{uri.removeprefix('sqlite:///')}: not a usable MLflow store ({reason}); move it "
            "aside or delete it, and rerun to start a new one"
        )
    return f"cannot use the MLflow store at {redact(uri)}: {reason}"


def _exists(database: Path) -> bool:
    """A store file with something in it (SQLite reads an empty file as an empty database)."""
    return database.is_file() and database.stat().st_size > 0


def check_sqlite_store(database: Path) -> None:
    """Refuse at once a file that is not an MLflow store: MLflow itself would retry for
    minutes before giving up. Reads SQLite's own catalogue, read-only."""
    uri = f"sqlite:///{database}"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as error:
        raise StoreError(_unusable(uri, error)) from None
    if not {"alembic_version", "experiments", "runs"} <= tables:
        raise StoreError(_unusable(uri, ValueError("no MLflow tables in it")))


def ensure_store(uri: str) -> None:
    """Create a new SQLite store whole or not at all: its schema is built in a draft file
    beside it, which one rename puts in place, so a crash at any moment leaves no store or a
    complete one (never a half-made one that every later run refuses)."""
    if not uri.startswith("sqlite:///"):
        return
    database = Path(uri.removeprefix("sqlite:///"))
    if _exists(database):
        check_sqlite_store(database)
        return
    with store_lock(uri):
        if _exists(database):
            return
        for left in database.parent.glob(f".{database.name}.*{layout.DRAFT_SUFFIX}*"):
            left.unlink(missing_ok=True)  # a draft whose creator died
        draft = layout.store_draft(database, os.getpid())
        import mlflow.tracking  # noqa: F401  (its import sets up its loggers, quieted below)

        try:
            with quiet("mlflow"):  # its table-by-table account of the creation
                client(f"sqlite:///{draft}").search_experiments(max_results=1)  # the schema
        except Exception as error:
            draft.unlink(missing_ok=True)
            raise StoreError(f"{database}: could not create the MLflow store: {error}") from None
        os.replace(draft, database)
        print(f"created the MLflow store {database}", flush=True)


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


# How later stages find a sweep's runs from reports/sweep.json, which holds no run id: the
# parent run's tag is the record's digest, each child run's the SHA-256 of its result.json.
SWEEP_TAG = "overfit.sweep_sha256"
RESULT_TAG = "overfit.result_sha256"
RUN_TAG = "overfit.run"


@dataclass(frozen=True)
class SweepRuns:
    """A sweep's runs in the store: the experiment's id, the parent's, and each configuration's
    child run."""

    experiment: str
    parent: str
    children: dict[str, Any]


def find_sweep(mlflow_client: Any, experiment: str, record: SweepRecord) -> SweepRuns:
    """The latest finished sweep whose parent run is tagged with the digest of `record`
    (reports/sweep.json), and its child runs, each checked against its result's digest;
    StoreError when the store holds no such sweep."""
    digest, results = record.digest(), record.results
    found = mlflow_client.get_experiment_by_name(experiment)
    finished = "attributes.status = 'FINISHED'"
    parents = []
    if found is not None:
        parents = mlflow_client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{SWEEP_TAG}` = '{digest}' and {finished}",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not parents:
        raise StoreError(
            f"no finished sweep in experiment {experiment!r} of the MLflow store trained these "
            "models (reports/sweep.json); train them again: dvc repro -f train"
        )
    parent = parents[0].info.run_id
    children = {
        run.data.tags.get(RUN_TAG): run
        for run in mlflow_client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and {finished}",
            max_results=len(results) + 100,
        )
        if run.data.tags.get(RESULT_TAG) == results.get(run.data.tags.get(RUN_TAG))
    }
    missing = sorted(set(results) - set(children))
    if missing:
        raise StoreError(f"the sweep's MLflow run {parent} has no finished run for {missing[0]}")
    return SweepRuns(found.experiment_id, parent, {name: children[name] for name in results})


def run_tags(root: Path) -> dict[str, str]:
    """What every run of this process is tagged with: its owner, the commit, the data."""
    return process_tags() | lineage.git_tags(root) | lineage.data_tags(root)


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on <db>.lock for a SQLite store; nothing for any other store."""
    import fcntl

    if not uri.startswith("sqlite:///"):
        yield
        return
    with open(layout.store_lock(Path(uri.removeprefix("sqlite:///"))), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the resolved config as MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def sampled_epochs(epochs: int, every: int) -> list[int]:
    """Epochs 1, every, 2*every, ... and the last: the points of a curve MLflow gets.

    MLflow's UI fetches at most 320 points of a curve for its charts; thousands more cost
    logging time and store size and show nothing more (history.csv keeps every epoch).
    """
    return sorted({1, epochs, *range(every, epochs + 1, every)})


def log_metric_histories(
    mlflow_client: Any,
    run_id: str,
    curves: Mapping[str, Any],
    every: int,
    start_ms: int | None = None,
) -> None:
    """Per-epoch curves {name: values}, one point every `every` epochs, step = epoch (from 1),
    through `log_batch` in batches of MLflow's maximum."""
    from mlflow.entities import Metric

    stamp = start_ms if start_ms is not None else int(time.time() * 1000)
    points = []
    for name, values in curves.items():
        points += [
            Metric(name, float(values[epoch - 1]), stamp, epoch)
            for epoch in sampled_epochs(len(values), every)
        ]
    for start in range(0, len(points), MAX_METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=points[start : start + MAX_METRICS_PER_BATCH])


def log_values(
    mlflow_client: Any,
    run_id: str,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    model_id: str | None = None,
) -> None:
    """Params, metrics (at step 0; of the logged model `model_id`, if given) and tags of a run,
    in batches MLflow accepts."""
    from mlflow.entities import Metric, Param, RunTag

    if tags:
        mlflow_client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    stamp = int(time.time() * 1000)
    param_list = [Param(k, str(v)) for k, v in (params or {}).items()]
    for start in range(0, len(param_list), MAX_PARAMS_PER_BATCH):
        mlflow_client.log_batch(run_id, params=param_list[start : start + MAX_PARAMS_PER_BATCH])
    metric_list = [
        Metric(k, float(v), stamp, 0, model_id=model_id) for k, v in (metrics or {}).items()
    ]
    for start in range(0, len(metric_list), MAX_METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=metric_list[start : start + MAX_METRICS_PER_BATCH])


@contextlib.contextmanager
def tracked_run(
    mlflow_client: Any, exp_id: str, name: str, tags: Mapping[str, str]
) -> Iterator[str]:
    """A new run that ends FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM.

    Creating the run and guarding it happen together, so no interruption can leave it RUNNING
    (except kill -9: `fail_orphaned_runs` covers that on the next start).
    """
    run_id = None
    try:
        run_id = mlflow_client.create_run(exp_id, run_name=name, tags=dict(tags)).info.run_id
        yield run_id
    except (runtime.Interrupted, KeyboardInterrupt):
        if run_id is not None:
            end_run(mlflow_client, run_id, "KILLED")
        raise
    except SystemExit as stop:
        if run_id is not None:
            end_run(mlflow_client, run_id, "FAILED" if stop.code not in (0, None) else "KILLED")
        raise
    except BaseException:
        if run_id is not None:
            end_run(mlflow_client, run_id, "FAILED")
        raise
    if end_run(mlflow_client, run_id, "FINISHED") == "KILLED":
        runtime.checkpoint()  # Ctrl-C or SIGTERM came as the run ended: stop here


def end_run(mlflow_client: Any, run_id: str, status: str, attempts: int = 3) -> str:
    """Set a run's final status; the status written.

    A run never ends FINISHED after Ctrl-C or SIGTERM has arrived: it ends KILLED. Signals are
    held while the status is decided and written, and the end time is taken at the decision.
    A retry covers a pooled database connection that an earlier interruption left broken.
    """
    with signals_held():
        if status == "FINISHED" and runtime.received() is not None:
            status = "KILLED"
        end_time = int(time.time() * 1000)
        for attempt in range(attempts):
            try:
                mlflow_client.set_terminated(run_id, status, end_time=end_time)
                return status
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2)
    return status


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Delay SIGINT and SIGTERM (they are delivered when the block ends)."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def kill_own_runs(mlflow_client: Any, exp_id: str) -> None:
    """After an interruption: any run this process started and left RUNNING ends KILLED.

    Covers a run whose creation was interrupted after the database had it, before its id came
    back, so that no guard knew it.
    """
    with signals_held():
        own = " and ".join(f"tags.`{k}` = '{v}'" for k, v in process_tags().items())
        for run in mlflow_client.search_runs(
            [exp_id], filter_string=f"attributes.status = 'RUNNING' and {own}"
        ):
            end_run(mlflow_client, run.info.run_id, "KILLED")


def fail_orphaned_runs(mlflow_client: Any, exp_id: str) -> list[str]:
    """Runs left RUNNING by a process that died (kill -9) and is gone: mark them FAILED."""
    orphans = []
    runs = mlflow_client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'")
    for run in runs:
        pid = run.data.tags.get("overfit.pid")
        host = run.data.tags.get("overfit.host")
        if pid and host == os.uname().nodename and not _alive(int(pid)):
            end_run(mlflow_client, run.info.run_id, "FAILED")
            orphans.append(run.info.run_id)
    return orphans


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_tags() -> dict[str, str]:
    """Which process owns a run, so a later run can tell that it died."""
    return {"overfit.pid": str(os.getpid()), "overfit.host": os.uname().nodename}


def save_keras_flavor(model: Any, input_example: Any, folder: Path) -> None:
    """The model in MLflow's Keras flavor, with a signature and an input example, in `folder`
    (which `log_model_folder` then logs as a logged model of the run).

    `mlflow.keras.log_model(..., input_example=...)` fails (mlflow/mlflow#16183), and the
    fluent `log_model` needs an active fluent run, which this client-driven code does not
    have: the flavor is saved into a folder, and the client's logged-model calls log it.
    Requirements are given, not inferred: inference re-imports the model in a subprocess and
    costs seconds.
    """
    import mlflow.keras
    import numpy as np
    from mlflow.models import infer_signature

    example = np.asarray(input_example, dtype=np.float32)
    signature = infer_signature(example, np.asarray(model(example)))
    folder.mkdir(parents=True, exist_ok=True)  # the example is written before the folder is made
    mlflow.keras.save_model(
        model,
        str(folder),
        signature=signature,
        input_example=example,
        pip_requirements=pins("keras", tensorflow_distribution()),
    )


def log_model_folder(
    mlflow_client: Any,
    experiment_id: str,
    run_id: str,
    name: str,
    folder: Path,
    tags: Mapping[str, str],
) -> str:
    """An MLflow model saved in `folder`, as a logged model (MLflow 3) named `name`, output of
    run `run_id`: the run's Models tab and the experiment's Logged models page list it. Its id
    (`models:/<id>` loads it)."""
    from mlflow.entities import LoggedModelOutput

    model = mlflow_client.create_logged_model(
        experiment_id, name=name, source_run_id=run_id, tags=dict(tags)
    )
    try:
        mlflow_client.log_model_artifacts(model.model_id, str(folder))
    except BaseException:
        mlflow_client.finalize_logged_model(model.model_id, "FAILED")
        raise
    mlflow_client.finalize_logged_model(model.model_id, "READY")
    mlflow_client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return model.model_id


def pins(*distributions: str) -> list[str]:
    """`name==version` of each installed distribution: a model's pip requirements."""
    import importlib.metadata

    return [f"{name}=={importlib.metadata.version(name)}" for name in distributions]


def tensorflow_distribution() -> str:
    """The TensorFlow distribution installed here (tensorflow-cpu or tensorflow)."""
    import importlib.metadata

    for name in ("tensorflow-cpu", "tensorflow"):
        try:
            importlib.metadata.version(name)
            return name
        except importlib.metadata.PackageNotFoundError:
            continue
    return "tensorflow"


# --- the Model Registry -----------------------------------------------------------------------


def registered_version(mlflow_client: Any, name: str, tag: tuple[str, str]) -> Any | None:
    """The first version of registered model `name` tagged `tag` (key, value), if there is
    one."""
    key, value = tag
    found = mlflow_client.search_model_versions(f"name = '{name}' and tags.`{key}` = '{value}'")
    # Read each version whole: a search result's tags may be left empty.
    versions = [mlflow_client.get_model_version(name, v.version) for v in found]
    same = [v for v in versions if v.tags.get(tag[0]) == tag[1]]
    return min(same, key=lambda v: int(v.version)) if same else None


def new_version(
    mlflow_client: Any, name: str, model_id: str, run_id: str, tags: Mapping[str, str]
) -> Any:
    """A new version of registered model `name` (created if needed) from the logged model
    `model_id` of run `run_id`, with these tags."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # MLflow resolves a models:/ source through the process's tracking URI, not the client's.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_client.tracking_uri)
    try:
        return mlflow_client.create_model_version(
            name, f"models:/{model_id}", run_id=run_id, tags=dict(tags), model_id=model_id
        )
    finally:
        mlflow.set_tracking_uri(previous)


def describe_version(mlflow_client: Any, name: str, version: str, card: str) -> None:
    """The card as the description of the version and of the registered model (the latest
    registered version's card), as MLflow's UI shows them."""
    mlflow_client.update_model_version(name, version, description=card)
    mlflow_client.update_registered_model(name, description=card)


def version_by_alias(mlflow_client: Any, name: str, alias: str) -> Any | None:
    """The version `alias` points at; None if the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
