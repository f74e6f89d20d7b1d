"""Prune the tracking store: delete old sweeps' runs, their logged models and their artifacts.

    python -m overfit.commands.prune --keep 5     # make prune KEEP=5

Keeps the `--keep` newest sweeps of the project's experiment, the sweep `reports/sweep.json`
records (the one the later stages read), every sweep that holds a registered model version's
run (a version's model and lineage stay whole), and any sweep still running. The others' runs
(parent and children) and logged models are deleted through MlflowClient, then removed for good
with their artifacts by `mlflow gc` (a SQLite store; on a tracking server they stay in
MLflow's `deleted` stage until `mlflow gc` runs on the server's database).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overfit.artifacts import ArtifactError, read_sweep
from overfit.config import ConfigError, exit_on_config_error, load_params, project_root
from overfit.tracking.runs import PARENT_TAG, STAGE_TAG, SWEEP_TAG
from overfit.tracking.store import (
    SQLITE,
    StoreError,
    existing_store,
    store_failures,
    tracking_uri,
)


def sweeps(mlflow: Any, experiment_id: str) -> tuple[list[Any], dict[str, list[Any]]]:
    """The experiment's sweeps (their parent runs), newest first, and each one's child runs
    by parent id, in one search; deleted runs too (a prune that stopped half-way, or the UI's
    delete), so that they are removed for good."""
    from mlflow.entities import ViewType

    runs = mlflow.search_runs(
        [experiment_id],
        run_view_type=ViewType.ALL,
        order_by=["attributes.start_time DESC"],
        max_results=50000,
    )
    parents = [run for run in runs if run.data.tags.get(STAGE_TAG) == "train"]
    children: dict[str, list[Any]] = {}
    for run in runs:
        if PARENT_TAG in run.data.tags:
            children.setdefault(run.data.tags[PARENT_TAG], []).append(run)
    return parents, children


def recorded_digest(root: Path) -> str | None:
    """The digest of the sweep reports/sweep.json records, if there is one."""
    try:
        return read_sweep(root).digest()
    except ArtifactError:
        return None


def keep_reasons(
    mlflow: Any,
    parents: list[Any],
    children: dict[str, list[Any]],
    keep: int,
    recorded: str | None,
) -> dict[str, str]:
    """The sweeps kept, by parent run id, each with why."""
    registered = {v.run_id for v in mlflow.search_model_versions(max_results=200000)}
    reasons = {}
    for i, parent in enumerate(parents):
        run_id = parent.info.run_id
        if i < keep:
            reasons[run_id] = f"one of the {keep} newest"
        elif recorded is not None and parent.data.tags.get(SWEEP_TAG) == recorded:
            reasons[run_id] = "recorded in reports/sweep.json"
        elif parent.info.status == "RUNNING":
            reasons[run_id] = "still running"
        elif registered & {c.info.run_id for c in children.get(run_id, [])}:
            reasons[run_id] = "holds a registered model version's run"
    return reasons


def prune(root: Path, keep: int) -> str:
    """Delete what the rules do not keep; what was done, in one line."""
    config = load_params(root)
    uri = tracking_uri(root, config.tracking)
    mlflow = existing_store(root, config.tracking)
    with store_failures(uri):
        experiment = mlflow.get_experiment_by_name(config.tracking.experiment)
        if experiment is None:
            return f"no experiment {config.tracking.experiment!r} in the store: nothing to prune"
        exp_id = experiment.experiment_id
        parents, children = sweeps(mlflow, exp_id)
        kept = keep_reasons(mlflow, parents, children, keep, recorded_digest(root))
        doomed = [p for p in parents if p.info.run_id not in kept]
        runs = [c for p in doomed for c in children.get(p.info.run_id, [])] + doomed
        run_ids = [run.info.run_id for run in runs]
        models = []
        for start in range(0, len(run_ids), 100):  # a filter of a bounded length
            listed = ", ".join(f"'{r}'" for r in run_ids[start : start + 100])
            found = mlflow.search_logged_models(
                [exp_id], filter_string=f"source_run_id IN ({listed})", max_results=50000
            )
            models += [m.model_id for m in found]
        for model_id in models:
            mlflow.delete_logged_model(model_id)
        for run in runs:
            if run.info.lifecycle_stage != "deleted":
                mlflow.delete_run(run.info.run_id)
    done = (
        f"kept {len(kept)} of {len(parents)} sweeps; deleted {len(doomed)} sweeps "
        f"({len(run_ids)} runs, {len(models)} logged models)"
    )
    if not run_ids:
        return done
    if not uri.startswith(SQLITE):
        return f"{done}; run `mlflow gc` on the server's database to remove them for good"
    collect(uri, run_ids, root)
    return f"{done}, removed for good with their artifacts by mlflow gc"


def collect(uri: str, run_ids: list[str], root: Path) -> None:
    """`mlflow gc` of these deleted runs, and of every logged model in MLflow's deleted stage
    (those deleted here, and any deleted before): rows and artifacts."""
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        *("gc", "--backend-store-uri", uri, "--tracking-uri", uri),
        *("--run-ids", ",".join(run_ids)),
    ]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise StoreError(f"mlflow gc failed (exit {done.returncode}): {last}")


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of sweeps, at least 1, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m overfit.commands.prune", description=__doc__)
    parser.add_argument("--keep", type=positive, required=True, help="newest sweeps to keep")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        print(prune(project_root(), args.keep))
    except ConfigError as error:
        exit_on_config_error(error)
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
