"""The CI gate: reports/metrics.json (and the list of configurations in reports/configs.json) in
the working tree against the same files at a base revision.

The rules guard the *selected* configuration, the one `select.metric` chose (by default on
cross-validation inside the training rows), never whichever configuration is best on the test
set: a change that only moves the test set's favourite passes.

`python -m overfit.commands.gate --base <rev>` (`make gate BASE=<rev>`) checks the rules of
params.yaml's `gate` section, writes a Markdown report (rules, key metrics, parameter changes) and exits

    0  every rule holds (a rule the two sides cannot compare is skipped, with its reason)
    1  a rule fails: the change makes the model worse
    2  the gate cannot compare (no such revision, a missing or unreadable metrics file, a missing
       metric, bad settings): never a pass

A base from before selection (metrics.json with `best`, or the older single file holding every
configuration) is read too: the working tree's selected configuration is compared with the
base's figures for the same configuration.

The base files are read with `git show`, never through DVC, because DVC exits 0 when it cannot
read a revision. DVC's own diffs only decorate the report; they never decide the exit status.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overfit import layout
from overfit.artifacts import write_text
from overfit.config import ConfigError, GateConfig, load_params, project_root
from overfit.core.remedies import TEST_WATCH_LABEL, watched_test

METRICS_FILE = layout.METRICS.as_posix()
CONFIGS_FILE = layout.CONFIGS.as_posix()
SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
# metrics.json's figures, as `dvc metrics diff` names them, in the report's order.
HEADLINE_KEYS = (
    "baseline.train",
    "baseline.test",
    "selected.run",
    "selected.cv",
    "selected.test",
    "selected.fresh",
)
# What configs.json's `rule` (select.metric) may be; only the cv_ ones need cross-validation.
SELECTION_RULES = ("cv_acc", "cv_loss", "test_acc")
OPTIMISTIC = "chosen on the test set (optimistic)"
# metrics.json holds means rounded to 6 decimals, so the difference of two of them is off by up
# to 1e-6: a drop of exactly one test point (1/70) must pass a tolerance of 1/70. Real
# differences are far coarser (one test point of one seed out of five is 1/350).
PRECISION = 1e-6
DVC_TIMEOUT = 300


class GateError(RuntimeError):
    """The gate cannot compare: the message is the one line printed after `error: `."""


@dataclass(frozen=True)
class Baseline:
    """The unregularized run's mean accuracies: what the rules read of it (its fresh accuracy,
    when metrics.json has it, only shows in DVC's diff)."""

    train: float
    test: float


@dataclass(frozen=True)
class Selected:
    """The configuration a revision ships and its mean accuracies.

    `rule` None: not a selection but a base from before selection, whose figures for the same
    configuration stand in for it (and which had no cross-validation).
    """

    run: str
    rule: str | None
    cv: float | None
    test: float
    fresh: float


@dataclass(frozen=True)
class ConfigFigures:
    """One configuration's mean accuracies in configs.json."""

    test: float
    fresh: float


@dataclass(frozen=True)
class Metrics:
    """What the rules read at one revision.

    `selected` None: a base from before selection; `best_run` is then what it reported instead
    (the best on the test set), shown in the report but never compared.
    """

    baseline: Baseline
    selected: Selected | None
    configs: Mapping[str, ConfigFigures]
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


# --- pure functions --------------------------------------------------------------------------


def parse_metrics(metrics_text: str, configs_text: str | None, where: str) -> Metrics:
    """The rules' inputs from metrics.json and configs.json; `where` names the revision.

    `configs_text` None: a revision from before configs.json, whose metrics.json held every
    configuration and longer headline keys; it is read as such.
    """
    name = f"{METRICS_FILE} {where}"
    raw = _json_object(metrics_text, name)
    if configs_text is None:
        return _parse_single_file(raw, name)
    configs_name = f"{CONFIGS_FILE} {where}"
    listing = _json_object(configs_text, configs_name)
    configs = _configs(listing.get("configs"), configs_name)
    selected = _selected(raw, name, listing.get("rule"))
    return Metrics(_baseline(raw, name), selected, configs, _best_run(raw))


