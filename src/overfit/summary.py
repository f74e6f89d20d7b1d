"""The tables people read: the sweep's table (train stage, MLflow) and reports/summary.md."""

from __future__ import annotations

from collections.abc import Sequence

from overfit.artifacts import Evaluation, JobResult


def results_table(results: Sequence[JobResult]) -> str:
    """Markdown table of the sweep as training measured it, best mean test accuracy first."""
    lines = [
        "| run | train acc | test acc | gap |",
        "|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (-r.mean["test_acc"], r.run)):
        m, s = r.mean, r.std
        lines.append(
            f"| {r.run} | {m['train_acc']:.3f} ± {s['train_acc']:.3f} "
            f"| {m['test_acc']:.3f} ± {s['test_acc']:.3f} | {m['gap']:+.3f} |"
        )
    return "\n".join(lines)


def progress_line(result: JobResult) -> str:
    """One finished job, as the sweep prints it."""
    mean, std = result.mean, result.std
    return (
        f"  {result.run:<14} train {mean['train_acc']:.3f} +- {std['train_acc']:.3f}   "
        f"test {mean['test_acc']:.3f} +- {std['test_acc']:.3f}   {result.seconds:5.1f} s"
    )


def summary_markdown(evaluation: Evaluation) -> str:
    """A table of every configuration and two sentences that the numbers support."""
    configs = evaluation.configs

    def cell(name: str, key: str) -> str:
        spread = configs[name].measures[key]
        return f"{spread.mean:.3f} ± {spread.std:.3f}"

    lines = [
        "| configuration | train acc | test acc | fresh acc | gap (train - test) |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(configs, key=lambda n: (-configs[n].mean("test_acc"), n)):
        lines.append(
            f"| {name} | {cell(name, 'train_acc')} | {cell(name, 'test_acc')} | "
            f"{cell(name, 'fresh_acc')} | {cell(name, 'gap')} |"
        )
    text = ["# Sweep summary", ""]
    if evaluation.headline is not None and evaluation.baseline_run is not None:
        base, best = configs[evaluation.baseline_run], configs[evaluation.headline.best_run]
        best_run = evaluation.headline.best_run
        closers = [n for n in configs if n != evaluation.baseline_run]
        smallest_gap = min(closers, key=lambda n: (configs[n].mean("gap"), n))
        closing = (
            "also the smallest gap of any configuration."
            if smallest_gap == best_run
            else f"the smallest gap, {configs[smallest_gap].mean('gap'):.3f}, comes from "
            f"{smallest_gap} at test {configs[smallest_gap].mean('test_acc'):.3f}."
        )
        b = {k: base.mean(k) for k in ("train_acc", "test_acc", "fresh_acc", "gap")}
        w = {k: best.mean(k) for k in ("test_acc", "fresh_acc", "gap")}
        text += [
            f"Without a penalty the network overfits: train accuracy {b['train_acc']:.3f}, "
            f"test {b['test_acc']:.3f} (a gap of {b['gap']:.3f}), "
            f"and {b['fresh_acc']:.3f} on fresh points. "
            f"The best penalty, {best_run}, reaches test {w['test_acc']:.3f} "
            f"({w['test_acc'] - b['test_acc']:+.3f}) and fresh {w['fresh_acc']:.3f} "
            f"({w['fresh_acc'] - b['fresh_acc']:+.3f}) with a gap of {w['gap']:.3f}, " + closing,
            "",
        ]
    text += ["Mean ± spread (standard deviation) over seeds, best test accuracy first.", ""]
    return "\n".join(text + lines) + "\n"
