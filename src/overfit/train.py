"""Stage train: one Hydra multirun over the penalty sweep, every job tracked in MLflow.

`python -m overfit.train` (the DVC stage) sweeps what params.yaml's `sweep` says: kinds x strengths
plus one unregularized run. With arguments it is a plain Hydra multirun over params.yaml:

    python -m overfit.train --multirun penalty.kind=l2 penalty.strength=1e-3,1e-2

Each job trains one configuration once per seed and writes models/<run>/: the .keras model per
seed, history.csv, result.json (written last: a folder without it is incomplete) and Hydra's
resolved config in .hydra/. Each job is one child MLflow run under the sweep's parent run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from overfit import tracking
from overfit.config import (
    Config,
    ConfigError,
    LauncherConfig,
    PenaltyConfig,
    SweepConfig,
    TrackingConfig,
    exit_on_config_error,
    load_params,
    parse_config,
    project_root,
)
from overfit.data import DataError, load_train_test

# Module import is the process's start, near enough: the stage's time is measured from here.
PROCESS_STARTED = time.perf_counter()
# TensorFlow's C++ start-up chatter hides the sweep's progress lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODELS_DIR = "models"
SWEEP_FILE = "sweep.json"
PARTIAL_DIR = ".partial"
RESULT_FILE = "result.json"
HISTORY_FILE = "history.csv"
LEARNING_CURVE_FILE = "learning_curve.png"
CURVES = ("loss", "accuracy", "val_loss", "val_accuracy")
# What each curve is called in MLflow and in the reports.
CURVE_NAMES = {
    "loss": "train_loss",
    "accuracy": "train_accuracy",
    "val_loss": "test_loss",
    "val_accuracy": "test_accuracy",
}


# --- naming and the sweep --------------------------------------------------------------------


def run_name(penalty: PenaltyConfig | Any) -> str:
    """`none`, `l2_1e-03`, `l1_2p50e-01`: no dots, since DVC flattens metric keys on dots."""
    if penalty.kind == "none":
        return "none"
    strength = float(penalty.strength)
    text = f"{strength:.0e}"
    if float(text) != strength:
        text = f"{strength:.6e}".rstrip("0").replace(".", "p")
    suffix = "" if penalty.apply_to == "hidden" else f"_{penalty.apply_to}"
    return f"{penalty.kind}_{text}{suffix}"


def sweep_overrides(sweep: SweepConfig) -> list[str]:
    """The sweep in params.yaml as one Hydra multirun argument: a list of whole penalties."""
    specs = ["{kind:none,strength:0.0}"] if sweep.baseline else []
    specs += [f"{{kind:{k},strength:{s!r}}}" for k in sweep.kinds for s in sweep.strengths]
    return ["penalty=" + ",".join(specs)]


def expand_presets(root: Path, overrides: Sequence[str]) -> list[str]:
    """`penalty=l2` (or `penalty=l1,l2`) picks conf/penalty/l2.yaml, as it would in conf/.

    params.yaml has no defaults list, so a group choice becomes that preset's values.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException

    sections = {f.name for f in dataclasses.fields(Config)}
    parser = OverridesParser.create()
    expanded = []
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException as error:
            raise ConfigError(f"bad override {text!r}: {_hydra_reason(error)}") from None
        value = override.value() if override.key_or_group in sections else None
        choices = value.list if isinstance(value, ChoiceSweep) else [value]
        if value is None or override.is_delete() or not all(isinstance(c, str) for c in choices):
            expanded.append(text)
            continue
        section = override.key_or_group
        presets = [_hydra_literal(load_preset(root, section, c)) for c in choices]
        expanded.append(f"{section}={','.join(presets)}")
    return expanded


def load_preset(root: Path, section: str, name: str) -> dict[str, Any]:
    path = root / "conf" / section / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (root / "conf" / section).glob("*.yaml"))
        raise ConfigError(
            f"{section}={name}: no such option; choose one of {', '.join(options)} "
            f"(conf/{section}/), or set its keys ({section}.<key>=<value>)"
        )
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _hydra_literal(value: Any) -> str:
    """A value written in Hydra's override grammar."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_literal(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def job_overrides(overrides: Sequence[str]) -> list[list[str]]:
    """Expand sweep syntax (a,b,c) into one override list per job, as Hydra's basic sweeper does."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as error:
        raise ConfigError(f"bad override: {_hydra_reason(error)}") from None
    return [list(job) for job in BasicSweeper.split_arguments(parsed, None)[0]]


