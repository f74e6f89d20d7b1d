"""Speed of the pipeline against the article's `model.fit`, measured in one run on this machine.

    make bench                       # or: .venv/bin/python benchmarks/bench.py [--reps N]

Times, each the median of several repetitions (these machines are noisy: compare ratios taken
in one run, not figures taken on different days):

- the article's `model.fit` (with validation_data, as the article), on fewer epochs, per epoch;
- our compiled loop on one model, 4000 epochs (compiled once beforehand);
- the same loop on 5 and on 20 stacked models (the seeds of a configuration), and on 95 (six
  stacks of 16, two at a time, as the train stage trains them);
- the loop on a stack of 16 models in each of its variants: without the other remedies, with
  dropout, with Gaussian noise on the inputs, before the ReLU and after it, and with an activity
  penalty before and after the ReLU (each stack of one kind, as the train stage stacks them);
- the default pipeline, `dvc repro` in a clean copy of the project (set-up excluded), and the
  same without cross-validation (`select.folds: 0`, chosen on test), alternately, so the cost
  of cross-validation is a ratio of figures taken side by side;
- a no-op `dvc repro` (nothing changed);
- dropout (rate 0.3) trained by `model.fit` and by the loop from the same initial weights over
  several seeds: the test accuracy's mean and spread (masks differ, so only the distributions
  can agree);
- each stage of one clean run, and where the train stage's time goes (TensorFlow import,
  building, training, saving, plotting, MLflow logging), from its own phase timings;
- the default pipeline without the study (`study.draws: 0`), and without the noise and activity
  families (`sweep.noise_stddevs: []`, `sweep.activity_kinds: []`), beside the full one: each
  one's cost as a ratio; and the study's own phases (planning, building the starts, training,
  measuring on the fresh points), its models per second, and its training with every model
  validated every epoch against once after training, by turns.

Prints a table and writes the figures to benchmarks/results.json. Nothing here asserts a
target: it reports, it cannot fail CI.

    .venv/bin/python benchmarks/bench.py --against REV --pipeline-reps 4

times only `dvc repro` of the default pipeline, in clean copies of this checkout and of git
revision REV by turns: what a change did, as a ratio of figures taken side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results.json"
EPOCHS = 4000


def median_time(action: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def article_data():
    from overfit.core.data import make_moons_points, split_points

    return split_points(make_moons_points(100, 0.2, 1), 30)


def fit_seconds_per_epoch(epochs: int, reps: int) -> float:
    """The article's loop: model.fit with validation_data, verbose=0."""
    from overfit.core.model import build_model

    train, test = article_data()

    def fit() -> None:
        model = build_model(seed=1)
        model.fit(train.x, train.y, validation_data=(test.x, test.y), epochs=epochs, verbose=0)

    fit()  # warm-up: tracing of fit's own functions
    return median_time(fit, reps) / epochs


def loop_seconds(n_models: int, reps: int) -> float:
    """Our compiled loop on n_models models (seeds 1..n), 4000 epochs, after one warm-up."""
    from overfit.core.model import build_model
    from overfit.core.trainer import train_stacked

    train, test = article_data()

    def run() -> None:
        models = [build_model(seed=s) for s in range(1, n_models + 1)]
        train_stacked(models, train.x, train.y, test.x, test.y, EPOCHS)

    run()
    return median_time(run, reps)


