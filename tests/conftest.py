"""Shared fixtures: a throw-away git copy of the project, and commands run in it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Settings every test run uses, whatever the caller's shell says.
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

# A pipeline shrunk to seconds: the real configs with few epochs, two seeds, two strengths.
# One configuration of each other remedy's family.
FAMILIES = [
    "sweep.dropout_rates=[0.5]",
    "sweep.patiences=[5]",
    "sweep.constraints=[max_norm]",
    "sweep.max_norms=[0.5]",
    "sweep.noise_stddevs=[0.1]",
    "sweep.activity_strengths=[1.0e-3]",
]
# The penalties alone, for tests about something else.
PENALTIES_ONLY = [
    "sweep.dropout_rates=[]",
    "sweep.patiences=[]",
    "sweep.constraints=[]",
    "sweep.noise_stddevs=[]",
    "sweep.activity_kinds=[]",
]
# The unregularized baseline and L2 at 1e-3, for tests that need a sweep to run, not to compare.
TWO_CONFIGURATIONS = [*PENALTIES_ONLY, "sweep.kinds=[l2]", "sweep.strengths=[1.0e-3]"]
SHRUNK = [
    "train.epochs=60",
    "train.seeds=[1,2]",
    "sweep.kinds=[l1,l2]",
    "sweep.strengths=[1.0e-2,1.0e-3]",
    "data.fresh_samples=500",
    *FAMILIES,
    # The study across draws, with a learning curve and the selection on every draw.
    "study.draws=3",
    "study.n_train=[20,30]",
    "study.select=true",
]


def project_files() -> list[str]:
    """The files git would commit: tracked, plus untracked ones that are not ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


def env_for(root: Path) -> dict[str, str]:
    # The caller's tracking server or project must not leak into a throw-away copy.
    leaks = ("MLFLOW_TRACKING", "OVERFIT_", "DVC_ROOT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(leaks)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = env.get("HOME", str(root))
    return env


Run = Callable[..., subprocess.CompletedProcess]

# Set by .ci/run, which installs PostgreSQL and Chromium: there a missing one fails the tests
# that need it instead of skipping them.
REQUIRE_SERVICES = "OVERFIT_REQUIRE_SERVICES"


def missing_service(reason: str) -> None:
    """Skip a test that needs a system package this machine lacks (fail where it must exist)."""
    if os.environ.get(REQUIRE_SERVICES) == "1":
        pytest.fail(f"{reason} ({REQUIRE_SERVICES}=1)")
    pytest.skip(reason)


def make_runner(root: Path) -> Run:
    def run(
        *cmd: str, check: bool = True, timeout: float = 600, **kw
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            list(cmd),
            cwd=root,
            env=kw.pop("env", env_for(root)),
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    return run


def copy_project(dest: Path, overrides: list[str] | None = None) -> Run:
    """A fresh git repository holding the project as it is now, params composed with overrides."""
    for name in project_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    run = make_runner(dest)
    if overrides:
        run(sys.executable, "-m", "overfit.commands.params", *overrides)
    run("git", "init", "-q", "-b", "main")
    run("git", "config", "user.email", "test@example.com")
    run("git", "config", "user.name", "test")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "base")
    return run


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval=0.05) -> None:
    """Wait until `condition()` holds; `timeout` is a safety net against a hang, never a
    measure: choose it generous."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """An exclusive lock across the test processes (pytest-xdist workers)."""
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Pipeline(NamedTuple):
    """The shared shrunk pipeline: its root, a runner, what `dvc repro` printed, and a way to
    copy it for a test that changes things."""

    root: Path
    run: Run
    output: str
    copy_to: Callable[[Path], Run]
    copy_with_store: Callable[[Path], Run]


def _shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's temporary folder that every xdist worker sees."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _start_shrunk_pipeline(folder: Path, lock: Path) -> None:
    """`dvc repro` of the shrunk pipeline in the background, once per session."""
    with exclusive(lock):
        if (folder / "started").exists():
            return
        shutil.rmtree(folder, ignore_errors=True)
        root = folder / "project"
        copy_project(root, SHRUNK)
        output, status = folder / "repro-output.txt", folder / "repro-status"
        subprocess.Popen(
            ["bash", "-c", f"dvc repro > '{output}' 2>&1; echo $? > '{status}'"],
            cwd=root,
            env=env_for(root),
            start_new_session=True,
        )
        (folder / "started").touch()


# The slowest test files (half a minute to a minute and a half each), started first so that no
# worker is left with one at the end: on two workers the suite is only as fast as its last file.
SLOWEST_FIRST = (
    "test_server.py",
    "test_trainer.py",
    "test_remedies.py",
    "test_lineage.py",
    "test_concurrency.py",
    "test_launchers.py",
    "test_gate.py",
    "test_reliability.py",
    "test_serve.py",
    "test_ui.py",
    "test_tracking.py",
    "test_registry.py",
    "test_readme.py",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reverse",
        action="store_true",
        help="run the tests in the reverse of their usual order (to show no test depends on "
        "another having run first; with -p no:xdist or -n 0)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Test files that need the shared pipeline go last, so the pipeline builds in the
    background while the others run; within each part, the slowest files first. pytest-xdist
    hands out whole files in this order (--dist loadfile --no-loadscope-reorder)."""
    needs = {item.path for item in items if "shrunk_pipeline" in item.fixturenames}

    def order(item: pytest.Item) -> tuple[bool, int]:
        name = item.path.name
        slow = SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)
        return item.path in needs, slow

    items.sort(key=order)
    if config.getoption("--reverse"):
        items.reverse()


