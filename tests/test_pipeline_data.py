"""DVC behaves as users expect on the data stages, in a throw-away git repository."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import Run, copy_project, make_runner


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def set_params(run, *overrides: str) -> None:
    """Recompose params.yaml from conf/ with these overrides (what `dvc exp run -S` does)."""
    run(sys.executable, "-m", "overfit.commands.params", *overrides)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the project where `dvc repro split` ran once, and what it printed."""
    root = tmp_path_factory.mktemp("split") / "project"
    return root, copy_project(root)("dvc", "repro", "split").stdout


@pytest.fixture
def built(split: tuple[Path, str], tmp_path: Path) -> tuple[Path, Run]:
    """That project, copied for a test that changes it (DVC's cache and git included)."""
    root = tmp_path / "project"
    shutil.copytree(split[0], root, symlinks=True)
    return root, make_runner(root)


def test_repro_builds_once_and_reruns_only_what_changed(split, built) -> None:
    root, run = built
    assert stages_run(split[1]) == {"generate", "split"}
    assert (root / "data/split/train.csv").read_text().count("\n") == 31
    assert (root / "data/split/test.csv").read_text().count("\n") == 71
    assert (root / "data/raw/fresh.csv").read_text().count("\n") == 10001
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]["generate"]["params"]["params.yaml"]) == {
        "data.n_samples",
        "data.noise",
        "data.random_state",
        "data.name",
        "data.factor",
        "data.fresh_samples",
        "data.fresh_random_state",
    }
    assert set(lock["stages"]["split"]["params"]["params.yaml"]) == {
        "data.n_samples",
        "data.n_train",
    }

    again = run("dvc", "repro", "split")
    assert stages_run(again.stdout) == set()

    set_params(run, "model.hidden_units=50", "sweep.strengths=[0.5]")
    assert stages_run(run("dvc", "repro", "split").stdout) == set()

    set_params(run, "data.noise=0.3")
    assert stages_run(run("dvc", "repro", "split").stdout) == {"generate", "split"}

    set_params(run, "data.noise=0.3", "data.n_train=40")
    assert stages_run(run("dvc", "repro", "split").stdout) == {"split"}
    assert (root / "data/split/train.csv").read_text().count("\n") == 41


def test_outputs_are_in_the_dvc_cache(built) -> None:
    root, run = built
    cache = root / ".dvc/cache/files/md5"
    assert any(cache.rglob("*")), "stage outputs were not cached"
    (root / "data/split/train.csv").unlink()
    run("dvc", "checkout", "data/split")
    assert (root / "data/split/train.csv").read_text().startswith("x1,x2,label\n")


def test_the_committed_lock_matches_the_code_and_params(project) -> None:
    """On a checkout with no outputs yet, DVC may miss the outputs, never see a dependency
    changed: otherwise a clone that pulled the results would still retrain."""
    import json

    root, run = project
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    outputs = {
        next(iter(out)) if isinstance(out, dict) else out
        for stage in stages.values()
        for kind in ("outs", "metrics", "plots")
        for out in stage.get(kind, [])
    }

    def produced(path: str) -> bool:
        return any(path == out or path.startswith(out + "/") for out in outputs)

    status = json.loads(run("dvc", "status", "--json").stdout)
    stale = []
    for stage, entries in status.items():
        for entry in entries:
            if not isinstance(entry, dict):  # "changed command", "always changed"
                stale.append((stage, entry))
                continue
            for path, state in entry.get("changed deps", {}).items():
                if not produced(path):
                    stale.append((stage, path, state))
    assert stale == [], f"dvc.lock is stale (run `dvc repro` and commit it): {stale}"
