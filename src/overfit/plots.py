"""Figures: pure functions from numbers to matplotlib figures; the plot stage writes them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def learning_curve_figure(curves: Mapping[str, np.ndarray], title: str) -> Figure:
    """Train and test accuracy (left) and loss (right) per epoch, averaged over seeds."""
    # Fixed margins: the train stage draws one per run, and constrained layout doubles the cost.
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.91, wspace=0.22)
    epochs = np.arange(1, len(curves["train_accuracy"]) + 1)
    for split, colour in (("train", "tab:blue"), ("test", "tab:orange")):
        acc.plot(epochs, curves[f"{split}_accuracy"], color=colour, label=split)
        loss.plot(epochs, curves[f"{split}_loss"], color=colour, label=split)
    acc.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
    loss.set(xlabel="epoch", ylabel="loss (with penalty)", title=f"{title}: loss", yscale="log")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> None:
    """Write a PNG and free the figure (pyplot keeps every open figure alive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


# --- the figures a reader wants ----------------------------------------------------------------

KIND_COLOURS = {"l1": "tab:red", "l2": "tab:blue", "l1_l2": "tab:purple"}


def comparison_curves_figure(curves: Mapping[str, np.ndarray], names: Mapping[str, str]) -> Figure:
    """Train and test accuracy per epoch: the unregularized run beside the best regularized one.

    `curves[label]` is [epochs, 4]: train mean, test mean, train spread, test spread.
    """
    fig, axes = plt.subplots(
        1, len(curves), figsize=(6 * len(curves), 4), sharey=True, constrained_layout=True
    )
    for ax, (label, c) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        epochs = np.arange(1, len(c) + 1)
        for col, split, colour in ((0, "train", "tab:blue"), (1, "test", "tab:orange")):
            ax.plot(epochs, c[:, col], color=colour, label=f"{split} (mean over seeds)")
            ax.fill_between(
                epochs,
                c[:, col] - c[:, col + 2],
                c[:, col] + c[:, col + 2],
                color=colour,
                alpha=0.25,
                linewidth=0,
            )
        ax.set(title=f"{label}: {names[label]}", xlabel="epoch", ylabel="accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    return fig


def strength_figure(rows: list[dict[str, object]], baseline: Mapping[str, float]) -> Figure:
    """Test and fresh accuracy against penalty strength, one line per kind, log x axis."""
    fig, ax = plt.subplots(figsize=(8, 4.8), constrained_layout=True)
    for kind in sorted({str(r["kind"]) for r in rows}):
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: float(r["strength"]))
        x = [float(r["strength"]) for r in mine]
        colour = KIND_COLOURS.get(kind, "tab:gray")
        ax.plot(x, [float(r["test_acc"]) for r in mine], "o-", color=colour, label=f"{kind} test")
        ax.plot(
            x,
            [float(r["fresh_acc"]) for r in mine],
            "s--",
            color=colour,
            alpha=0.7,
            label=f"{kind} fresh",
        )
    ax.axhline(
        baseline["test_acc"],
        color="black",
        linewidth=1,
        label=f"no penalty, test ({baseline['test_acc']:.3f})",
    )
    ax.axhline(
        baseline["fresh_acc"],
        color="black",
        linewidth=1,
        linestyle="--",
        label=f"no penalty, fresh ({baseline['fresh_acc']:.3f})",
    )
    ax.set(
        xscale="log",
        xlabel="penalty strength",
        ylabel="accuracy (mean over seeds)",
        title="Accuracy against penalty strength",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    return fig


def boundaries_figure(
    grid: np.ndarray,
    probabilities: Mapping[str, np.ndarray],
    scores: Mapping[str, Mapping[str, float]],
    train,
    test,
) -> Figure:
    """One panel per configuration: the decision boundary over the training and test points."""
    names = list(probabilities)
    cols = min(5, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(3.2 * cols, 3.0 * rows),
        squeeze=False,
        sharex=True,
        sharey=True,
        constrained_layout=True,
    )
    side = int(round(np.sqrt(len(grid))))
    gx, gy = grid[:, 0].reshape(side, side), grid[:, 1].reshape(side, side)
    for ax, name in zip(axes.ravel(), names, strict=False):
        p = probabilities[name].reshape(side, side)
        ax.contourf(gx, gy, p, levels=[0, 0.5, 1], colors=["#cde4f7", "#f9d3c9"], alpha=0.9)
        ax.contour(gx, gy, p, levels=[0.5], colors="black", linewidths=1)
        for points, marker, size in ((train, "o", 22), (test, "x", 14)):
            ax.scatter(
                points.x[:, 0],
                points.x[:, 1],
                c=points.y,
                cmap="coolwarm",
                marker=marker,
                s=size,
                vmin=0,
                vmax=1,
                linewidths=1,
            )
        s = scores[name]
        ax.set_title(f"{name}\ntrain {s['train_acc']:.2f} test {s['test_acc']:.2f}", fontsize=9)
    for ax in axes.ravel()[len(names) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("x2")
    for ax in axes[-1, :]:
        ax.set_xlabel("x1")
    fig.suptitle("Decision boundaries (mean over seeds): o train points, x test points")
    return fig


def weights_figure(
    kernels: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    shares: Mapping[str, float],
    near_zero: float,
) -> Figure:
    """Hidden-weight magnitudes, L1 against L2 at the same strength (all seeds pooled)."""
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    everything = np.concatenate([np.abs(k).ravel() for k in kernels.values()])
    bins = np.logspace(np.log10(max(everything.min(), 1e-8)), np.log10(everything.max()), 60)
    for name, kernel in kernels.items():
        ax.hist(
            np.abs(kernel).ravel(),
            bins=bins,
            alpha=0.55,
            color=KIND_COLOURS.get(kinds[name], "tab:gray"),
            label=f"{name}: {shares[name]:.0%} of weights below {near_zero:g}",
        )
    ax.axvline(near_zero, color="black", linestyle=":", linewidth=1)
    ax.set(
        xscale="log",
        xlabel="|hidden weight|",
        ylabel="count",
        title="L1 drives hidden weights to zero; L2 shrinks them all",
    )
    ax.legend()
    return fig


# --- the summary -------------------------------------------------------------------------------


def summary_markdown(report: Mapping[str, Any]) -> str:
    """A table of every configuration and two sentences that the numbers support."""
    configs = report["configs"]

    def cell(c: Mapping[str, Any], key: str) -> str:
        return f"{c[key]['mean']:.3f} ± {c[key]['std']:.3f}"

    lines = [
        "| configuration | train acc | test acc | fresh acc | gap (train - test) |",
        "|---|---|---|---|---|",
    ]
    order = sorted(configs, key=lambda n: (-configs[n]["test_acc"]["mean"], n))
    for name in order:
        c = configs[name]
        lines.append(
            f"| {name} | {cell(c, 'train_acc')} | {cell(c, 'test_acc')} | "
            f"{cell(c, 'fresh_acc')} | {cell(c, 'gap')} |"
        )
    base, best = report.get("baseline"), report.get("best")
    text = ["# Sweep summary", ""]
    if base and best:
        closers = [n for n in configs if n != base["run"]]
        smallest_gap = min(closers, key=lambda n: (configs[n]["gap"]["mean"], n))
        gap = configs[smallest_gap]["gap"]["mean"]
        closing = (
            "also the smallest gap of any configuration."
            if smallest_gap == best["run"]
            else f"the smallest gap, {gap:.3f}, comes from {smallest_gap} at test "
            f"{configs[smallest_gap]['test_acc']['mean']:.3f}."
        )
        text += [
            f"Without a penalty the network overfits: train accuracy {base['train_acc']:.3f}, "
            f"test {base['test_acc']:.3f} (a gap of {base['gap']:.3f}), "
            f"and {base['fresh_acc']:.3f} on fresh points. "
            f"The best penalty, {best['run']}, reaches test {best['test_acc']:.3f} "
            f"({best['test_acc'] - base['test_acc']:+.3f}) and fresh {best['fresh_acc']:.3f} "
            f"({best['fresh_acc'] - base['fresh_acc']:+.3f}) with a gap of {best['gap']:.3f}, "
            + closing,
            "",
        ]
    text += ["Mean ± spread (standard deviation) over seeds, best test accuracy first.", ""]
    return "\n".join(text + lines) + "\n"


# --- stage plot --------------------------------------------------------------------------------

FIGURES_DIR = Path("reports/figures")
SUMMARY_FILE = Path("reports/summary.md")


def comparable_pair(kinds: Mapping[str, str], configs: Mapping[str, Any]) -> tuple[str, str] | None:
    """An L1 and an L2 run at the same strength: the one where their sparsity differs most."""
    l1 = {configs[n]["strength"]: n for n, k in kinds.items() if k == "l1"}
    l2 = {configs[n]["strength"]: n for n, k in kinds.items() if k == "l2"}
    common = sorted(set(l1) & set(l2))
    if not common:
        return None
    share = lambda n: configs[n]["near_zero_share"]["mean"]  # noqa: E731
    s = max(common, key=lambda s: (share(l1[s]) - share(l2[s]), s))
    return l1[s], l2[s]


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


def plot(root: Path) -> list[Path]:
    """Every figure and the summary, from what evaluate wrote; returns the files written."""
    import json

    from overfit.config import load_params
    from overfit.data import load_train_test, write_atomically
    from overfit.evaluate import ARRAYS_FILE, METRICS_FILE, NEAR_ZERO, PLOTS_DIR

    config = load_params(root)
    report = json.loads((root / METRICS_FILE).read_text(encoding="utf-8"))
    configs = report["configs"]
    arrays = np.load(root / ARRAYS_FILE)
    train, test = load_train_test(root, config.data)
    strength_rows = read_csv_rows(root / PLOTS_DIR / "accuracy_vs_strength.csv")
    kinds = {r["run"]: r["kind"] for r in strength_rows}

    figures: dict[str, Figure] = {}
    if "best" in report:
        curves_rows = read_csv_rows(root / PLOTS_DIR / "learning_curves.csv")
        curves = {
            label: np.array(
                [
                    [
                        float(r[k])
                        for k in ("train_accuracy", "test_accuracy", "train_std", "test_std")
                    ]
                    for r in curves_rows
                    if r["run"] == label
                ]
            )
            for label in ("baseline", "best")
        }
        names = {"baseline": report["baseline"]["run"], "best": report["best"]["run"]}
        figures["learning_curves"] = comparison_curves_figure(curves, names)
        figures["accuracy_vs_strength"] = strength_figure(strength_rows, report["baseline"])
    probabilities = {
        n: arrays[f"proba/{n}"] for n in sorted(configs, key=_config_order(kinds, configs))
    }
    scores = {n: {k: configs[n][k]["mean"] for k in ("train_acc", "test_acc")} for n in configs}
    figures["decision_boundaries"] = boundaries_figure(
        arrays["grid"], probabilities, scores, train, test
    )
    pair = comparable_pair(kinds, configs)
    if pair:
        figures["weights_l1_vs_l2"] = weights_figure(
            {n: arrays[f"kernels/{n}"] for n in pair},
            kinds,
            {n: configs[n]["near_zero_share"]["mean"] for n in pair},
            NEAR_ZERO,
        )
    written = []
    for name, fig in figures.items():
        path = root / FIGURES_DIR / f"{name}.png"
        save_figure(fig, path)
        written.append(path)
    write_atomically(root / SUMMARY_FILE, summary_markdown(report))
    return [*written, root / SUMMARY_FILE]


def _config_order(kinds: Mapping[str, str], configs: Mapping[str, Any]):
    """Unregularized first, then by kind and decreasing strength."""
    rank = {"none": 0, "l1": 1, "l2": 2, "l1_l2": 3}
    return lambda n: (rank.get(kinds.get(n, "none"), 9), -configs[n]["strength"], n)


def log_to_parent_run(root: Path, files: list[Path]) -> str | None:
    """Attach the figures and summary to the sweep's parent MLflow run, when the store has it."""
    import json
    import sys

    from mlflow.exceptions import MlflowException

    from overfit import tracking
    from overfit.config import load_params
    from overfit.train import MODELS_DIR, SWEEP_FILE

    sweep = json.loads((root / MODELS_DIR / SWEEP_FILE).read_text(encoding="utf-8"))
    uri = tracking.tracking_uri(root, load_params(root).tracking)
    try:
        tracking.check_reachable(uri)
        mlflow = tracking.client(uri)
        mlflow.get_run(sweep["parent_run_id"])
    except (ConnectionError, MlflowException) as error:
        # A clone that pulled models/ from a DVC remote has no store holding the sweep.
        reason = str(error).splitlines()[0]
        print(f"warning: figures not logged to MLflow: {reason}", file=sys.stderr)
        return None
    for path in files:
        mlflow.log_artifact(sweep["parent_run_id"], str(path), "reports")
    return sweep["parent_run_id"]


def main() -> None:
    import sys

    from overfit.config import ConfigError, exit_on_config_error, project_root

    try:
        root = project_root()
        files = plot(root)
        parent = log_to_parent_run(root, files)
    except ConfigError as error:
        exit_on_config_error(error)
    except (FileNotFoundError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    for path in files:
        print(f"wrote {path.relative_to(root)}")
    if parent is not None:
        print(f"logged them to MLflow parent run {parent}")


if __name__ == "__main__":
    main()