def compose_jobs(root: Path, overrides: Sequence[str]) -> list[Config]:
    """Every job's config, composed from params.yaml and checked before anything runs."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    def composed(job: list[str]) -> Config:
        cfg = compose(config_name="params", overrides=job, return_hydra_config=True)
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain.pop("hydra", None)
        return parse_config(OmegaConf.to_container(OmegaConf.create(plain), resolve=True))

    configs = []
    with initialize_config_dir(str(root), version_base=None):
        for job in job_overrides(overrides):
            try:
                configs.append(composed(job))
            except HydraException as error:
                # An unknown key: add it anyway, so the schema names it and what is allowed.
                forced = [o if o.startswith(("+", "~", "hydra")) else "++" + o for o in job]
                try:
                    composed(forced)
                except (HydraException, ConfigError) as schema_error:
                    if isinstance(schema_error, ConfigError):
                        raise schema_error from None
                named = [o for o in job if o.split("=")[0].lstrip("+~") in str(error)]
                culprit = named[0] if named else " ".join(job)
                raise ConfigError(f"{culprit}: {_hydra_reason(error)}") from None
    names = [run_name(c.penalty) for c in configs]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(
                f"penalty: two jobs would both be named {name!r}; sweep distinct values"
            )
    return configs


def _hydra_reason(error: BaseException) -> str:
    """Hydra's first line, plus its list of available options when it gives one."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    if any(line.startswith("Available options") for line in lines):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        options = [line for line in lines[start + 1 :] if " " not in line and "=" not in line]
        reason += f"; available: {', '.join(options)}"
    return reason


# --- training ahead: an in-process sweep's models trained together ---------------------------

# Models trained before the jobs run, by training_key. Filled only when the jobs run in this
# process (Hydra's basic launcher); a job whose models are not here trains them itself.
TRAINED_AHEAD: dict[str, tuple[list[Any], list[Any]]] = {}


def training_key(config: Config) -> str:
    """Everything that decides a job's trained models: data, model, penalty, training."""
    settings = config.to_dict()
    return json.dumps({k: settings[k] for k in ("data", "model", "penalty", "train")})


def trains_in_process(configs: Sequence[Config], overrides: Sequence[str]) -> bool:
    by_hand = any(o.lstrip("+").startswith("hydra/launcher") for o in overrides)
    return not by_hand and all(c.launcher.name == "basic" for c in configs)


def train_ahead(root: Path, configs: Sequence[Config], phases: dict[str, float]) -> int:
    """Build and train every job's models stacked, per group that shares data and shape.

    A model's result does not depend on what it is stacked with, so this gives the jobs
    exactly what they would have trained one by one, in one compiled call instead of one
    per job. Returns how many models were trained.
    """
    from overfit.trainer import train_stacked

    groups: dict[tuple[Any, ...], list[Config]] = {}
    for config in configs:
        shape = (config.data, config.model.hidden_units, config.train.epochs)
        groups.setdefault(shape, []).append(config)
    count = 0
    for (data, _, epochs), members in groups.items():
        train, test = load_train_test(root, data)
        with timed(phases, "build"):
            per_job = [build_models(config) for config in members]
        models = [model for job in per_job for model in job]
        with timed(phases, "train"):
            histories = iter(train_stacked(models, train.x, train.y, test.x, test.y, epochs))
        for config, job in zip(members, per_job, strict=True):
            TRAINED_AHEAD[training_key(config)] = (job, [next(histories) for _ in job])
        count += len(models)
    return count


# --- one job: one configuration, every seed --------------------------------------------------


def build_models(config: Config) -> list[Any]:
    """One compiled Keras model per seed, with that seed's initial weights."""
    from overfit.model import build_model

    return [
        build_model(
            hidden_units=config.model.hidden_units,
            kind=config.penalty.kind,
            strength=config.penalty.strength,
            apply_to=config.penalty.apply_to,
            learning_rate=config.model.learning_rate,
            seed=seed,
        )
        for seed in config.train.seeds
    ]


