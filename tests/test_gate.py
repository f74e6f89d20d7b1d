"""The CI gate: metrics.json in the working tree against a base commit, in a throw-away git copy
of the project, with the real gate CLI, git and DVC. The rules guard the selected configuration
(chosen by cross-validation by default), never the best one on the test set."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from overfit.artifacts import ArtifactError
from overfit.config import GateConfig
from overfit.core.rules import GateError, Metrics, check_rules, parse_metrics, selection_notes
from overfit.core.selection import OPTIMISTIC

from .conftest import Run, copy_project, env_for

METRICS = "reports/metrics.json"
CONFIGS = "reports/configs.json"
RULES = {
    "selected_cv_accuracy",
    "selected_test_accuracy",
    "selected_fresh_accuracy",
    "baseline_overfits",
    "selected_beats_baseline",
    "configurations_kept",
}

# Per configuration: (strength, train accuracy, test points right out of 70, fresh accuracy,
# cross-validation accuracy or None). The unregularized run learns its 30 points by heart;
# cross-validation selects l1_1e-03 while l2_1e-03 is best on the test set.
Runs = dict[str, tuple[float, float, int, float, float | None]]
BASE_RUNS: Runs = {
    "none": (0.0, 1.0, 62, 0.900, 0.90),
    "l1_1e-03": (1e-3, 0.966667, 66, 0.925, 0.95),
    "l2_1e-03": (1e-3, 0.966667, 67, 0.930, 0.93),
    "l2_1e-02": (1e-2, 0.933333, 65, 0.920, 0.92),
}

# The selected configuration (l1_1e-03) loses two of its 66 test points.
TWO_POINTS_LOST: Runs = {"l1_1e-03": (1e-3, 0.966667, 64, 0.925, 0.95)}


def reports(runs: Runs, rule: str = "cv_acc") -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json and configs.json as evaluate writes them, one seed per configuration; a
    configuration whose cross-validation accuracy is None has no cv entries."""
    configs: dict[str, Any] = {}
    for name, (strength, train, right, fresh, cv) in sorted(runs.items()):
        test = round(right / 70, 6)
        measures = {"train_acc": train, "test_acc": test, "fresh_acc": fresh}
        measures |= {"gap": round(train - test, 6), "test_loss": round(1 - test, 6)}
        if cv is not None:
            measures |= {"cv_acc": cv, "cv_loss": round(1 - cv, 6)}
        kind = "none" if name == "none" else name.rsplit("_", 1)[0]
        configs[name] = {"kind": kind, "strength": strength} | {
            key: {"mean": value, "std": 0.0} for key, value in measures.items()
        }

    def mean(name: str, measure: str) -> float:
        return configs[name][measure]["mean"]

    candidates = sorted(name for name in configs if name != "none")
    test_choice = max(candidates, key=lambda n: mean(n, "test_acc"))
    selected = {
        "cv_acc": lambda: max(candidates, key=lambda n: mean(n, "cv_acc")),
        "cv_loss": lambda: min(candidates, key=lambda n: mean(n, "cv_loss")),
        "test_acc": lambda: test_choice,
    }[rule]()
    chosen, base = configs[selected], configs["none"]
    metrics = {
        "baseline": {key: base[f"{key}_acc"]["mean"] for key in ("train", "test")},
        "selected": {
            "run": selected,
            "cv": chosen["cv_acc"]["mean"] if "cv_acc" in chosen else None,
            "test": chosen["test_acc"]["mean"],
            "fresh": chosen["fresh_acc"]["mean"],
        },
    }
    cv_choice = None if rule == "test_acc" else selected
    listing = {"baseline": "none", "selected": selected, "rule": rule, "cv_choice": cv_choice}
    listing |= {"test_choice": test_choice, "configs": configs}
    return metrics, listing


def before_selection(runs: Runs) -> tuple[dict[str, Any], dict[str, Any]]:
    """The format before selection: `best` (the best on the test set), no cross-validation."""
    metrics, listing = reports({n: (*r[:4], None) for n, r in runs.items()}, rule="test_acc")
    best = metrics.pop("selected")
    metrics["best"] = {key: best[key] for key in ("run", "test", "fresh")}
    configs = listing["configs"]
    return metrics, {"baseline": "none", "best": best["run"], "configs": configs}


def changed(runs: Runs, rule: str = "cv_acc") -> tuple[dict[str, Any], dict[str, Any]]:
    """The base results with some configurations' results replaced."""
    return reports(BASE_RUNS | runs, rule)


def parsed(files: tuple[dict[str, Any], dict[str, Any]]) -> Metrics:
    metrics, listing = files
    return parse_metrics(json.dumps(metrics), json.dumps(listing), "here")


def rule_results(base: Metrics, new: Metrics, gate: GateConfig | None = None) -> dict[str, bool]:
    return {r.name: r.passed for r in check_rules(base, new, gate or GateConfig())}


