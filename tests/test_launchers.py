"""Hydra launchers are a setting: the same sweep through other launchers gives the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import SHRUNK, copy_project


def job_results(root: Path) -> dict[str, dict]:
    return {
        p.parent.name: json.loads(p.read_text())
        for p in (root / "models").glob("*/result.json")
        if ".partial" not in p.parts
    }


def test_joblib_with_two_jobs_matches_the_sequential_run(tmp_path: Path, shrunk_pipeline) -> None:
    sequential, _, _ = shrunk_pipeline
    root = tmp_path / "project"
    run = copy_project(root, [*SHRUNK, "launcher=joblib"])
    result = run("dvc", "repro")
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    assert (root / "reports/metrics.json").read_bytes() == (
        sequential / "reports/metrics.json"
    ).read_bytes()
    results = job_results(root)
    # One TensorFlow thread per job: two jobs on two cores, no oversubscription.
    assert {r["threads"] for r in results.values()} == {1}
    assert {r["threads"] for r in job_results(sequential).values()} == {0}


@pytest.mark.parametrize("launcher", ["submitit_local"])
def test_a_cluster_launcher_runs_the_sweep_locally(
    tmp_path: Path, shrunk_pipeline, launcher: str
) -> None:
    sequential, _, _ = shrunk_pipeline
    root = tmp_path / "project"
    run = copy_project(root, [*SHRUNK, f"launcher={launcher}"])
    run("dvc", "repro", "train")
    assert any((root / "models/.submitit").iterdir()), "the jobs did not go through submitit"
    ours, reference = job_results(root), job_results(sequential)
    assert set(ours) == set(reference)
    for name, result in ours.items():
        assert result["per_seed"] == reference[name]["per_seed"], name