@contextlib.contextmanager
def timed(phases: dict[str, float], name: str) -> Iterator[None]:
    """Add how long a phase took to `phases` (reported in result.json, used by benchmarks/)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = round(phases.get(name, 0.0) + time.perf_counter() - start, 3)


def summarize(seeds: Sequence[int], finals: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Per-seed final metrics, and their mean and spread (standard deviation over seeds)."""
    per_seed = {
        str(seed): {
            "train_acc": f["accuracy"],
            "test_acc": f["val_accuracy"],
            "train_loss": f["loss"],
            "test_loss": f["val_loss"],
        }
        for seed, f in zip(seeds, finals, strict=True)
    }
    for values in per_seed.values():
        values["gap"] = values["train_acc"] - values["test_acc"]
    names = list(next(iter(per_seed.values())))
    table = np.array([[v[n] for n in names] for v in per_seed.values()], dtype=np.float64)
    return {
        "per_seed": per_seed,
        "mean": dict(zip(names, table.mean(axis=0).tolist(), strict=True)),
        "std": dict(zip(names, table.std(axis=0).tolist(), strict=True)),
    }


def history_csv(seeds: Sequence[int], histories: Sequence[Any]) -> str:
    header = "seed,epoch," + ",".join(CURVE_NAMES[c] for c in CURVES)
    rows = [header]
    for seed, history in zip(seeds, histories, strict=True):
        columns = np.stack([history.history[c] for c in CURVES], axis=1)
        rows += [
            f"{seed},{epoch}," + ",".join(f"{v:.7g}" for v in values)
            for epoch, values in enumerate(columns.tolist(), start=1)
        ]
    return "\n".join(rows) + "\n"


def mean_curves(histories: Sequence[Any]) -> dict[str, np.ndarray]:
    """Per-epoch curves averaged over seeds, named as MLflow shows them."""
    return {
        CURVE_NAMES[c]: np.mean([h.history[c] for h in histories], axis=0).astype(np.float64)
        for c in CURVES
    }


def run_job(cfg: Any) -> None:
    """Hydra task: train one configuration for every seed, save it, log it as a child run."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from overfit.plots import learning_curve_figure, save_figure

    started = time.perf_counter()
    root = project_root()
    config = parse_config(OmegaConf.to_container(cfg, resolve=True))
    limit_threads(config.launcher.threads)
    name = run_name(config.penalty)
    # Hydra's folder for this job is models/.partial/<run>; it becomes models/<run> only when
    # complete, so an interrupted job never leaves a folder that looks finished.
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    train, test = load_train_test(root, config.data)

    phases: dict[str, float] = {}
    with timed(phases, "log"):
        uri = tracking.tracking_uri(root, config.tracking)
        mlflow = tracking.client(uri)
        exp_id = tracking.experiment_id(
            mlflow, config.tracking.experiment, tracking.artifact_location(root, config.tracking)
        )
    tags = {"overfit.run": name, "overfit.sweep": config.sweep.name, **tracking.process_tags()}
    tags |= tracking.git_tags(root) | tracking.data_tags(root)
    if config.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = config.tracking.parent_run_id
    with tracking.tracked_run(mlflow, exp_id, name, tags) as child:
        trained = TRAINED_AHEAD.pop(training_key(config), None)
        if trained is None:
            from overfit.trainer import train_stacked

            with timed(phases, "build"):
                models = build_models(config)
            with timed(phases, "train"):
                histories = train_stacked(
                    models, train.x, train.y, test.x, test.y, config.train.epochs
                )
        else:
            models, histories = trained
        summary = summarize(config.train.seeds, [h.final for h in histories])
        with timed(phases, "save"):
            for seed, model in zip(config.train.seeds, models, strict=True):
                model.save(out_dir / f"seed_{seed}.keras")
            (out_dir / HISTORY_FILE).write_text(
                history_csv(config.train.seeds, histories), encoding="utf-8"
            )
        curves = mean_curves(histories)
        with timed(phases, "plot"):
            figure = out_dir / LEARNING_CURVE_FILE
            save_figure(learning_curve_figure(curves, title=name), figure)
        with timed(phases, "log"):
            log_child_run(mlflow, child, config, summary, curves, models[0], train.x, out_dir)
        result = {
            "run": name,
            "penalty": config.to_dict()["penalty"],
            "seeds": list(config.train.seeds),
            "mlflow_run_id": child,
            "seconds": round(time.perf_counter() - started, 2),
            "phases": phases,
            "threads": tensorflow_threads(),
            **summary,
        }
        _write_json(out_dir / RESULT_FILE, result)
        publish(out_dir, root / MODELS_DIR / name)
    print(progress_line(result), flush=True)


def publish(staging: Path, final: Path) -> None:
    """Move a finished job's folder into place with one rename."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)