def write_reports(root: Path, files: tuple[dict[str, Any], dict[str, Any]]) -> None:
    for name, content in zip((METRICS, CONFIGS), files, strict=True):
        (root / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def commit_all(run: Run, message: str) -> None:
    run("git", "add", "-A")
    run("git", "commit", "-q", "--allow-empty", "-m", message)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, Run]:
    """The project on `main` with the base reports committed, checked out on a change branch."""
    root = tmp_path / "project"
    run = copy_project(root)
    write_reports(root, reports(BASE_RUNS))
    commit_all(run, "base metrics")
    run("git", "checkout", "-q", "-b", "change")
    return root, run


def base_in(repo: tuple[Path, Run], files: dict[str, Any]) -> None:
    """Replace main's committed reports (path -> content, None: removed) and go back to the
    change branch."""
    root, run = repo
    run("git", "checkout", "-q", "main")
    for name, content in files.items():
        if content is None:
            run("git", "rm", "-q", name)
        else:
            (root / name).write_text(json.dumps(content), encoding="utf-8")
    commit_all(run, "another base")
    run("git", "checkout", "-q", "change")


def gate(root: Path, run: Run, *args: str, summary: Path | None = None):
    """`python -m overfit.commands.gate` in the repository, as CI runs it."""
    env = env_for(root)
    # CI runs these tests too: never write into the real job summary.
    env.pop("GITHUB_STEP_SUMMARY", None)
    if summary is not None:
        env["GITHUB_STEP_SUMMARY"] = str(summary)
    return run(
        sys.executable, "-m", "overfit.commands.gate", *args, check=False, env=env, timeout=120
    )


def verdicts(report: str) -> dict[str, str]:
    """rule -> pass/FAIL/skipped from the report's rule table."""
    rows = re.findall(r"^\| (\w+) \|.*\| (pass|\*\*FAIL\*\*|skipped) \|$", report, flags=re.M)
    return {rule: result.strip("*") for rule, result in rows}


def failed(report: str) -> set[str]:
    return {rule for rule, result in verdicts(report).items() if result == "FAIL"}


def gate_report(root: Path) -> str:
    return (root / "reports/gate.md").read_text(encoding="utf-8")


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- the CLI on a real repository ------------------------------------------------------------


def test_an_improvement_passes(repo, tmp_path) -> None:
    root, run = repo
    write_reports(root, changed({"l1_1e-03": (1e-3, 0.966667, 67, 0.935, 0.96)}))
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")

    result = gate(root, run, "--base", "main", "--report", "out/gate.md", summary=summary)

    assert result.returncode == 0, result.stdout + result.stderr
    report = (root / "out/gate.md").read_text(encoding="utf-8")
    assert "| rule | base | new | tolerance | result |" in report
    assert verdicts(report) == dict.fromkeys(RULES, "pass")
    assert "| selected_cv_accuracy | 0.9500 (l1_1e-03, cv_acc) | 0.9600 (l1_1e-03, cv_acc) |" in (
        report
    )
    assert "Selected: base `l1_1e-03` by cv_acc; working tree `l1_1e-03` by cv_acc." in report
    assert "selection rule changed" not in report
    # DVC's diff of the key metrics: the selected test accuracy up by one point of 70.
    assert re.search(r"^\| selected\.test \| 0\.9429 \| 0\.9571 \| \+0\.0143 \|$", report, re.M)
    assert "No parameter changed." in report
    assert summary.read_text(encoding="utf-8") == "earlier step\n" + report + "\n"


def test_a_drop_in_selected_test_accuracy_beyond_tolerance_fails(repo) -> None:
    root, run = repo
    write_reports(root, changed(TWO_POINTS_LOST))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL selected_test_accuracy: base 0.9429 (l1_1e-03, cv_acc); new 0.9143" in (
        result.stdout
    )
    report = gate_report(root)
    assert failed(report) == {"selected_test_accuracy"}
    assert "**FAIL**: 1 of 6 rules broken (selected_test_accuracy)" in report


def test_a_change_of_the_test_sets_favourite_alone_passes(repo) -> None:
    """The best configuration on the test set changes (l2_1e-03 loses seven points, l2_1e-02
    gains three), the selection does not: nothing the gate guards got worse."""
    root, run = repo
    metrics, listing = changed(
        {"l2_1e-03": (1e-3, 0.966667, 60, 0.9, 0.93), "l2_1e-02": (1e-2, 0.933333, 68, 0.92, 0.92)}
    )
    listing["configs"] = dict(reversed(listing["configs"].items()))
    assert listing["test_choice"] == "l2_1e-02" and listing["selected"] == "l1_1e-03"
    write_reports(root, (metrics, listing))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts(gate_report(root)) == dict.fromkeys(RULES, "pass")


def test_a_baseline_that_stops_overfitting_fails(repo) -> None:
    root, run = repo
    # The unregularized run no longer learns its training points by heart.
    write_reports(root, changed({"none": (0.0, 0.933333, 62, 0.9, 0.9)}))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 1, result.stdout + result.stderr
    assert failed(gate_report(root)) == {"baseline_overfits"}
    assert "FAIL baseline_overfits" in result.stdout


