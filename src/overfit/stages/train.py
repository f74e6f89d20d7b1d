"""Stage train: the sweep of params.yaml, every configuration one child MLflow run.

`python -m overfit.stages.train` (the DVC stage) sweeps what params.yaml's `sweep` says: one family
per remedy (penalties, dropout, early stopping, constraints) plus one unregularized run. With
arguments it is a Hydra multirun over params.yaml:

    python -m overfit.stages.train --multirun penalty.kind=l2 penalty.strength=1e-3,1e-2

Every job's configuration is composed and checked before anything runs. With the default
launcher (`basic`) every job's models then train together, stacked in one compiled call, and
each job is saved and logged in this process; with a Hydra launcher plugin (joblib, submitit)
each job trains its own seeds in its own process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from overfit import layout, runtime, tracking
from overfit.artifacts import (
    JobResult,
    SweepRecord,
    read_result,
    result_digest,
    write_sweep,
    write_text,
)
from overfit.config import (
    ComposedJob,
    ConfigError,
    compose_jobs,
    exit_on_config_error,
    expand_presets,
    parse_params,
    project_root,
    read_params,
)
from overfit.core.data import DataError, load_train_test
from overfit.core.remedies import run_name
from overfit.core.selection import check_folds
from overfit.core.summary import results_table
from overfit.sweep.job import (
    Phases,
    Trained,
    TrainingDiverged,
    compile_ahead,
    hydra_task,
    run_job,
    save_job,
    train_together,
    training_data,
    write_job_config,
)
from overfit.sweep.plan import (
    check_families,
    check_unique_names,
    job_overrides,
    launcher_overrides,
    sweep_overrides,
    uses_hydra_launcher,
)

# The settings a sweep's families vary: the parent run logs only those every job shares.
PER_JOB = (
    "model.dropout",
    "model.constraint",
    "model.max_norm",
    *(f"train.early_stopping.{k}" for k in ("watch", "patience")),
)

# Module import is the process's start, near enough: the stage's time is measured from here.
PROCESS_STARTED = time.perf_counter()


def plan(
    root: Path, config_dir: Path, params_text: str, args: Sequence[str]
) -> tuple[list[ComposedJob], list[list[str]], str]:
    """The sweep's jobs, composed from the copy of params.yaml in `config_dir` (whose text is
    `params_text`) and checked; the multiruns' overrides; the sweep's name."""
    params = parse_params(params_text, root / layout.PARAMS)
    # By hand: the user's Hydra overrides; as the DVC stage: params.yaml's sweep and launcher.
    if args:
        multiruns = [expand_presets(root, args)]
    else:
        check_families(params)
        launcher = launcher_overrides(params.launcher)
        multiruns = [[*launcher, *m] for m in sweep_overrides(params.sweep)]
    jobs = compose_jobs(config_dir, [job for m in multiruns for job in job_overrides(m)])
    check_unique_names([job.config for job in jobs])
    return jobs, multiruns, "by-hand" if args else params.sweep.name


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
        print(f"error: {stop}; the sweep's MLflow runs are marked KILLED", file=sys.stderr)
        raise SystemExit(stop.exit_status) from None


def fail(error: BaseException) -> NoReturn:
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(1) from None


def train(root: Path, args: Sequence[str]) -> None:
    """Plan and check the sweep, then run it; every refusal is one line."""
    with tempfile.TemporaryDirectory() as snapshot:
        # params.yaml is read once: every job is composed from this copy, so a params.yaml
        # rewritten meanwhile (make params, dvc exp run) cannot mix two sweeps.
        config_dir = Path(snapshot)
        try:
            params_text = read_params(root)
            (config_dir / layout.PARAMS.name).write_text(params_text, encoding="utf-8")
            jobs, multiruns, sweep_name = plan(root, config_dir, params_text, args)
            uri = tracking.tracking_uri(root, jobs[0].config.tracking)
        except ConfigError as error:
            exit_on_config_error(error)
    runtime.checkpoint()
    try:
        for data in {job.config.data for job in jobs}:  # bad data stops the sweep before any run
            load_train_test(root, data)
        tracking.check_reachable(uri)
    except (DataError, ConnectionError) as error:
        fail(error)
    try:  # folds that cannot hold out every class, too
        for data, select in {(job.config.data, job.config.select) for job in jobs}:
            check_folds(load_train_test(root, data)[0].y, select)
    except ConfigError as error:
        exit_on_config_error(error)
    runtime.checkpoint()
    phases = Phases()
    if not uses_hydra_launcher(multiruns[0]):
        with phases.timed("import"):  # TensorFlow and Keras; XLA then compiles meanwhile
            compile_ahead(root, [job.config for job in jobs])
    try:
        run_sweep(root, jobs, multiruns, sweep_name, params_text, phases)
    except (tracking.StoreError, TrainingDiverged) as error:
        fail(error)


def run_sweep(
    root: Path,
    jobs: list[ComposedJob],
    multiruns: list[list[str]],
    sweep_name: str,
    params_text: str,
    phases: Phases,
) -> None:
    """One parent MLflow run around the jobs; the sweep's table and record at the end.
    `phases` collects where the stage's time goes."""
    # A sweep that does not finish leaves no record: DVC then runs this stage again.
    (root / layout.SWEEP_RECORD).unlink(missing_ok=True)
    store = tracking.open_store(root, jobs[0].config.tracking)
    for orphan in tracking.fail_orphaned_runs(store.client, store.experiment_id):
        print(f"marked run {orphan} FAILED: the process that ran it is gone")
    finished = False
    try:
        run_under_parent(root, jobs, multiruns, sweep_name, store, params_text, phases)
        finished = True
    except (runtime.Interrupted, KeyboardInterrupt):
        tracking.kill_own_runs(store.client, store.experiment_id)
        raise
    finally:
        if not finished:  # the record is written last thing before the parent run ends
            (root / layout.SWEEP_RECORD).unlink(missing_ok=True)
        (root / layout.PARAMS_SNAPSHOT).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty if a launched job was stopped
            (root / layout.PARTIAL_DIR).rmdir()


