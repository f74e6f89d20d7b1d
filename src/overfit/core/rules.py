"""The gate's rules, pure: what a revision's reports (or a registered version's tags) say of the
baseline and the selected configuration, and the rules that compare a base with a change.

The rules guard the *selected* configuration, the one `select.metric` chose (by default on
cross-validation inside the training rows), never whichever configuration is best on the test
set. The CI gate (commands/gate.py) applies them to reports/metrics.json and configs.json at two
revisions; promotion (commands/promote.py) to the champion's and the candidate's version tags.

The reports are read through their one definition in artifacts.py. A base from before selection
(metrics.json with `best`, or the older single file holding every configuration) is read too,
by the schemas below: its figures for the working tree's selected configuration stand in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict, StrictStr

from overfit import layout
from overfit.artifacts import ArtifactError, loads
from overfit.config import SELECTION_METRICS, GateConfig
from overfit.core.remedies import TEST_WATCH_LABEL, watched_test
from overfit.core.selection import OPTIMISTIC
from overfit.core.uncertainty import drop_noise
from overfit.reports import Baseline, ConfigSummary, Evaluation, Selected, parse_evaluation
from overfit.validation import Accuracy, Schema, shown

METRICS_FILE = layout.METRICS.as_posix()
CONFIGS_FILE = layout.CONFIGS.as_posix()
# metrics.json holds means rounded to 6 decimals, so the difference of two of them is off by up
# to 1e-6: a drop of exactly one test point (1/70) must pass a tolerance of 1/70. Real
# differences are far coarser (one test point of one seed out of five is 1/350).
PRECISION = 1e-6
# The tags the register stage writes on a version: the figures, by Selected's keys.
FIGURE_TAGS = {"cv": "cv_acc", "test": "test_acc", "fresh": "fresh_acc"}
RUN_TAG, RULE_TAG = "overfit.run", "overfit.selection_rule"


class GateError(RuntimeError):
    """The gate cannot compare: the message is the one line printed after `error: `."""


@dataclass(frozen=True)
class Pick:
    """A configuration's figures and how it was chosen: a selection rule, or None for a base
    from before selection, whose figures for the same configuration stand in. `intervals`: the
    figures' 95% intervals, by Selected's keys (cv, test, fresh), where the revision has them."""

    figures: Selected
    rule: str | None
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Metrics:
    """What the rules read at one revision: the baseline, the selection and every
    configuration's figures.

    `selected` None: a base from before selection; `best_run` is then what it reported instead
    (the best on the test set), shown in the report but never compared.
    """

    baseline: Baseline
    selected: Pick | None
    configs: Mapping[str, Selected]
    best_run: str | None = None


@dataclass(frozen=True)
class Rule:
    """One rule's verdict, with the values as the report shows them.

    `skipped` holds why the two sides cannot be compared; a skipped rule does not fail.
    """

    name: str
    base: str
    new: str
    tolerance: str
    passed: bool
    skipped: str = ""


# --- reading a revision ----------------------------------------------------------------------


class _Early(Schema):
    """A report from before selection: only what the rules read of it, the rest ignored."""

    model_config = ConfigDict(extra="ignore")


class EarlyMeasure(_Early):
    mean: Accuracy


class EarlyConfig(_Early):
    test_acc: EarlyMeasure
    fresh_acc: EarlyMeasure


class EarlyBest(_Early):
    run: StrictStr


class EarlyBaseline(_Early):
    """The baseline before selection, which had its fresh accuracy too."""

    train: Accuracy
    test: Accuracy


class EarlyMetrics(_Early):
    """metrics.json before selection, beside a configs.json: `best` was the best on test."""

    baseline: EarlyBaseline
    best: EarlyBest


class EarlyConfigs(_Early):
    configs: dict[str, EarlyConfig]


class EarliestBaseline(_Early):
    train_acc: Accuracy
    test_acc: Accuracy


class EarliestMetrics(_Early):
    """The first layout: one metrics.json with every configuration, headline keys in `_acc`."""

    baseline: EarliestBaseline
    best: EarlyBest | None = None
    configs: dict[str, EarlyConfig]


def parse_metrics(metrics_text: str, configs_text: str | None, where: str) -> Metrics:
    """The rules' inputs from metrics.json and configs.json; `where` names the revision.

    `configs_text` None: a revision from before configs.json, whose metrics.json held every
    configuration. ArtifactError for a report its schema refuses, GateError for one without a
    baseline (then nothing can be compared).
    """
    metrics_name, configs_name = f"{METRICS_FILE} {where}", f"{CONFIGS_FILE} {where}"
    metrics = loads(metrics_text, metrics_name)
    if configs_text is None:
        earliest = EarliestMetrics.parse(metrics, metrics_name)
        baseline = Baseline(train=earliest.baseline.train_acc, test=earliest.baseline.test_acc)
        best = earliest.best.run if earliest.best else None
        return Metrics(baseline, None, _early_figures(earliest.configs), best)
    configs = loads(configs_text, configs_name)
    if isinstance(metrics, dict) and "selected" not in metrics and "best" in metrics:
        early = EarlyMetrics.parse(metrics, metrics_name)
        listing = EarlyConfigs.parse(configs, configs_name)
        baseline = Baseline(train=early.baseline.train, test=early.baseline.test)
        return Metrics(baseline, None, _early_figures(listing.configs), early.best.run)
    evaluation = parse_evaluation(configs, metrics, configs_name, metrics_name)
    return metrics_of(evaluation, metrics_name)


def metrics_of(evaluation: Evaluation, name: str) -> Metrics:
    """An evaluation as the rules read it; GateError without a headline (`name`: its file)."""
    headline = evaluation.headline
    if headline is None:
        raise GateError(f"{name}: no baseline entry (a sweep without its unregularized run?)")
    configs = {run: figures_of(run, config) for run, config in evaluation.configs.items()}
    chosen = evaluation.configs[headline.selected.run].measures
    intervals = {
        key: (chosen[measure].low, chosen[measure].high)
        for key, measure in FIGURE_TAGS.items()
        if measure in chosen and chosen[measure].low is not None
    }
    pick = Pick(headline.selected, evaluation.rule, intervals)  # type: ignore[arg-type]
    return Metrics(headline.baseline, pick, configs)


def figures_of(run: str, config: ConfigSummary) -> Selected:
    """A configuration's mean accuracies, as a selection's figures."""
    cv = config.measures.get("cv_acc")
    return Selected(
        run=run,
        cv=cv.mean if cv else None,
        test=config.mean("test_acc"),
        fresh=config.mean("fresh_acc"),
    )


def _early_figures(configs: Mapping[str, EarlyConfig]) -> dict[str, Selected]:
    return {
        run: Selected(run=run, cv=None, test=c.test_acc.mean, fresh=c.fresh_acc.mean)
        for run, c in configs.items()
    }


def version_pick(tags: Mapping[str, str], name: str) -> Pick:
    """A registered version's selection, from the tags the register stage wrote on it (`name`
    names the version): ArtifactError for a tag that is missing, not a number, or out of range.
    An empty cv_acc is a selection without cross-validation."""
    raw: dict[str, Any] = {"run": tags[RUN_TAG]} if RUN_TAG in tags else {}
    for key, tag in FIGURE_TAGS.items():
        if tag in tags:
            raw[key] = _number(tags[tag], empty=None if key == "cv" else "")
    keys = {key: f"tag {tag}" for key, tag in FIGURE_TAGS.items()} | {"run": f"tag {RUN_TAG}"}
    figures = Selected.parse(raw, name, keys)
    rule = tags.get(RULE_TAG, "").partition(":")[0]
    if rule not in SELECTION_METRICS:
        allowed = f"one of {', '.join(SELECTION_METRICS)}, then how it chose"
        got = shown(tags.get(RULE_TAG))
        raise ArtifactError(f"{name}: tag {RULE_TAG} must be {allowed}, got {got}")
    if rule != "test_acc" and figures.cv is None:
        allowed = f"a number in [0, 1] (rule {rule} selects by cross-validation)"
        raise ArtifactError(f'{name}: tag cv_acc must be {allowed}, got ""')
    return Pick(figures, rule, version_intervals(tags, figures, name))


def version_intervals(
    tags: Mapping[str, str], figures: Selected, name: str
) -> dict[str, tuple[float, float]]:
    """The 95% intervals a version's tags hold (`test_acc_low`, `test_acc_high`, ...; a version
    registered before them has none): ArtifactError for one that is not two numbers in [0, 1]
    around its figure."""
    intervals = {}
    for key, tag in FIGURE_TAGS.items():
        ends = [tags.get(f"{tag}_{end}") for end in ("low", "high")]
        value = getattr(figures, key)
        if ends == [None, None] or value is None:
            continue
        numbers = [_number(end or "", "") for end in ends]
        if not all(isinstance(v, float) and 0 <= v <= 1 for v in numbers):
            got = shown(",".join(str(end) for end in ends))
            allowed = "two numbers in [0, 1] (low, high)"
            raise ArtifactError(f"{name}: tags {tag}_low, {tag}_high must be {allowed}, got {got}")
        low, high = numbers
        if not low <= value <= high:
            allowed = f"an interval around {tag} {value}"
            raise ArtifactError(
                f"{name}: tags {tag}_low, {tag}_high must be {allowed}, got {low}, {high}"
            )
        intervals[key] = (low, high)
    return intervals


def _number(text: str, empty: Any) -> Any:
    """A tag's number; the text itself when it is none (the schema then says what is allowed)."""
    if text == "":
        return empty
    try:
        return float(text)
    except ValueError:
        return text