def test_a_vanished_configuration_fails(repo) -> None:
    root, run = repo
    write_reports(root, reports({k: v for k, v in BASE_RUNS.items() if k != "l2_1e-02"}))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 1, result.stdout + result.stderr
    report = gate_report(root)
    assert failed(report) == {"configurations_kept"}
    row = "| configurations_kept | 4 configurations | 3 configurations, missing: l2_1e-02 |"
    assert row in report


def test_an_edited_tolerance_changes_the_verdict(repo) -> None:
    root, run = repo
    write_reports(root, changed(TWO_POINTS_LOST))
    assert gate(root, run, "--base", "main").returncode == 1

    # What a person does: edit conf/gate/default.yaml, then `make params`.
    conf = root / "conf/gate/default.yaml"
    text, count = re.subn(
        r"^selected_test_drop:.*$",
        "selected_test_drop: 0.03",
        conf.read_text(encoding="utf-8"),
        flags=re.M,
    )
    assert count == 1
    conf.write_text(text, encoding="utf-8")
    run(sys.executable, "-m", "overfit.commands.params")

    result = gate(root, run, "--base", "main")

    assert result.returncode == 0, result.stdout + result.stderr
    report = gate_report(root)
    assert verdicts(report)["selected_test_accuracy"] == "pass"
    assert "drop at most 0.0300" in report
    # DVC's params diff shows the edited tolerance.
    assert re.search(r"^\|.*gate\.selected_test_drop.*0\.03", report, re.M), report


def test_a_selection_on_the_test_set_is_labelled_optimistic(repo) -> None:
    """select.folds 0: no cross-validation, chosen on the test set; the cv rule is skipped and
    the change of selection rule is said."""
    root, run = repo
    write_reports(root, reports({n: (*r[:4], None) for n, r in BASE_RUNS.items()}, "test_acc"))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 0, result.stdout + result.stderr
    report = gate_report(root)
    assert verdicts(report) == dict.fromkeys(RULES, "pass") | {"selected_cv_accuracy": "skipped"}
    assert f"| 0.9571 (l2_1e-03, test_acc: {OPTIMISTIC}) |" in report
    assert f"working tree `l2_1e-03` by test_acc, {OPTIMISTIC}." in result.stdout
    assert "The selection rule changed: base cv_acc, working tree test_acc" in result.stdout
    assert "SKIP selected_cv_accuracy: the working tree selected without cross-validation" in (
        result.stdout
    )
    assert "**pass**: all 5 rules compared hold; 1 skipped (selected_cv_accuracy)" in report


def test_a_base_from_before_selection_is_compared_on_the_same_configuration(repo) -> None:
    """main's earlier format: `best` (l2_1e-03, best on the test set), no cross-validation.
    The working tree's selected l1_1e-03 is compared with the base's figures for l1_1e-03, not
    with the base's best."""
    root, run = repo
    metrics, listing = before_selection(BASE_RUNS)
    assert metrics["best"]["run"] == "l2_1e-03"
    base_in(repo, {METRICS: metrics, CONFIGS: listing})
    write_reports(root, reports(BASE_RUNS))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 0, result.stdout + result.stderr
    report = gate_report(root)
    assert verdicts(report) == dict.fromkeys(RULES, "pass") | {"selected_cv_accuracy": "skipped"}
    row = "| selected_test_accuracy | 0.9429 (l1_1e-03, same configuration) | 0.9429 (l1_1e-03, "
    assert row in report
    assert "`selected_cv_accuracy` skipped: the base has no cross-validation." in report
    assert "it reported `best` = `l2_1e-03`" in report
    # The base's `best` shows in DVC's diff, with nothing beside it in the working tree.
    assert re.search(r"^\| best\.test \| 0\.9571 \| missing \|", report, re.M), report

    # Two points lost on that same configuration fail, whatever the base's best was.
    write_reports(root, changed(TWO_POINTS_LOST))
    result = gate(root, run, "--base", "main")
    assert result.returncode == 1, result.stdout + result.stderr
    assert failed(gate_report(root)) == {"selected_test_accuracy"}


def test_a_base_from_before_configs_json_is_read(repo) -> None:
    """A base whose metrics.json still held every configuration, with `_acc` keys."""
    root, run = repo
    _, listing = before_selection(BASE_RUNS)
    old: dict[str, Any] = {"configs": listing["configs"]}
    for entry, name in (("baseline", "none"), ("best", "l2_1e-03")):
        config = listing["configs"][name]
        old[entry] = {"run": name} | {
            key: config[key]["mean"] for key in ("train_acc", "test_acc", "fresh_acc", "gap")
        }
    base_in(repo, {METRICS: old, CONFIGS: None})
    write_reports(root, changed({"l1_1e-03": (1e-3, 0.966667, 67, 0.935, 0.96)}))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 0, result.stdout + result.stderr
    row = "| selected_test_accuracy | 0.9429 (l1_1e-03, same configuration) | 0.9571 (l1_1e-03, "
    assert row in result.stdout
    assert "SKIP selected_cv_accuracy: the base has no cross-validation" in result.stdout


