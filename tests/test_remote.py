"""Sharing results through a DVC remote: one clone runs and pushes, a fresh clone pulls and has
nothing to rerun.

The remote is a local folder; an S3 or SSH remote differs only in its URL and credentials.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from .conftest import env_for, make_runner

# Stage outputs DVC caches (the rest, cache: false, are committed to git).
CACHED = ("data/raw", "data/split", "models", "reports/evaluation.npz")


def digests(root: Path) -> dict[str, str]:
    """md5 of every file under the cached outputs, by path relative to root."""
    files: list[Path] = []
    for name in CACHED:
        path = root / name
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def test_a_fresh_clone_pulls_the_results_and_reruns_nothing(shrunk_pipeline, tmp_path) -> None:
    # A copy of the shared, already reproduced project (cache included), so the fixture stays
    # untouched for the other tests.
    origin = tmp_path / "origin"
    run = shrunk_pipeline.copy_to(origin)
    assert "Running stage" not in run("dvc", "repro").stdout

    remote = tmp_path / "remote"
    run("dvc", "remote", "add", "-d", "store", str(remote))
    pushed = run("dvc", "push")
    assert "pushed" in pushed.stdout, pushed.stdout
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "results")
    assert run("git", "status", "--porcelain").stdout == ""
    tracked = run("git", "ls-files").stdout.splitlines()
    assert "dvc.lock" in tracked and "reports/metrics.json" in tracked
    assert "mlflow.db" not in tracked and not any(t.startswith("models/") for t in tracked)

    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", str(origin), str(clone)],
        check=True,
        env=env_for(clone.parent),
        capture_output=True,
    )
    pull = make_runner(clone)
    # What git brings: the remote's address, the lock, the small reports; not the data.
    assert str(remote) in (clone / ".dvc/config").read_text()
    assert not (clone / "models").exists() and not (clone / "data/raw").exists()
    assert not (clone / "mlflow.db").exists()

    pull("dvc", "pull")
    assert digests(clone) == digests(origin)
    assert len(digests(clone)) > 10

    assert pull("dvc", "status").stdout.strip() == "Data and pipelines are up to date."
    again = pull("dvc", "repro")
    assert "Running stage" not in again.stdout, again.stdout
    # Nothing ran: no MLflow store was created, and neither the lock nor any file changed.
    assert not (clone / "mlflow.db").exists()
    assert pull("git", "status", "--porcelain").stdout == ""