# --- the rules -------------------------------------------------------------------------------


def compared_with(base: Metrics, run: str) -> tuple[Pick | None, str]:
    """What the working tree's selected configuration `run` is compared with at the base, or
    None and why nothing: the base's selection, else its figures for the same configuration."""
    if base.selected is not None:
        return base.selected, ""
    figures = base.configs.get(run)
    if figures is None:
        return None, f"the base has no configuration {run} to compare with"
    return Pick(figures, None), ""


def _who(pick: Pick) -> str:
    """Which configuration a figure belongs to, and how it was chosen."""
    run = pick.figures.run
    if pick.rule is None:
        return f"{run}, same configuration"
    if pick.rule == "test_acc":
        return f"{run}, test_acc: {OPTIMISTIC}"
    return f"{run}, {pick.rule}"


def _shown(value: float | None, pick: Pick | None) -> str:
    if pick is None or value is None:
        return "none"
    return f"{value:.4f} ({_who(pick)})"


def at_least(value: float, floor: float) -> bool:
    return value >= floor - PRECISION


def drop_rules(
    old: Pick | None,
    now: Pick,
    gate: GateConfig,
    skipped: Mapping[str, str] | None = None,
    sides: tuple[str, str] = ("the base", "the working tree"),
) -> list[Rule]:
    """The selected configuration's cross-validation, test and fresh accuracy each drop from
    `old` to `now` by at most their tolerance, or by at most the drop's noise when both sides
    have the figure's 95% interval and the noise is larger: a drop is a regression only when
    the lower 95% limit of the drop is above zero (`drop_noise`). `skipped` says why a figure
    cannot be compared, and `sides` names old and new in those reasons."""
    tolerances = {
        "cv": gate.selected_cv_drop,
        "test": gate.selected_test_drop,
        "fresh": gate.selected_fresh_drop,
    }
    rules = []
    for figure, tolerance in tolerances.items():
        before = None if old is None else getattr(old.figures, figure)
        after = getattr(now.figures, figure)
        why = (skipped or {}).get(figure, "")
        for side, value in zip(reversed(sides), (after, before), strict=True):
            if not why and value is None:
                why = f"{side} selected without cross-validation"
        allowed, how = tolerance, ""
        if not why and old is not None and figure in old.intervals and figure in now.intervals:
            noise = drop_noise(before, old.intervals[figure], after, now.intervals[figure])
            if noise > tolerance:
                allowed, how = noise, f" (noise: 95% interval of the drop; set {tolerance:.4f})"
        passed = why != "" or at_least(after, before - allowed)
        rule = Rule(
            f"selected_{figure}_accuracy",
            _shown(before, old),
            _shown(after, now),
            f"drop at most {allowed:.4f}{how}",
            passed,
            why,
        )
        rules.append(rule)
    return rules


