"""Figures: pure functions from numbers to matplotlib figures; the plot stage writes them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def learning_curve_figure(curves: Mapping[str, np.ndarray], title: str) -> Figure:
    """Train and test accuracy (left) and loss (right) per epoch, averaged over seeds."""
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
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
