"""Hydra launchers are a setting: the same jobs through other launchers give the same numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .conftest import SHRUNK, TWO_CONFIGURATIONS

# Jobs of the shared shrunk sweep. Two for joblib's two workers, side by side, by hand on
# Hydra's command line. One for submitit, whose local executor takes the path a SLURM cluster
# takes, chosen as `dvc exp run -S launcher=...` chooses a launcher: params.yaml's `launcher`
# (the preset: one thread per job), the train stage run with no arguments.
# launcher: (params.yaml's settings, or None to keep them; the train stage's arguments; jobs)
LAUNCHERS = {
    "joblib": (
        None,
        ["--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "launcher.threads=1"]
        + ["penalty=l1,l2", "penalty.strength=1e-3"],
        ["l1_1e-03", "l2_1e-03"],
    ),
    "submitit_local": (
        [*SHRUNK, *TWO_CONFIGURATIONS, "sweep.baseline=false", "study.draws=0"]
        + ["launcher=submitit_local"],
        [],
        ["l2_1e-03"],
    ),
}


def threads(root: Path, name: str) -> str:
    """The TensorFlow threads the latest run of configuration `name` trained with."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("overfit").experiment_id
    [run] = client.search_runs(
        [experiment],
        filter_string=f"tags.`overfit.run` = '{name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return run.data.tags["overfit.tensorflow_threads"]


def job_results(root: Path, names: list[str]) -> dict[str, dict]:
    return {
        name: json.loads((root / "models" / name / "result.json").read_text()) for name in names
    }


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_other_launchers_train_exactly_what_the_default_does(
    tmp_path: Path, shrunk_pipeline, launcher: str
) -> None:
    """Each job trains its own seeds in its own process, one TensorFlow thread each; the
    models, their curves and their results are those the default run trained stacked."""
    sequential = shrunk_pipeline.root
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    params, args, names = LAUNCHERS[launcher]
    if params is not None:
        run(sys.executable, "-m", "overfit.commands.params", *params)
    result = run(sys.executable, "-m", "overfit.stages.train", *args)
    if launcher == "joblib":
        assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    else:
        assert any((root / "models/.submitit").iterdir()), "the jobs did not go through submitit"
    ours, reference = job_results(root, names), job_results(sequential, names)
    for name in names:
        assert ours[name] == reference[name], name  # result.json: the same, byte for byte
        # One thread per job: two jobs on two cores, no oversubscription.
        assert (threads(root, name), threads(sequential, name)) == ("1", "0")
        history = (root / "models" / name / "history.csv").read_bytes()
        assert history == (sequential / "models" / name / "history.csv").read_bytes(), name


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_study_split_by_groups_of_draws_is_the_one_process_study(
    tmp_path: Path, shrunk_pipeline, launcher: str
) -> None:
    """The shared pipeline's study (3 draws, two sizes, the selection's folds), run by a Hydra
    launcher in groups of 2 draws and 1 draw, each group a process of its own: study.json is
    the one the single process wrote, byte for byte, and the groups' files are gone."""
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    run(sys.executable, "-m", "overfit.commands.params", *SHRUNK, f"launcher={launcher}",
        "study.group_size=2")  # fmt: skip
    result = run(sys.executable, "-m", "overfit.stages.study")
    if launcher == "joblib":
        assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    ours = (root / "reports/study.json").read_bytes()
    assert ours == (shrunk_pipeline.root / "reports/study.json").read_bytes()
    assert not (root / "reports/.study").exists()
