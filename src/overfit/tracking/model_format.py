"""How a model reaches MLflow: saved in MLflow's Keras flavor (signature, input example, pinned
requirements), and a saved model folder logged as a logged model of a run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def save_keras_flavor(model: Any, input_example: Any, folder: Path) -> None:
    """The model in MLflow's Keras flavor, with a signature and an input example, in `folder`
    (which `log_model_folder` then logs as a logged model of the run).

    `mlflow.keras.log_model(..., input_example=...)` fails (mlflow/mlflow#16183), and the
    fluent `log_model` needs an active fluent run, which this client-driven code does not
    have: the flavor is saved into a folder, and the client's logged-model calls log it.
    Requirements are given, not inferred: inference re-imports the model in a subprocess and
    costs seconds.
    """
    import mlflow.keras
    import numpy as np
    from mlflow.models import infer_signature

    example = np.asarray(input_example, dtype=np.float32)
    signature = infer_signature(example, np.asarray(model(example)))
    folder.mkdir(parents=True, exist_ok=True)  # the example is written before the folder is made
    mlflow.keras.save_model(
        model,
        str(folder),
        signature=signature,
        input_example=example,
        pip_requirements=pins("keras", tensorflow_distribution()),
    )


def log_model_folder(
    mlflow_client: Any,
    experiment_id: str,
    run_id: str,
    name: str,
    folder: Path,
    tags: Mapping[str, str],
) -> str:
    """An MLflow model saved in `folder`, as a logged model (MLflow 3) named `name`, output of
    run `run_id`: the run's Models tab and the experiment's Logged models page list it. Its id
    (`models:/<id>` loads it)."""
    from mlflow.entities import LoggedModelOutput

    model = mlflow_client.create_logged_model(
        experiment_id, name=name, source_run_id=run_id, tags=dict(tags)
    )
    try:
        mlflow_client.log_model_artifacts(model.model_id, str(folder))
    except BaseException:
        mlflow_client.finalize_logged_model(model.model_id, "FAILED")
        raise
    mlflow_client.finalize_logged_model(model.model_id, "READY")
    mlflow_client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return model.model_id


def pins(*distributions: str) -> list[str]:
    """`name==version` of each installed distribution: a model's pip requirements."""
    import importlib.metadata

    return [f"{name}=={importlib.metadata.version(name)}" for name in distributions]


def tensorflow_distribution() -> str:
    """The TensorFlow distribution installed here (tensorflow-cpu or tensorflow)."""
    import importlib.metadata

    for name in ("tensorflow-cpu", "tensorflow"):
        try:
            importlib.metadata.version(name)
            return name
        except importlib.metadata.PackageNotFoundError:
            continue
    return "tensorflow"
