"""Stage train: the sweep of params.yaml, every configuration one child MLflow run.

`python -m overfit.stages.train` (the DVC stage) sweeps what params.yaml's `sweep` says: one family
per remedy (penalties, dropout, early stopping, constraints) plus one unregularized run. With
arguments it is a Hydra multirun over params.yaml:

    python -m overfit.stages.train --multirun penalty.kind=l2 penalty.strength=1e-3,1e-2

The stage reads top to bottom as the sweep runs (sweep/): plan the sweep (every job composed
and checked before anything runs), train it stacked, then for each job save its files and
log its run, under one parent MLflow run. With a Hydra launcher plugin (joblib, submitit)
each job trains, saves and logs itself in its own process instead (sweep/launcher.py).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from overfit import layout, runtime
from overfit.artifacts import (
    JobResult,
    SweepRecord,
    clear_models,
    read_result,
    result_digest,
    write_sweep,
    write_text,
)
from overfit.config import (
    ConfigError,
    exit_on_config_error,
    params_changed,
    project_root,
    read_params,
)
from overfit.core.data import DataError, load_train_test
from overfit.core.remedies import run_name
from overfit.core.selection import check_folds
from overfit.core.summary import results_table
from overfit.sweep import launcher, processes, stacked
from overfit.sweep.files import publish, save_job, write_job_config
from overfit.sweep.job_run import log_job_run, training_data
from overfit.sweep.phases import Phases
from overfit.sweep.plan import Plan, plan_sweep, uses_hydra_launcher
from overfit.tracking.lineage import run_tags
from overfit.tracking.runs import (
    STAGE_TAG,
    SWEEP_TAG,
    fail_orphaned_runs,
    flatten,
    kill_own_runs,
    log_values,
    tracked_run,
)
from overfit.tracking.store import (
    Store,
    StoreError,
    check_reachable,
    ensure_store,
    open_store,
    store_failures,
    tracking_uri,
)

# The settings a sweep's families vary: the parent run logs only those every job shares.
PER_JOB = (
    "model.dropout",
    "model.constraint",
    "model.max_norm",
    "model.noise",
    "model.noise_at",
    "model.activity",
    "model.activity_strength",
    "model.activity_at",
    *(f"train.early_stopping.{k}" for k in ("watch", "patience")),
)

# Module import is the process's start, near enough: the stage's time is measured from here.
PROCESS_STARTED = time.perf_counter()


class ParamsChanged(RuntimeError):
    """params.yaml no longer says what the sweep read."""


def main(argv: Sequence[str] | None = None) -> None:
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--multirun", "-m")]
    try:
        root = project_root()
    except ConfigError as error:
        exit_on_config_error(error)
    try:
        # One pipeline per folder; Ctrl-C and SIGTERM stop the sweep at its next safe point.
        with (
            runtime.project_lock(root / layout.PIPELINE_LOCK),
            runtime.signals_recorded(),
            runtime.stage_process(),
        ):
            train(root, args)
    except runtime.FolderBusy as error:
        fail(error)
    except runtime.Interrupted as stop:
        if stop.after_the_work:
            print(
                f"error: {stop} after the sweep ended; its runs and files are complete",
                file=sys.stderr,
            )
        else:
            print(f"error: {stop}; the sweep's MLflow runs are marked KILLED", file=sys.stderr)
        raise SystemExit(stop.exit_status) from None


def fail(error: BaseException | str) -> NoReturn:
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(1) from None


def train(root: Path, args: Sequence[str]) -> None:
    """Plan and check the sweep, then run it; every refusal is one line."""
    try:
        # params.yaml is read once: every job is composed from this text, so a params.yaml
        # rewritten meanwhile (make params, dvc exp run) cannot mix two sweeps.
        params_text = read_params(root)
        plan = plan_sweep(root, params_text, args)
        uri = tracking_uri(root, plan.jobs[0].config.tracking)
    except ConfigError as error:
        exit_on_config_error(error)
    runtime.checkpoint()
    try:
        for data in {config.data for config in plan.configs}:  # bad data: no run starts
            load_train_test(root, data)
        check_reachable(uri)
    except (DataError, ConnectionError) as error:
        fail(error)
    try:  # folds that cannot hold out every class, too
        for data, select in {(config.data, config.select) for config in plan.configs}:
            check_folds(load_train_test(root, data)[0].y, select)
    except ConfigError as error:
        exit_on_config_error(error)
    try:
        ensure_store(uri)  # a SQLite store made, or checked writable, before XLA starts
    except StoreError as error:
        fail(error)
    runtime.checkpoint()
    phases = Phases()
    if not uses_hydra_launcher(plan.multiruns[0]):
        with phases.timed("import"):  # TensorFlow and Keras; XLA then compiles meanwhile
            stacked.compile_ahead(root, plan.configs)
    try:
        with store_failures(uri):
            run_sweep(root, plan, params_text, phases)
    except (StoreError, stacked.TrainingDiverged, processes.LaunchFailed, ParamsChanged) as error:
        fail(error)
    except OSError as error:  # a folder read-only, a full disk, a folder where a file goes
        fail(runtime.os_failure(error))
    finally:
        stacked.finish_compiling()


def run_sweep(root: Path, plan: Plan, params_text: str, phases: Phases) -> None:
    """One parent MLflow run around the jobs; the sweep's table and record at the end.
    `phases` collects where the stage's time goes."""
    store = open_store(root, plan.jobs[0].config.tracking)  # a store it cannot use: no change
    # A sweep that does not finish leaves no record: DVC then runs this stage again.
    (root / layout.SWEEP_RECORD).unlink(missing_ok=True)
    for orphan in fail_orphaned_runs(store.client, store.experiment_id):
        print(f"marked run {orphan} FAILED: the process that ran it is gone")
    clear_models(root)
    finished = False
    try:
        run_under_parent(root, plan, store, params_text, phases)
        finished = True
    except (runtime.Interrupted, KeyboardInterrupt):
        kill_own_runs(store.client, store.experiment_id)
        raise
    finally:
        if not finished:  # the record is written last thing before the parent run ends
            (root / layout.SWEEP_RECORD).unlink(missing_ok=True)
        (root / layout.PARAMS_SNAPSHOT).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty if a launched job was stopped
            (root / layout.PARTIAL_DIR).rmdir()


