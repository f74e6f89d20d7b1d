"""Shared fixtures: a throw-away git copy of the project, and commands run in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Settings every test run uses, whatever the caller's shell says.
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

# A pipeline shrunk to seconds: the real configs with few epochs, two seeds, two strengths.
SHRUNK = [
    "train.epochs=60",
    "train.seeds=[1,2]",
    "sweep.kinds=[l1,l2]",
    "sweep.strengths=[1.0e-2,1.0e-3]",
    "data.fresh_samples=500",
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
        run(sys.executable, "-m", "overfit.config", *overrides)
    run("git", "init", "-q", "-b", "main")
    run("git", "config", "user.email", "test@example.com")
    run("git", "config", "user.name", "test")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "base")
    return run


@pytest.fixture(scope="session")
def shrunk_pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run, str]:
    """The shrunk pipeline after one full `dvc repro`: (root, run, what dvc repro printed).

    Shared by the tests that only read what it produced, so the pipeline runs once.
    """
    root = tmp_path_factory.mktemp("pipeline") / "project"
    run = copy_project(root, SHRUNK)
    result = run("dvc", "repro")
    return root, run, result.stdout + result.stderr


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
