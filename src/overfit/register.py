"""Stage register: the sweep's evaluation onto its MLflow runs, and the selected
configuration's model as a version of `registry.name` in the MLflow Model Registry, alias
`candidate`; reports/model.json says which version.

Each child run gets what evaluate measured of its configuration (fresh accuracy, losses,
weight statistics, cross-validation: means and spreads); the parent run gets the figures, the
summary and the selection as tags. One stage writes everything MLflow holds after training, so
the stages before it need no MLflow (nor its ~2 s import and store opening).

The model is the one the selected configuration's child run logged: its first seed's (a seed
is never chosen by a score). The version is linked to that run and tagged with the
configuration, the selection rule, its cross-validation, test and fresh accuracy, the git
commit, the data's md5 and the SHA-256 of what the model is made of (the .keras file and the
model code). That is registered once: rerunning the stage with nothing changed finds its
version and points `candidate` at it once more.
`make promote` (promote.py) decides whether the candidate becomes the champion.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any

from overfit import layout, tracking
from overfit.artifacts import (
    ArtifactError,
    ConfigSummary,
    Evaluation,
    ModelRecord,
    SweepRecord,
    read_evaluation,
    read_result,
    read_sweep,
    write_model_record,
)
from overfit.config import Config, load_params, project_root
from overfit.data import FEATURES, load_train_test
from overfit.runtime import run_stage
from overfit.selection import describe

CANDIDATE = "candidate"
CONTENT_TAG = "overfit.model_sha256"


def figures_of(
    root: Path, config: Config, report: Evaluation, sweep: SweepRecord
) -> tuple[dict[str, Any], dict[str, str]]:
    """The selected model's record fields (all but name and version) and its version tags."""
    chosen = report.configs[report.selected]
    result = read_result(layout.run_dir(root, report.selected))
    seed = result.seeds[0]
    fields = {
        "run": report.selected,
        "mlflow_run_id": sweep.runs[report.selected],
        "seed": seed,
        "rule": report.rule,
        "cv": chosen.mean("cv_acc") if "cv_acc" in chosen.measures else None,
        "test": chosen.mean("test_acc"),
        "fresh": chosen.mean("fresh_acc"),
        "seed_test": round(result.per_seed[str(seed)]["test_acc"], 6),
    }
    penalty = result.penalty
    tags = {
        "overfit.run": report.selected,
        "overfit.seed": str(seed),
        "penalty.kind": str(penalty["kind"]),
        "penalty.strength": str(penalty["strength"]),
        "remedy.kind": str(result.remedy["kind"]),
        "remedy.setting": str(result.remedy["setting"]),
        "overfit.selection_rule": f"{report.rule}: {describe(report.rule, config.select.folds)}",
        "cv_acc": "" if fields["cv"] is None else f"{fields['cv']:.6f}",
        "test_acc": f"{fields['test']:.6f}",
        "fresh_acc": f"{fields['fresh']:.6f}",
        "seed_test_acc": f"{fields['seed_test']:.6f}",
        "baseline_test_acc": (
            f"{report.configs[report.baseline_run].mean('test_acc'):.6f}"
            if report.baseline_run
            else ""
        ),
    }
    return fields, tags | tracking.git_tags(root) | tracking.data_tags(root)


def save_classifier(root: Path, config: Config, keras_file: Path, folder: Path) -> None:
    """The model to register, in `folder`: MLflow's python-function flavor around the Keras
    file, taking a table with columns x1, x2 and giving the class-1 probability per row."""
    import importlib.metadata

    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    test = load_train_test(root, config.data)[1]
    signature = ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in FEATURES]),
        outputs=Schema([ColSpec("float", "probability")]),
    )
    pins = [f"{n}=={importlib.metadata.version(n)}" for n in ("mlflow", "keras", "tensorflow-cpu")]
    mlflow.pyfunc.save_model(
        str(folder),
        python_model=str(root / layout.CLASSIFIER_CODE),
        artifacts={"keras_model": str(keras_file)},
        signature=signature,
        input_example=pd.DataFrame(test.x[:3], columns=list(FEATURES)),
        pip_requirements=pins,
    )