def _gap(baseline: Baseline) -> float:
    """The baseline's generalization gap: train minus test accuracy."""
    return baseline.train - baseline.test


def baseline_rules(
    base: Metrics, new: Metrics, old: Pick | None, now: Pick, gate: GateConfig
) -> list[Rule]:
    """The baseline still overfits, and the selection `now` beats it on test by the margin."""
    base_margin = (
        "none"
        if old is None
        else f"{old.figures.test - base.baseline.test:+.4f} (test, selected - baseline)"
    )
    new_margin = now.figures.test - new.baseline.test
    return [
        Rule(
            "baseline_overfits",
            f"train {base.baseline.train:.4f}, gap {_gap(base.baseline):.4f}",
            f"train {new.baseline.train:.4f}, gap {_gap(new.baseline):.4f}",
            f"train at least {gate.baseline_min_train:.4f}, "
            f"gap at least {gate.baseline_min_gap:.4f}",
            at_least(new.baseline.train, gate.baseline_min_train)
            and at_least(_gap(new.baseline), gate.baseline_min_gap),
        ),
        Rule(
            "selected_beats_baseline",
            base_margin,
            f"{new_margin:+.4f} (test, selected - baseline)",
            f"margin above {gate.selected_beats_baseline_by:.4f}",
            # Strictly above: a tie within the metrics' precision is not a win.
            new_margin > gate.selected_beats_baseline_by + PRECISION,
        ),
    ]