def test_a_base_without_metrics_cannot_compare(repo) -> None:
    root, run = repo
    base_in(repo, {METRICS: None})

    result = gate(root, run, "--base", "main")

    assert result.returncode == 2
    assert "reports/metrics.json: not in base revision main" in one_error_line(result)
    assert "**Could not compare** (exit 2)" in gate_report(root)


def test_a_base_revision_that_does_not_exist_cannot_compare(repo) -> None:
    root, run = repo
    result = gate(root, run, "--base", "origin/no-such-branch")
    assert result.returncode == 2
    assert "base revision 'origin/no-such-branch' not found" in one_error_line(result)


def test_missing_unreadable_or_outdated_working_tree_metrics_cannot_compare(repo) -> None:
    root, run = repo
    (root / METRICS).unlink()
    result = gate(root, run, "--base", "main")
    assert result.returncode == 2
    assert "not in the working tree" in one_error_line(result)

    (root / METRICS).write_text('{"configs": ', encoding="utf-8")
    result = gate(root, run, "--base", "main")
    assert result.returncode == 2
    assert "in the working tree: not valid JSON" in one_error_line(result)

    # Written by an evaluate stage from before selection: only a base may be that old.
    write_reports(root, before_selection(BASE_RUNS))
    result = gate(root, run, "--base", "main")
    assert result.returncode == 2
    assert "in the working tree: no selected entry" in one_error_line(result)


def test_a_metric_missing_at_the_base_cannot_compare(repo) -> None:
    root, run = repo
    broken, _ = reports(BASE_RUNS)
    del broken["selected"]["fresh"]
    base_in(repo, {METRICS: broken})

    result = gate(root, run, "--base", "main")

    assert result.returncode == 2
    assert (
        "reports/metrics.json at main: selected.fresh is missing (must be a number in [0, 1])"
        in (one_error_line(result))
    )


# --- the rules, on their own -----------------------------------------------------------------


BASE = parsed(reports(BASE_RUNS))


@pytest.mark.parametrize(
    ("runs", "broken"),
    [
        # Every cross-validation accuracy lower: l1_1e-03 stays selected, 0.05 down (tolerance
        # 1/30).
        (
            {
                "l1_1e-03": (1e-3, 0.966667, 66, 0.925, 0.90),
                "l2_1e-03": (1e-3, 0.966667, 67, 0.93, 0.89),
                "l2_1e-02": (1e-2, 0.933333, 65, 0.92, 0.88),
            },
            "selected_cv_accuracy",
        ),
        (TWO_POINTS_LOST, "selected_test_accuracy"),
        ({"l1_1e-03": (1e-3, 0.966667, 66, 0.91, 0.95)}, "selected_fresh_accuracy"),
        # The baseline catches up with the selected configuration's 66 test points.
        ({"none": (0.0, 1.0, 66, 0.9, 0.9)}, "selected_beats_baseline"),
    ],
)
def test_each_selected_rule_fails_on_its_own(runs: Runs, broken: str) -> None:
    new = parsed(changed(runs))
    assert new.selected is not None and new.selected.figures.run == "l1_1e-03"
    assert rule_results(BASE, new) == dict.fromkeys(RULES, True) | {broken: False}


def test_a_drop_of_exactly_the_tolerance_passes() -> None:
    # One training row of 30 (cross-validation), one test point of 70 and 0.01 fresh accuracy
    # lost: exactly the default tolerances, after evaluate's rounding to 6 decimals.
    others = {"l2_1e-03": (1e-3, 0.966667, 67, 0.93, 0.9), "l2_1e-02": (1e-2, 0.9, 65, 0.92, 0.9)}
    new = parsed(changed(others | {"l1_1e-03": (1e-3, 0.966667, 65, 0.915, 0.916667)}))
    assert new.selected is not None and new.selected.figures.run == "l1_1e-03"
    assert all(rule_results(BASE, new).values())

    beyond = parsed(changed(others | {"l1_1e-03": (1e-3, 0.966667, 65, 0.9149, 0.916)}))
    broken = {"selected_cv_accuracy": False, "selected_fresh_accuracy": False}
    assert rule_results(BASE, beyond) == dict.fromkeys(RULES, True) | broken


def test_the_selected_must_beat_the_baseline_strictly() -> None:
    tie = parsed(changed({"none": (0.0, 1.0, 66, 0.9, 0.9)}))
    assert rule_results(BASE, tie)["selected_beats_baseline"] is False

    # The selected l1_1e-03's 66 test points against the baseline's 62.
    by_four_points = GateConfig(selected_beats_baseline_by=4 / 70 - 1e-5)
    assert rule_results(BASE, BASE, by_four_points)["selected_beats_baseline"]
    by_five_points = GateConfig(selected_beats_baseline_by=5 / 70)
    assert not rule_results(BASE, BASE, by_five_points)["selected_beats_baseline"]


