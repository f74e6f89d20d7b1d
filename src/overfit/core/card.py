"""The model card: a short Markdown description of the registered model, written from the
evaluation, for the version's page (and the registered model's) in MLflow's UI."""

from __future__ import annotations

from collections.abc import Mapping

from overfit.config import Config
from overfit.core.selection import describe
from overfit.reports import Evaluation, ModelRecord, Study


def model_card(
    config: Config,
    report: Evaluation,
    record: ModelRecord,
    lineage: Mapping[str, str],
    study: Study | None = None,
) -> str:
    """The card of the model `record` names: what it is, its data, how it was chosen, its
    figures with their spread, the baseline it is compared with, its configuration's effect
    across the `study`'s draws, where it came from (`lineage`: the commit and the data's
    digests), and the limits a user must know."""
    data = config.data
    n_test = data.n_samples - data.n_train
    chosen = report.configs[record.run]

    def figure(name: str, key: str, run: str = record.run) -> str:
        spread = report.configs[run].measures.get(key)
        over = "folds" if key.startswith("cv") else "seeds"
        if spread is None:
            return f"| {name} | n/a | |"
        interval = f" | {spread.low:.3f}-{spread.high:.3f}" if spread.low is not None else " |"
        return f"| {name} | {spread.mean:.3f} ± {spread.std:.3f} (over {over}){interval} |"

    rule = describe(record.rule, config.select.folds, report.one_se)
    rows = ["| figure | mean ± standard deviation | 95% interval |", "|---|---|---|"]
    rows += [figure("cross-validation accuracy", "cv_acc")] if "cv_acc" in chosen.measures else []
    rows += [figure(f"test accuracy ({n_test} points)", "test_acc")]
    rows += [figure(f"fresh accuracy ({data.fresh_samples} points)", "fresh_acc")]
    rows += [f"| this seed's test accuracy | {record.seed_test:.3f} | |"]
    if report.baseline_run is not None:
        rows += [figure("unregularized: test accuracy", "test_acc", report.baseline_run)]
        rows += [figure("unregularized: fresh accuracy", "fresh_acc", report.baseline_run)]
    size = study.size(data.n_train) if study else None
    effect = size.configs[record.run].fresh_effect if size and record.run in size.configs else None
    if study is not None and effect is not None:
        rows += [
            f"| fresh accuracy against the unregularized, across {study.draws} draws of the data "
            f"| {effect.mean:+.3f} (mean over draws) | {effect.low:+.3f} to {effect.high:+.3f} |"
        ]
    digests = [f"- `{key}`: `{value}`" for key, value in sorted(lineage.items())]
    return "\n".join(
        [
            f"# {record.name}: {record.run}, seed {record.seed}",
            "",
            f"A Keras MLP (2 inputs, {config.model.hidden_units} ReLU units, 1 sigmoid output) "
            f"with the remedy `{record.run}`. It takes a table with columns `x1`, `x2` and "
            "returns the probability of class 1 per row.",
            "",
            f"**Data.** `{data.name}` (noise {data.noise}): {data.n_samples} points, the first "
            f"{data.n_train} train and the other {n_test} test; {data.fresh_samples} fresh "
            "points from the same generator estimate real-world accuracy.",
            "",
            f"**Chosen by** {record.rule}: {rule}.",
            "",
            *rows,
            "",
            "**Lineage.**",
            *digests,
            f"- `overfit.model_sha256`: `{record.model_sha256}`",
            "",
            f"**Limits.** {data.n_train} training rows: one test point is "
            f"{1 / n_test:.3f} of test accuracy, so differences of a point or two are noise. "
            "The test and fresh accuracies were read after the choice, and guard the CI gate "
            "and promotion. Two features in a small box around the data: anything else is "
            "outside what it has seen.",
        ]
    )
