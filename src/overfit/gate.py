"""The CI gate: reports/metrics.json (and the list of configurations in reports/configs.json) in
the working tree against the same files at a base revision.

`python -m overfit.gate --base <rev>` (`make gate BASE=<rev>`) checks the rules of params.yaml's
`gate` section, writes a Markdown report (rules, key metrics, parameter changes) and exits

    0  every rule holds
    1  a rule fails: the change makes the model worse
    2  the gate cannot compare (no such revision, a missing or unreadable metrics file, a missing
       metric, bad settings): never a pass

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
from overfit.artifacts import Headline, parse_headline, write_text
from overfit.config import ConfigError, GateConfig, load_params, project_root

METRICS_FILE = layout.METRICS.as_posix()
CONFIGS_FILE = layout.CONFIGS.as_posix()
SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
# metrics.json's figures, as `dvc metrics diff` names them, in the report's order.
HEADLINE_KEYS = (
    "baseline.train",
    "baseline.test",
    "baseline.fresh",
    "best.run",
    "best.test",
    "best.fresh",
)
# metrics.json holds means rounded to 6 decimals, so the difference of two of them is off by up
# to 1e-6: a drop of exactly one test point (1/70) must pass a tolerance of 1/70. Real
# differences are far coarser (one test point of one seed out of five is 1/350).
PRECISION = 1e-6
DVC_TIMEOUT = 300


class GateError(RuntimeError):
    """The gate cannot compare: the message is the one line printed after `error: `."""


@dataclass(frozen=True)
class Metrics:
    """What the rules read at one revision: the headline and the configurations' names."""

    configs: frozenset[str]
    headline: Headline


@dataclass(frozen=True)
class Rule:
    """One rule's verdict, with the values as the report shows them."""

    name: str
    base: str
    new: str
    tolerance: str
    passed: bool


# --- pure functions --------------------------------------------------------------------------


def parse_metrics(metrics_text: str, configs_text: str | None, where: str) -> Metrics:
    """The rules' inputs from metrics.json and configs.json; `where` names the revision.

    `configs_text` None: a revision from before configs.json, whose metrics.json held every
    configuration and longer headline keys; it is read as such.
    """
    raw = _json_object(metrics_text, f"{METRICS_FILE} {where}")
    if configs_text is None:
        return _parse_single_file(raw, f"{METRICS_FILE} {where}")
    configs = _json_object(configs_text, f"{CONFIGS_FILE} {where}").get("configs")
    if not isinstance(configs, dict):
        raise GateError(f"{CONFIGS_FILE} {where}: no configs")
    return Metrics(frozenset(configs), _headline(raw, f"{METRICS_FILE} {where}"))