def dropout_against_fit(rate: float, seeds: int, epochs: int) -> dict[str, float]:
    """Dropout cannot match `fit` draw for draw (the masks come from other random streams):
    the same models trained both ways, over several seeds, compared by the mean and spread of
    their test accuracy."""
    from overfit.core.model import build_model
    from overfit.core.trainer import train_stacked

    train, test = article_data()
    by_fit = []
    for seed in range(1, seeds + 1):
        model = build_model(seed=seed, dropout=rate)
        model.fit(train.x, train.y, batch_size=len(train), epochs=epochs, verbose=0)
        by_fit.append(model.evaluate(test.x, test.y, verbose=0, return_dict=True)["accuracy"])
    models = [build_model(seed=seed, dropout=rate) for seed in range(1, seeds + 1)]
    ours = [h.final["val_accuracy"] for h in train_stacked(
        models, train.x, train.y, test.x, test.y, epochs)]  # fmt: skip
    return {
        "dropout_rate": rate,
        "dropout_seeds": seeds,
        "dropout_epochs": epochs,
        "dropout_fit_test_mean": statistics.mean(by_fit),
        "dropout_fit_test_std": statistics.pstdev(by_fit),
        "dropout_loop_test_mean": statistics.mean(ours),
        "dropout_loop_test_std": statistics.pstdev(ours),
    }


def copy_project(dest: Path, revision: str | None = None) -> None:
    """A clean copy of this checkout (or of a git revision of it) in `dest`, its own repo."""
    if revision is not None:
        archive = subprocess.run(
            ["git", "archive", revision], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        files = []
    else:
        files = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        [
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-q",
            "-m",
            "bench",
        ],
    ):
        subprocess.run(["git", *args], cwd=dest, check=True)
    # A clean copy: none of this checkout's outputs, cache or store.
    for out in ("data", "models", "reports/evaluation.npz", "dvc.lock"):
        target = dest / out
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def dvc(cwd: Path, *args: str) -> float:
    """Seconds `dvc *args` takes in `cwd`, whose own src/ (not this checkout's) is imported."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env["PYTHONPATH"] = str(cwd / "src")
    env.pop("DVC_ROOT", None)
    start = time.perf_counter()
    subprocess.run(["dvc", *args], cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


STAGES = ("generate", "split", "train", "study", "evaluate", "plot", "register")


def edit_params(copy: Path, edit: Callable[[dict], None]) -> None:
    """params.yaml of the copy, as `edit` changes it (a dict of its sections)."""
    import yaml

    path = copy / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def without_cross_validation(params: dict) -> None:
    """No folds: the choice falls back to the test set, and the early-stopping family, which
    needs the folds' held-out rows, is left out."""
    params["select"] |= {"folds": 0, "metric": "test_acc"}
    params["sweep"]["patiences"] = []


def without_study(params: dict) -> None:
    """No study (study.draws: 0)."""
    params["study"]["draws"] = 0


def without_noise_and_activity(params: dict) -> None:
    """Without the Gaussian-noise and activity-penalty families."""
    params["sweep"] |= {"noise_stddevs": [], "activity_kinds": []}


LOOP_VARIANTS = {
    "plain": {},
    "dropout": {"dropout": 0.3},
    "noise_input": {"noise": 0.1, "noise_at": "input"},
    "noise_pre": {"noise": 0.1, "noise_at": "pre_activation"},
    "noise_post": {"noise": 0.1, "noise_at": "post_activation"},
    "activity_pre": {"activity": "l1", "activity_strength": 1e-4, "activity_at": "pre_activation"},
    "activity_post": {"activity": "l1", "activity_strength": 1e-4},
}


def loop_variants(reps: int) -> dict[str, float]:
    """The loop on one stack of 16 models, 4000 epochs, in each of its variants, by turns
    (after one warm-up each): what each remedy's extra work costs per epoch."""
    from overfit.core.model import build_model
    from overfit.core.trainer import Layout, train_with_folds

    train, test = article_data()

    def run(settings: dict) -> float:
        models = [build_model(seed=s, **settings) for s in range(1, 17)]
        start = time.perf_counter()
        train_with_folds(
            models, [], train.x, train.y, test.x, test.y, EPOCHS, layout=Layout(stack_size=16)
        )
        return time.perf_counter() - start

    for settings in LOOP_VARIANTS.values():
        run(settings)
    times: dict[str, list[float]] = {name: [] for name in LOOP_VARIANTS}
    for rep in range(reps):
        names = list(LOOP_VARIANTS) if rep % 2 == 0 else list(reversed(LOOP_VARIANTS))
        for name in names:
            times[name].append(run(LOOP_VARIANTS[name]))
    return {f"loop_16_{name}_s": statistics.median(t) for name, t in times.items()}


