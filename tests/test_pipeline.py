"""The whole shrunk pipeline, run once by `dvc repro` in a throw-away git repository.

Checks what each stage left on disk and in the MLflow store, and what DVC reads back.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from overfit.commands.gate import HEADLINE_KEYS
from overfit.config import load_params, parse_config
from overfit.core.remedies import run_name

from .conftest import sweep_ids

EXPECTED_RUNS = {
    *("none", "l1_1e-02", "l1_1e-03", "l2_1e-02", "l2_1e-03"),
    *("dropout_0p5", "patience_5", "max_norm_0p5", "noise_0p1_input", "activity_l1_1e-03_post"),
}
SEEDS = [1, 2]
EPOCHS = 60


def mlflow_client(root):
    from mlflow.tracking import MlflowClient

    # The registry too: another test in this worker may have set the process's registry URI.
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def sweep(shrunk_pipeline):
    return sweep_ids(shrunk_pipeline.root)


def test_shrunk_settings_are_in_params(shrunk_pipeline) -> None:
    root = shrunk_pipeline.root
    config = load_params(root)
    assert config.train.seeds == SEEDS and config.train.epochs == EPOCHS


def test_every_stage_ran_and_a_second_repro_does_nothing(shrunk_pipeline) -> None:
    run, output = shrunk_pipeline.run, shrunk_pipeline.output
    assert set(re.findall(r"Running stage '([^']+)'", output)) == {
        "generate",
        "split",
        "train",
        "study",
        "evaluate",
        "plot",
        "register",
    }
    again = run("dvc", "repro")
    assert "Running stage" not in again.stdout
    assert run("dvc", "status").stdout.strip() == "Data and pipelines are up to date."


def test_each_job_wrote_its_models_history_and_config(shrunk_pipeline, sweep) -> None:
    root = shrunk_pipeline.root
    assert set(sweep["runs"]) == EXPECTED_RUNS
    for name in EXPECTED_RUNS:
        run_dir = root / "models" / name
        assert "." not in name
        for seed in SEEDS:
            assert (run_dir / f"seed_{seed}.keras").stat().st_size > 10_000
        history = (run_dir / "history.csv").read_text().splitlines()
        assert history[0] == "seed,epoch,train_loss,train_accuracy,test_loss,test_accuracy"
        result = json.loads((run_dir / "result.json").read_text())
        # Early stopping on cv: the final models train the folds' median best epoch.
        epochs = result["stopping"]["final_epochs"] if result["stopping"] else EPOCHS
        assert len(history) == 1 + epochs * len(SEEDS)
        hydra_config = yaml.safe_load((run_dir / ".hydra/config.yaml").read_text())
        assert run_name(parse_config(hydra_config)) == name
        assert result["seeds"] == SEEDS and set(result["per_seed"]) == {"1", "2"}
        for key in ("train_acc", "test_acc", "gap"):
            values = [result["per_seed"][s][key] for s in ("1", "2")]
            assert result["mean"][key] == pytest.approx(np.mean(values))
            assert result["std"][key] == pytest.approx(np.std(values))
    # The new remedies' saved models hold their layer and penalty, and load in safe mode.
    import keras

    def saved(name: str) -> keras.Model:
        return keras.models.load_model(root / "models" / name / "seed_1.keras", safe_mode=True)

    noisy, penalised = saved("noise_0p1_input"), saved("activity_l1_1e-03_post")
    assert [type(layer).__name__ for layer in noisy.layers] == ["GaussianNoise", "Dense", "Dense"]
    assert (noisy.layers[0].stddev, noisy.layers[0].seed) == (0.1, 1)
    hidden = penalised.layers[0]
    penalty = keras.regularizers.serialize(hidden.activity_regularizer)
    assert penalty["class_name"] == "L1"
    assert penalty["config"]["l1"] == pytest.approx(1e-3)  # saved as a float32


def test_mlflow_has_a_parent_and_one_child_per_configuration(shrunk_pipeline, sweep) -> None:
    root = shrunk_pipeline.root
    client = mlflow_client(root)
    parent = client.get_run(sweep["parent_run_id"])
    assert parent.info.status == "FINISHED"
    # Artifacts beside the store, never in ./mlruns of whatever the working directory was.
    assert parent.info.artifact_uri.startswith((root / "mlartifacts").resolve().as_uri())
    assert not (root / "mlruns").exists()
    assert parent.data.tags["git.commit"] and parent.data.tags["git.dirty"] in ("true", "false")
    assert parent.data.params["sweep.strengths"] == "[0.01, 0.001]"
    assert parent.data.params["train.epochs"] == str(EPOCHS)
    assert parent.data.params["tracking.history_every"] == "20"
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "reports")}
    assert "reports/summary.md" in parent_artifacts
    assert "reports/decision_boundaries.png" in parent_artifacts
    # The parent records the choice; the experiment opens on MLflow's model-training view.
    report = json.loads((root / "reports/configs.json").read_text())
    assert parent.data.tags["overfit.selected_run"] == report["selected"]
    assert parent.data.tags["overfit.selected_run_id"] == sweep["runs"][report["selected"]]
    assert parent.data.tags["overfit.selection_rule"] == (
        "cv_acc: highest mean held-out accuracy in 5-fold cross-validation on the training rows"
    )
    assert parent.data.tags["overfit.test_choice"] == report["test_choice"]
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert {c.info.run_name for c in children} == EXPECTED_RUNS
    for child in children:
        name = child.info.run_name
        assert child.info.status == "FINISHED"
        params = child.data.params
        assert params["train.epochs"] == str(EPOCHS)
        assert params["train.seeds"] == str(SEEDS)
        kind = name.split("_1e")[0] if name.startswith("l") else "none"
        assert params["penalty.kind"] == kind
        assert params["model.dropout"] == ("0.5" if name == "dropout_0p5" else "0.0")
        assert params["model.noise"] == ("0.1" if name == "noise_0p1_input" else "0.0")
        assert params["model.noise_at"] == "input"
        activity = name == "activity_l1_1e-03_post"
        assert params["model.activity"] == ("l1" if activity else "none")
        assert params["model.activity_strength"] == ("0.001" if activity else "0.0")
        assert params["model.activity_at"] == "post_activation"
        assert params["model.constraint"] == ("max_norm" if name == "max_norm_0p5" else "none")
        assert params["train.early_stopping.watch"] == ("cv" if name == "patience_5" else "none")
        assert "gate.selected_test_drop" not in params
        metrics = child.data.metrics
        sortable = ("train_acc", "test_acc", "train_loss", "test_loss", "gap", "cv_acc")
        sortable += ("cv_loss", "fresh_acc", "hidden_l1", "hidden_l2", "near_zero_share")
        for key in sortable:
            assert metrics[f"{key}_std"] >= 0 and np.isfinite(metrics[f"{key}_mean"]), key
        result = json.loads((root / "models" / name / "result.json").read_text())
        assert metrics["test_acc_mean"] == pytest.approx(result["mean"]["test_acc"])
        # Cross-validation: 5 folds of the 30 training rows, seeds 1, 2, 1, 2, 1.
        folds = result["cv"]["per_fold"]
        assert [(f["fold"], f["seed"], f["rows"]) for f in folds] == [
            (i + 1, SEEDS[i % 2], 6) for i in range(5)
        ]
        accs = [f["acc"] for f in folds]
        assert all(round(a * 6) == pytest.approx(a * 6, abs=1e-5) for a in accs)  # k of 6 rows
        assert metrics["cv_acc_mean"] == pytest.approx(np.mean(accs), abs=1e-6)
        assert metrics["cv_acc_std"] == pytest.approx(np.std(accs), abs=1e-6)
        assert metrics["cv_loss_mean"] == pytest.approx(result["cv"]["mean"]["cv_loss"], abs=1e-6)
        assert "select.metric" not in params and params["select.folds"] == "5"
        # Every 20th epoch, the first and the last; history.csv keeps every epoch.
        history = client.get_metric_history(child.info.run_id, "test_accuracy")
        assert sorted(m.step for m in history) == [1, 20, 40, 60]
        by_epoch = np.loadtxt(
            root / "models" / name / "history.csv", delimiter=",", skiprows=1, ndmin=2
        )
        mean_at_20 = by_epoch[by_epoch[:, 1] == 20][:, 5].mean()
        assert [m.value for m in history if m.step == 20] == [pytest.approx(mean_at_20, abs=1e-6)]
        assert child.data.tags["data.md5.data/split"]
        assert child.data.tags["git.commit"] == parent.data.tags["git.commit"]
        paths = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"learning_curve.png", "history.csv", "config"} <= paths


def test_each_configuration_is_a_logged_model_with_its_metrics(shrunk_pipeline, sweep) -> None:
    """Each child run's model is a logged model (MLflow 3) of that run, READY, with the run's
    final metrics linked to it; it loads by `models:/<id>` and predicts."""
    import mlflow.artifacts
    import mlflow.keras
    from mlflow.entities import LoggedModelStatus

    root = shrunk_pipeline.root
    client = mlflow_client(root)
    experiment = client.get_run(sweep["parent_run_id"]).info.experiment_id
    logged = {m.name: m for m in client.search_logged_models([experiment])}
    for name, run_id in sweep["runs"].items():
        outputs = {o.model_id for o in client.get_run(run_id).outputs.model_outputs}
        assert logged[name].model_id in outputs
        model = client.get_logged_model(logged[name].model_id)
        assert model.source_run_id == run_id and model.status == LoggedModelStatus.READY
        linked = {m.key: m.value for m in model.metrics}
        run_metrics = client.get_run(run_id).data.metrics
        for key in ("train_acc_mean", "test_acc_mean", "cv_acc_mean", "fresh_acc_mean"):
            assert linked[key] == run_metrics[key]
    # Loaded from where the logged model's files are (no process-wide tracking URI to set).
    location = client.get_logged_model(logged["l2_1e-03"].model_id).artifact_location
    model = mlflow.keras.load_model(location)
    probabilities = np.asarray(model.predict(np.array([[0.0, 1.0], [1.0, -0.5]]), verbose=0))
    assert probabilities.shape == (2, 1) and np.all((probabilities >= 0) & (probabilities <= 1))
    local = mlflow.artifacts.download_artifacts(f"{location}/MLmodel")
    model_file = yaml.safe_load(Path(local).read_text())
    assert model_file["signature"]["inputs"] and model_file["saved_input_example_info"]


def test_metrics_file_holds_the_selection_made_on_cross_validation(shrunk_pipeline, sweep) -> None:
    root = shrunk_pipeline.root
    headline = json.loads((root / "reports/metrics.json").read_text())
    report = json.loads((root / "reports/configs.json").read_text())
    assert set(report["configs"]) == EXPECTED_RUNS
    configs = report["configs"]
    selected = report["selected"]
    assert report["baseline"] == "none" and report["rule"] == "cv_acc"
    assert selected == report["cv_choice"] == headline["selected"]["run"]
    assert headline == {
        "baseline": {k: configs["none"][f"{k}_acc"]["mean"] for k in ("train", "test")},
        "selected": {"run": selected}
        | {k: configs[selected][f"{k}_acc"]["mean"] for k in ("cv", "test", "fresh")},
    }
    # Chosen on cross-validation: the highest mean held-out accuracy, whatever the test says.
    assert headline["selected"]["cv"] == max(c["cv_acc"]["mean"] for c in configs.values())
    assert configs[report["test_choice"]]["test_acc"]["mean"] == max(
        c["test_acc"]["mean"] for c in configs.values()
    )
    client = mlflow_client(root)
    for name, c in configs.items():
        run = client.get_run(sweep["runs"][name])
        for key in ("train_acc", "test_acc", "gap", "cv_acc", "fresh_acc", "hidden_l1"):
            assert c[key]["mean"] == pytest.approx(run.data.metrics[f"{key}_mean"], abs=1e-6)
        assert 0 <= c["near_zero_share"]["mean"] <= 1
        assert 0 < c["hidden_l2"]["mean"] < c["hidden_l1"]["mean"]
        assert 0.5 < c["fresh_acc"]["mean"] <= 1


def test_dvc_reads_metrics_and_plots(shrunk_pipeline, tmp_path) -> None:
    run = shrunk_pipeline.run
    shown = json.loads(run("dvc", "metrics", "show", "--json").stdout)
    data = shown[""]["data"]["reports/metrics.json"]["data"]
    assert set(data) == {"baseline", "selected"} and data["selected"]["run"] in EXPECTED_RUNS
    # The headline fits a 120-column terminal; per-configuration figures are not DVC metrics.
    table = run("dvc", "metrics", "show").stdout.splitlines()
    assert table and max(len(line) for line in table) <= 120, table
    assert table[0].split() == ["Path", *sorted(HEADLINE_KEYS)]
    out = tmp_path / "plots-html"  # not in the shared pipeline, which tests only read
    run("dvc", "plots", "show", "-o", str(out))
    page = (out / "index.html").read_text()
    assert "Accuracy per epoch, baseline vs selected" in page
    assert "Accuracy vs penalty strength (cross-validation, test, fresh)" in page


def png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_figures_are_written(shrunk_pipeline) -> None:
    root = shrunk_pipeline.root
    for name in (
        "learning_curves",
        "accuracy_vs_strength",
        "decision_boundaries",
        "weights_l1_vs_l2",
    ):
        width, height = png_size(root / "reports/figures" / f"{name}.png")
        assert 400 <= width <= 3000 and 250 <= height <= 3000, (name, width, height)


def test_summary_sets_both_rules_side_by_side(shrunk_pipeline) -> None:
    root = shrunk_pipeline.root
    summary = (root / "reports/summary.md").read_text()
    report = json.loads((root / "reports/configs.json").read_text())
    selected, on_test = report["selected"], report["test_choice"]
    for name in EXPECTED_RUNS - {selected, on_test}:
        assert f"| {name} |" in summary
    assert f"| {selected} (selected) |" in summary
    assert (
        f"Selected: **{selected}**, by highest mean held-out accuracy in 5-fold cross-validation "
        "on the training rows." in summary
    )
    rows = [line for line in summary.splitlines() if line.startswith("| highest")]
    assert [row.split(" | ")[1] for row in rows] == [selected, on_test]
    # Which remedy closes the gap best: one row per family, each at its own best.
    remedies = summary.split("## Which remedy closes the gap best")[1].split("##")[0]
    families = [line.split(" | ")[:2] for line in remedies.splitlines() if line.startswith("| ")]
    assert families[1:] == [
        ["| no remedy", "none"],
        ["| L1 penalty", families[2][1]],
        ["| L2 penalty", families[3][1]],
        ["| dropout", "dropout_0p5"],
        ["| early stopping", "patience_5"],
        ["| max-norm constraint", "max_norm_0p5"],
        ["| Gaussian noise", "noise_0p1_input"],
        ["| L1 activity penalty", "activity_l1_1e-03_post"],
    ]
    assert families[2][1].startswith("l1_") and families[3][1].startswith("l2_")
    assert "Best remedy on cross-validation, " in remedies
    assert rows[1].startswith("| highest test accuracy, chosen on the test set (optimistic) |")


def test_the_study_trains_every_configuration_on_every_draw(shrunk_pipeline, sweep) -> None:
    """Three draws at 20 and 30 training rows: each configuration's figures by draw, its
    effects against none, the selection on every draw; the first draw at the data's 30 rows is
    the article's own (its seed 1 model learns what the sweep's seed 1 model learned)."""
    from overfit.reports import read_study

    root = shrunk_pipeline.root
    study = read_study(root)
    assert (study.draws, study.seeds, study.random_states) == (3, [1, 2, 3], [1, 2, 3])
    assert [s.n_train for s in study.sizes] == [20, 30]
    for size in study.sizes:
        assert set(size.configs) == EXPECTED_RUNS
        assert size.configs["none"].fresh_effect is None
        for name in EXPECTED_RUNS - {"none"}:
            effect = size.configs[name].fresh_effect
            assert effect.low <= effect.mean <= effect.high
            assert effect.p <= effect.p_adjusted or effect.p_adjusted == 1.0
        assert size.configs["l2_1e-02"].cv_acc is not None
    article = study.size(30)
    # Early stopping's epochs come from its folds, which the sweep starts from seeds 1 and 2.
    for name in EXPECTED_RUNS - {"patience_5"}:
        seed_1 = json.loads((root / "models" / name / "result.json").read_text())["per_seed"]["1"]
        for measure in ("train_acc", "test_acc"):
            got = getattr(article.configs[name], measure)[0]
            assert got == pytest.approx(seed_1[measure], abs=1e-6), (name, measure)
    # Other draws differ from the article's.
    assert len(set(article.configs["none"].test_acc)) > 1
    summary = (root / "reports/summary.md").read_text()
    assert "## Across 3 draws of the data" in summary
    assert "On 3 draws of the data (30 training rows), " in summary
    assert "### More data as a remedy" in summary
    # The selection on every draw, by the evaluation's rule, from the study's folds.
    assert "The selection repeated on every draw (it picked " in summary
    for name in ("study_effects_20", "study_effects_30", "study_training_rows"):
        width, height = png_size(root / "reports/figures" / f"{name}.png")
        assert 400 <= width <= 3000 and 250 <= height <= 3000, name
    # In MLflow: each child run its effects, the parent the study and its figures.
    client = mlflow_client(root)
    child = client.get_run(sweep["runs"]["l2_1e-02"])
    effect = article.configs["l2_1e-02"].fresh_effect
    assert child.data.metrics["study_fresh_effect"] == effect.mean
    assert child.data.metrics["study_fresh_effect_low"] == effect.low
    assert "study_gap_effect_helped" in child.data.metrics
    assert "study_fresh_effect" not in client.get_run(sweep["runs"]["none"]).data.metrics
    parent = {a.path for a in client.list_artifacts(sweep["parent_run_id"], "reports")}
    assert {"reports/study.json", "reports/study_effects_30.png"} <= parent
    card = client.get_model_version_by_alias("overfit-moons", "candidate").description
    assert "| fresh accuracy against the unregularized, across 3 draws of the data |" in card
    chosen = client.get_run(sweep["parent_run_id"]).data.metrics
    assert chosen["study_pick_vs_baseline_low"] <= chosen["study_pick_vs_baseline"]
    assert chosen["study_pick_vs_hindsight"] <= 0 <= chosen["study_overstatement_high"] + 1


def test_every_file_the_pipeline_wrote_follows_the_umask(shrunk_pipeline) -> None:
    import os
    import stat

    root = shrunk_pipeline.root
    umask = os.umask(0)
    os.umask(umask)
    written = [p for d in ("data", "models", "reports") for p in (root / d).rglob("*")]
    files = [p for p in written if p.is_file() and ".partial" not in p.parts]
    assert len(files) > 30
    wrong = {
        str(p.relative_to(root)) for p in files if stat.S_IMODE(p.stat().st_mode) != 0o666 & ~umask
    }
    assert wrong == set()


def test_choosing_on_the_test_set_reruns_only_the_reports_and_says_it_is_optimistic(
    tmp_path, shrunk_pipeline
) -> None:
    """`dvc exp run -S select.metric=test_acc`, as the README shows it (with the shrunk
    settings, which the shared pipeline composed from conf/ the same way)."""
    from .conftest import SHRUNK

    root = tmp_path / "project"
    run = shrunk_pipeline.copy_with_store(root)
    before = json.loads((root / "reports/configs.json").read_text())
    overrides = [*SHRUNK, "select.metric=test_acc"]
    out = run("dvc", "exp", "run", *(a for o in overrides for a in ("-S", o))).stdout
    assert set(re.findall(r"Running stage '([^']+)'", out)) == {"evaluate", "plot", "register"}
    report = json.loads((root / "reports/configs.json").read_text())
    assert report["rule"] == "test_acc"
    assert report["selected"] == report["test_choice"] == before["test_choice"]
    assert report["cv_choice"] == before["selected"]  # still shown beside it
    assert "selected by highest test accuracy, chosen on the test set (optimistic)" in out
    summary = (root / "reports/summary.md").read_text()
    assert (
        f"Selected: **{report['selected']}**, by highest test accuracy, chosen on the test set "
        "(optimistic)." in summary
    )


def test_changing_the_study_reruns_only_the_study_and_what_reads_it(
    tmp_path, shrunk_pipeline
) -> None:
    from .conftest import SHRUNK

    root = tmp_path / "project"
    run = shrunk_pipeline.copy_with_store(root)
    overrides = [*SHRUNK, "study.draws=2", "study.n_train=[30]", "study.select=false"]
    out = run("dvc", "exp", "run", *(a for o in overrides for a in ("-S", o))).stdout
    assert set(re.findall(r"Running stage '([^']+)'", out)) == {"study", "plot", "register"}
    study = json.loads((root / "reports/study.json").read_text())
    assert (study["draws"], [s["n_train"] for s in study["sizes"]]) == (2, [30])
    summary = (root / "reports/summary.md").read_text()
    assert "## Across 2 draws of the data" in summary
    assert "The selection repeated on every draw" not in summary  # no folds on the draws