def run_under_parent(
    root: Path,
    jobs: list[ComposedJob],
    multiruns: list[list[str]],
    sweep_name: str,
    store: tracking.Store,
    params_text: str,
    phases: Phases,
) -> None:
    configs = [job.config for job in jobs]
    names = [run_name(c) for c in configs]
    tags = tracking.run_tags(root)
    seeds = "/".join(map(str, sorted({len(c.train.seeds) for c in configs})))
    epochs = "/".join(map(str, sorted({c.train.epochs for c in configs})))
    started = time.perf_counter()
    # The settings every job shares, so sweeps can be compared with each other.
    later = ("penalty", "gate", "registry")  # per job, or the settings of later stages
    shared = {k: v for k, v in configs[0].to_dict().items() if k not in later}
    params = tracking.flatten(shared)
    for key in ("tracking.parent_run_id", *PER_JOB):
        params.pop(key, None)
    params.pop("select.metric", None)  # the evaluate stage's; the plot stage tags the run with it
    parent_tags = {"overfit.sweep": sweep_name, "overfit.stage": "train", **tags}
    with tracking.tracked_run(
        store.client, store.experiment_id, f"sweep-{sweep_name}", parent_tags
    ) as parent:
        tracking.log_values(store.client, parent, params=params)
        commit = tags.get("git.commit", "unknown")
        store.client.log_inputs(parent, datasets=training_data(root, configs[0], commit))
        print(
            f"sweep {sweep_name}: {len(names)} configurations x {seeds} seeds, {epochs} epochs; "
            f"MLflow parent run {parent}",
            flush=True,
        )
        runtime.checkpoint()
        if uses_hydra_launcher(multiruns[0]):
            for name in names:  # an interrupted run's leftovers
                shutil.rmtree(layout.partial_run_dir(root, name), ignore_errors=True)
            # The jobs' processes compose from the sweep's copy of params.yaml too.
            write_text(root / layout.PARAMS_SNAPSHOT, params_text)
            for overrides in multiruns:
                launch_hydra(root, [*overrides, f"++tracking.parent_run_id={parent}"])
            results = [read_result(layout.run_dir(root, name)) for name in names]
        else:
            results = run_stacked(root, jobs, store, parent, tags, phases)
        table = results_table(results)
        store.client.log_text(parent, table, layout.SWEEP_TABLE_ARTIFACT)
        record = SweepRecord(
            name=sweep_name,
            results={r.run: result_digest(r) for r in results},
        )
        # Where the stage's time went (read by benchmarks/), and what the sweep trained: the
        # tag by which the later stages find this run from reports/sweep.json.
        timings = {f"seconds_{phase}": value for phase, value in phases.items()}
        timings["seconds_process"] = round(time.perf_counter() - PROCESS_STARTED, 3)
        tracking.log_values(
            store.client, parent, metrics=timings, tags={tracking.SWEEP_TAG: record.digest()}
        )
        runtime.checkpoint()
        write_sweep(root, record)
    print(f"\n{table}\n{len(results)} configurations in {time.perf_counter() - started:.1f} s")