def test_a_base_without_cross_validation_skips_the_cv_rule() -> None:
    base = parsed(reports({n: (*r[:4], None) for n, r in BASE_RUNS.items()}, "test_acc"))
    rules = {r.name: r for r in check_rules(base, BASE, GateConfig())}
    cv = rules["selected_cv_accuracy"]
    assert cv.passed and cv.skipped.startswith("the base selected without cross-validation")
    assert cv.base == "none" and cv.new == "0.9500 (l1_1e-03, cv_acc)"
    assert not any(r.skipped for name, r in rules.items() if name != "selected_cv_accuracy")
    # The base chose l2_1e-03 on the test set: its figures are labelled, the rule change said.
    assert rules["selected_test_accuracy"].base == f"0.9571 (l2_1e-03, test_acc: {OPTIMISTIC})"
    notes = selection_notes(base, BASE)
    assert notes[0] == (
        f"Selected: base `l2_1e-03` by test_acc, {OPTIMISTIC}; working tree `l1_1e-03` by cv_acc."
    )
    assert notes[1].startswith("The selection rule changed: base test_acc, working tree cv_acc")


def test_a_base_from_before_selection_without_the_selected_configuration_skips() -> None:
    """The working tree selects a configuration the base never trained: nothing to compare,
    which is said, and is no failure."""
    base = parsed(before_selection({n: r for n, r in BASE_RUNS.items() if n != "l1_1e-03"}))
    new = parsed(reports(BASE_RUNS | {"l1_l2_1e-03": (1e-3, 0.966667, 66, 0.93, 0.97)}))
    assert new.selected is not None and new.selected.figures.run == "l1_l2_1e-03"
    rules = {r.name: r for r in check_rules(base, new, GateConfig())}
    assert all(r.passed for r in rules.values())
    assert rules["selected_cv_accuracy"].skipped == "the base has no cross-validation"
    for name in ("selected_test_accuracy", "selected_fresh_accuracy"):
        assert rules[name].skipped == "the base has no configuration l1_l2_1e-03 to compare with"
    assert rules["selected_beats_baseline"].base == "none"
    assert "the base has no `l1_l2_1e-03`" in selection_notes(base, new)[1]


def test_the_rule_is_read_from_configs_json() -> None:
    """metrics.json is kept narrow for `dvc metrics show`; configs.json names the rule."""
    metrics, listing = reports(BASE_RUNS, "cv_loss")
    narrow = parse_metrics(json.dumps(metrics), json.dumps(listing), "here")
    assert narrow.selected is not None and narrow.selected.rule == "cv_loss"
    assert rule_results(BASE, narrow) == dict.fromkeys(RULES, True)


def _without(key: str) -> str:
    metrics, _ = reports(BASE_RUNS)
    entry, _, name = key.partition(".")
    if name:
        del metrics[entry][name]
    else:
        del metrics[entry]
    return json.dumps(metrics)


def _with(entry: str, key: str, value: Any) -> str:
    metrics, _ = reports(BASE_RUNS)
    metrics[entry][key] = value
    return json.dumps(metrics)


def _config_without(name: str, measure: str) -> str:
    _, listing = reports(BASE_RUNS)
    del listing["configs"][name][measure]
    return json.dumps(listing)


def _listing_without_rule() -> str:
    _, listing = reports(BASE_RUNS)
    del listing["rule"]
    return json.dumps(listing)


def _listing_with_rule(rule: str) -> str:
    _, listing = reports(BASE_RUNS)
    listing["rule"] = rule
    return json.dumps(listing)


GOOD_METRICS, GOOD_CONFIGS = (json.dumps(t) for t in reports(BASE_RUNS))