def run_under_parent(
    root: Path, plan: Plan, store: Store, params_text: str, phases: Phases
) -> None:
    configs, tags = plan.configs, run_tags(root)
    seeds = "/".join(map(str, sorted({len(c.train.seeds) for c in configs})))
    epochs = "/".join(map(str, sorted({c.train.epochs for c in configs})))
    started = time.perf_counter()
    parent_tags = {"overfit.sweep": plan.name, STAGE_TAG: "train", **tags}
    with tracked_run(
        store.client, store.experiment_id, f"sweep-{plan.name}", parent_tags
    ) as parent:
        log_values(store.client, parent, params=shared_params(plan))
        commit = tags.get("git.commit", "unknown")
        store.client.log_inputs(parent, datasets=training_data(root, configs[0], commit))
        print(
            f"sweep {plan.name}: {len(configs)} configurations x {seeds} seeds, {epochs} "
            f"epochs; MLflow parent run {parent}",
            flush=True,
        )
        runtime.checkpoint()
        if uses_hydra_launcher(plan.multiruns[0]):
            results = run_launched(root, plan, parent, params_text)
        else:
            results = run_stacked(root, plan, store, parent, tags, phases)
        table = results_table(results)
        store.client.log_text(parent, table, layout.SWEEP_TABLE_ARTIFACT)
        record = SweepRecord(name=plan.name, results={r.run: result_digest(r) for r in results})
        # Where the stage's time went (read by benchmarks/), and what the sweep trained: the
        # tag by which the later stages find this run from reports/sweep.json.
        timings = {f"seconds_{phase}": value for phase, value in phases.items()}
        timings["seconds_process"] = round(time.perf_counter() - PROCESS_STARTED, 3)
        log_values(store.client, parent, metrics=timings, tags={SWEEP_TAG: record.digest()})
        runtime.checkpoint()
        # DVC records params.yaml as it finds it when the stage ends: it must still say what
        # the sweep trained with. (A rewrite after this check and before DVC reads the file,
        # a second or so, still goes unseen.)
        if params_changed(root, params_text):
            raise ParamsChanged(
                f"{root / layout.PARAMS} changed while the sweep trained; its models follow "
                "the params read at the start, so DVC must not record the new ones: run "
                "`dvc repro` again"
            )
        write_sweep(root, record)
    print(f"\n{table}\n{len(results)} configurations in {time.perf_counter() - started:.1f} s")


