"""Figures: pure functions from numbers to matplotlib figures (PNG bytes to write)."""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from overfit.core.data import Points
from overfit.core.remedies import FAMILIES, Remedy
from overfit.core.selection import strength_of
from overfit.core.uncertainty import mean_interval
from overfit.reports import ConfigStudy, ConfigSummary, SizeStudy


class LearningCurves:
    """Train and test accuracy (left) and loss (right) per epoch, averaged over seeds: one
    figure whose lines and titles are updated for each run, which costs 40% less than a new
    figure per run (the train stage draws one per run)."""

    def __init__(self) -> None:
        # Fixed margins: constrained layout doubles the cost.
        self.figure = Figure(figsize=(10, 3.8))
        self.acc, self.loss = self.figure.subplots(1, 2)
        self.figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.91, wspace=0.22)
        self.lines = {}
        for split, colour in (("train", "tab:blue"), ("test", "tab:orange")):
            (self.lines[f"{split}_accuracy"],) = self.acc.plot([], [], color=colour, label=split)
            (self.lines[f"{split}_loss"],) = self.loss.plot([], [], color=colour, label=split)
        self.acc.set(xlabel="epoch", ylabel="accuracy")
        self.loss.set(xlabel="epoch", ylabel="loss (with penalty)", yscale="log")
        for ax in (self.acc, self.loss):
            ax.grid(alpha=0.3)
            ax.legend()

    def png(self, curves: Mapping[str, np.ndarray], title: str) -> bytes:
        # At most ~1000 points a line, the last epoch included: a 1000-pixel-wide figure shows
        # no more, and drawing 4000 takes twice as long.
        count = len(curves["train_accuracy"])
        shown = np.unique(np.r_[np.arange(0, count, max(1, count // 1000)), count - 1])
        for name, line in self.lines.items():
            line.set_data(shown + 1, curves[name][shown])
        self.acc.set_title(f"{title}: accuracy")
        self.loss.set_title(f"{title}: loss")
        for ax in (self.acc, self.loss):
            ax.relim()
            ax.autoscale_view()
        return png_bytes(self.figure)


@functools.cache
def learning_curves() -> LearningCurves:
    """This process's learning-curve figure, drawn again for each run."""
    return LearningCurves()


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG (Figure objects, not pyplot: no display, no global state)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# --- the figures a reader wants ----------------------------------------------------------------

KIND_COLOURS = {
    "l1": "tab:red",
    "l2": "tab:blue",
    "l1_l2": "tab:purple",
    "dropout": "tab:green",
    "early_stopping": "tab:orange",
    "max_norm": "tab:brown",
    "unit_norm": "tab:olive",
    "noise": "tab:cyan",
    "activity_l1": "tab:pink",
    "activity_l2": "tab:gray",
    "activity_l1_l2": "darkgoldenrod",
}


def comparison_curves_figure(curves: Mapping[str, np.ndarray], names: Mapping[str, str]) -> Figure:
    """Train and test accuracy per epoch: the unregularized run beside the selected one.

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


SPLIT_STYLES = {  # figure, marker and line, label
    "cv_acc": ("o-", "cross-validation (training rows)"),
    "test_acc": ("s--", "test"),
    "fresh_acc": ("^:", "fresh sample"),
}


def strength_figure(
    configs: Mapping[str, ConfigSummary], baseline: str, selected: str, test_choice: str
) -> Figure:
    """Per remedy (family), one panel: CV, test and fresh accuracy against its setting, with
    the configuration selected on cross-validation and the one the test set would pick marked."""
    present = {c.kind for n, c in configs.items() if n != baseline}
    kinds = [k for k in FAMILIES if k in present] + sorted(present - set(FAMILIES))
    columns = min(max(len(kinds), 1), 4)
    rows = -(-max(len(kinds), 1) // columns)
    fig = Figure(figsize=(4.2 * columns, 4.0 * rows), constrained_layout=True)
    axes = np.atleast_1d(fig.subplots(rows, columns, sharey=True)).ravel()
    for ax in axes[len(kinds) :]:
        ax.set_visible(False)
    measures = [m for m in SPLIT_STYLES if all(m in c.measures for c in configs.values())]
    base = configs[baseline]
    for ax, kind in zip(axes, kinds, strict=False):
        mine = sorted(
            ((n, c) for n, c in configs.items() if c.kind == kind), key=lambda nc: nc[1].strength
        )
        x = [c.strength for _, c in mine]
        colour = KIND_COLOURS.get(kind, "tab:gray")
        for measure in measures:
            style, label = SPLIT_STYLES[measure]
            ax.plot(x, [c.mean(measure) for _, c in mine], style, color=colour, label=label)
            ax.axhline(base.mean(measure), color="black", linestyle=style[1:], linewidth=0.8)
        if all(c.measures["test_acc"].low is not None for _, c in mine):  # 70 points: wide
            lows = [c.measures["test_acc"].low for _, c in mine]
            highs = [c.measures["test_acc"].high for _, c in mine]
            means = [c.mean("test_acc") for _, c in mine]
            ax.errorbar(
                x,
                means,
                yerr=[np.subtract(means, lows), np.subtract(highs, means)],
                fmt="none",
                ecolor=colour,
                alpha=0.45,
                capsize=3,
                label="test: 95% interval",
            )
        for name, c in mine:
            for chosen, marker, label in (
                (selected, "*", "selected"),
                (test_choice, "D", "best on test (optimistic)"),
            ):
                if name == chosen:
                    ax.plot(
                        c.strength,
                        c.mean("test_acc"),
                        marker,
                        markersize=16 if marker == "*" else 10,
                        markerfacecolor="none" if marker == "D" else "gold",
                        markeredgecolor="black",
                        label=f"{label}: {name}",
                    )
        family = FAMILIES.get(kind)
        if family is None or family.log:
            ax.set_xscale("log")
        ax.set(xlabel=family.axis if family else "setting", title=family.label if family else kind)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower left")
    for ax in axes[::columns]:
        ax.set_ylabel("accuracy (mean; black lines: no remedy)")
    chosen_text = f"selected {selected}" + (
        "" if test_choice == selected else f", best on test {test_choice}"
    )
    fig.suptitle(f"Accuracy against each remedy's setting: {chosen_text}")
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
    width, height = 3.2 * cols, 3.0 * rows
    fig = Figure(figsize=(width, height))
    # Not shared axes but the same fixed limits: sharing makes every panel's autoscaling
    # update all 29 (0.7 s); the grid spans every point anyway.
    axes = fig.subplots(rows, cols, squeeze=False)
    # Fixed margins, in inches: constrained layout takes ~2 s over 29 panels.
    fig.subplots_adjust(
        left=0.8 / width,
        right=1 - 0.15 / width,
        bottom=0.55 / height,
        top=1 - 1.05 / height,
        wspace=0.12,
        hspace=0.42,
    )
    side = int(round(np.sqrt(len(grid))))
    gx, gy = grid[:, 0].reshape(side, side), grid[:, 1].reshape(side, side)
    for ax, name in zip(axes.ravel(), names, strict=False):
        ax.set(xlim=(gx.min(), gx.max()), ylim=(gy.min(), gy.max()))
        ax.set_autoscale_on(False)
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
        interval = f" ({s['test_low']:.2f}-{s['test_high']:.2f})" if "test_low" in s else ""
        title = f"{name}\ntrain {s['train_acc']:.2f} test {s['test_acc']:.2f}{interval}"
        ax.set_title(title, fontsize=9)
    for ax in axes.ravel()[len(names) :]:
        ax.set_visible(False)
    for ax in axes.ravel():
        ax.set(xlabel="x1", ylabel="x2")
        ax.label_outer()  # tick labels and axis labels on the outer panels only
    fig.suptitle(
        "Decision boundaries (mean over seeds): o train points, x test points",
        y=1 - 0.2 / height,
    )
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
    """Unregularized first, then by remedy and decreasing strength: the panels' order."""
    rank = {"none": 0} | {kind: i + 1 for i, kind in enumerate(FAMILIES)}
    return sorted(
        configs, key=lambda n: (rank.get(configs[n].kind, 99), -strength_of(configs[n]), n)
    )


# --- the study across draws ------------------------------------------------------------------


def study_order(configs: Mapping[str, ConfigStudy]) -> list[str]:
    """The study's configurations as the panels order them: by family, then strength."""
    rank = {"none": 0} | {kind: i + 1 for i, kind in enumerate(FAMILIES)}

    def key(name: str) -> tuple[int, float, str]:
        c = configs[name]
        return rank.get(c.kind, 99), -Remedy(c.kind, c.strength).strength, name

    return sorted(configs, key=key)


def effects_figure(size: SizeStudy, draws: int, baseline: str) -> Figure:
    """Each configuration's effect against no remedy across draws, one row per configuration
    grouped by family, no remedy at zero: on fresh accuracy (left) and on the train - test gap
    (right), the mean with its 95% interval; a filled marker is told apart from noise."""
    names = study_order(size.configs)
    fig = Figure(figsize=(11, 0.28 * len(names) + 1.6), constrained_layout=True)
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(names))[::-1]
    for ax, measure, title in (
        (axes[0], "fresh_effect", "fresh accuracy (right: better)"),
        (axes[1], "gap_effect", "train - test gap (left: better)"),
    ):
        ax.axvline(0, color="black", linewidth=0.8)
        for row, name in zip(y, names, strict=True):
            c = size.configs[name]
            effect = getattr(c, measure)
            colour = KIND_COLOURS.get(c.kind, "black")
            if effect is None:  # no remedy: zero by definition
                ax.plot(0, row, "s", color="black")
                continue
            ax.plot([effect.low, effect.high], [row, row], color=colour, linewidth=2)
            face = colour if effect.distinguishable else "white"
            ax.plot(effect.mean, row, "o", color=colour, markerfacecolor=face)
        ax.set(
            title=f"effect on {title}", xlabel=f"difference from {baseline} (mean, 95% interval)"
        )
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(y, names, fontsize=8)
    fig.suptitle(
        f"Each remedy against {baseline} on {draws} draws of the data, {size.n_train} training "
        "rows (filled: more than noise, Benjamini-Hochberg adjusted)"
    )
    return fig


def family_bests(size: SizeStudy) -> dict[str, str]:
    """Each family's configuration with the best mean fresh accuracy across draws (in hindsight:
    the study's own figures choose it)."""
    best: dict[str, str] = {}
    for name, c in sorted(size.configs.items()):
        mean = float(np.mean(c.fresh_acc))
        if c.kind not in best or mean > float(np.mean(size.configs[best[c.kind]].fresh_acc)):
            best[c.kind] = name
    return best


def learning_curve_figure(sizes: list[SizeStudy], draws: int) -> Figure:
    """More data as a remedy: fresh accuracy (left) and the train - test gap (right) against
    the training rows, for no remedy and each family's best at each size (in hindsight), the
    mean over draws with its 95% interval."""
    fig = Figure(figsize=(11, 4.2), constrained_layout=True)
    acc_ax, gap_ax = fig.subplots(1, 2)
    kinds = ["none"] + [k for k in FAMILIES if any(k in family_bests(s) for s in sizes)]
    x = [s.n_train for s in sizes]
    for kind in kinds:
        colour = KIND_COLOURS.get(kind, "black")
        label = FAMILIES[kind].label if kind in FAMILIES else "no remedy"
        for ax, values in (
            (acc_ax, lambda c: c.fresh_acc),
            (gap_ax, lambda c: np.subtract(c.train_acc, c.test_acc)),
        ):
            stats = [mean_interval(values(s.configs[family_bests(s)[kind]])) for s in sizes]
            means = [m for m, _, _ in stats]
            ax.plot(x, means, "o-", color=colour, label=label, linewidth=2 if kind == "none" else 1)
            ax.fill_between(x, [lo for _, lo, _ in stats], [hi for _, _, hi in stats],
                            color=colour, alpha=0.12)  # fmt: skip
    acc_ax.set(xlabel="training rows", ylabel="fresh accuracy", xscale="log")
    gap_ax.set(xlabel="training rows", ylabel="train - test accuracy", xscale="log")
    for ax in (acc_ax, gap_ax):
        ax.minorticks_off()  # the sizes themselves, not 4x10^1
        ax.set_xticks(x, [str(n) for n in x])
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    fig.suptitle(
        f"More data as a remedy: mean over {draws} draws with 95% interval (each family at its "
        "best setting for that size, in hindsight)"
    )
    return fig