@pytest.mark.parametrize(
    ("metrics_text", "configs_text", "message"),
    [
        ("{bad", GOOD_CONFIGS, "reports/metrics.json here: not valid JSON"),
        (
            "[]",
            GOOD_CONFIGS,
            "reports/metrics.json here: must be an object with baseline, selected, got []",
        ),
        (GOOD_METRICS, "{bad", "reports/configs.json here: not valid JSON"),
        (
            GOOD_METRICS,
            "{}",
            "reports/configs.json here: baseline is missing (must be a string or null)",
        ),
        (
            GOOD_METRICS,
            _config_without("l2_1e-02", "fresh_acc"),
            "reports/configs.json here: configs.l2_1e-02.fresh_acc is missing (must be an object "
            "with mean, std)",
        ),
        (
            _without("baseline"),
            GOOD_CONFIGS,
            "reports/metrics.json here: baseline is missing (must be an object with train, test)",
        ),
        (
            _without("selected"),
            GOOD_CONFIGS,
            "reports/metrics.json here: selected is missing (must be an object with run, cv, "
            "test, fresh)",
        ),
        (
            _without("selected.test"),
            GOOD_CONFIGS,
            "reports/metrics.json here: selected.test is missing (must be a number in [0, 1])",
        ),
        (
            _without("selected.run"),
            GOOD_CONFIGS,
            "reports/metrics.json here: selected.run is missing (must be a string)",
        ),
        (
            _without("selected.cv"),
            GOOD_CONFIGS,
            "reports/metrics.json here: selected.cv is missing (must be a number in [0, 1] or "
            "null)",
        ),
        (
            GOOD_METRICS,
            _listing_without_rule(),
            "reports/configs.json here: rule is missing (must be one of cv_acc, cv_loss, test_acc)",
        ),
        (
            GOOD_METRICS,
            _listing_with_rule("best"),
            'reports/configs.json here: rule must be one of cv_acc, cv_loss, test_acc, got "best"',
        ),
        (
            _with("selected", "cv", None),
            GOOD_CONFIGS,
            "reports/metrics.json here: selected.cv must be 0.95 (configs.json's mean cv_acc of "
            "l1_1e-03), got null",
        ),
        (
            _with("baseline", "train", "1"),
            GOOD_CONFIGS,
            'reports/metrics.json here: baseline.train must be a number in [0, 1], got "1"',
        ),
        (
            _with("selected", "fresh", math.nan),  # JSON's NaN
            GOOD_CONFIGS,
            "reports/metrics.json here: selected.fresh must be a number in [0, 1], got nan",
        ),
    ],
)
def test_unreadable_metrics_are_errors_not_passes(
    metrics_text: str, configs_text: str, message: str
) -> None:
    with pytest.raises((ArtifactError, GateError), match=re.escape(message)):
        parse_metrics(metrics_text, configs_text, "here")


# --- tampered reports: refused, never compared ----------------------------------------------


DROP = object()


def tampered(metrics: dict[str, Any] | None = None, configs: dict[str, Any] | None = None):
    """The base reports with values replaced, each at its dotted key (DROP: removed)."""
    files = reports(BASE_RUNS)
    for content, changes in zip(files, (metrics or {}, configs or {}), strict=True):
        for path, value in changes.items():
            *parents, key = path.split(".")
            entry = content
            for parent in parents:
                entry = entry[parent]
            if value is DROP:
                del entry[key]
            else:
                entry[key] = value
    return files


