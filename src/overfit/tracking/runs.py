"""MLflow runs: a sweep's parent run and each configuration's child run, their final status
(KILLED after Ctrl-C or SIGTERM, FAILED on an error or when their process died), their params,
metrics and sampled metric histories, and a sweep's runs found again from reports/sweep.json."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from overfit import runtime
from overfit.artifacts import SweepRecord
from overfit.tracking import lineage
from overfit.tracking.store import StoreError

# How later stages find a sweep's runs from reports/sweep.json, which holds no run id: the
# parent run's tag is the record's digest, each child run's the SHA-256 of its result.json.
SWEEP_TAG = "overfit.sweep_sha256"
# The stage that made a run: a sweep's parent run says "train".
STAGE_TAG = "overfit.stage"
RESULT_TAG = "overfit.result_sha256"
RUN_TAG = "overfit.run"
PARENT_TAG = "mlflow.parentRunId"
FINISHED = "attributes.status = 'FINISHED'"


# --- a sweep's runs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepRuns:
    """A sweep's runs in the store: the experiment's id, the parent's, and each configuration's
    child run."""

    experiment: str
    parent: str
    children: dict[str, Any]


def find_sweep(mlflow_client: Any, experiment: str, record: SweepRecord) -> SweepRuns:
    """The latest finished sweep whose parent run is tagged with the digest of `record`
    (reports/sweep.json), and its child runs, each checked against its result's digest;
    StoreError when the store holds no such sweep."""
    found = mlflow_client.get_experiment_by_name(experiment)
    parents = []
    if found is not None:
        parents = mlflow_client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{SWEEP_TAG}` = '{record.digest()}' and {FINISHED}",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not parents:
        raise StoreError(
            f"no finished sweep in experiment {experiment!r} of the MLflow store trained these "
            "models (reports/sweep.json); train them again: dvc repro -f train"
        )
    parent = parents[0].info.run_id
    children = _children(mlflow_client, found.experiment_id, parent, record.results)
    missing = sorted(set(record.results) - set(children))
    if missing:
        raise StoreError(f"the sweep's MLflow run {parent} has no finished run for {missing[0]}")
    return SweepRuns(found.experiment_id, parent, {n: children[n] for n in record.results})


def _children(
    mlflow_client: Any, experiment_id: str, parent: str, results: Mapping[str, str]
) -> dict[str, Any]:
    """The parent's finished child runs, by configuration, whose result is the recorded one."""
    runs = mlflow_client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent}' and {FINISHED}",
        max_results=len(results) + 100,
    )
    return {
        run.data.tags.get(RUN_TAG): run
        for run in runs
        if run.data.tags.get(RESULT_TAG) == results.get(run.data.tags.get(RUN_TAG))
    }


# --- what a run logs ---------------------------------------------------------------------------


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the resolved config as MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def sampled_epochs(epochs: int, every: int) -> list[int]:
    """Epochs 1, every, 2*every, ... and the last: the points of a curve MLflow gets.

    MLflow's UI fetches at most 320 points of a curve for its charts; thousands more cost
    logging time and store size and show nothing more (history.csv keeps every epoch).
    """
    return sorted({1, epochs, *range(every, epochs + 1, every)})


# MlflowClient.log_batch splits what it is given into batches the store accepts (at most 1000
# metrics, 100 params and 100 tags each), so one call logs any number of values.


def log_metric_histories(
    mlflow_client: Any,
    run_id: str,
    curves: Mapping[str, Any],
    every: int,
    start_ms: int | None = None,
) -> None:
    """Per-epoch curves {name: values}, one point every `every` epochs, step = epoch (from 1)."""
    from mlflow.entities import Metric

    stamp = start_ms if start_ms is not None else int(time.time() * 1000)
    points = [
        Metric(name, float(values[epoch - 1]), stamp, epoch)
        for name, values in curves.items()
        for epoch in sampled_epochs(len(values), every)
    ]
    mlflow_client.log_batch(run_id, metrics=points)


def log_values(
    mlflow_client: Any,
    run_id: str,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    model_id: str | None = None,
) -> None:
    """Params, metrics (at step 0; of the logged model `model_id`, if given) and tags of a
    run."""
    from mlflow.entities import Metric, Param, RunTag

    stamp = int(time.time() * 1000)
    mlflow_client.log_batch(
        run_id,
        metrics=[
            Metric(k, float(v), stamp, 0, model_id=model_id) for k, v in (metrics or {}).items()
        ],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )


# --- how a run ends ----------------------------------------------------------------------------


@contextlib.contextmanager
def tracked_run(
    mlflow_client: Any, exp_id: str, name: str, tags: Mapping[str, str]
) -> Iterator[str]:
    """A new run that ends FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM.

    Creating the run and guarding it happen together, so no interruption can leave it RUNNING
    (except kill -9: `fail_orphaned_runs` covers that on the next start).
    """
    run_id = None
    try:
        run_id = mlflow_client.create_run(exp_id, run_name=name, tags=dict(tags)).info.run_id
        yield run_id
    except (runtime.Interrupted, KeyboardInterrupt):
        if run_id is not None:
            end_run(mlflow_client, run_id, "KILLED")
        raise
    except SystemExit as stop:
        if run_id is not None:
            end_run(mlflow_client, run_id, "FAILED" if stop.code not in (0, None) else "KILLED")
        raise
    except BaseException:
        if run_id is not None:
            end_run(mlflow_client, run_id, "FAILED")
        raise
    if end_run(mlflow_client, run_id, "FINISHED") == "KILLED":
        runtime.checkpoint()  # Ctrl-C or SIGTERM came as the run ended: stop here


def end_run(mlflow_client: Any, run_id: str, status: str, attempts: int = 3) -> str:
    """Set a run's final status; the status written.

    A run never ends FINISHED after Ctrl-C or SIGTERM has arrived: it ends KILLED. Signals are
    held while the status is decided and written, and the end time is taken at the decision.
    A retry covers a pooled database connection that an earlier interruption left broken.
    """
    with signals_held():
        if status == "FINISHED" and runtime.received() is not None:
            status = "KILLED"
        end_time = int(time.time() * 1000)
        for attempt in range(attempts):
            try:
                mlflow_client.set_terminated(run_id, status, end_time=end_time)
                return status
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2)
    return status


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Delay SIGINT and SIGTERM (they are delivered when the block ends)."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def kill_own_runs(mlflow_client: Any, exp_id: str) -> None:
    """After an interruption: any run this process started and left RUNNING ends KILLED.

    Covers a run whose creation was interrupted after the database had it, before its id came
    back, so that no guard knew it.
    """
    with signals_held():
        own = " and ".join(f"tags.`{k}` = '{v}'" for k, v in lineage.process_tags().items())
        for run in mlflow_client.search_runs(
            [exp_id], filter_string=f"attributes.status = 'RUNNING' and {own}"
        ):
            end_run(mlflow_client, run.info.run_id, "KILLED")


def fail_orphaned_runs(mlflow_client: Any, exp_id: str) -> list[str]:
    """Runs left RUNNING by a process that died (kill -9) and is gone: mark them FAILED."""
    orphans = []
    runs = mlflow_client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'")
    for run in runs:
        pid = run.data.tags.get(lineage.PID_TAG)
        host = run.data.tags.get(lineage.HOST_TAG)
        if pid and host == os.uname().nodename and not _alive(int(pid)):
            end_run(mlflow_client, run.info.run_id, "FAILED")
            orphans.append(run.info.run_id)
    return orphans


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
