"""Stage register: the sweep's evaluation onto its MLflow runs, and the selected
configuration's model as a version of `registry.name` in the MLflow Model Registry, alias
`candidate`; reports/model.json says which model (its content digest: the store knows its
version number).

Each child run gets what evaluate measured of its configuration (fresh accuracy, losses,
weight statistics, cross-validation: means and spreads); the parent run gets the figures, the
summary and the selection as tags. One stage writes everything MLflow holds after training, so
the stages before it need no MLflow (nor its ~2 s import and store opening).

The model is the selected configuration's first seed's (a seed is never chosen by a score), in
MLflow's python-function flavor (classifier.py), logged as a model of that configuration's child
run; the version is registered from that logged model, linked to the run, described by its
model card (card.py), and tagged with the
configuration, the selection rule, its cross-validation, test and fresh accuracy, the git
commit, the data's md5 and the SHA-256 of what the model is made of (the .keras file and the
model code). That is registered once: rerunning the stage with nothing changed finds its
version and points `candidate` at it once more.
`make promote` (promote.py) decides whether the candidate becomes the champion.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from overfit import layout
from overfit.artifacts import ArtifactError, file_digest, read_result, read_sweep
from overfit.config import Config, load_params, project_root
from overfit.core.card import model_card
from overfit.core.data import FEATURES, load_train_test
from overfit.core.metrics import LOGGED_BY_TRAINING
from overfit.core.rules import FIGURE_TAGS
from overfit.core.selection import describe
from overfit.core.study import selection_on_draws
from overfit.reports import (
    Comparison,
    ConfigSummary,
    Evaluation,
    ModelRecord,
    Study,
    read_evaluation,
    read_study,
    write_model_record,
)
from overfit.runtime import run_stage
from overfit.tracking import lineage
from overfit.tracking.model_format import log_model_folder, pins, tensorflow_distribution
from overfit.tracking.registry import describe_version, new_version, registered_version
from overfit.tracking.runs import RUN_TAG, SweepRuns, find_sweep, log_values
from overfit.tracking.store import (
    StoreError,
    existing_store,
    quiet,
    store_failures,
    tracking_uri,
)

CANDIDATE = "candidate"
CONTENT_TAG = "overfit.model_sha256"
# The registered model's name among the selected child run's logged models.
CLASSIFIER_MODEL = "classifier"


def figures_of(
    root: Path, config: Config, report: Evaluation
) -> tuple[dict[str, Any], dict[str, str]]:
    """The selected model's record fields (all but name and digest) and its version tags."""
    chosen = report.configs[report.selected]
    result = read_result(layout.run_dir(root, report.selected))
    seed = result.seeds[0]
    fields = {
        "run": report.selected,
        "seed": seed,
        "rule": report.rule,
        "cv": chosen.mean("cv_acc") if "cv_acc" in chosen.measures else None,
        "test": chosen.mean("test_acc"),
        "fresh": chosen.mean("fresh_acc"),
        "seed_test": round(result.per_seed[str(seed)]["test_acc"], 6),
    }
    penalty = result.penalty
    tags = {
        RUN_TAG: report.selected,
        "overfit.seed": str(seed),
        "penalty.kind": str(penalty["kind"]),
        "penalty.strength": str(penalty["strength"]),
        "remedy.kind": str(result.remedy["kind"]),
        "remedy.setting": str(result.remedy["setting"]),
        "overfit.selection_rule": (
            f"{report.rule}: {describe(report.rule, config.select.folds, report.one_se)}"
        ),
        "cv_acc": "" if fields["cv"] is None else f"{fields['cv']:.6f}",
        "test_acc": f"{fields['test']:.6f}",
        "fresh_acc": f"{fields['fresh']:.6f}",
        "seed_test_acc": f"{fields['seed_test']:.6f}",
        # Each figure's 95% interval: promotion tells a drop from noise with them.
        **{
            f"{measure}_{end}": f"{getattr(spread, end):.6f}"
            for measure, spread in chosen.measures.items()
            if measure in FIGURE_TAGS.values() and spread.low is not None
            for end in ("low", "high")
        },
        "baseline_test_acc": (
            f"{report.configs[report.baseline_run].mean('test_acc'):.6f}"
            if report.baseline_run
            else ""
        ),
    }
    return fields, tags


