"""MLflow: the store URI, parent and child runs, batched metric histories, run status on exit."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml

from overfit.config import ConfigError, TrackingConfig

# MLflow caps one log_batch call at 1000 metrics, 100 params and 100 tags.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100


def tracking_uri(root: Path, tracking: TrackingConfig) -> str:
    """Local: SQLite mlflow.db at the project root (absolute). Server: the URI from the env.

    A queued DVC experiment runs in a temporary copy of the project; DVC then names the real
    project in $DVC_ROOT, and its runs go to the project's store, not to the copy's.
    """
    if tracking.backend == "local":
        return f"sqlite:///{store_root(root) / 'mlflow.db'}"
    uri = os.environ.get(tracking.uri_env, "").strip()
    if not uri:
        raise ConfigError(
            f"tracking.uri_env: environment variable {tracking.uri_env} is not set "
            "(tracking=server needs the server's URI there)"
        )
    return uri


def store_root(root: Path) -> Path:
    return Path(os.environ.get("DVC_ROOT") or root).resolve()


def artifact_location(root: Path, tracking: TrackingConfig) -> str | None:
    """Local: mlartifacts/ beside mlflow.db (MLflow would use ./mlruns in the working
    directory). Server: None, the server decides."""
    if tracking.backend != "local":
        return None
    return (store_root(root) / "mlartifacts").as_uri()


def redact(uri: str) -> str:
    """The URI without any user:password, fit for messages and logs."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()


def client(uri: str) -> Any:
    """An MlflowClient; its first use of a SQLite file creates or upgrades the schema, which
    two processes must not do at once, hence the lock."""
    from mlflow.tracking import MlflowClient
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if uri.startswith("sqlite:") and not event.contains(Engine, "connect", _sqlite_pragmas):
        event.listen(Engine, "connect", _sqlite_pragmas)
    with store_lock(uri):
        return MlflowClient(tracking_uri=credentials_to_env(uri))


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
    return redact(uri)


def experiment_id(mlflow_client: Any, name: str, artifacts: str | None = None) -> str:
    """The experiment's id, created if needed (under the lock: another process may race us)."""
    with store_lock(mlflow_client.tracking_uri):
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return mlflow_client.create_experiment(name, artifact_location=artifacts)


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on <db>.lock for a SQLite store; nothing for any other store."""
    import fcntl

    if not uri.startswith("sqlite:///"):
        yield
        return
    with open(uri.removeprefix("sqlite:///") + ".lock", "w") as handle:
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


def git_tags(root: Path) -> dict[str, str]:
    """The commit the run came from, and whether the work tree had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def data_tags(root: Path) -> dict[str, str]:
    """The md5 DVC recorded in dvc.lock for each data output the training reads."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    # libyaml's loader when present: the pure-Python one takes ~40 ms per job on this file.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    stages = (yaml.load(lock.read_text(encoding="utf-8"), Loader=loader) or {}).get("stages", {})
    tags = {}
    for stage in ("generate", "split"):
        for out in stages.get(stage, {}).get("outs", []):
            tags[f"data.md5.{out['path']}"] = out.get("md5", "")
    return tags


def log_metric_histories(
    mlflow_client: Any, run_id: str, histories: Mapping[str, Any], start_ms: int | None = None
) -> None:
    """Per-epoch curves {name: values}, step = epoch index, in bulk rather than per point.

    `log_batch` into a database store builds one ORM object per point, ~0.1 ms each: for
    4 curves x 4000 epochs that was most of a job's time. Into a SQLAlchemy store (the
    embedded SQLite default, or a database URI) all but each curve's last point go in as
    one bulk insert into MLflow's `metrics` table; the last points go through `log_batch`,
    so MLflow updates its latest-metric table itself. Other stores (a tracking server) get
    `log_batch` in batches of 1000.
    """
    from mlflow.entities import Metric

    stamp = start_ms if start_ms is not None else int(time.time() * 1000)
    curves = {name: [float(v) for v in values] for name, values in histories.items()}
    store = _database_store(mlflow_client)
    if store is not None:
        _insert_metric_rows(store, run_id, {k: v[:-1] for k, v in curves.items()}, stamp)
    bulk = store is not None  # then only each curve's last point goes through log_batch
    points = [
        Metric(name, values[step], stamp, step)
        for name, values in curves.items()
        for step in range(len(values) - 1 if bulk else 0, len(values))
    ]
    for start in range(0, len(points), MAX_METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=points[start : start + MAX_METRICS_PER_BATCH])


def _database_store(mlflow_client: Any) -> Any | None:
    """The client's SQLAlchemy tracking store, or None for any other kind of store."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = getattr(getattr(mlflow_client, "_tracking_client", None), "store", None)
    return store if isinstance(store, SqlAlchemyStore) else None


