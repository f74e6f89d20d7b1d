"""Figures: pure functions from numbers to matplotlib figures (PNG bytes to write)."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from overfit.artifacts import ConfigSummary
from overfit.data import Points


def learning_curve_figure(curves: Mapping[str, np.ndarray], title: str) -> Figure:
    """Train and test accuracy (left) and loss (right) per epoch, averaged over seeds."""
    # Fixed margins: the train stage draws one per run, and constrained layout doubles the cost.
    fig = Figure(figsize=(10, 3.8))
    acc, loss = fig.subplots(1, 2)
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


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG (Figure objects, not pyplot: no display, no global state)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# --- the figures a reader wants ----------------------------------------------------------------

KIND_COLOURS = {"l1": "tab:red", "l2": "tab:blue", "l1_l2": "tab:purple"}


def comparison_curves_figure(curves: Mapping[str, np.ndarray], names: Mapping[str, str]) -> Figure:
    """Train and test accuracy per epoch: the unregularized run beside the best regularized one.

    `curves[label]` is [epochs, 4]: train mean, test mean, train spread, test spread.
    """
    fig = Figure(figsize=(6 * len(curves), 4), constrained_layout=True)
    axes = fig.subplots(1, len(curves), sharey=True)
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


def strength_figure(configs: Mapping[str, ConfigSummary], baseline: str) -> Figure:
    """Test and fresh accuracy against penalty strength, one line per kind, log x axis."""
    fig = Figure(figsize=(8, 4.8), constrained_layout=True)
    ax = fig.subplots()
    regularized = [c for name, c in configs.items() if name != baseline]
    for kind in sorted({c.kind for c in regularized}):
        mine = sorted((c for c in regularized if c.kind == kind), key=lambda c: c.strength)
        x = [c.strength for c in mine]
        colour = KIND_COLOURS.get(kind, "tab:gray")
        ax.plot(x, [c.mean("test_acc") for c in mine], "o-", color=colour, label=f"{kind} test")
        ax.plot(
            x,
            [c.mean("fresh_acc") for c in mine],
            "s--",
            color=colour,
            alpha=0.7,
            label=f"{kind} fresh",
        )
    base = configs[baseline]
    ax.axhline(
        base.mean("test_acc"),
        color="black",
        linewidth=1,
        label=f"no penalty, test ({base.mean('test_acc'):.3f})",
    )
    ax.axhline(
        base.mean("fresh_acc"),
        color="black",
        linewidth=1,
        linestyle="--",
        label=f"no penalty, fresh ({base.mean('fresh_acc'):.3f})",
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
    train: Points,
    test: Points,
) -> Figure:
    """One panel per configuration: the decision boundary over the training and test points."""
    names = list(probabilities)
    cols = min(5, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows), constrained_layout=True)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
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
    fig = Figure(figsize=(8, 4.5), constrained_layout=True)
    ax = fig.subplots()
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


def comparable_pair(configs: Mapping[str, ConfigSummary]) -> tuple[str, str] | None:
    """An L1 and an L2 run at the same strength: the one where their sparsity differs most."""
    l1 = {c.strength: n for n, c in configs.items() if c.kind == "l1"}
    l2 = {c.strength: n for n, c in configs.items() if c.kind == "l2"}
    common = sorted(set(l1) & set(l2))
    if not common:
        return None
    share = lambda n: configs[n].mean("near_zero_share")  # noqa: E731
    s = max(common, key=lambda s: (share(l1[s]) - share(l2[s]), s))
    return l1[s], l2[s]


def config_order(configs: Mapping[str, ConfigSummary]) -> list[str]:
    """Unregularized first, then by kind and decreasing strength: the panels' order."""
    rank = {"none": 0, "l1": 1, "l2": 2, "l1_l2": 3}
    return sorted(configs, key=lambda n: (rank.get(configs[n].kind, 9), -configs[n].strength, n))