def save_classifier(root: Path, keras_file: Path, input_example: Any, folder: Path) -> None:
    """The model to register, in `folder`: MLflow's python-function flavor around the Keras
    file, taking a table with columns x1, x2 and giving the class-1 probability per row."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in FEATURES]),
        outputs=Schema([ColSpec("float", "probability")]),
    )
    with quiet("mlflow"):  # its INFO line on checking the input example
        mlflow.pyfunc.save_model(
            str(folder),
            python_model=str(root / layout.CLASSIFIER_CODE),
            artifacts={"keras_model": str(keras_file)},
            signature=signature,
            input_example=pd.DataFrame(input_example, columns=list(FEATURES)),
            pip_requirements=pins("mlflow", "keras", tensorflow_distribution()),
        )


def configuration_models(mlflow: Any, runs: SweepRuns) -> dict[str, str]:
    """Each configuration's logged model id (its Keras flavor, named after the configuration,
    logged by its child run), from one search rather than a call per run."""
    by_run = {run.info.run_id: name for name, run in runs.children.items()}
    sources = ", ".join(f"'{run_id}'" for run_id in by_run)
    models, token = {}, None
    while True:
        page = mlflow.search_logged_models(
            [runs.experiment], filter_string=f"source_run_id IN ({sources})", page_token=token
        )
        for model in page:
            if by_run.get(model.source_run_id) == model.name:
                models[model.name] = model.model_id
        token = page.token
        if not token:
            return models


def publish_evaluation(
    root: Path,
    mlflow: Any,
    report: Evaluation,
    runs: SweepRuns,
    config: Config,
    commit: str,
) -> None:
    """Give each child run (and its logged model) what evaluate measured, and the fresh points
    as a dataset; attach the figures and the summary to the sweep's parent run and tag it with
    the selection."""
    fresh = lineage.datasets(root, {lineage.FRESH: "fresh"}, config.data.name, commit)
    models = configuration_models(mlflow, runs)
    study = read_study(root)
    for name, run in runs.children.items():
        run_id = run.info.run_id
        metrics = evaluation_metrics(report.configs[name], report.versus_baseline.get(name))
        metrics |= study_metrics(study, name, config.data.n_train)
        log_values(mlflow, run_id, metrics=metrics, model_id=models.get(name))
        mlflow.log_inputs(run_id, datasets=fresh)
    mlflow.log_inputs(runs.parent, datasets=fresh)
    tags = selection_tags(report, runs, config.select.folds)
    log_values(mlflow, runs.parent, tags=tags, metrics=selection_metrics(study, report, config))
    reports = [*sorted((root / layout.FIGURES_DIR).glob("*.png")), root / layout.SUMMARY]
    for path in [*reports, root / layout.STUDY]:
        mlflow.log_artifact(runs.parent, str(path), "reports")


def selection_metrics(study: Study, report: Evaluation, config: Config) -> dict[str, float]:
    """The selection repeated on every draw of the study (where it can be), as the parent
    run's metrics: its pick against the unregularized run (`study_pick_vs_baseline`) and
    against the best in hindsight, and its score's overstatement, each with `_low`, `_high`."""
    selection = selection_on_draws(study, config.data.n_train, report.rule, report.one_se)
    if selection is None:
        return {}
    metrics = {}
    for key in ("versus_baseline", "versus_hindsight", "overstatement"):
        effect = getattr(selection, key)
        name = "study_" + key.replace("versus_", "pick_vs_")
        metrics |= {name: effect.mean, f"{name}_low": effect.low, f"{name}_high": effect.high}
    return metrics


def study_metrics(study: Study, name: str, n_train: int) -> dict[str, float]:
    """A configuration's effects across the study's draws (at the data's training rows), as
    its child run's metrics: `study_fresh_effect` with `_low`, `_high`, `_p_adjusted` and
    `_helped` (the share of draws it helped), likewise `study_gap_effect_*`; none without a
    study, or for the unregularized run itself."""
    size = study.size(n_train)
    config = size.configs.get(name) if size else None
    metrics = {}
    for measure in ("fresh_effect", "gap_effect"):
        effect = getattr(config, measure) if config else None
        if effect is None:
            continue
        metrics[f"study_{measure}"] = effect.mean
        for key in ("low", "high", "p_adjusted", "helped"):
            metrics[f"study_{measure}_{key}"] = getattr(effect, key)
    return metrics