def shared_params(plan: Plan) -> dict[str, object]:
    """The settings every job shares, so sweeps can be compared with each other."""
    later = ("penalty", "study", "gate", "registry")  # per job, or later stages' settings
    shared = {k: v for k, v in plan.configs[0].to_dict().items() if k not in later}
    params = flatten(shared)
    for key in ("tracking.parent_run_id", *PER_JOB):
        params.pop(key, None)
    # The evaluate stage's setting; the register stage tags the run with it.
    params.pop("select.metric", None)
    return params


def run_stacked(
    root: Path,
    plan: Plan,
    store: Store,
    parent: str,
    tags: dict[str, str],
    phases: Phases,
) -> list[JobResult]:
    """Every job's models trained together in this process; each job's files saved as soon
    as its models are trained (while the others train on); then each job's run logged and
    its folder published."""
    configs = plan.configs
    work_dirs = [layout.partial_run_dir(root, run_name(config)) for config in configs]
    train_rows = {c.data: load_train_test(root, c.data)[0] for c in configs}  # read once
    trained: dict[int, stacked.Trained] = {}
    results: dict[int, JobResult] = {}
    per_job = [Phases() for _ in configs]
    try:
        for i, job in stacked.train_together(root, configs, phases):
            trained[i] = job
            shutil.rmtree(work_dirs[i], ignore_errors=True)  # an interrupted run's leftovers
            write_job_config(work_dirs[i], plan.jobs[i].yaml, plan.jobs[i].overrides)
            if job.divergence(configs[i].train.seeds) is None:  # a diverged job saves nothing
                results[i] = save_job(
                    work_dirs[i], configs[i], job, train_rows[configs[i].data], per_job[i]
                )
        count = sum(len(t.models) for t in trained.values())
        print(f"trained {count} models stacked in {phases['train']:.1f} s", flush=True)
        # A job whose loss became NaN fails first, before any other job is logged.
        for i in sorted(range(len(configs)), key=lambda i: i in results):
            log_job_run(
                root, store, parent, tags, configs[i], trained[i], results.get(i),
                work_dirs[i], per_job[i],
            )  # fmt: skip
            publish(work_dirs[i], layout.run_dir(root, run_name(configs[i])))
            phases.add(per_job[i])
        return [results[i] for i in sorted(results)]
    finally:  # the folders of jobs not published (the sweep stopped or failed)
        for work_dir in work_dirs:
            shutil.rmtree(work_dir, ignore_errors=True)


def run_launched(root: Path, plan: Plan, parent: str, params_text: str) -> list[JobResult]:
    """Every job through the Hydra launcher, in other processes; their results."""
    names = [run_name(config) for config in plan.configs]
    for name in names:  # an interrupted run's leftovers
        shutil.rmtree(layout.partial_run_dir(root, name), ignore_errors=True)
    # The jobs' processes compose from the sweep's copy of params.yaml too.
    write_text(root / layout.PARAMS_SNAPSHOT, params_text)
    for overrides in plan.multiruns:
        launcher.launch_jobs(root, [*overrides, f"++tracking.parent_run_id={parent}"])
    return [read_result(layout.run_dir(root, name)) for name in names]


if __name__ == "__main__":
    main()