def _json_object(text: str, name: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GateError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise GateError(f"{name}: not a JSON object")
    return raw


def _number(value: Any, what: str, name: str) -> float:
    """`value` checked: a number (not a bool), finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GateError(f"{name}: no {what} (a number)")
    if not math.isfinite(value):
        raise GateError(f"{name}: {what} is {value}, not a finite number")
    return float(value)


def _entry(raw: Mapping[str, Any], entry: str, name: str, hint: str = "") -> Mapping[str, Any]:
    value = raw.get(entry)
    if not isinstance(value, dict):
        raise GateError(f"{name}: no {entry} entry{hint}")
    return value


def _baseline(raw: Mapping[str, Any], name: str) -> Baseline:
    entry = _entry(raw, "baseline", name, " (a sweep without its unregularized run?)")
    train, test = (_number(entry.get(key), f"baseline.{key}", name) for key in ("train", "test"))
    return Baseline(train, test)


def _selected(raw: Mapping[str, Any], name: str, listed_rule: Any) -> Selected | None:
    """metrics.json's `selected`; None for a revision from before selection (it has `best`).

    The rule is configs.json's `rule` (`listed_rule`): metrics.json leaves it out to keep
    `dvc metrics show` narrow.
    """
    if "selected" not in raw and isinstance(raw.get("best"), dict):
        return None
    entry = _entry(raw, "selected", name)
    run, rule = entry.get("run"), listed_rule
    if not isinstance(run, str):
        raise GateError(f"{name}: no selected.run")
    if rule is None:
        raise GateError(f"{name}: {CONFIGS_FILE} names no selection rule")
    if rule not in SELECTION_RULES:
        raise GateError(
            f"{name}: {CONFIGS_FILE}'s rule is {rule!r}, not one of {', '.join(SELECTION_RULES)}"
        )
    if "cv" not in entry:
        raise GateError(f"{name}: no selected.cv (a number, or null without cross-validation)")
    cv = None if entry["cv"] is None else _number(entry["cv"], "selected.cv", name)
    if cv is None and rule != "test_acc":
        raise GateError(f"{name}: selected.cv is null, but rule {rule} needs cross-validation")
    test = _number(entry.get("test"), "selected.test", name)
    fresh = _number(entry.get("fresh"), "selected.fresh", name)
    return Selected(run, rule, cv, test, fresh)


def _best_run(raw: Mapping[str, Any]) -> str | None:
    best = raw.get("best")
    run = best.get("run") if isinstance(best, dict) else None
    return run if isinstance(run, str) else None


def _configs(raw: Any, name: str) -> dict[str, ConfigFigures]:
    """Every configuration's mean test and fresh accuracy, each checked."""
    if not isinstance(raw, dict):
        raise GateError(f"{name}: no configs")
    figures = {}
    for run, entry in raw.items():
        means = []
        for measure in ("test_acc", "fresh_acc"):
            spread = entry.get(measure) if isinstance(entry, dict) else None
            mean = spread.get("mean") if isinstance(spread, dict) else None
            means.append(_number(mean, f"configs.{run}.{measure}.mean", name))
        figures[run] = ConfigFigures(*means)
    return figures


def _parse_single_file(raw: Mapping[str, Any], name: str) -> Metrics:
    """The earliest layout: configs inside metrics.json, headline keys ending in `_acc`, and
    `best` (chosen on the test set) where `selected` is now."""
    configs = _configs(raw.get("configs"), name)
    renamed = {
        key.removesuffix("_acc"): value
        for key, value in _entry(raw, "baseline", name).items()
        if key in ("train_acc", "test_acc")
    }
    return Metrics(_baseline({"baseline": renamed}, name), None, configs, _best_run(raw))


def compared_with(base: Metrics, run: str) -> tuple[Selected | None, str]:
    """What the working tree's selected configuration `run` is compared with at the base, or
    None and why nothing: the base's selection, else its figures for the same configuration."""
    if base.selected is not None:
        return base.selected, ""
    figures = base.configs.get(run)
    if figures is None:
        return None, f"the base has no configuration {run} to compare with"
    return Selected(run, None, None, figures.test, figures.fresh), ""


def _who(selected: Selected) -> str:
    """Which configuration a figure belongs to, and how it was chosen."""
    if selected.rule is None:
        return f"{selected.run}, same configuration"
    if selected.rule == "test_acc":
        return f"{selected.run}, test_acc: {OPTIMISTIC}"
    return f"{selected.run}, {selected.rule}"


def _shown(value: float | None, selected: Selected | None) -> str:
    if selected is None or value is None:
        return "none"
    return f"{value:.4f} ({_who(selected)})"


def _at_least(value: float, floor: float) -> bool:
    return value >= floor - PRECISION


def _gap(baseline: Baseline) -> float:
    """The baseline's generalization gap: train minus test accuracy."""
    return baseline.train - baseline.test


def _drop_rule(
    name: str,
    old: Selected | None,
    now: Selected,
    figure: str,
    tolerance: float,
    skipped: str,
) -> Rule:
    """`figure` of the selected configuration drops by at most `tolerance`, unless skipped."""
    before = None if old is None else getattr(old, figure)
    after = getattr(now, figure)
    if not skipped and after is None:
        skipped = "the working tree selected without cross-validation (selected.cv is null)"
    if not skipped and before is None:
        skipped = "the base selected without cross-validation (selected.cv is null)"
    passed = skipped != "" or _at_least(after, before - tolerance)
    return Rule(
        name,
        _shown(before, old),
        _shown(after, now),
        f"drop at most {tolerance:.4f}",
        passed,
        skipped,
    )


def check_rules(base: Metrics, new: Metrics, gate: GateConfig) -> list[Rule]:
    """Every rule of the gate, base against new, with the working tree's tolerances."""
    now = new.selected
    if now is None:
        raise GateError(f"{METRICS_FILE} in the working tree: no selected entry")
    old, missing_reason = compared_with(base, now.run)
    # A base from before selection never cross-validated: not comparable, not a failure.
    no_cv = "the base has no cross-validation" if base.selected is None else ""
    missing = sorted(set(base.configs) - set(new.configs))
    kept = f"{len(new.configs)} configurations"
    base_margin = (
        "none"
        if old is None
        else f"{old.test - base.baseline.test:+.4f} (test, selected - baseline)"
    )
    new_margin = now.test - new.baseline.test
    return [
        _drop_rule(
            "selected_cv_accuracy", old, now, "cv", gate.selected_cv_drop, no_cv or missing_reason
        ),
        _drop_rule(
            "selected_test_accuracy", old, now, "test", gate.selected_test_drop, missing_reason
        ),
        _drop_rule(
            "selected_fresh_accuracy", old, now, "fresh", gate.selected_fresh_drop, missing_reason
        ),
        Rule(
            "baseline_overfits",
            f"train {base.baseline.train:.4f}, gap {_gap(base.baseline):.4f}",
            f"train {new.baseline.train:.4f}, gap {_gap(new.baseline):.4f}",
            f"train at least {gate.baseline_min_train:.4f}, "
            f"gap at least {gate.baseline_min_gap:.4f}",
            _at_least(new.baseline.train, gate.baseline_min_train)
            and _at_least(_gap(new.baseline), gate.baseline_min_gap),
        ),
        Rule(
            "selected_beats_baseline",
            base_margin,
            f"{new_margin:+.4f} (test, selected - baseline)",
            f"margin above {gate.selected_beats_baseline_by:.4f}",
            # Strictly above: a tie within the metrics' precision is not a win.
            new_margin > gate.selected_beats_baseline_by + PRECISION,
        ),
        Rule(
            "configurations_kept",
            f"{len(base.configs)} configurations",
            f"{kept}, missing: {', '.join(missing)}" if missing else kept,
            "none removed",
            not missing,
        ),
    ]


def selection_notes(base: Metrics, new: Metrics) -> list[str]:
    """How each side chose what the rules compare, in sentences for the report."""
    now = new.selected
    if now is None:
        return []
    how = f"`{now.run}` by {now.rule}" + (f", {OPTIMISTIC}" if now.rule == "test_acc" else "")
    if watched_test(now.run):
        how += f", {TEST_WATCH_LABEL}"
    old = base.selected
    if old is None:
        reported = f" (it reported `best` = `{base.best_run}`, best on the test set)"
        have = (
            f"compared with the base's figures for `{now.run}`"
            if now.run in base.configs
            else f"the base has no `{now.run}`, so the selected rules are skipped"
        )
        return [
            f"Selected in the working tree: {how}.",
            f"The base predates selection{reported if base.best_run else ''}: {have}.",
        ]
    was = f"`{old.run}` by {old.rule}" + (f", {OPTIMISTIC}" if old.rule == "test_acc" else "")
    notes = [f"Selected: base {was}; working tree {how}."]
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


def _result(rule: Rule) -> str:
    if rule.skipped:
        return "skipped"
    return "pass" if rule.passed else "**FAIL**"


def rules_table(rules: Sequence[Rule]) -> str:
    lines = ["| rule | base | new | tolerance | result |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.base} | {r.new} | {r.tolerance} | {_result(r)} |" for r in rules]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4f}"
    return str(value)


