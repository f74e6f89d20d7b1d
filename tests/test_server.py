"""The shared tracking server: a real PostgreSQL and a real `mlflow server` (python -m
overfit.server), the shrunk pipeline tracked there with `tracking=server`, and every run, metric
and model read back through the server.

Needs PostgreSQL's programs (Debian: `apt-get install postgresql`; scripts/ci_services.sh does
it for CI). The tracking URI carries a password (user:secret@) that must end up nowhere.
"""

from __future__ import annotations

import json
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from overfit.commands import server as overfit_server
from overfit.commands.server import ServerError
from overfit.tracking.registry import registered_version

from .conftest import ROOT, SHRUNK, Run, copy_project, env_for, missing_service, sweep_ids

# A two-configuration sweep (the article's: none against L2 1e-3) is enough to read back.
SERVER_SWEEP = [*(o for o in SHRUNK if not o.startswith("sweep.")), "sweep=article"]
EXPECTED_RUNS = {"none", "l2_1e-03"}
EPOCHS = 60
SECRET = "secret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def server_cli(env: dict[str, str], command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "overfit.commands.server", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@dataclass(frozen=True)
class Server:
    uri: str
    port: int
    pg_port: int
    state: Path
    env: dict[str, str]
    started: str

    @property
    def uri_with_password(self) -> str:
        return f"http://user:{SECRET}@127.0.0.1:{self.port}"

    def db_password(self) -> str:
        lines = (self.state / "pgpass").read_text().splitlines()
        return next(line.split(":")[4] for line in lines if line.split(":")[3] == "mlflow")


@pytest.fixture(scope="module")
def postgres_installed() -> None:
    try:
        overfit_server.postgres_bin(overfit_server.settings(ROOT, {}))
    except ServerError as error:
        missing_service(f"{error}; these tests need a real PostgreSQL")


@pytest.fixture(scope="module")
def server(postgres_installed: None) -> Iterator[Server]:
    # Not pytest's tmp_path: its folders are private to this user, and PostgreSQL runs as
    # `postgres` when the tests run as root, so the cluster needs a folder it can reach.
    state = Path(tempfile.mkdtemp(prefix="overfit-server-"))
    state.chmod(0o755)
    port, pg_port = free_port(), free_port()
    env = env_for(ROOT) | {
        "MLFLOW_SERVER_DIR": str(state),
        "MLFLOW_SERVER_PORT": str(port),
        "MLFLOW_SERVER_WORKERS": "1",  # one test client at a time
        "MLFLOW_SERVER_PG_PORT": str(pg_port),
    }
    try:
        started = server_cli(env, "start")
        assert started.returncode == 0, f"server did not start:\n{started.stdout}{started.stderr}"
        yield Server(
            f"http://127.0.0.1:{port}", port, pg_port, state, env, started.stdout + started.stderr
        )
    finally:
        server_cli(env, "stop")
        shutil.rmtree(state, ignore_errors=True)


@dataclass(frozen=True)
class Sweep:
    root: Path
    run: Run
    output: str
    data: dict