def study_phases(reps: int) -> dict[str, float]:
    """The default study's phases in this process (planning the sweep, building the starts,
    training, measuring on the fresh points), its models per second, and its training with
    every model validated every epoch against once after training, by turns."""
    from overfit.config import load_params, read_params
    from overfit.core.data import make_points
    from overfit.sweep.draws import measure_jobs, plan_jobs, study_rows, train_jobs
    from overfit.sweep.plan import plan_sweep

    base = load_params(ROOT)
    data = base.data
    fresh = make_points(
        data.name, data.fresh_samples, data.noise, data.fresh_random_state, data.factor
    )
    rows = study_rows(data, base.study.n_train, base.select.folds)
    times: dict[str, list[float]] = {k: [] for k in ("plan", "build", "measure", "once", "every")}
    for rep in range(reps):
        start = time.perf_counter()
        configs = plan_sweep(ROOT, read_params(ROOT), []).configs
        times["plan"].append(time.perf_counter() - start)
        start = time.perf_counter()
        jobs = plan_jobs(configs, base)
        times["build"].append(time.perf_counter() - start)
        for curves in (False, True) if rep % 2 == 0 else (True, False):
            start = time.perf_counter()
            models, folds = train_jobs(jobs, rows, curves=curves)
            times["every" if curves else "once"].append(time.perf_counter() - start)
        start = time.perf_counter()
        measure_jobs(jobs, models, folds, fresh, base.study.select)
        times["measure"].append(time.perf_counter() - start)
    count = len(models) + sum(len(f) for f in folds)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "study_models": count,
        **{f"study_{k}_s": v for k, v in median.items()},
        "study_models_per_s": count / median["once"],
        "study_validate_every_epoch_cost": median["every"] / median["once"] - 1,
    }


def train_timings(copy: Path) -> dict[str, float]:
    """The latest sweep's phase timings, as its parent run in the copy's store has them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("overfit").experiment_id
    [parent] = client.search_runs(
        [experiment],
        filter_string="tags.`overfit.stage` = 'train'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    metrics = parent.data.metrics
    return {k.removeprefix("seconds_"): v for k, v in metrics.items() if k.startswith("seconds_")}


def pipeline(reps: int) -> dict[str, float]:
    """Full `dvc repro` in clean copies, with and without cross-validation by turns, no-op
    reruns, then one clean run stage by stage.

    The train stage's own phase timings (its MLflow parent run's `seconds_*` metrics) say
    where its time goes.
    """
    full, no_cv, no_study, no_families, noop, phases, process = [], [], [], [], [], [], []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp)
            copy_project(copy)
            full.append(dvc(copy, "repro"))
            noop += [dvc(copy, "repro") for _ in range(3)]
            timings = train_timings(copy)
            process.append(timings.pop("process"))
            phases.append(timings)
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp)
            copy_project(copy)
            edit_params(copy, without_cross_validation)
            no_cv.append(dvc(copy, "repro"))
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp)
            copy_project(copy)
            edit_params(copy, without_study)
            no_study.append(dvc(copy, "repro"))
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp)
            copy_project(copy)
            edit_params(copy, without_noise_and_activity)
            no_families.append(dvc(copy, "repro"))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        copy_project(copy)
        stages = {stage: dvc(copy, "repro", "--single-item", stage) for stage in STAGES}
    totals = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in phases[0]}
    train_process = statistics.median(process)
    totals["other"] = train_process - sum(totals.values())
    return {
        "repro_s": statistics.median(full),
        "repro_no_cv_s": statistics.median(no_cv),
        "cv_cost": statistics.median(full) / statistics.median(no_cv) - 1,
        "repro_no_study_s": statistics.median(no_study),
        "study_cost": statistics.median(full) / statistics.median(no_study) - 1,
        "repro_no_noise_activity_s": statistics.median(no_families),
        "noise_activity_cost": statistics.median(full) / statistics.median(no_families) - 1,
        "noop_repro_s": statistics.median(noop),
        **{f"stage_{k}_s": v for k, v in stages.items()},
        "train_process_s": train_process,
        **{f"train_{k}_s": v for k, v in totals.items()},
        "log_share_of_train": totals["log"] / train_process,
    }


def against(revision: str, reps: int) -> dict[str, float | str]:
    """`dvc repro` of the default pipeline in clean copies of this checkout and of `revision`,
    by turns: the change's effect as a ratio of figures taken side by side."""
    times: dict[str, list[float]] = {"this": [], "other": []}
    for rep in range(reps):
        for who in ("this", "other") if rep % 2 == 0 else ("other", "this"):
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp)
                copy_project(copy, revision if who == "other" else None)
                times[who].append(dvc(copy, "repro"))
    this, other = (statistics.median(times[w]) for w in ("this", "other"))
    return {"against": revision, "against_repro_s": other, "this_repro_s": this}