# What a hand or a faulty tool could leave in the reports, and the one line that refuses it.
TAMPERED = {
    "selected.test 5.0": (
        tampered(metrics={"selected.test": 5.0}),
        "reports/metrics.json {where}: selected.test must be a number in [0, 1], got 5.0",
    ),
    "selected.test 1e308": (
        tampered(metrics={"selected.test": 1e308}),
        "reports/metrics.json {where}: selected.test must be a number in [0, 1], got 1e+308",
    ),
    "selected.cv 5.0": (
        tampered(metrics={"selected.cv": 5.0}),
        "reports/metrics.json {where}: selected.cv must be a number in [0, 1] or null, got 5.0",
    ),
    "selected.fresh -0.1": (
        tampered(metrics={"selected.fresh": -0.1}),
        "reports/metrics.json {where}: selected.fresh must be a number in [0, 1], got -0.1",
    ),
    "baseline.test -5": (
        tampered(metrics={"baseline.test": -5}),
        "reports/metrics.json {where}: baseline.test must be a number in [0, 1], got -5",
    ),
    "baseline.train inf": (
        tampered(metrics={"baseline.train": math.inf}),
        "reports/metrics.json {where}: baseline.train must be a number in [0, 1], got inf",
    ),
    "selected.run names no configuration": (
        tampered(metrics={"selected.run": "l9_1e-09"}),
        'reports/metrics.json {where}: selected.run must be "l1_1e-03" (configs.json\'s '
        'selected), got "l9_1e-09"',
    ),
    "selected.run another configuration": (
        tampered(metrics={"selected.run": "l2_1e-03"}),
        'reports/metrics.json {where}: selected.run must be "l1_1e-03"',
    ),
    "selected.test not the configuration's": (
        tampered(metrics={"selected.test": 0.99}),
        "reports/metrics.json {where}: selected.test must be 0.942857 (configs.json's mean "
        "test_acc of l1_1e-03), got 0.99",
    ),
    "configs.json selected names no configuration": (
        tampered(configs={"selected": "l9_1e-09"}),
        "reports/configs.json {where}: selected must be the name of a configuration in "
        'configs, got "l9_1e-09"',
    ),
    "configs.json selected not metrics.json's": (
        tampered(configs={"selected": "l2_1e-03"}),
        'reports/configs.json {where}: selected must be cv_choice ("l1_1e-03"), what rule '
        'cv_acc picks, got "l2_1e-03"',
    ),
    "configs.json selected and cv_choice not metrics.json's": (
        tampered(configs={"selected": "l2_1e-03", "cv_choice": "l2_1e-03"}),
        'reports/metrics.json {where}: selected.run must be "l2_1e-03"',
    ),
    "NaN train_acc": (
        tampered(configs={"configs.l1_1e-03.train_acc.mean": math.nan}),
        "reports/configs.json {where}: configs.l1_1e-03.train_acc.mean must be a number in "
        "[0, 1], got nan",
    ),
    "inf train_acc": (
        tampered(configs={"configs.l1_1e-03.train_acc.mean": math.inf}),
        "reports/configs.json {where}: configs.l1_1e-03.train_acc.mean must be a number in "
        "[0, 1], got inf",
    ),
    "NaN cv_acc": (
        tampered(configs={"configs.l2_1e-02.cv_acc.mean": math.nan}),
        "reports/configs.json {where}: configs.l2_1e-02.cv_acc.mean must be a number in "
        "[0, 1], got nan",
    ),
    "NaN gap": (
        tampered(configs={"configs.none.gap.mean": math.nan}),
        "reports/configs.json {where}: configs.none.gap.mean must be a number in [-1, 1], got nan",
    ),
    "test accuracy 5.0": (
        tampered(configs={"configs.l2_1e-03.test_acc.mean": 5.0}),
        "reports/configs.json {where}: configs.l2_1e-03.test_acc.mean must be a number in "
        "[0, 1], got 5.0",
    ),
    "fresh accuracy 5.0": (
        tampered(configs={"configs.l2_1e-02.fresh_acc.mean": 5.0}),
        "reports/configs.json {where}: configs.l2_1e-02.fresh_acc.mean must be a number in "
        "[0, 1], got 5.0",
    ),
    "negative loss": (
        tampered(configs={"configs.l2_1e-02.test_loss.mean": -0.5}),
        "reports/configs.json {where}: configs.l2_1e-02.test_loss.mean must be a finite "
        "number >= 0, got -0.5",
    ),
    "negative spread": (
        tampered(configs={"configs.l2_1e-02.test_acc.std": -0.1}),
        "reports/configs.json {where}: configs.l2_1e-02.test_acc.std must be a number in "
        "[0, 1], got -0.1",
    ),
    "negative strength": (
        tampered(configs={"configs.l2_1e-02.strength": -1.0}),
        "reports/configs.json {where}: configs.l2_1e-02.strength must be a finite number >= 0, "
        "got -1.0",
    ),
    "missing baseline": (
        tampered(configs={"baseline": DROP}),
        "reports/configs.json {where}: baseline is missing (must be a string or null)",
    ),
    "baseline not unregularized": (
        tampered(configs={"baseline": "l2_1e-02"}),
        "reports/configs.json {where}: baseline must be a configuration of kind none (the "
        'unregularized one), got "l2_1e-02"',
    ),
    "test_choice names no configuration": (
        tampered(configs={"test_choice": "l9_1e-09"}),
        "reports/configs.json {where}: test_choice must be the name of a configuration in "
        'configs, got "l9_1e-09"',
    ),
}


def _texts(files: tuple[dict[str, Any], dict[str, Any]]) -> tuple[str, str]:
    metrics, listing = files
    return json.dumps(metrics), json.dumps(listing)


@pytest.mark.parametrize("where", ["in the working tree", "at main"])
@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_reports_are_refused(case: str, where: str) -> None:
    files, message = TAMPERED[case]
    with pytest.raises(ArtifactError) as refused:
        parse_metrics(*_texts(files), where)
    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith(message.format(where=where)), str(refused.value)


def test_the_untampered_reports_are_read() -> None:
    """The cases' starting point passes: each refusal is the tampering's doing."""
    assert parsed(tampered()) == BASE


@pytest.fixture(scope="module")
def gate_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    """One repository for the command-line refusals: main holds the base reports; each test
    writes its own working-tree reports."""
    root = tmp_path_factory.mktemp("tampered") / "project"
    run = copy_project(root)
    write_reports(root, reports(BASE_RUNS))
    commit_all(run, "base metrics")
    return root, run


def gate_command(argv: list[str]) -> None:
    """The gate's entry point as `python -m overfit.commands.gate` runs it."""
    from overfit.commands.gate import main

    raise SystemExit(main(argv))