def _insert_metric_rows(
    store: Any, run_id: str, curves: Mapping[str, list[float]], stamp: int
) -> None:
    """Rows of MLflow's `metrics` table for every point, in one executemany."""
    from mlflow.store.tracking.dbmodels.models import SqlMetric
    from sqlalchemy import insert

    rows = []
    for name, values in curves.items():
        for step, value in enumerate(values):
            is_nan, stored = store.sanitize_metric_value(value)
            rows.append(
                {
                    "run_uuid": run_id,
                    "key": name,
                    "value": stored,
                    "timestamp": stamp,
                    "step": step,
                    "is_nan": is_nan,
                }
            )
    if rows:
        with store.ManagedSessionMaker() as session:
            session.execute(insert(SqlMetric.__table__), rows)


def log_values(
    mlflow_client: Any,
    run_id: str,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> None:
    from mlflow.entities import Metric, Param

    stamp = int(time.time() * 1000)
    param_list = [Param(k, str(v)) for k, v in (params or {}).items()]
    for start in range(0, len(param_list), MAX_PARAMS_PER_BATCH):
        mlflow_client.log_batch(run_id, params=param_list[start : start + MAX_PARAMS_PER_BATCH])
    metric_list = [Metric(k, float(v), stamp, 0) for k, v in (metrics or {}).items()]
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
    except (KeyboardInterrupt, SystemExit) as stop:
        failed = isinstance(stop, SystemExit) and stop.code not in (0, None)
        if run_id is not None:
            end_run(mlflow_client, run_id, "FAILED" if failed else "KILLED")
        raise
    except BaseException:
        if run_id is not None:
            end_run(mlflow_client, run_id, "FAILED")
        raise
    end_run(mlflow_client, run_id, "FINISHED")


def end_run(mlflow_client: Any, run_id: str, status: str, attempts: int = 3) -> None:
    """Set a run's final status, with Ctrl-C and SIGTERM held off until it is written.

    An interruption in the middle of a database call can leave the pooled connection broken:
    the pool drops it on the failed attempt, and the next attempt gets a fresh one.
    """
    with signals_held():
        for attempt in range(attempts):
            try:
                mlflow_client.set_terminated(run_id, status)
                return
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2)


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


def log_keras_model(
    mlflow_client: Any, run_id: str, model: Any, input_example: Any, scratch: Path
) -> None:
    """The model in MLflow's Keras flavor, with a signature and an input example, as `model/`.

    `mlflow.keras.log_model(..., input_example=...)` fails (mlflow/mlflow#16183); saving the
    flavor into a folder and logging that folder gives the same artifact. Requirements are
    given, not inferred: inference re-imports the model in a subprocess and costs seconds.
    """
    import importlib.metadata

    import mlflow.keras
    import numpy as np
    from mlflow.models import infer_signature

    example = np.asarray(input_example, dtype=np.float32)
    signature = infer_signature(example, np.asarray(model(example)))
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("keras", _tf_dist())]
    scratch.mkdir(parents=True, exist_ok=True)  # the example is written before the folder is made
    mlflow.keras.save_model(
        model,
        str(scratch),
        signature=signature,
        input_example=example,
        pip_requirements=pins,
    )
    mlflow_client.log_artifacts(run_id, str(scratch), "model")


def _tf_dist() -> str:
    import importlib.metadata

    for name in ("tensorflow-cpu", "tensorflow"):
        try:
            importlib.metadata.version(name)
            return name
        except importlib.metadata.PackageNotFoundError:
            continue
    return "tensorflow"
