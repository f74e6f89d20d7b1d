"""MLflow's Model Registry, in the tracking store: a registered model's versions found by tag,
a new version from a logged model, its description, and the version an alias points at."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def registered_version(mlflow_client: Any, name: str, tag: tuple[str, str]) -> Any | None:
    """The first version of registered model `name` tagged `tag` (key, value), if there is
    one."""
    key, value = tag
    found = mlflow_client.search_model_versions(f"name = '{name}' and tags.`{key}` = '{value}'")
    # Read each version whole: a search result's tags may be left empty.
    versions = [mlflow_client.get_model_version(name, v.version) for v in found]
    same = [v for v in versions if v.tags.get(key) == value]
    return min(same, key=lambda v: int(v.version)) if same else None


def new_version(
    mlflow_client: Any, name: str, model_id: str, run_id: str, tags: Mapping[str, str]
) -> Any:
    """A new version of registered model `name` (created if needed) from the logged model
    `model_id` of run `run_id`, with these tags."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # MLflow resolves a models:/ source through the process's tracking URI, not the client's.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_client.tracking_uri)
    try:
        return mlflow_client.create_model_version(
            name, f"models:/{model_id}", run_id=run_id, tags=dict(tags), model_id=model_id
        )
    finally:
        mlflow.set_tracking_uri(previous)


def describe_version(mlflow_client: Any, name: str, version: str, card: str) -> None:
    """The card as the description of the version and of the registered model (the latest
    registered version's card), as MLflow's UI shows them."""
    mlflow_client.update_model_version(name, version, description=card)
    mlflow_client.update_registered_model(name, description=card)


def version_by_alias(mlflow_client: Any, name: str, alias: str) -> Any | None:
    """The version `alias` points at; None if the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