@pytest.mark.parametrize("case", list(TAMPERED))
def test_the_gate_refuses_tampered_working_tree_reports(
    gate_repo, entry, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Refused before any comparison: the command in this process (the same refusals through
    a subprocess: test_the_gate_refuses_tampered_base_reports)."""
    root, _ = gate_repo
    files, message = TAMPERED[case]
    write_reports(root, files)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)

    status, out, err = entry(gate_command, root, "--base", "main")

    assert status == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: " + message.format(where="in the working tree"))
    assert "**Could not compare** (exit 2)" in gate_report(root)


@pytest.mark.parametrize("case", ["selected.test 1e308", "NaN gap", "missing baseline"])
def test_the_gate_refuses_tampered_base_reports(repo, case: str) -> None:
    root, run = repo
    files, message = TAMPERED[case]
    base_in(repo, dict(zip((METRICS, CONFIGS), files, strict=True)))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 2, result.stdout + result.stderr
    assert one_error_line(result).startswith("error: " + message.format(where="at main"))


def test_an_edited_configuration_that_hurts_the_model_fails(shrunk_pipeline, tmp_path) -> None:
    """The real thing: the pipeline rerun with a worse setting, gated against its own base."""
    from .conftest import SHRUNK, TWO_CONFIGURATIONS

    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "base: the shrunk pipeline and its metrics")
    # A learning rate 100 times too small: after 60 epochs the network has barely moved.
    # Two configurations are enough to choose from (the others are reported missing).
    params = [*SHRUNK, *TWO_CONFIGURATIONS, "model.learning_rate=1.0e-5"]
    run(sys.executable, "-m", "overfit.commands.params", *params)
    run("dvc", "repro", "evaluate")  # what the gate reads; the figures are not needed
    result = run(sys.executable, "-m", "overfit.commands.gate", "--base", "HEAD", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    report = (root / "reports/gate.md").read_text()
    assert re.search(r"\| selected_test_accuracy \|[^\n]*\| \*\*FAIL\*\* \|", report), report
    assert "model.learning_rate" in report  # the params diff shows what changed


def with_intervals(files: tuple[dict[str, Any], dict[str, Any]]) -> tuple[dict, dict]:
    """The reports with each accuracy's 95% interval, as evaluate writes them."""
    from overfit.core.uncertainty import proportion_interval

    metrics, listing = json.loads(json.dumps(files))
    points = {"test_acc": 70, "fresh_acc": 10_000, "cv_acc": 30}
    for config in listing["configs"].values():
        for measure, n in points.items():
            if measure in config:
                low, high = proportion_interval(config[measure]["mean"], n)
                config[measure] |= {"low": round(low, 6), "high": round(high, 6)}
    return metrics, listing


def test_a_drop_within_its_noise_is_not_a_regression() -> None:
    """Two test points of 70 are well inside the noise of two 70-point accuracies: with the
    intervals on both sides the drop passes, and the report says by which rule."""
    base = parsed(with_intervals(reports(BASE_RUNS)))
    new = parsed(with_intervals(changed(TWO_POINTS_LOST)))
    [test] = [r for r in check_rules(base, new, GateConfig()) if r.name == "selected_test_accuracy"]
    assert test.passed
    allowed = float(re.match(r"drop at most (\d\.\d{4}) \(noise", test.tolerance).group(1))
    assert 0.08 < allowed < 0.12  # about six points of 70
    assert test.tolerance.endswith("(noise: 95% interval of the drop; set 0.0143)")
    # Without the intervals on one side, the set tolerance decides, as before.
    old = parsed(reports(BASE_RUNS))
    assert rule_results(old, new)["selected_test_accuracy"] is False


def test_a_drop_beyond_its_noise_fails_and_the_set_tolerance_is_a_floor() -> None:
    # Fresh accuracy on 10,000 points: its noise (about 0.008) is below the set 0.01, which
    # stays the limit; a drop of 0.025 is beyond both.
    base = parsed(with_intervals(reports(BASE_RUNS)))
    worse = parsed(with_intervals(changed({"l1_1e-03": (1e-3, 0.966667, 66, 0.900, 0.95)})))
    [fresh] = [
        r for r in check_rules(base, worse, GateConfig()) if r.name == "selected_fresh_accuracy"
    ]
    assert not fresh.passed and fresh.tolerance == "drop at most 0.0100"
    # Cross-validation on 30 held-out rows: a drop of two rows (0.067) is noise.
    two_rows = parsed(with_intervals(changed({"l1_1e-03": (1e-3, 0.966667, 66, 0.925, 0.883333)})))
    assert rule_results(base, two_rows)["selected_cv_accuracy"] is True


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"test_acc_low": "0.8"}, "tags test_acc_low, test_acc_high must be two numbers in [0, 1]"),
        ({"test_acc_low": "0.95", "test_acc_high": "0.99"}, "must be an interval around test_acc"),
        ({"fresh_acc_low": "nan", "fresh_acc_high": "1"}, "tags fresh_acc_low, fresh_acc_high"),
    ],
)
def test_a_versions_bad_interval_tags_are_refused_in_one_line(tags, message: str) -> None:
    from overfit.core.rules import version_pick

    good = {"overfit.run": "l1_1e-03", "overfit.selection_rule": "cv_acc: ..."}
    good |= {"cv_acc": "0.95", "test_acc": "0.9", "fresh_acc": "0.92"}
    assert version_pick(good, "version 1").intervals == {}
    complete = good | {"test_acc_low": "0.8", "test_acc_high": "0.95"}
    assert version_pick(complete, "version 1").intervals == {"test": (0.8, 0.95)}
    with pytest.raises(ArtifactError) as refused:
        version_pick(good | tags, "version 1")
    assert message in str(refused.value) and "\n" not in str(refused.value)
