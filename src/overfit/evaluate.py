"""Stage evaluate: load every saved model and measure it on train, test and fresh points.

Writes reports/metrics.json (the DVC metrics file), the tables behind the DVC plots in
reports/plots/, and reports/evaluation.npz (decision-boundary grids and hidden weights) for the
plot stage, which then needs no TensorFlow.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from overfit.config import ConfigError, exit_on_config_error, load_params, project_root
from overfit.data import DataError, Points, load_fresh, load_train_test, write_atomically
from overfit.train import HISTORY_FILE, MODELS_DIR, SWEEP_FILE, read_result

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

METRICS_FILE = Path("reports/metrics.json")
PLOTS_DIR = Path("reports/plots")
ARRAYS_FILE = Path("reports/evaluation.npz")
# A hidden weight this small no longer moves the output: Adam keeps L1-penalized weights
# jittering within about one learning rate (1e-3) of zero instead of landing exactly on it.
NEAR_ZERO = 1e-2
GRID_SIZE = 150
DECIMALS = 6


class EvaluationError(RuntimeError):
    """What was saved is not what was trained, or a run is missing."""


# --- pure functions --------------------------------------------------------------------------


def weight_stats(hidden_kernel: np.ndarray) -> dict[str, float]:
    """L1 and L2 norms of the hidden weights and the share of them that are near zero."""
    w = np.asarray(hidden_kernel, dtype=np.float64).ravel()
    return {
        "hidden_l1": float(np.abs(w).sum()),
        "hidden_l2": float(np.sqrt((w**2).sum())),
        "near_zero_share": float(np.mean(np.abs(w) < NEAR_ZERO)),
    }


def mean_std(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(a.mean()), DECIMALS), "std": round(float(a.std()), DECIMALS)}


def summarize_run(per_seed: Sequence[Mapping[str, float]], strength: float) -> dict[str, Any]:
    """Mean and spread over seeds of every per-seed measure."""
    names = per_seed[0].keys()
    summary: dict[str, Any] = {"strength": strength}
    summary |= {name: mean_std([s[name] for s in per_seed]) for name in names}
    return summary


def pick_best(configs: Mapping[str, Mapping[str, Any]], baseline: str) -> str:
    """The regularized configuration with the best mean test accuracy (ties: lower test loss)."""
    candidates = [name for name in configs if name != baseline]
    if not candidates:
        raise EvaluationError("no regularized configuration to compare with the baseline")
    return min(
        candidates,
        key=lambda n: (-configs[n]["test_acc"]["mean"], configs[n]["test_loss"]["mean"], n),
    )


def headline(configs: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, Any]:
    c = configs[name]
    return {"run": name} | {
        key: c[key]["mean"] for key in ("train_acc", "test_acc", "fresh_acc", "gap")
    }


def metrics_report(configs: dict[str, dict[str, Any]], baseline: str | None) -> dict[str, Any]:
    report: dict[str, Any] = {"configs": dict(sorted(configs.items()))}
    if baseline is not None:
        report["baseline"] = headline(configs, baseline)
        report["best"] = headline(configs, pick_best(configs, baseline))
    return report


def decision_grid(points: Sequence[Points], size: int = GRID_SIZE) -> np.ndarray:
    """A size x size grid of inputs covering every point with a margin, as (size*size, 2)."""
    xy = np.concatenate([p.x for p in points])
    lo, hi = xy.min(axis=0) - 0.5, xy.max(axis=0) + 0.5
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], size), np.linspace(lo[1], hi[1], size))
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def strength_table(configs: Mapping[str, Mapping[str, Any]], kinds: Mapping[str, str]) -> str:
    """CSV for the DVC plot of accuracy against penalty strength, one row per configuration."""
    rows = ["run,kind,strength,test_acc,fresh_acc,train_acc,gap"]
    for name, c in sorted(configs.items(), key=lambda kv: (kinds[kv[0]], kv[1]["strength"])):
        rows.append(
            f"{name},{kinds[name]},{c['strength']!r},{c['test_acc']['mean']},"
            f"{c['fresh_acc']['mean']},{c['train_acc']['mean']},{c['gap']['mean']}"
        )
    return "\n".join(rows) + "\n"


def curves_table(histories: Mapping[str, np.ndarray]) -> str:
    """CSV of per-epoch accuracy, baseline against best: mean and spread over seeds."""
    rows = ["epoch,run,train_accuracy,test_accuracy,train_std,test_std"]
    for label, curves in histories.items():
        rows += [
            f"{epoch},{label}," + ",".join(f"{v:.6g}" for v in values)
            for epoch, values in enumerate(curves.tolist(), start=1)
        ]
    return "\n".join(rows) + "\n"


# --- I/O at the edges ------------------------------------------------------------------------


def load_history(run_dir: Path) -> np.ndarray:
    """history.csv as an array [seed, epoch, train_accuracy, test_accuracy] per row."""
    path = run_dir / HISTORY_FILE
    header = path.read_text(encoding="utf-8").split("\n", 1)[0].split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    columns = [header.index(c) for c in ("seed", "epoch", "train_accuracy", "test_accuracy")]
    return table[:, columns]


def accuracy_curves(run_dir: Path) -> np.ndarray:
    """Per-epoch train and test accuracy, mean then spread over seeds: shape [epochs, 4]."""
    table = load_history(run_dir)
    seeds = np.unique(table[:, 0])
    per_seed = np.stack([table[table[:, 0] == s][:, 2:] for s in seeds])
    return np.concatenate([per_seed.mean(axis=0), per_seed.std(axis=0)], axis=1)


def probabilities(weights: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """The MLP's output, Dense(relu) then Dense(sigmoid), in float32 from its Keras weights.

    Numpy on the loaded weights rather than calling the Keras model: eager Keras calls cost
    ~10 ms each, and the stage makes four per model (train, test, fresh, the plot's grid).
    """
    from scipy.special import expit

    w1, b1, w2, b2 = (np.asarray(w, dtype=np.float32) for w in weights)
    x = np.asarray(x, dtype=np.float32)
    logits = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), 1024):  # hidden activations in cache-sized blocks: 3x faster
        hidden = x[start : start + 1024] @ w1
        hidden += b1
        np.maximum(hidden, 0, out=hidden)
        logits[start : start + 1024] = (hidden @ w2).ravel()
    return expit(logits + b2[0])


def measure(output: np.ndarray, penalty: float, points: Points) -> dict[str, float]:
    """Accuracy and loss (binary cross-entropy plus the penalty) in float32, as Keras does."""
    y = points.y.astype(np.float32)
    accuracy = float(np.mean((output > 0.5) == (y == 1)))
    # Keras' binary_crossentropy on probabilities: clipped to [1e-7, 1 - 1e-7] first.
    eps = np.float32(1e-7)
    p = np.clip(output.astype(np.float32), eps, np.float32(1) - eps)
    bce = -(y * np.log(p) + (np.float32(1) - y) * np.log(np.float32(1) - p))
    return {"acc": accuracy, "loss": float(np.mean(bce, dtype=np.float32)) + penalty}


def evaluate_run(
    run_dir: Path, train: Points, test: Points, fresh: Points, grid: np.ndarray
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Per-seed measures of one configuration; its mean grid probabilities and hidden kernels."""
    import keras

    result = read_result(run_dir)
    per_seed, grids, kernels = [], [], []
    for seed in result["seeds"]:
        path = run_dir / f"seed_{seed}.keras"
        model = keras.models.load_model(path, safe_mode=True, compile=False)
        weights = model.get_weights()
        penalty = float(sum(np.asarray(loss) for loss in model.losses)) if model.losses else 0.0
        on = {
            split: measure(probabilities(weights, points.x), penalty, points)
            for split, points in (("train", train), ("test", test), ("fresh", fresh))
        }
        reported = result["per_seed"][str(seed)]
        for split, points in (("train", train), ("test", test)):
            # Compare counts of correct points: training reports float32 accuracies.
            if round(on[split]["acc"] * len(points)) != round(
                reported[f"{split}_acc"] * len(points)
            ):
                raise EvaluationError(
                    f"{path}: {split} accuracy {on[split]['acc']:.4f} recomputed, "
                    f"{reported[f'{split}_acc']:.4f} reported by training"
                )
        kernel = weights[0]
        per_seed.append(
            {
                "train_acc": on["train"]["acc"],
                "test_acc": on["test"]["acc"],
                "fresh_acc": on["fresh"]["acc"],
                "gap": on["train"]["acc"] - on["test"]["acc"],
                "train_loss": on["train"]["loss"],
                "test_loss": on["test"]["loss"],
                "fresh_loss": on["fresh"]["loss"],
            }
            | weight_stats(kernel)
        )
        grids.append(probabilities(weights, grid))
        kernels.append(kernel)
    summary = summarize_run(per_seed, float(result["penalty"]["strength"]))
    return summary, np.mean(grids, axis=0), np.stack(kernels)


def evaluate(root: Path) -> dict[str, Any]:
    config = load_params(root)
    models = root / MODELS_DIR
    sweep_file = models / SWEEP_FILE
    if not sweep_file.is_file():
        raise EvaluationError(f"{sweep_file}: missing; run the train stage first")
    runs = sorted(json.loads(sweep_file.read_text(encoding="utf-8"))["runs"])
    train, test = load_train_test(root, config.data)
    fresh = load_fresh(root, config.data)
    grid = decision_grid([train, test])

    configs, kinds, arrays = {}, {}, {"grid": grid}
    for name in runs:
        summary, probabilities, kernels = evaluate_run(models / name, train, test, fresh, grid)
        configs[name] = summary
        kinds[name] = read_result(models / name)["penalty"]["kind"]
        arrays[f"proba/{name}"] = probabilities
        arrays[f"kernels/{name}"] = kernels
    baseline = next((n for n in runs if kinds[n] == "none"), None)
    report = metrics_report(configs, baseline)

    regularized = {n: c for n, c in configs.items() if kinds[n] != "none"}
    histories = {}
    if baseline is not None:
        histories["baseline"] = accuracy_curves(models / baseline)
        histories["best"] = accuracy_curves(models / report["best"]["run"])
    write_outputs(root, report, strength_table(regularized, kinds), curves_table(histories), arrays)
    return report


def write_outputs(
    root: Path, report: dict[str, Any], strengths: str, curves: str, arrays: dict[str, Any]
) -> None:
    """Everything is computed before the first file is written: no half-updated reports."""
    write_atomically(root / PLOTS_DIR / "accuracy_vs_strength.csv", strengths)
    write_atomically(root / PLOTS_DIR / "learning_curves.csv", curves)
    tmp = root / ARRAYS_FILE.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(root / ARRAYS_FILE)
    write_atomically(root / METRICS_FILE, json.dumps(report, indent=2) + "\n")


def main() -> None:
    try:
        report = evaluate(project_root())
    except ConfigError as error:
        exit_on_config_error(error)
    except (DataError, EvaluationError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    if "best" in report:
        base, best = report["baseline"], report["best"]
        print(
            f"baseline {base['run']}: train {base['train_acc']:.3f} test {base['test_acc']:.3f} "
            f"fresh {base['fresh_acc']:.3f}\n"
            f"best     {best['run']}: train {best['train_acc']:.3f} test {best['test_acc']:.3f} "
            f"fresh {best['fresh_acc']:.3f}"
        )


if __name__ == "__main__":
    main()
