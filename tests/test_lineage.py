"""DVC owns the content, MLflow owns the identity: what git and DVC hold is a function of code,
params and data (a forced rerun writes the same dvc.lock, byte for byte); the store says where
each run and model came from (commit, clean or not, the data as datasets with DVC's digests,
logged models, a model card)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from overfit.reports import read_model_record
from overfit.tracking.model_format import tensorflow_distribution
from overfit.tracking.registry import registered_version

from .conftest import make_runner, sweep_ids

NAME = "overfit-moons"


def client(root: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def dvc_file_md5s(root: Path, out: str) -> dict[str, str]:
    """Each file's md5 in the manifest DVC keeps for a tracked folder, found from dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    digest = next(
        o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])
        if o["path"] == out
    )  # fmt: skip
    manifest = root / ".dvc/cache/files/md5" / digest[:2] / digest[2:]
    return {entry["relpath"]: entry["md5"] for entry in json.loads(manifest.read_text())}


def registered(root: Path):
    record = read_model_record(root)
    version = registered_version(client(root), NAME, ("overfit.model_sha256", record.model_sha256))
    return record, version


def test_what_git_and_dvc_hold_has_no_run_id_time_or_path(shrunk_pipeline) -> None:
    root = shrunk_pipeline.root
    mlflow = client(root)
    ids = sweep_ids(root)
    run_ids = {ids["parent_run_id"], *ids["runs"].values()}
    experiment = mlflow.get_run(ids["parent_run_id"]).info.experiment_id
    model_ids = {m.model_id for m in mlflow.search_logged_models([experiment])}
    files = [root / "dvc.lock", *(p for p in (root / "reports").rglob("*") if p.is_file())]
    files += [p for p in (root / "models").rglob("*.json")]
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        assert str(root) not in text and "sqlite:" not in text, path
        for identity in run_ids | model_ids:
            assert identity not in text, (path, identity)
    assert set(json.loads((root / "reports/sweep.json").read_text())) == {"name", "results"}
    record = json.loads((root / "reports/model.json").read_text())
    assert "version" not in record and "mlflow_run_id" not in record


def test_the_pipeline_prints_nothing_a_user_cannot_act_on(shrunk_pipeline) -> None:
    output = shrunk_pipeline.output
    for noise in ("Warning", "absl", "oneDNN", "I0000", "Add type hints", "Downloading"):
        assert noise not in output, noise


def test_runs_record_their_data_as_datasets_with_dvc_digests(shrunk_pipeline) -> None:
    root = shrunk_pipeline.root
    mlflow = client(root)
    ids = sweep_ids(root)
    split = dvc_file_md5s(root, "data/split")
    raw = dvc_file_md5s(root, "data/raw")
    commit = mlflow.get_run(ids["parent_run_id"]).data.tags["git.commit"]
    expected = {
        "moons-train": ("training", split["train.csv"], "data/split/train.csv"),
        "moons-test": ("test", split["test.csv"], "data/split/test.csv"),
        "moons-fresh": ("fresh", raw["fresh.csv"], "data/raw/fresh.csv"),
    }
    for run_id in [ids["parent_run_id"], *ids["runs"].values()]:
        inputs = mlflow.get_run(run_id).inputs.dataset_inputs
        found = {}
        for dataset_input in inputs:
            dataset = dataset_input.dataset
            context = {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"]
            source = json.loads(dataset.source)["uri"]
            found[dataset.name] = (context, dataset.digest, source)
            assert json.loads(dataset.profile)["num_rows"] > 0
        assert found == {
            name: (context, digest, f"{path}?rev={commit}")
            for name, (context, digest, path) in expected.items()
        }, run_id


def test_the_version_comes_from_a_logged_model_and_carries_its_card(shrunk_pipeline) -> None:
    root = shrunk_pipeline.root
    mlflow = client(root)
    record, version = registered(root)
    ids = sweep_ids(root)
    model = mlflow.get_logged_model(version.source.removeprefix("models:/"))
    assert model.name == "classifier"
    assert model.source_run_id == version.run_id == ids["runs"][record.run]
    assert model.tags["overfit.model_sha256"] == record.model_sha256
    # What serving installs names the TensorFlow distribution installed here.
    import importlib.metadata

    from mlflow.artifacts import download_artifacts

    requirements = download_artifacts(f"{model.artifact_location}/requirements.txt")
    installed = tensorflow_distribution()
    pin = f"{installed}=={importlib.metadata.version(installed)}"
    assert pin in Path(requirements).read_text().split()
    head = shrunk_pipeline.run("git", "rev-parse", "HEAD").stdout.strip()
    # The shrunk project is a clean clone: only what DVC wrote differs from its commit.
    assert version.tags["git.commit"] == head and version.tags["git.dirty"] == "false"
    card = version.description
    assert card == mlflow.get_registered_model(NAME).description
    assert card.startswith(f"# {NAME}: {record.run}, seed 1")
    assert f"`git.commit`: `{head}`" in card and f"`{record.model_sha256}`" in card
    assert re.search(r"\| test accuracy \(70 points\) \| 0\.\d{3} ± 0\.\d{3}", card)
    assert "30 training rows" in card


def test_a_fresh_clone_reproduces_the_commit_and_registers_and_a_forced_rerun_too(
    shrunk_pipeline, tmp_path
) -> None:
    """The shrunk pipeline's outputs committed, then cloned (no DVC cache, no store): `dvc
    repro` there leaves `git status` empty and the same models, registers into the clone's new
    store (its version says clean, at that commit); then `dvc repro -f` after an edit to a
    tracked file writes the same bytes again, its runs say dirty, and the same content stays
    the one version it is."""
    origin = tmp_path / "origin"
    committing = shrunk_pipeline.copy_to(origin)
    # The shrunk study's figures are named by its sizes (study_effects_20.png): new files.
    committing("git", "add", "-A")
    committing("git", "commit", "-qm", "the pipeline's outputs")
    clone = tmp_path / "clone"
    make_runner(tmp_path)("git", "clone", "-q", str(origin), str(clone))
    run = make_runner(clone)
    run("dvc", "repro")
    assert run("git", "status", "--porcelain").stdout == ""
    models = sorted(p.relative_to(origin) for p in (origin / "models").rglob("*") if p.is_file())
    assert models and all((origin / p).read_bytes() == (clone / p).read_bytes() for p in models)
    record, version = registered(clone)
    head = run("git", "rev-parse", "HEAD").stdout.strip()
    assert version.tags["git.commit"] == head and version.tags["git.dirty"] == "false"

    readme = clone / "README.md"
    readme.write_text(readme.read_text() + "\nAn edit.\n")
    run("dvc", "repro", "-f")
    assert run("git", "status", "--porcelain").stdout.strip() == "M README.md"
    assert all((origin / p).read_bytes() == (clone / p).read_bytes() for p in models)
    assert read_model_record(clone) == record
    assert registered(clone)[1].version == version.version
    parent = client(clone).get_run(sweep_ids(clone)["parent_run_id"])
    assert parent.data.tags["git.dirty"] == "true"
