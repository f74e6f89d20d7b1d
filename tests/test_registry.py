"""The Model Registry story, with real DVC, a real MLflow store and real training: register
the selected model, register again (nothing new), promote it, promote an equal one (new model
code) over it, roll back, refuse a worse one made by a worse setting, and refuse what does not
exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from overfit.commands.params import main as config_main
from overfit.commands.promote import main as promote_main
from overfit.stages.register import main as register_main

from .conftest import PENALTIES_ONLY, SHRUNK, sweep_ids

NAME = "overfit-moons"


def registry(root: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def aliases(root: Path) -> dict[str, str]:
    return {k: str(v) for k, v in registry(root).get_registered_model(NAME).aliases.items()}


def versions(root: Path) -> list[str]:
    found = registry(root).search_model_versions(f"name = '{NAME}'")
    return sorted((str(v.version) for v in found), key=int)


@pytest.fixture
def project(tmp_path, shrunk_pipeline):
    """A copy of the shrunk pipeline with a copy of its store, where `dvc repro` registered
    the selected model (version 1, the candidate; no champion yet)."""
    root = tmp_path / "project"
    return root, shrunk_pipeline.copy_with_store(root)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, shrunk_pipeline):
    """The same, shared by tests that change nothing when they pass."""
    root = tmp_path_factory.mktemp("registry") / "project"
    return root, shrunk_pipeline.copy_with_store(root)


def test_register_promote_roll_back_and_refuse(project, entry) -> None:
    root, run = project

    def promote(*args: str) -> tuple[int, str, str]:
        return entry(promote_main, root, *args)

    record = json.loads((root / "reports/model.json").read_text())
    report = json.loads((root / "reports/configs.json").read_text())
    child = sweep_ids(root)["runs"][report["selected"]]
    assert record["name"] == NAME and record["run"] == report["selected"] and record["seed"] == 1
    [version] = registry(root).search_model_versions(f"name = '{NAME}'")
    version = registry(root).get_model_version(NAME, version.version)
    assert version.run_id == child
    assert version.tags["overfit.model_sha256"] == record["model_sha256"]
    assert version.tags["overfit.run"] == report["selected"]
    assert version.tags["overfit.selection_rule"].startswith("cv_acc: highest mean held-out")
    config = report["configs"][report["selected"]]
    for key in ("cv_acc", "test_acc", "fresh_acc"):
        assert float(version.tags[key]) == pytest.approx(config[key]["mean"], abs=1e-6)
    assert version.tags["git.commit"] and version.tags["data.md5.data/split"]
    assert aliases(root) == {"candidate": str(version.version)}

    # Registering again registers nothing new.
    status, out, err = entry(register_main, root)
    assert status == 0, err
    assert "already registered: models:/overfit-moons/1" in out
    assert versions(root) == ["1"]
    assert "Running stage" not in run("dvc", "repro").stdout

    # The first candidate becomes the champion.
    status, out, err = promote()
    assert status == 0, err
    assert out.strip() == "version 1 is the champion (first champion)"
    assert aliases(root) == {"candidate": "1", "champion": "1"}
    history = registry(root).get_model_version(NAME, "1").tags["overfit.history"]
    assert history.endswith(f"champion (first champion) (commit {version.tags['git.commit']})")

    # New model code (the same model): the register stage alone reruns and makes a new
    # version, with equal figures, which is promoted over the first.
    code = root / "src/overfit/tracking/classifier.py"
    code.write_text(code.read_text() + "\n# The same model, code revised.\n")
    stages = re.findall(r"Running stage '([^']+)'", run("dvc", "repro").stdout)
    assert stages == ["register"]
    assert versions(root) == ["1", "2"]
    assert registry(root).get_model_version(NAME, "2").run_id == child
    status, out, err = promote()
    assert status == 0, out + err
    assert "pass  selected_test_accuracy" in out
    assert out.splitlines()[-1] == "version 2 is the champion (over 1)"
    assert aliases(root) == {"candidate": "2", "champion": "2", "previous": "1"}

    # Roll back: the first is champion again.
    status, out, err = promote("--rollback")
    assert status == 0, err
    assert out.strip() == "version 1 is the champion again (rolled back from 2)"
    assert aliases(root) == {"candidate": "2", "champion": "1"}
    assert "rolled back" in registry(root).get_model_version(NAME, "2").tags["overfit.history"]

    # A worse setting (2 epochs: the network has not learnt the moons; two configurations
    # are enough to choose from) makes a worse candidate: refused, the champion stays.
    worse = [*SHRUNK, *PENALTIES_ONLY, "sweep.kinds=[l2]", "sweep.strengths=[1.0e-3]"]
    assert entry(config_main, root, *worse, "train.epochs=2")[0] == 0
    run("dvc", "repro")
    assert versions(root) == ["1", "2", "3"]
    status, out, _ = promote()
    assert status == 1
    assert "FAIL  selected_fresh_accuracy" in out
    assert out.splitlines()[-1] == "version 3 stays a candidate"
    assert aliases(root) == {"candidate": "3", "champion": "1"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", "99"], "error: overfit-moons has no version '99'"),
        (["--name", "nobody"], "error: no registered model 'nobody' in the tracking store; "),
        (["--rollback", "--name", "nobody"], "error: no registered model 'nobody'"),
    ],
    ids=["unknown version", "unknown name", "rollback of an unknown name"],
)
def test_promote_refuses_what_does_not_exist_and_changes_nothing(
    registered, entry, args, message
) -> None:
    root, _ = registered
    before = (aliases(root), versions(root))
    status, _, err = entry(promote_main, root, *args)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), err
    assert (aliases(root), versions(root)) == before


def test_promote_without_a_candidate_says_so(tmp_path: Path, shrunk_pipeline, entry) -> None:
    """A store with no registered model (a copy's new store): nothing to promote."""
    root = tmp_path / "project"
    shrunk_pipeline.copy_to(root)
    status, _, err = entry(promote_main, root)
    assert status == 2
    assert err.strip() == (
        "error: no registered model 'overfit-moons' in the tracking store; run the pipeline "
        "(make run) or name another with --name"
    )