def run_stacked(
    root: Path,
    jobs: list[ComposedJob],
    store: tracking.Store,
    parent: str,
    tags: dict[str, str],
    phases: Phases,
) -> list[JobResult]:
    """Every job's models trained together in this process, each job's files saved as soon as
    its models are trained (while the others train on), then each job logged."""
    configs = [job.config for job in jobs]
    work_dirs = [layout.partial_run_dir(root, run_name(config)) for config in configs]
    saved: dict[int, Phases] = {}
    train_rows = {c.data: load_train_test(root, c.data)[0] for c in configs}  # read once

    def start_folder(i: int) -> None:
        shutil.rmtree(work_dirs[i], ignore_errors=True)  # an interrupted run's leftovers
        write_job_config(work_dirs[i], jobs[i].yaml, jobs[i].overrides)

    def save(i: int, trained: Trained) -> None:
        if trained.divergence(configs[i].train.seeds) is None:  # a diverged job saves nothing
            start_folder(i)
            saved[i] = Phases()
            save_job(work_dirs[i], configs[i], trained, saved[i], train_rows[configs[i].data])

    try:
        trained = train_together(root, configs, phases, ready=save)
        count = sum(len(t.models) for t in trained)
        print(f"trained {count} models stacked in {phases['train']:.1f} s", flush=True)
        # A job whose loss became NaN fails first, before any other job is logged.
        order = sorted(
            range(len(jobs)), key=lambda i: trained[i].divergence(configs[i].train.seeds) is None
        )
        results = []
        for i in order:
            tracking_config = dataclasses.replace(jobs[i].config.tracking, parent_run_id=parent)
            config = dataclasses.replace(jobs[i].config, tracking=tracking_config)
            if i not in saved:
                start_folder(i)
            result, job_phases = run_job(
                root, config, store, tags, work_dirs[i], trained[i], saved.get(i)
            )
            results.append(result)
            phases.add(job_phases)
        return results
    finally:  # the folders of jobs not published (the sweep stopped or failed)
        for work_dir in work_dirs:
            shutil.rmtree(work_dir, ignore_errors=True)


def launch_hydra(root: Path, overrides: list[str]) -> None:
    """The jobs as a Hydra multirun, each job in models/.partial/<run>/ (the launcher decides
    where jobs run)."""
    import hydra

    settings = [
        f"hydra.sweep.dir={root / layout.MODELS_DIR}",
        f"hydra.sweep.subdir={layout.PARTIAL_DIR.name}/${{run_name:}}",
        "hydra.job.chdir=False",
    ]
    snapshot = root / layout.PARAMS_SNAPSHOT
    task = hydra.main(
        config_path=str(snapshot.parent), config_name=snapshot.stem, version_base=None
    )(hydra_task)
    saved = sys.argv
    sys.argv = [saved[0], "--multirun", *settings, *overrides]
    try:
        task()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