def log_child_run(
    mlflow: Any,
    run_id: str,
    config: Config,
    summary: dict[str, Any],
    curves: dict[str, np.ndarray],
    model: Any,
    x_example: np.ndarray,
    out_dir: Path,
) -> None:
    """Params, final metrics, per-epoch curves, the model, the learning-curve figure, the config."""
    params = tracking.flatten({k: v for k, v in config.to_dict().items() if k != "gate"})
    params.pop("tracking.parent_run_id", None)
    # Six decimals: float32 accuracies (0.91428571939...) read badly in the UI's columns.
    metrics = {f"{k}_mean": round(v, 6) for k, v in summary["mean"].items()}
    metrics |= {f"{k}_std": round(v, 6) for k, v in summary["std"].items()}
    tracking.log_values(mlflow, run_id, params=params, metrics=metrics)
    tracking.log_metric_histories(mlflow, run_id, curves)
    mlflow.log_artifact(run_id, str(out_dir / LEARNING_CURVE_FILE))
    with tempfile.TemporaryDirectory() as tmp:
        tracking.log_keras_model(mlflow, run_id, model, x_example[:5], Path(tmp) / "model")
    mlflow.log_artifact(run_id, str(out_dir / ".hydra" / "config.yaml"), "config")


def progress_line(result: dict[str, Any]) -> str:
    mean, std = result["mean"], result["std"]
    return (
        f"  {result['run']:<14} train {mean['train_acc']:.3f} +- {std['train_acc']:.3f}   "
        f"test {mean['test_acc']:.3f} +- {std['test_acc']:.3f}   {result['seconds']:5.1f} s"
    )


def _write_json(path: Path, data: Any) -> None:
    from overfit.data import write_atomically

    write_atomically(path, json.dumps(data, indent=2) + "\n")


# --- the sweep: checked, launched through Hydra, under one parent run -------------------------


def hydra_settings(root: Path) -> list[str]:
    """Where Hydra puts each job: models/<run>/, without changing the working directory."""
    return [
        f"hydra.sweep.dir={root / MODELS_DIR}",
        f"hydra.sweep.subdir={PARTIAL_DIR}/${{run_name:}}",
        "hydra.job.chdir=False",
    ]


def launcher_overrides(launcher: LauncherConfig) -> list[str]:
    """params.yaml's `launcher` as Hydra overrides: which launcher, how many jobs at once."""
    if launcher.name == "basic":
        return []
    settings = [f"hydra/launcher={launcher.name}"]
    if launcher.name == "joblib":
        return [*settings, f"hydra.launcher.n_jobs={launcher.n_jobs}"]
    settings += [
        f"hydra.launcher.timeout_min={launcher.timeout_min}",
        f"hydra.launcher.cpus_per_task={max(launcher.threads, 1)}",
    ]
    if launcher.name == "submitit_slurm":  # the local executor starts every job at once
        settings.append(f"hydra.launcher.array_parallelism={launcher.n_jobs}")
        if launcher.partition:
            settings.append(f"hydra.launcher.partition={launcher.partition}")
    return settings


def limit_threads(threads: int) -> None:
    """Cap TensorFlow's thread pools, so parallel jobs do not fight over the cores."""
    if threads <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started in this process: keep its pools
        pass


def tensorflow_threads() -> int:
    """The intra-op threads this job ran with (0: TensorFlow's default, every core)."""
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads()


def _register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver(
            "run_name", lambda *, _root_: run_name(_root_.penalty), use_cache=False
        )


_register_resolver()


