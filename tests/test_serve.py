"""`python -m overfit.commands.serve` on the shrunk pipeline's registered model: a real
`mlflow models
serve` process answering HTTP, its probabilities against the evaluate stage's, its answers to
bad requests, `mlflow models predict` through the wrapper, and the refusals before starting.

The tests work on a copy of the shared pipeline's files, store and artifacts (the shared store
is not written).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from overfit import layout
from overfit.commands.serve import NEXT_STEP
from overfit.commands.serve import main as serve_main
from overfit.core.metrics import probabilities
from overfit.reports import ModelRecord, read_model_record
from overfit.tracking.registry import registered_version

from .conftest import ROOT, env_for

START_TIMEOUT = 120.0
CHAMPION = "champion"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def copy_with_store(source: Path, dest: Path) -> Path:
    """The pipeline's files, and its store copied by SQLite's backup: a consistent copy even
    while another test reads the shared store."""
    skip = shutil.ignore_patterns("mlflow.db*", ".dvc", ".git")
    shutil.copytree(source, dest, symlinks=True, ignore=skip)
    with (
        contextlib.closing(sqlite3.connect(source / layout.MLFLOW_DB)) as original,
        contextlib.closing(sqlite3.connect(dest / layout.MLFLOW_DB)) as copy,
    ):
        original.backup(copy)
    return dest


def store_uri(root: Path) -> str:
    return f"sqlite:///{root / layout.MLFLOW_DB}"


def points_of(root: Path) -> np.ndarray:
    """x1, x2 of the test split (its label column left out)."""
    return np.loadtxt(root / layout.TEST_CSV, delimiter=",", skiprows=1, usecols=(0, 1))


def serve_cli(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "overfit.commands.serve", *args],
        cwd=root,
        env=env_for(root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def post(url: str, body: bytes) -> tuple[int, str]:
    """The status and body of a POST, whatever the status."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def split_body(columns: list[str], rows: list[list[object]]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()


def ping(base: str) -> int:
    try:
        with urllib.request.urlopen(f"{base}/ping", timeout=5) as response:
            return response.status
    except (urllib.error.URLError, OSError):
        return 0


@dataclass(frozen=True)
class Served:
    root: Path
    record: ModelRecord
    version: str
    base: str
    log: Path
    moved_from: Path

    @property
    def invocations(self) -> str:
        return f"{self.base}/invocations"

    def predict(self, x: np.ndarray) -> np.ndarray:
        status, body = post(self.invocations, split_body(["x1", "x2"], x.tolist()))
        assert status == 200, body
        return np.asarray(json.loads(body)["predictions"], dtype=np.float64)