def check_rules(base: Metrics, new: Metrics, gate: GateConfig) -> list[Rule]:
    """Every rule of the gate, base against new, with the working tree's tolerances."""
    now = new.selected
    if now is None:
        raise GateError(f"{METRICS_FILE} in the working tree: no selected entry")
    old, missing_reason = compared_with(base, now.figures.run)
    # A base from before selection never cross-validated: not comparable, not a failure.
    no_cv = "the base has no cross-validation" if base.selected is None else ""
    skipped = {"cv": no_cv or missing_reason, "test": missing_reason, "fresh": missing_reason}
    missing = sorted(set(base.configs) - set(new.configs))
    kept = f"{len(new.configs)} configurations"
    return [
        *drop_rules(old, now, gate, skipped),
        *baseline_rules(base, new, old, now, gate),
        Rule(
            "configurations_kept",
            f"{len(base.configs)} configurations",
            f"{kept}, missing: {', '.join(missing)}" if missing else kept,
            "none removed",
            not missing,
        ),
    ]


def _how(pick: Pick) -> str:
    return f"`{pick.figures.run}` by {pick.rule}" + (
        f", {OPTIMISTIC}" if pick.rule == "test_acc" else ""
    )


def selection_notes(base: Metrics, new: Metrics) -> list[str]:
    """How each side chose what the rules compare, in sentences for the report."""
    now = new.selected
    if now is None:
        return []
    run = now.figures.run
    how = _how(now) + (f", {TEST_WATCH_LABEL}" if watched_test(run) else "")
    old = base.selected
    if old is None:
        reported = f" (it reported `best` = `{base.best_run}`, best on the test set)"
        have = (
            f"compared with the base's figures for `{run}`"
            if run in base.configs
            else f"the base has no `{run}`, so the selected rules are skipped"
        )
        return [
            f"Selected in the working tree: {how}.",
            f"The base predates selection{reported if base.best_run else ''}: {have}.",
        ]
    notes = [f"Selected: base {_how(old)}; working tree {how}."]
    if old.rule != now.rule:
        notes.append(
            f"The selection rule changed: base {old.rule}, working tree {now.rule}; the rules "
            "compare configurations chosen in different ways."
        )
    return notes


def exit_status(rules: Sequence[Rule]) -> int:
    return 0 if all(rule.passed for rule in rules) else 1


def failure_lines(rules: Sequence[Rule]) -> list[str]:
    """One line per failed rule, then one per skipped rule with its reason."""
    return [
        f"FAIL {r.name}: base {r.base}; new {r.new}; tolerance {r.tolerance}"
        for r in rules
        if not r.passed
    ] + [f"SKIP {r.name}: {r.skipped}" for r in rules if r.skipped]