def key_metrics_table(diff: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """`dvc metrics diff --json --all` restricted to the baseline and selected entries, in order
    (and a base's `best` from before selection, which has no counterpart in the working tree)."""
    rows = {key: row for per_file in diff.values() for key, row in per_file.items()}
    extra = sorted(
        k
        for k in rows
        if k.startswith(("baseline.", "selected.", "best.")) and k not in HEADLINE_KEYS
    )
    keys = [k for k in HEADLINE_KEYS if k in rows] + extra
    if not keys:
        return "No baseline or selected metric in the diff."
    lines = ["| metric | base | new | change |", "|---|---|---|---|"]
    for key in keys:
        row = rows[key]
        change = row.get("diff")
        shown = f"{change:+.4f}" if isinstance(change, int | float) else ""
        lines.append(f"| {key} | {_cell(row.get('old'))} | {_cell(row.get('new'))} | {shown} |")
    return "\n".join(lines)


def params_section(markdown: str) -> str:
    """`dvc params diff --md` as is, or one sentence when it has no row."""
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    return "\n".join(table) if len(table) > 2 else "No parameter changed."


def render_report(
    base: str,
    sha: str,
    rules: Sequence[Rule],
    metrics_diff: str,
    params_diff: str,
    notes: Sequence[str] = (),
) -> str:
    """The Markdown report; `notes` say how each side chose its selected configuration."""
    failed = [r.name for r in rules if not r.passed]
    skipped = [r.name for r in rules if r.skipped]
    if failed:
        verdict = f"**FAIL**: {len(failed)} of {len(rules)} rules broken ({', '.join(failed)})"
    elif skipped:
        verdict = (
            f"**pass**: all {len(rules) - len(skipped)} rules compared hold; "
            f"{len(skipped)} skipped ({', '.join(skipped)})"
        )
    else:
        verdict = f"**pass**: all {len(rules)} rules hold"
    explained = [*notes, *(f"`{r.name}` skipped: {r.skipped}." for r in rules if r.skipped)]
    return (
        "\n\n".join(
            [
                f"## Metric gate: working tree against `{base}` ({sha[:8]})",
                verdict,
                rules_table(rules),
                "The rules guard the selected configuration (params.yaml `select.metric`), "
                "not the best one on the test set. "
                "Tolerances are the working tree's params.yaml `gate` section.",
                *(["\n".join(f"- {line}" for line in explained)] if explained else []),
                f"### Key metrics (`dvc metrics diff {base}`)",
                metrics_diff,
                f"### Parameters (`dvc params diff {base}`)",
                params_diff,
            ]
        )
        + "\n"
    )


def render_error_report(base: str, message: str) -> str:
    return (
        f"## Metric gate: working tree against `{base}`\n\n"
        f"**Could not compare** (exit 2): {message}\n"
    )


# --- I/O at the edges ------------------------------------------------------------------------


def _run(root: Path, cmd: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
    # Whoever starts the gate, the DVC it calls never phones home.
    env = {**os.environ, "DVC_NO_ANALYTICS": os.environ.get("DVC_NO_ANALYTICS", "1")}
    return subprocess.run(
        list(cmd), cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def read_base_metrics(root: Path, rev: str) -> tuple[str, Metrics]:
    """The commit `rev` names and the metrics there; a GateError says what is missing."""
    try:
        inside = _run(root, ["git", "rev-parse", "--is-inside-work-tree"])
        if inside.returncode != 0:
            raise GateError(f"{root}: not a git repository, so there is no base to compare with")
        found = _run(
            root,
            ["git", "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"],
        )
        if found.returncode != 0:
            raise GateError(
                f"base revision {rev!r} not found (on CI, check out with fetch-depth: 0)"
            )
        sha = found.stdout.strip()
        # `./` makes the path relative to the project root, even inside a larger repository.
        metrics = _run(root, ["git", "show", f"{sha}:./{METRICS_FILE}"])
        configs = _run(root, ["git", "show", f"{sha}:./{CONFIGS_FILE}"])
    except FileNotFoundError:
        raise GateError("git: not found on PATH") from None
    if metrics.returncode != 0:
        raise GateError(f"{METRICS_FILE}: not in base revision {rev} (is it committed there?)")
    where = f"at {rev}"
    return sha, parse_metrics(
        metrics.stdout, configs.stdout if configs.returncode == 0 else None, where
    )


def read_new_metrics(root: Path) -> Metrics:
    texts = []
    for name in (METRICS_FILE, CONFIGS_FILE):
        try:
            texts.append((root / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GateError(f"{name}: not in the working tree; run `make run` first") from None
    new = parse_metrics(texts[0], texts[1], "in the working tree")
    if new.selected is None:
        # The working tree must be this code's output; only a base may predate selection.
        raise GateError(
            f"{METRICS_FILE} in the working tree: no selected entry (written before selection; "
            "run `make run` first)"
        )
    return new


def dvc_metrics_section(root: Path, rev: str) -> str:
    cmd = ["metrics", "diff", rev, "--targets", METRICS_FILE, "--json", "--all"]
    out, note = _dvc(root, cmd)
    if out is None:
        return note
    try:
        table = key_metrics_table(json.loads(out or "{}"))
    except (json.JSONDecodeError, AttributeError):
        return "`dvc metrics diff` printed no readable JSON."
    return f"{table}\n\n{note}" if note else table


def dvc_params_section(root: Path, rev: str) -> str:
    out, note = _dvc(root, ["params", "diff", rev, "--md"])
    if out is None:
        return note
    section = params_section(out)
    return f"{section}\n\n{note}" if note else section


def _dvc(root: Path, args: Sequence[str]) -> tuple[str | None, str]:
    """DVC's stdout (None when it failed) and a note quoting what it said on stderr."""
    name = f"`dvc {' '.join(args[:2])}`"
    try:
        done = _run(root, [sys.executable, "-m", "dvc", *args], timeout=DVC_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"{name} failed: no answer within {DVC_TIMEOUT} s."
    if done.returncode != 0:
        return None, f"{name} failed (exit {done.returncode}): {_last_line(done.stderr)}"
    # DVC exits 0 even when it could not load a revision: pass on what it said.
    note = f"{name} said: {_last_line(done.stderr)}" if done.stderr.strip() else ""
    return done.stdout, note


def publish(report: str, path: Path) -> None:
    """The report file, and the GitHub Actions job summary when there is one."""
    write_text(path, report)
    summary = os.environ.get(SUMMARY_ENV)
    if summary:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(report + "\n")


def run_gate(root: Path, rev: str, report_path: Path) -> int:
    """Compare, publish the report and print the verdict; the exit status."""
    try:
        rules_config = load_params(root).gate
        sha, base = read_base_metrics(root, rev)
        new = read_new_metrics(root)
    except (ConfigError, GateError) as error:
        publish(render_error_report(rev, str(error)), report_path)
        print(f"error: {error}", file=sys.stderr)
        return 2
    rules = check_rules(base, new, rules_config)
    report = render_report(
        rev,
        sha,
        rules,
        dvc_metrics_section(root, rev),
        dvc_params_section(root, rev),
        selection_notes(base, new),
    )
    publish(report, report_path)
    print(report)
    for line in failure_lines(rules):
        print(line)
    status = exit_status(rules)
    print(f"gate: {'pass' if status == 0 else 'FAIL'}; report in {report_path}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m overfit.commands.gate",
        description="Fail when reports/metrics.json is worse than at the base revision.",
    )
    parser.add_argument("--base", default="main", help="git revision to compare with (main)")
    parser.add_argument(
        "--report", type=Path, help=f"where to write the Markdown report ({layout.GATE_REPORT})"
    )
    args = parser.parse_args(argv)
    try:
        root = project_root()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run_gate(root, args.base, args.report or root / layout.GATE_REPORT)


if __name__ == "__main__":
    raise SystemExit(main())