def publish_evaluation(
    root: Path, mlflow: Any, report: Evaluation, sweep: SweepRecord, folds: int
) -> None:
    """Give each child run what evaluate measured; attach the figures and the summary to the
    sweep's parent run and tag it with the selection."""
    for name, run_id in sweep.runs.items():
        tracking.log_values(mlflow, run_id, metrics=evaluation_metrics(report.configs[name]))
    tracking.log_values(mlflow, sweep.parent_run_id, tags=selection_tags(report, sweep, folds))
    for path in [*sorted((root / layout.FIGURES_DIR).glob("*.png")), root / layout.SUMMARY]:
        mlflow.log_artifact(sweep.parent_run_id, str(path), "reports")


def evaluation_metrics(summary: ConfigSummary) -> dict[str, float]:
    """What evaluate measured of a configuration, as its child run's metrics: every measure's
    mean and spread (fresh accuracy, losses, weight statistics, cross-validation)."""
    return {
        f"{name}_{stat}": round(getattr(spread, stat), 6)
        for name, spread in summary.measures.items()
        for stat in ("mean", "std")
    }


def selection_tags(report: Evaluation, sweep: SweepRecord, folds: int) -> dict[str, str]:
    """The parent run's record of the choice: which run, by which rule."""
    return {
        "overfit.selected_run": report.selected,
        "overfit.selected_run_id": sweep.runs[report.selected],
        "overfit.selection_rule": f"{report.rule}: {describe(report.rule, folds)}",
        "overfit.test_choice": report.test_choice,
    }


def register(root: Path) -> tuple[ModelRecord, bool]:
    """Publish the evaluation to the sweep's runs; register (or find) the selected model's
    version, point `candidate` at it, record it."""
    config = load_params(root)
    report, sweep = read_evaluation(root), read_sweep(root)
    fields, tags = figures_of(root, config, report, sweep)
    run_id = fields["mlflow_run_id"]
    mlflow = tracking.sweep_store(root, config.tracking, run_id)
    publish_evaluation(root, mlflow, report, sweep, config.select.folds)
    name = config.registry.name
    keras_file = layout.model_file(layout.run_dir(root, fields["run"]), fields["seed"])
    # What the registered model is made of: a new model file or new model code is a new version.
    digest = hashlib.sha256(
        keras_file.read_bytes() + (root / layout.CLASSIFIER_CODE).read_bytes()
    ).hexdigest()
    tags[CONTENT_TAG] = digest
    version = tracking.registered_version(mlflow, name, run_id, (CONTENT_TAG, digest))
    new = version is None
    if version is None:
        artifact = layout.classifier_artifact(digest)
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "model"
            save_classifier(root, config, keras_file, folder)
            mlflow.log_artifacts(run_id, str(folder), artifact)
        version = tracking.new_version(mlflow, name, run_id, artifact, tags)
    mlflow.set_registered_model_alias(name, CANDIDATE, version.version)
    record = ModelRecord(
        name=name, version=str(version.version), uri=f"models:/{name}/{version.version}", **fields
    )
    write_model_record(root, record)
    return record, new


def main(argv: list[str] | None = None) -> None:
    if sys.argv[1:] if argv is None else argv:
        print(
            "usage: python -m overfit.register (no arguments: it reads params.yaml)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    record, new = run_stage(
        lambda: register(project_root()), (ArtifactError, tracking.StoreError, KeyError)
    )
    print("logged the evaluation to the sweep's MLflow runs, the figures and summary to its parent")
    made = "registered" if new else "already registered:"
    print(
        f"{made} {record.uri} ({record.run}, seed {record.seed}; test {record.test:.3f}, "
        f"fresh {record.fresh:.3f}), alias {CANDIDATE}"
    )
    print("promote it with `make promote` (python -m overfit.promote)")


if __name__ == "__main__":
    main()