def group_left(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (mlflow and the uvicorn it starts), SIGKILL if
    any of it lingers; returns once none of the group is left."""
    group = process.pid  # its own session: the group's id is its pid
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
        deadline = time.monotonic() + grace
        while group_left(group) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not group_left(group):
            return
    raise AssertionError(f"process group {group} outlived SIGKILL")


@pytest.fixture(scope="module")
def served(shrunk_pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`python -m overfit.commands.serve` on a free port, in a copy of the shared pipeline
    whose registered version `make promote` made the champion, then moved to another folder
    (its store records artifact locations by absolute path); started once for the module."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("serve")
    first, root = folder / "first", folder / "project"
    copy_with_store(shrunk_pipeline.root, first)
    promoted = subprocess.run(
        [sys.executable, "-m", "overfit.commands.promote"],
        cwd=first,
        env=env_for(first),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    os.rename(first, root)
    record = read_model_record(root)
    client = MlflowClient(tracking_uri=store_uri(root), registry_uri=store_uri(root))
    version = registered_version(client, record.name, ("overfit.model_sha256", record.model_sha256))
    assert client.get_registered_model(record.name).aliases[CHAMPION] == version.version
    port = free_port()
    log = root.parent / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "overfit.commands.serve", "--port", str(port)],
            cwd=root,
            env=env_for(root),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while ping(base) != 200:
            assert process.poll() is None, f"the server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no /ping in {START_TIMEOUT}s:\n{log.read_text()}"
            time.sleep(0.2)
        yield Served(root, record, str(version.version), base, log, first)
    finally:
        stop_group(process)


def test_a_project_moved_after_a_run_serves_from_its_new_folder(served) -> None:
    """The store's records follow the project: the model is read from the new folder, and
    the old one is not recreated."""
    lines = served.log.read_text().splitlines()
    database, artifacts = served.root / layout.MLFLOW_DB, served.root / layout.MLFLOW_ARTIFACTS
    assert lines[0] == (
        f"{database}: the project was moved or copied from {served.moved_from}; the store's "
        f"artifact locations now name {artifacts}"
    )
    assert served.predict(points_of(served.root)).shape == (70,)
    assert not served.moved_from.exists()
    with contextlib.closing(sqlite3.connect(database)) as db:
        [(location,)] = db.execute(
            "SELECT storage_location FROM model_versions WHERE version = ?", (served.version,)
        ).fetchall()
    assert location.startswith(f"{artifacts.as_uri()}/models/")


def test_it_says_where_it_serves_and_how_to_call_it(served) -> None:
    lines = served.log.read_text().splitlines()[1:]  # after the move's line (the test above)
    url = f"{served.base}/invocations"
    assert lines[0] == (
        f"serving models:/{served.record.name}@{CHAMPION} (version {served.version}) at {url}"
    )
    assert lines[1].startswith(f"try: curl -s {url} -H 'Content-Type: application/json' -d '")
    # Then only the web server's own lines: no TensorFlow start-up, no MLflow INFO account.
    for noise in ("absl", "oneDNN", "I0000", "INFO mlflow", "Add type hints"):
        assert not [line for line in lines if noise in line], noise
    assert any("Uvicorn running on" in line for line in lines)


@pytest.fixture(scope="module")
def weights(served) -> list[np.ndarray]:
    """The registered seed's Keras weights, as the evaluate stage loads them."""
    import keras

    folder = layout.run_dir(served.root, served.record.run)
    model = keras.models.load_model(
        layout.model_file(folder, served.record.seed), safe_mode=True, compile=False
    )
    return model.get_weights()


def test_served_probabilities_are_the_evaluate_stages(served, weights) -> None:
    x = points_of(served.root)
    assert x.shape == (70, 2)
    got = served.predict(x)
    assert got.shape == (70,)
    np.testing.assert_allclose(got, probabilities(weights, x), rtol=0, atol=1e-6)


def test_the_printed_curl_command_gets_predictions(served, weights) -> None:
    """The request `try:` shows (README's), sent as curl would send it: one probability of
    class 1 per row, the model's."""
    [line] = [x for x in served.log.read_text().splitlines() if x.startswith("try: ")]
    command = shlex.split(line.removeprefix("try: "))
    assert command[:2] == ["curl", "-s"] and command[3::2] == ["-H", "-d"], command
    url, header, body = command[2::2]
    name, _, value = header.partition(": ")
    request = urllib.request.Request(url, data=body.encode(), headers={name: value})
    with urllib.request.urlopen(request, timeout=60) as response:  # POST: it has a body
        assert response.status == 200
        answer = json.loads(response.read())
    rows = json.loads(body)["dataframe_split"]
    assert rows["columns"] == ["x1", "x2"] and len(rows["data"]) == 2
    assert list(answer) == ["predictions"] and len(answer["predictions"]) == 2
    got = np.asarray(answer["predictions"], dtype=np.float64)
    x = np.asarray(rows["data"], dtype=np.float64)
    np.testing.assert_allclose(got, probabilities(weights, x), rtol=0, atol=1e-6)


# Each bad request, and what MLflow's answer (JSON: error_code, message) says about it.
BAD_REQUESTS = {
    "missing column": (split_body(["x1"], [[0.0], [1.0]]), "Model is missing inputs ['x2']"),
    "strings": (
        split_body(["x1", "x2"], [["a", "b"], ["c", "d"]]),
        "could not convert string to float: 'a'",
    ),
    "empty body": (b"", "Ensure that input is a valid JSON formatted string"),
    "malformed JSON": (b'{"dataframe_split": {', "Ensure that input is a valid JSON formatted"),
    # JSON null: MLflow's schema lets it through as NaN; the model refuses it.
    "a null": (split_body(["x1", "x2"], [[None, 1.0]]), "x1 and x2 must be finite numbers"),
    # The guard's, before MLflow reads them: MLflow would take true for 1.0, answer 500 to a
    # JSON bomb (RecursionError), and hold any body in memory.
    "booleans": (split_body(["x1", "x2"], [[True, False]]), "x1 and x2 must be numbers, not"),
    "nested JSON": (b"[" * 100_000 + b"]" * 100_000, "JSON nested more than 8 levels deep"),
    "too large": (
        split_body(["x1", "x2"], [[0.5, 0.25]] * 100_000),
        "bytes; at most 1,048,576 (registry.max_request_kb)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_is_a_4xx_saying_why_and_the_server_keeps_serving(
    served, weights, case
) -> None:
    body, says = BAD_REQUESTS[case]
    status, text = post(served.invocations, body)
    assert 400 <= status < 500, (status, text)
    answer = json.loads(text)
    assert answer["error_code"] in ("BAD_REQUEST", "INVALID_PARAMETER_VALUE"), answer
    assert says in answer["message"], answer
    assert "stack_trace" not in answer
    assert ping(served.base) == 200
    two = np.array([[0.0, 1.0], [1.0, -0.5]])
    np.testing.assert_allclose(served.predict(two), probabilities(weights, two), rtol=0, atol=1e-6)


def test_no_rows_get_no_predictions(served) -> None:
    status, text = post(served.invocations, split_body(["x1", "x2"], []))
    assert (status, json.loads(text)) == (200, {"predictions": []})


def test_batch_predict_writes_the_served_probabilities(served) -> None:
    out = served.root.parent / "predictions" / "test.json"
    done = serve_cli(served.root, "predict", str(layout.TEST_CSV), str(out))
    assert done.returncode == 0, done.stderr
    # test.csv has a label column: MLflow ignores columns the signature does not name.
    assert f"wrote {out}: 70 class-1 probabilities" in done.stdout
    written = np.asarray(json.loads(out.read_text())["predictions"], dtype=np.float64)
    np.testing.assert_array_equal(written, served.predict(points_of(served.root)))


def test_without_a_champion_it_says_so_in_one_line_and_exits_2(shrunk_pipeline, tmp_path) -> None:
    root = copy_with_store(shrunk_pipeline.root, tmp_path / "project")
    done = serve_cli(root, "--port", str(free_port()))
    assert done.returncode == 2 and "moved or copied from" in done.stdout  # its only line
    assert done.stdout.count("\n") == 1, done.stdout
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: registered model 'overfit-moons' has no alias 'champion'")
    assert "make promote" in done.stderr


def test_without_a_store_it_says_so_and_creates_none(tmp_path) -> None:
    for name in (layout.PARAMS, layout.DVC_YAML):
        shutil.copy2(ROOT / name, tmp_path / name)
    done = serve_cli(tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    missing = tmp_path / layout.MLFLOW_DB
    assert done.stderr == f"error: no MLflow store at {missing}: {NEXT_STEP[CHAMPION]}\n"
    assert not missing.exists()


def test_predict_without_its_input_file_exits_2(served) -> None:
    done = serve_cli(served.root, "predict", "no-such.csv", "out.json")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "error: no-such.csv: no such file (a CSV with columns x1, x2)\n"


GOOD_CSV = "x1,x2\n0.5,0.25\n1.0,-0.5\n"


@pytest.mark.parametrize(
    ("csv_text", "out", "message"),
    [
        (GOOD_CSV, "in.csv", "in.csv: the input itself; name another file for the predictions"),
        (GOOD_CSV, "./in.csv", "in.csv: the input itself; name another file for the predictions"),
        (GOOD_CSV, "folder", "folder: a folder; name the JSON file to write"),
        ("x1,x2\n0.5,0.25\n1.0,abc\n", "out.json", "line 3: x2 must be a finite number, got 'abc'"),
        ("x1,x2\nnan,0.25\n", "out.json", "line 2: x1 must be a finite number, got 'nan'"),
        ("x1,x2\n0.5\n", "out.json", "line 2: x2 must be a finite number, got ''"),
        ("x2,x3\n0.5,1\n", "out.json", "no column x1 in its header line"),
    ],
    ids=["out is in", "out is in, another way", "out a folder", "a word", "NaN", "short", "x1?"],
)
def test_predict_refuses_in_one_line_and_writes_nothing(
    tmp_path: Path, entry, csv_text: str, out: str, message: str
) -> None:
    """Checked before any model is loaded (this project has no store at all)."""
    for name in (layout.PARAMS, layout.DVC_YAML):
        shutil.copy2(ROOT / name, tmp_path / name)
    (tmp_path / "in.csv").write_text(csv_text, encoding="utf-8")
    (tmp_path / "folder").mkdir()
    status, stdout, err = entry(serve_main, tmp_path, "predict", "in.csv", out)
    assert (status, stdout) == (2, "")
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert (tmp_path / "in.csv").read_text(encoding="utf-8") == csv_text
    assert not (tmp_path / "out.json").exists() and not any((tmp_path / "folder").iterdir())


def test_predict_reads_a_header_behind_a_byte_order_mark(tmp_path: Path, entry) -> None:
    """Spreadsheets write one: the header is read (the next refusal is the missing store)."""
    for name in (layout.PARAMS, layout.DVC_YAML):
        shutil.copy2(ROOT / name, tmp_path / name)
    (tmp_path / "in.csv").write_text("\ufeff" + GOOD_CSV, encoding="utf-8")
    status, _, err = entry(serve_main, tmp_path, "predict", "in.csv", "out.json")
    assert status == 2 and err.startswith("error: no MLflow store at "), err


def test_a_busy_port_is_refused_before_loading_the_model(served) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = serve_cli(served.root, "--port", str(port))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"error: port {port} on 127.0.0.1 is in use")
