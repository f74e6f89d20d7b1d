"""`make prune KEEP=N` on a copy of the shrunk pipeline's store (its sweep recorded in
reports/sweep.json, its registered version) with three later sweeps logged beside it: the
newest N stay, so do the recorded and the registered one; the others' runs, logged models and
artifacts are gone for good (a real `mlflow gc`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overfit.commands.prune import main as prune_main
from overfit.reports import read_model_record
from overfit.tracking.registry import registered_version


def log_sweep(client, experiment_id: str, folder: Path) -> tuple[str, str, str]:
    """A sweep as the train stage logs one: a parent run, a child run with a file, and the
    child's logged model. Its (parent, child, logged model) ids."""
    parent = client.create_run(experiment_id, tags={"overfit.stage": "train"}).info.run_id
    child = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
    note = folder / "note.txt"
    note.write_text("a job's file\n", encoding="utf-8")
    client.log_artifact(child, str(note))
    model = client.create_logged_model(experiment_id, source_run_id=child).model_id
    for run in (child, parent):
        client.set_terminated(run)
    return parent, child, model


def test_prune_keeps_the_newest_the_recorded_and_the_registered(
    shrunk_pipeline, tmp_path: Path, entry
) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    root = tmp_path / "project"
    shrunk_pipeline.copy_with_store(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("overfit").experiment_id
    record = read_model_record(root)
    version = registered_version(client, record.name, ("overfit.model_sha256", record.model_sha256))
    old = [log_sweep(client, experiment, tmp_path) for _ in range(3)]  # the last is the newest

    status, out, err = entry(prune_main, root, "--keep", "1")

    assert status == 0, out + err
    assert out.strip() == (
        "kept 2 of 4 sweeps; deleted 2 sweeps (4 runs, 2 logged models), removed for good "
        "with their artifacts by mlflow gc"
    )
    for parent, child, model in old[:2]:
        for run in (parent, child):
            with pytest.raises(MlflowException):
                client.get_run(run)
        with pytest.raises(MlflowException):
            client.get_logged_model(model)
    newest_child = client.get_run(old[2][1])
    assert newest_child.info.lifecycle_stage == "active"
    # The registered version's run, its logged model and its files are all still there.
    source = client.get_run(version.run_id)
    assert source.info.lifecycle_stage == "active"
    assert client.list_artifacts(version.run_id)
    assert client.get_logged_model(version.source.removeprefix("models:/")).model_id


@pytest.mark.parametrize("keep", ["0", "-1", "two"])
def test_prune_needs_a_positive_number_of_sweeps(tmp_path: Path, entry, keep: str) -> None:
    status, _, err = entry(prune_main, tmp_path, "--keep", keep)
    assert status == 2
    assert f"a whole number of sweeps, at least 1, got {keep!r}" in err