def _json_object(text: str, name: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GateError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise GateError(f"{name}: not a JSON object")
    return raw


def _headline(raw: Mapping[str, Any], name: str) -> Headline:
    """metrics.json's figures, each checked: present, a number, finite."""
    for entry, keys in (("baseline", ("train", "test", "fresh")), ("best", ("test", "fresh"))):
        value = raw.get(entry)
        if not isinstance(value, dict):
            raise GateError(f"{name}: no {entry} entry (a sweep without its unregularized run?)")
        for key in keys:
            number = value.get(key)
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise GateError(f"{name}: no {entry}.{key} (a number)")
            if not math.isfinite(number):
                raise GateError(f"{name}: {entry}.{key} is {number}, not a finite number")
    if not isinstance(raw["best"].get("run"), str):
        raise GateError(f"{name}: no best.run")
    headline = parse_headline(raw)
    assert headline is not None  # both entries are there
    return headline


def _parse_single_file(raw: Mapping[str, Any], name: str) -> Metrics:
    """The earlier layout: configs inside metrics.json, headline keys ending in `_acc`."""
    configs = raw.get("configs")
    if not isinstance(configs, dict):
        raise GateError(f"{name}: no configs")
    renamed = {
        entry: {
            key.removesuffix("_acc"): value
            for key, value in raw[entry].items()
            if key in ("run", "train_acc", "test_acc", "fresh_acc")
        }
        for entry in ("baseline", "best")
        if isinstance(raw.get(entry), dict)
    }
    return Metrics(frozenset(configs), _headline(renamed, name))


def _at_least(value: float, floor: float) -> bool:
    return value >= floor - PRECISION


def _gap(headline: Headline) -> float:
    """The baseline's generalization gap: train minus test accuracy."""
    return (headline.baseline.train or 0.0) - headline.baseline.test


def check_rules(base: Metrics, new: Metrics, gate: GateConfig) -> list[Rule]:
    """Every rule of the gate, base against new, with the working tree's tolerances."""
    old, now = base.headline, new.headline
    missing = sorted(base.configs - new.configs)
    base_margin = old.best.test - old.baseline.test
    new_margin = now.best.test - now.baseline.test
    kept = f"{len(new.configs)} configurations"
    return [
        Rule(
            "best_test_accuracy",
            f"{old.best.test:.4f} ({old.best_run})",
            f"{now.best.test:.4f} ({now.best_run})",
            f"drop at most {gate.best_test_drop:.4f}",
            _at_least(now.best.test, old.best.test - gate.best_test_drop),
        ),
        Rule(
            "best_fresh_accuracy",
            f"{old.best.fresh:.4f} ({old.best_run})",
            f"{now.best.fresh:.4f} ({now.best_run})",
            f"drop at most {gate.best_fresh_drop:.4f}",
            _at_least(now.best.fresh, old.best.fresh - gate.best_fresh_drop),
        ),
        Rule(
            "baseline_overfits",
            f"train {old.baseline.train or 0.0:.4f}, gap {_gap(old):.4f}",
            f"train {now.baseline.train or 0.0:.4f}, gap {_gap(now):.4f}",
            f"train at least {gate.baseline_min_train:.4f}, "
            f"gap at least {gate.baseline_min_gap:.4f}",
            _at_least(now.baseline.train or 0.0, gate.baseline_min_train)
            and _at_least(_gap(now), gate.baseline_min_gap),
        ),
        Rule(
            "best_beats_baseline",
            f"{base_margin:+.4f} (test, best - baseline)",
            f"{new_margin:+.4f} (test, best - baseline)",
            f"margin above {gate.best_beats_baseline_by:.4f}",
            # Strictly above: a tie within the metrics' precision is not a win.
            new_margin > gate.best_beats_baseline_by + PRECISION,
        ),
        Rule(
            "configurations_kept",
            f"{len(base.configs)} configurations",
            f"{kept}, missing: {', '.join(missing)}" if missing else kept,
            "none removed",
            not missing,
        ),
    ]


def exit_status(rules: Sequence[Rule]) -> int:
    return 0 if all(rule.passed for rule in rules) else 1


def failure_lines(rules: Sequence[Rule]) -> list[str]:
    return [
        f"FAIL {r.name}: base {r.base}; new {r.new}; tolerance {r.tolerance}"
        for r in rules
        if not r.passed
    ]


def rules_table(rules: Sequence[Rule]) -> str:
    lines = ["| rule | base | new | tolerance | result |", "|---|---|---|---|---|"]
    lines += [
        f"| {r.name} | {r.base} | {r.new} | {r.tolerance} | {'pass' if r.passed else '**FAIL**'} |"
        for r in rules
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4f}"
    return str(value)


def key_metrics_table(diff: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """`dvc metrics diff --json --all` restricted to the baseline and best entries, in order."""
    rows = {key: row for per_file in diff.values() for key, row in per_file.items()}
    extra = sorted(
        k for k in rows if k.startswith(("baseline.", "best.")) and k not in HEADLINE_KEYS
    )
    keys = [k for k in HEADLINE_KEYS if k in rows] + extra
    if not keys:
        return "No baseline or best metric in the diff."
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
    base: str, sha: str, rules: Sequence[Rule], metrics_diff: str, params_diff: str
) -> str:
    failed = [r.name for r in rules if not r.passed]
    verdict = (
        f"**FAIL**: {len(failed)} of {len(rules)} rules broken ({', '.join(failed)})"
        if failed
        else f"**pass**: all {len(rules)} rules hold"
    )
    return (
        "\n\n".join(
            [
                f"## Metric gate: working tree against `{base}` ({sha[:8]})",
                verdict,
                rules_table(rules),
                "Tolerances are the working tree's params.yaml `gate` section.",
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
    return parse_metrics(texts[0], texts[1], "in the working tree")


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
        rev, sha, rules, dvc_metrics_section(root, rev), dvc_params_section(root, rev)
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
        prog="python -m overfit.gate",
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