@pytest.fixture(scope="session", autouse=True)
def _shrunk_pipeline_started_early(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Start building the shared pipeline when the session begins, if a test needs it, so
    the tests that do not need it run meanwhile instead of waiting for it."""
    if any("shrunk_pipeline" in item.fixturenames for item in request.session.items):
        shared = _shared_folder(tmp_path_factory)
        _start_shrunk_pipeline(shared / "shrunk-pipeline", shared / "shrunk-pipeline.lock")


@pytest.fixture(scope="session")
def shrunk_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """The shrunk pipeline after one full `dvc repro`.

    Built once per test session, whatever the number of xdist workers, in the session's shared
    folder, started as the session begins. Tests only read it, or change a copy; `run` and
    `copy_to` hold the same lock, so DVC commands in it never overlap and a copy is never
    taken halfway through one.
    """
    shared = _shared_folder(tmp_path_factory)
    folder, lock = shared / "shrunk-pipeline", shared / "shrunk-pipeline.lock"
    _start_shrunk_pipeline(folder, lock)
    root, output, status = folder / "project", folder / "repro-output.txt", folder / "repro-status"
    wait_for(
        lambda: status.is_file() and status.read_text().strip(),
        1800,
        "the shared pipeline's dvc repro",
        interval=0.2,
    )
    text = output.read_text(encoding="utf-8")
    assert status.read_text().strip() == "0", f"dvc repro of the shared pipeline failed:\n{text}"
    unlocked = make_runner(root)

    def run(*cmd: str, **kw) -> subprocess.CompletedProcess:
        with exclusive(lock):
            return unlocked(*cmd, **kw)

    template = folder / "new-store" / "mlflow.db"

    def copy_to(dest: Path) -> Run:
        """A copy with the pipeline's files and DVC cache, and a new MLflow store: the
        original's experiment records the original's artifact folder, where a copy must not
        write. The new store is copied from one made once (making one takes seconds)."""
        from overfit.tracking.store import ensure_store

        store = shutil.ignore_patterns("mlflow.db*", "mlartifacts")
        with exclusive(lock):
            shutil.copytree(root, dest, symlinks=True, ignore=store)
            if not template.is_file():
                template.parent.mkdir(exist_ok=True)
                ensure_store(f"sqlite:///{template}")
        shutil.copy2(template, dest / "mlflow.db")
        return make_runner(dest)

    def copy_with_store(dest: Path) -> Run:
        """A copy with the pipeline's store (its sweep, its registered model), copied by
        SQLite's backup, and its artifacts, which the copy's store is made to name (as the
        first command run in the copy would)."""
        import sqlite3

        from overfit.tracking.store import follow_move

        store = shutil.ignore_patterns("mlflow.db*")
        with exclusive(lock):
            shutil.copytree(root, dest, symlinks=True, ignore=store)
        with (
            contextlib.closing(sqlite3.connect(root / "mlflow.db")) as original,
            contextlib.closing(sqlite3.connect(dest / "mlflow.db")) as copy,
        ):
            original.backup(copy)
        follow_move(dest / "mlflow.db")
        return make_runner(dest)

    return Pipeline(root, run, text, copy_to, copy_with_store)


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Run]:
    """A copy of the project with the real configuration."""
    root = tmp_path / "project"
    return root, copy_project(root)


@pytest.fixture
def shrunk_project(tmp_path: Path) -> tuple[Path, Run]:
    """A copy of the project with the real configuration shrunk to run in seconds."""
    root = tmp_path / "project"
    return root, copy_project(root, SHRUNK)


def sweep_ids(root: Path, tracking_uri: str | None = None) -> dict:
    """The sweep's MLflow run ids, found as the later stages find them: by the digests in
    reports/sweep.json (which holds no run id). {"parent_run_id": ..., "runs": {name: id}}."""
    from mlflow.tracking import MlflowClient

    from overfit.artifacts import read_sweep
    from overfit.tracking.runs import find_sweep

    client = MlflowClient(tracking_uri=tracking_uri or f"sqlite:///{root / 'mlflow.db'}")
    runs = find_sweep(client, "overfit", read_sweep(root))
    ids = {name: run.info.run_id for name, run in runs.children.items()}
    return {"parent_run_id": runs.parent, "runs": ids}


Entry = Callable[..., tuple[int, str, str]]


@pytest.fixture
def entry(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Entry:
    """Call an entry point's `main` in this process, in a project folder, as `python -m` would:
    (exit status, stdout, stderr). For errors raised before any work, where a subprocess
    would prove nothing more and cost a Python start-up."""
    for name in ("OVERFIT_ROOT", "DVC_ROOT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)

    def call(main: Callable[..., object], root: Path, *argv: str) -> tuple[int, str, str]:
        monkeypatch.chdir(root)
        capsys.readouterr()
        try:
            main(list(argv))
            status = 0
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 1
        out, err = capsys.readouterr()
        return status, out, err

    return call


# --- the article's data, for tests of the trainer against Keras ---------------------------------


@pytest.fixture(scope="module")
def moons() -> tuple:
    """The article's data: the first 30 of 100 two-moons points train, the other 70 test."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=100, noise=0.2, random_state=1)
    return x[:30], y[:30], x[30:], y[30:]


def max_weight_diff(a, b) -> float:
    """The largest difference between two Keras models' weights."""
    import numpy as np

    pairs = zip(a.get_weights(), b.get_weights(), strict=True)
    return max(float(np.max(np.abs(u - w))) for u, w in pairs)
