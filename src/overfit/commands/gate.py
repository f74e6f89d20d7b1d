"""The CI gate: reports/metrics.json (and the list of configurations in reports/configs.json) in
the working tree against the same files at a base revision, by the rules of core/rules.py.

The rules guard the *selected* configuration, the one `select.metric` chose (by default on
cross-validation inside the training rows), never whichever configuration is best on the test
set: a change that only moves the test set's favourite passes.

`python -m overfit.commands.gate --base <rev>` (`make gate BASE=<rev>`) checks the rules of
params.yaml's `gate` section, writes a Markdown report (rules, key metrics, parameter changes)
and exits

    0  every rule holds (a rule the two sides cannot compare is skipped, with its reason)
    1  a rule fails: the change makes the model worse
    2  the gate cannot compare (no such revision; a missing, unreadable or corrupt report: a
       figure out of its range, a name that is no configuration, metrics.json disagreeing
       with configs.json; a missing metric; bad settings): never a pass

A base from before selection (metrics.json with `best`, or the older single file holding every
configuration) is read too: the working tree's selected configuration is compared with the
base's figures for the same configuration.

The base files are read with `git show`, never through DVC, because DVC exits 0 when it cannot
read a revision. DVC's own diffs only decorate the report; they never decide the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from overfit import layout
from overfit.artifacts import ArtifactError, write_text
from overfit.config import ConfigError, load_params, project_root
from overfit.core.rules import (
    CONFIGS_FILE,
    METRICS_FILE,
    GateError,
    Metrics,
    Rule,
    check_rules,
    exit_status,
    failure_lines,
    parse_metrics,
    selection_notes,
)

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
DVC_TIMEOUT = 300


# --- the Markdown report ---------------------------------------------------------------------


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


# --- I/O at the edges -----------------------------------------------------------------------


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
    except (ConfigError, GateError, ArtifactError) as error:
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