def launch(root: Path, overrides: list[str]) -> None:
    """Run the Hydra multirun in this process (the launcher decides where jobs run)."""
    import hydra

    task = hydra.main(config_path=str(root), config_name="params", version_base=None)(run_job)
    saved = sys.argv
    sys.argv = [saved[0], "--multirun", *hydra_settings(root), *overrides]
    try:
        task()
    finally:
        sys.argv = saved


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> None:
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--multirun", "-m")]
    try:
        root = project_root()
        config = load_params(root)
        # By hand: the user's Hydra overrides; as the DVC stage: params.yaml's sweep and launcher.
        if args:
            overrides = expand_presets(root, args)
        else:
            overrides = [*launcher_overrides(config.launcher), *sweep_overrides(config.sweep)]
        configs = compose_jobs(root, overrides)
        uri = tracking.tracking_uri(root, config.tracking)
    except ConfigError as error:
        exit_on_config_error(error)
    try:
        for data in {c.data for c in configs}:  # bad data stops the sweep before any run exists
            load_train_test(root, data)
        tracking.check_reachable(uri)
    except (DataError, ConnectionError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        sweep_name = "by-hand" if args else config.sweep.name
        run_sweep(root, config.tracking, configs, overrides, uri, sweep_name)
    except KeyboardInterrupt:
        print("error: interrupted; the sweep's MLflow runs are marked KILLED", file=sys.stderr)
        raise SystemExit(130) from None


def run_sweep(
    root: Path,
    tracking_config: TrackingConfig,
    configs: list[Config],
    overrides: list[str],
    uri: str,
    sweep_name: str,
) -> None:
    """One parent MLflow run around the Hydra multirun; the sweep's table at the end."""
    mlflow = tracking.client(uri)
    exp_id = tracking.experiment_id(
        mlflow, tracking_config.experiment, tracking.artifact_location(root, tracking_config)
    )
    for orphan in tracking.fail_orphaned_runs(mlflow, exp_id):
        print(f"marked run {orphan} FAILED: the process that ran it is gone")
    try:
        launch_under_parent(root, configs, overrides, uri, sweep_name, mlflow, exp_id)
    except KeyboardInterrupt:
        tracking.kill_own_runs(mlflow, exp_id)
        raise


def launch_under_parent(
    root: Path,
    configs: list[Config],
    overrides: list[str],
    uri: str,
    sweep_name: str,
    mlflow: Any,
    exp_id: str,
) -> None:
    """The parent run, the Hydra multirun inside it, and the sweep's table."""
    names = [run_name(c.penalty) for c in configs]
    tags = {"overfit.sweep": sweep_name, "overfit.stage": "train"}
    tags |= tracking.process_tags() | tracking.git_tags(root) | tracking.data_tags(root)
    seeds = "/".join(map(str, sorted({len(c.train.seeds) for c in configs})))
    epochs = "/".join(map(str, sorted({c.train.epochs for c in configs})))
    started = time.perf_counter()
    # The settings every job shares, so sweeps can be compared with each other.
    shared = {k: v for k, v in configs[0].to_dict().items() if k not in ("penalty", "gate")}
    params = tracking.flatten(shared)
    params.pop("tracking.parent_run_id", None)
    with tracking.tracked_run(mlflow, exp_id, f"sweep-{sweep_name}", tags) as parent_id:
        tracking.log_values(mlflow, parent_id, params=params)
        print(
            f"sweep {sweep_name}: {len(names)} configurations x {seeds} seeds, {epochs} epochs; "
            f"MLflow parent run {parent_id}",
            flush=True,
        )
        phases: dict[str, float] = {}
        if trains_in_process(configs, overrides):
            with timed(phases, "import"):
                import overfit.trainer  # noqa: F401  (TensorFlow and Keras)
            count = train_ahead(root, configs, phases)
            print(f"trained {count} models stacked in {phases['train']:.1f} s", flush=True)
        launch(root, [*overrides, f"++tracking.parent_run_id={parent_id}"])
        results = [read_result(root / MODELS_DIR / name) for name in names]
        for result in results:
            for phase, seconds in result["phases"].items():
                phases[phase] = round(phases.get(phase, 0.0) + seconds, 3)
        table = results_table(results)
        mlflow.log_text(parent_id, table, "sweep_results.md")
        _write_json(
            root / MODELS_DIR / SWEEP_FILE,
            {
                "parent_run_id": parent_id,
                "tracking_uri": tracking.redact(uri),
                "runs": {r["run"]: r["mlflow_run_id"] for r in results},
                # Where the stage's time went, summed over jobs; read by benchmarks/.
                "phases": phases,
                "process_seconds": round(time.perf_counter() - PROCESS_STARTED, 3),
            },
        )
    with contextlib.suppress(OSError):  # left only if a job was interrupted
        (root / MODELS_DIR / PARTIAL_DIR).rmdir()
    print(f"\n{table}\n{len(results)} configurations in {time.perf_counter() - started:.1f} s")


def read_result(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RESULT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the job for {run_dir.name} did not finish")
    return json.loads(path.read_text(encoding="utf-8"))


def results_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the sweep, best mean test accuracy first."""
    lines = [
        "| run | train acc | test acc | gap |",
        "|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (-r["mean"]["test_acc"], r["run"])):
        m, s = r["mean"], r["std"]
        lines.append(
            f"| {r['run']} | {m['train_acc']:.3f} ± {s['train_acc']:.3f} "
            f"| {m['test_acc']:.3f} ± {s['test_acc']:.3f} | {m['gap']:+.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