def evaluation_metrics(
    summary: ConfigSummary, versus_baseline: Comparison | None = None
) -> dict[str, float]:
    """What evaluate measured of a configuration and training did not log, as its child run's
    metrics: each measure's mean and spread (fresh points, weight statistics), every
    accuracy's 95% interval (`test_acc_low`, `test_acc_high`, ...), and its paired comparison
    with the unregularized configuration (`test_vs_baseline_gained`, `_lost`, `_p`,
    `_p_adjusted`; likewise `fresh_vs_baseline_*`)."""
    metrics = {
        f"{name}_{stat}": round(getattr(spread, stat), 6)
        for name, spread in summary.measures.items()
        if name not in LOGGED_BY_TRAINING
        for stat in ("mean", "std")
    }
    for name, spread in summary.measures.items():
        if spread.low is not None and spread.high is not None:
            metrics |= {f"{name}_low": spread.low, f"{name}_high": spread.high}
    for split in ("test", "fresh") if versus_baseline else ():
        paired = getattr(versus_baseline, split)
        metrics |= {f"{split}_vs_baseline_{k}": float(v) for k, v in paired.to_json().items()}
    return metrics


def selection_tags(report: Evaluation, runs: SweepRuns, folds: int) -> dict[str, str]:
    """The parent run's record of the choice: which run, by which rule."""
    return {
        "overfit.selected_run": report.selected,
        "overfit.selected_run_id": runs.children[report.selected].info.run_id,
        "overfit.selection_rule": f"{report.rule}: {describe(report.rule, folds, report.one_se)}",
        "overfit.test_choice": report.test_choice,
    }


def register(root: Path) -> tuple[ModelRecord, Any, bool]:
    """Publish the evaluation to the sweep's runs; register (or find) the selected model's
    version, point `candidate` at it, describe it with its card, record it. The record, the
    version, and whether it is new."""
    config = load_params(root)
    report, sweep = read_evaluation(root), read_sweep(root)
    fields, tags = figures_of(root, config, report)
    with store_failures(tracking_uri(root, config.tracking)):
        mlflow = existing_store(root, config.tracking)
        runs = find_sweep(mlflow, config.tracking.experiment, sweep)
        origin = lineage.git_tags(root) | lineage.data_tags(root)
        publish_evaluation(root, mlflow, report, runs, config, origin["git.commit"])
        name = config.registry.name
        keras_file = layout.model_file(layout.run_dir(root, fields["run"]), fields["seed"])
        # What the registered model is made of: a new model file or new model code is a new version.
        digest = file_digest(keras_file, root / layout.CLASSIFIER_CODE)
        record = ModelRecord(name=name, **fields, model_sha256=digest)
        card = model_card(config, report, record, origin, read_study(root))
        tags |= origin | {CONTENT_TAG: digest}
        version = registered_version(mlflow, name, (CONTENT_TAG, digest))
        new = version is None
        if version is None:
            child = runs.children[fields["run"]].info.run_id
            train = load_train_test(root, config.data)[0]
            with tempfile.TemporaryDirectory() as scratch:
                folder = Path(scratch) / "classifier"
                save_classifier(root, keras_file, train.x[:3], folder)
                model_id = log_model_folder(
                    mlflow, runs.experiment, child, CLASSIFIER_MODEL, folder, {CONTENT_TAG: digest}
                )
            version = new_version(mlflow, name, model_id, child, tags)
        describe_version(mlflow, name, version.version, card)
        mlflow.set_registered_model_alias(name, CANDIDATE, version.version)
        write_model_record(root, record)
        return record, version, new


def main(argv: list[str] | None = None) -> None:
    if sys.argv[1:] if argv is None else argv:
        print(
            "usage: python -m overfit.stages.register (no arguments: it reads params.yaml)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    record, version, new = run_stage(
        lambda: register(project_root()), (ArtifactError, StoreError, KeyError)
    )
    print("logged the evaluation to the sweep's MLflow runs, the figures and summary to its parent")
    made = "registered" if new else "already registered:"
    print(
        f"{made} models:/{record.name}/{version.version} ({record.run}, seed {record.seed}; "
        f"test {record.test:.3f}, fresh {record.fresh:.3f}), alias {CANDIDATE}"
    )
    print("promote it with `make promote` (python -m overfit.commands.promote)")


if __name__ == "__main__":
    main()