@pytest.fixture(scope="module")
def sweep(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    root = tmp_path_factory.mktemp("server") / "project"
    run = copy_project(root, [*SERVER_SWEEP, "tracking=server"])
    env = env_for(root) | {"MLFLOW_TRACKING_URI": server.uri_with_password}
    result = run("dvc", "repro", env=env)
    data = sweep_ids(root, server.uri)
    return Sweep(root, run, result.stdout + result.stderr, data)


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_start_prints_the_uri_to_export_and_keeps_the_db_password_private(server) -> None:
    assert f"export MLFLOW_TRACKING_URI={server.uri}" in server.started
    password = server.db_password()
    assert len(password) >= 32
    assert stat.S_IMODE((server.state / "pgpass").stat().st_mode) == 0o600
    assert password not in server.started
    for log in (server.state / "mlflow.log", server.state / "postgres/server.log"):
        assert password not in log.read_text(errors="replace"), log
    # Not on any command line: `ps` shows those to every user of the machine.
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert password.encode() not in cmdline.read_bytes(), cmdline
        except OSError:
            continue
    assert server_cli(server.env, "status").returncode == 0


def test_runs_are_stored_in_postgresql(server, sweep) -> None:
    import psycopg2

    connection = psycopg2.connect(
        host="127.0.0.1",
        port=server.pg_port,
        dbname="mlflow",
        user="mlflow",
        passfile=str(server.state / "pgpass"),
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT run_uuid, name, status FROM runs")
            rows = {run_id: (name, status) for run_id, name, status in cursor.fetchall()}
    finally:
        connection.close()
    assert rows[sweep.data["parent_run_id"]] == ("sweep-article", "FINISHED")
    for name, run_id in sweep.data["runs"].items():
        assert rows[run_id] == (name, "FINISHED")


def test_the_sweep_reads_back_through_the_server(server, sweep) -> None:
    assert set(sweep.data["runs"]) == EXPECTED_RUNS
    mlflow = client(server.uri)
    parent = mlflow.get_run(sweep.data["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    reports = {a.path for a in mlflow.list_artifacts(parent.info.run_id, "reports")}
    assert "reports/summary.md" in reports
    children = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert {c.info.run_name: c.info.run_id for c in children} == sweep.data["runs"]
    for child in children:
        result = json.loads(
            (sweep.root / "models" / child.info.run_name / "result.json").read_text()
        )
        assert child.info.status == "FINISHED"
        assert child.data.params["train.epochs"] == str(EPOCHS)
        assert child.data.metrics["test_acc_mean"] == pytest.approx(result["mean"]["test_acc"])
        history = mlflow.get_metric_history(child.info.run_id, "test_accuracy")
        assert sorted(m.step for m in history) == [1, 20, 40, EPOCHS]
        paths = {a.path for a in mlflow.list_artifacts(child.info.run_id)}
        assert {"learning_curve.png", "config"} <= paths
        models = [mlflow.get_logged_model(o.model_id) for o in child.outputs.model_outputs]
        assert child.info.run_name in {m.name for m in models}
        assert {m.source_run_id for m in models} == {child.info.run_id}


def test_the_model_loads_from_the_served_artifacts(server, sweep) -> None:
    import mlflow
    import mlflow.keras

    run_id = sweep.data["runs"]["l2_1e-03"]
    experiment = client(server.uri).get_run(run_id).info.experiment_id
    [model] = client(server.uri).search_logged_models(
        [experiment], filter_string=f"source_run_id = '{run_id}' AND name = 'l2_1e-03'"
    )
    model_id = model.model_id
    # The server, not the client, wrote the files: under its --artifacts-destination.
    stored = list((server.state / "artifacts").glob(f"*/models/{model_id}/artifacts/MLmodel"))
    assert len(stored) == 1, stored
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server.uri)
    try:
        model = mlflow.keras.load_model(f"models:/{model_id}")
    finally:
        mlflow.set_tracking_uri(previous)
    probabilities = np.asarray(model.predict(np.array([[0.0, 1.0], [1.0, -0.5]]), verbose=0))
    assert probabilities.shape == (2, 1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_the_registry_works_through_the_server(server, sweep) -> None:
    """The register stage registered the selected model in the server's registry; promote
    makes it champion there; `models:/overfit-moons@champion` loads through the server."""
    import mlflow.pyfunc
    import pandas as pd

    record = json.loads((sweep.root / "reports/model.json").read_text())
    registry = client(server.uri)
    version = registered_version(
        registry, record["name"], ("overfit.model_sha256", record["model_sha256"])
    )
    assert version.run_id == sweep.data["runs"][record["run"]]
    # Registered from the run's logged model, whose files the server stored.
    model = registry.get_logged_model(version.source.removeprefix("models:/"))
    assert model.source_run_id == version.run_id
    location = model.artifact_location
    assert location.startswith("mlflow-artifacts:")
    assert SECRET not in json.dumps(dict(version.tags))
    env = env_for(sweep.root) | {"MLFLOW_TRACKING_URI": server.uri_with_password}
    promoted = sweep.run(sys.executable, "-m", "overfit.commands.promote", env=env)
    assert promoted.stdout.strip().endswith("is the champion (first champion)"), promoted.stdout
    assert (
        registry.get_model_version_by_alias(record["name"], "champion").version == version.version
    )
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(server.uri)
    mlflow.set_registry_uri(server.uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{record['name']}@champion")
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    rows = pd.DataFrame({"x1": [0.0, 1.0], "x2": [1.0, -0.5]})
    probabilities = np.asarray(model.predict(rows))
    assert probabilities.shape == (2,) and np.all((probabilities >= 0) & (probabilities <= 1))


def test_the_uri_password_is_nowhere(server, sweep) -> None:
    mlflow = client(server.uri)
    runs = mlflow.search_runs(
        [mlflow.get_run(sweep.data["parent_run_id"]).info.experiment_id], max_results=1000
    )
    assert len(runs) == 1 + len(EXPECTED_RUNS)
    for found in runs:
        for key, value in {**found.data.params, **found.data.tags}.items():
            assert SECRET not in value, (found.info.run_name, key)
    # Hydra's saved configs, the sweep record, DVC's lock and the params: all on disk.
    files = [p for p in (sweep.root / "models").rglob("*") if p.is_file()]
    files += [sweep.root / "dvc.lock", sweep.root / "params.yaml"]
    assert any(p.match(".hydra/*.yaml") for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in sweep.output


def test_stop_ends_postgresql_and_the_server(server, sweep) -> None:
    assert listening(server.port) and listening(server.pg_port)
    stopped = server_cli(server.env, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped mlflow server" in stopped.stdout and "stopped PostgreSQL" in stopped.stdout
    assert not listening(server.port) and not listening(server.pg_port)
    assert server_cli(server.env, "status").returncode == 1


def test_an_unreachable_server_fails_before_training(tmp_path: Path) -> None:
    root = tmp_path / "project"
    run = copy_project(root, [*SHRUNK, "tracking=server"])
    run("dvc", "repro", "split")  # the data training reads, so only the server is missing
    port = free_port()
    env = env_for(root) | {"MLFLOW_TRACKING_URI": f"http://user:{SECRET}@127.0.0.1:{port}"}
    # One connection attempt, then the refusal: a stage that retried would meet the timeout.
    result = run(sys.executable, "-m", "overfit.stages.train", check=False, env=env, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and f"http://127.0.0.1:{port}" in lines[0]
    assert SECRET not in result.stderr + result.stdout
    assert not (root / "models").exists()


def test_a_missing_postgresql_is_named(tmp_path: Path) -> None:
    env = env_for(ROOT) | {
        "MLFLOW_SERVER_DIR": str(tmp_path / "state"),
        "MLFLOW_SERVER_PG_BIN": str(tmp_path / "no-postgres"),
        "MLFLOW_SERVER_PORT": str(free_port()),
    }
    result = server_cli(env, "start")
    assert result.returncode == 1
    assert "PostgreSQL is not installed" in result.stderr
    assert "apt-get install postgresql" in result.stderr
    assert not (tmp_path / "state").exists()