def default_sweep_models() -> int:
    """The default sweep's models: its configurations x seeds (params.yaml)."""
    from overfit.config import read_params
    from overfit.sweep.plan import plan_sweep

    configs = plan_sweep(ROOT, read_params(ROOT), []).configs
    return sum(len(c.train.seeds) for c in configs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per figure")
    parser.add_argument("--fit-epochs", type=int, default=100, help="epochs of model.fit")
    parser.add_argument("--pipeline-reps", type=int, default=3, help="full dvc repro runs")
    parser.add_argument("--dropout-seeds", type=int, default=5, help="seeds of the dropout check")
    parser.add_argument("--dropout-epochs", type=int, default=1000, help="its epochs")
    parser.add_argument(
        "--against",
        metavar="REV",
        help="only time `dvc repro` here and at git revision REV, by turns (--pipeline-reps each)",
    )
    args = parser.parse_args()
    if args.against:
        figures = against(args.against, args.pipeline_reps)
        ratio = figures["this_repro_s"] / figures["against_repro_s"]
        print(
            f"dvc repro, default pipeline, clean copies, medians of {args.pipeline_reps}: "
            f"{figures['this_repro_s']:.1f} s here, {figures['against_repro_s']:.1f} s at "
            f"{args.against} ({ratio:.2f}x)"
        )
        return

    figures: dict[str, float | int | str] = {
        "cores": os.cpu_count() or 0,
        "machine": f"{platform.machine()} {platform.python_version()}",
    }
    fit_epoch = fit_seconds_per_epoch(args.fit_epochs, args.reps)
    figures |= {
        "fit_ms_per_epoch": fit_epoch * 1000,
        "fit_4000_epochs_s": fit_epoch * EPOCHS,
        "loop_1_model_s": loop_seconds(1, args.reps),
        "loop_5_models_s": loop_seconds(5, args.reps),
        "loop_20_models_s": loop_seconds(20, args.reps),
        "loop_95_models_s": loop_seconds(95, args.reps),
    }
    figures |= loop_variants(args.reps)
    figures |= dropout_against_fit(0.3, args.dropout_seeds, args.dropout_epochs)
    figures |= pipeline(args.pipeline_reps)
    figures |= study_phases(args.reps)
    figures["speedup_one_model"] = figures["fit_4000_epochs_s"] / figures["loop_1_model_s"]
    figures["ratio_20_to_5_models"] = figures["loop_20_models_s"] / figures["loop_5_models_s"]
    figures["default_sweep_models"] = default_sweep_models()
    figures["fit_default_sweep_h"] = (
        figures["fit_4000_epochs_s"] * figures["default_sweep_models"] / 3600
    )
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(table(figures))
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


def table(f: dict) -> str:
    phases = ("import", "build", "train", "save", "plot", "log", "other")
    rows = [
        ("machine", f"{f['cores']} cores, {f['machine']}", ""),
        ("model.fit, per epoch (article)", f"{f['fit_ms_per_epoch']:.1f} ms", ""),
        ("model.fit, 4000 epochs (extrapolated)", f"{f['fit_4000_epochs_s']:.0f} s", ""),
        (
            "compiled loop, 1 model x 4000 epochs",
            f"{f['loop_1_model_s']:.2f} s",
            f"{f['speedup_one_model']:.0f}x faster than fit",
        ),
        ("stacked loop, 5 models", f"{f['loop_5_models_s']:.2f} s", ""),
        (
            "stacked loop, 20 models",
            f"{f['loop_20_models_s']:.2f} s",
            f"{f['ratio_20_to_5_models']:.2f}x the time of 5",
        ),
        (
            "stacked loop, 95 models (6 stacks of 16)",
            f"{f['loop_95_models_s']:.2f} s",
            f"{f['loop_95_models_s'] / 95 * 1000:.0f} ms per model",
        ),
        *(
            (
                f"stack of 16, {name.replace('_', ' ')}",
                f"{f[f'loop_16_{name}_s']:.2f} s",
                f"{f[f'loop_16_{name}_s'] / f['loop_16_plain_s']:.2f}x plain",
            )
            for name in LOOP_VARIANTS
        ),
        (
            "dvc repro, default pipeline, clean copy",
            f"{f['repro_s']:.1f} s",
            f"fit would take ~{f['fit_default_sweep_h']:.1f} h "
            f"({f['default_sweep_models']} models)",
        ),
        (
            "dvc repro, without cross-validation",
            f"{f['repro_no_cv_s']:.1f} s",
            f"5-fold cross-validation adds {f['cv_cost']:.0%}",
        ),
        (
            "dvc repro, without the study (study.draws 0)",
            f"{f['repro_no_study_s']:.1f} s",
            f"the study adds {f['study_cost']:.0%}",
        ),
        (
            "dvc repro, without noise and activity families",
            f"{f['repro_no_noise_activity_s']:.1f} s",
            f"the two families add {f['noise_activity_cost']:.0%}",
        ),
        ("dvc repro, nothing changed", f"{f['noop_repro_s']:.2f} s", ""),
        (
            "study: plan / build / train / measure",
            " / ".join(f"{f[f'study_{k}_s']:.1f}" for k in ("plan", "build", "once", "measure"))
            + " s",
            f"{f['study_models']} models and folds, {f['study_models_per_s']:.1f} per second",
        ),
        (
            "study training, validated every epoch",
            f"{f['study_every_s']:.1f} s",
            f"{f['study_validate_every_epoch_cost']:.0%} more than validated once",
        ),
        (
            f"dropout {f['dropout_rate']}, test acc over {f['dropout_seeds']} seeds, "
            f"{f['dropout_epochs']} epochs: model.fit / loop",
            f"{f['dropout_fit_test_mean']:.3f} ± {f['dropout_fit_test_std']:.3f} / "
            f"{f['dropout_loop_test_mean']:.3f} ± {f['dropout_loop_test_std']:.3f}",
            "same start, other random masks",
        ),
        (
            "stages: " + " / ".join(STAGES),
            " / ".join(f"{f[f'stage_{k}_s']:.1f}" for k in STAGES) + " s",
            "one clean run, stage by stage",
        ),
        (
            "train stage: " + " / ".join(phases),
            " / ".join(f"{f[f'train_{k}_s']:.1f}" for k in phases) + " s",
            f"MLflow logging {f['log_share_of_train']:.0%} of {f['train_process_s']:.1f} s",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'measure':<{width}} | median | note |", f"|{'-' * (width + 2)}|---|---|"]
    lines += [f"| {name:<{width}} | {value} | {note} |" for name, value, note in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
