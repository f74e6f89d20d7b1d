"""The CI gate: metrics.json in the working tree against a base commit, in a throw-away git copy
of the project, with the real gate CLI, git and DVC."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from overfit.artifacts import Evaluation, write_evaluation
from overfit.config import GateConfig
from overfit.gate import GateError, Metrics, check_rules, parse_metrics
from overfit.metrics import evaluation, summarize_run

from .conftest import Run, copy_project, env_for

METRICS = "reports/metrics.json"
CONFIGS = "reports/configs.json"
RULES = {
    "best_test_accuracy",
    "best_fresh_accuracy",
    "baseline_overfits",
    "best_beats_baseline",
    "configurations_kept",
}

# Per configuration: (strength, train accuracy, test points right out of 70, fresh accuracy).
# As in the article, the unregularized run learns its 30 points by heart and L2 does best.
BASE_RUNS = {
    "none": (0.0, 1.0, 64, 0.900),
    "l1_1e-03": (1e-3, 0.966667, 66, 0.925),
    "l2_1e-03": (1e-3, 0.966667, 67, 0.930),
    "l2_1e-02": (1e-2, 0.933333, 65, 0.920),
}

# The best configuration (l2_1e-03) loses two of its 67 test points; the best is now 65 of 70.
TWO_POINTS_LOST = {
    "l1_1e-03": (1e-3, 0.966667, 65, 0.925),
    "l2_1e-03": (1e-3, 0.966667, 65, 0.925),
}


def metrics(runs: dict[str, tuple[float, float, int, float]]) -> Evaluation:
    """What the evaluate stage reports, one seed per configuration."""
    configs = {}
    for name, (strength, train, right, fresh) in runs.items():
        test = right / 70
        seed = {
            "train_acc": train,
            "test_acc": test,
            "fresh_acc": fresh,
            "gap": train - test,
            "train_loss": 0.05,
            "test_loss": 1 - test,
            "fresh_loss": 1 - fresh,
            "hidden_l1": 60.0,
            "hidden_l2": 2.5,
            "near_zero_share": 0.1,
        }
        kind = "none" if name == "none" else name.rsplit("_", 1)[0]
        configs[name] = summarize_run([seed], kind, strength)
    return evaluation(configs)


def texts(report: Evaluation) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json and configs.json's contents, as evaluate writes them."""
    assert report.headline is not None
    configs = {name: c.to_json() for name, c in report.configs.items()}
    return report.headline.to_json(), {"baseline": "none", "configs": configs}


def changed(runs: dict[str, tuple[float, float, int, float]]) -> Evaluation:
    """The base metrics with some configurations' results replaced."""
    return metrics(BASE_RUNS | runs)


def parsed(report: Evaluation) -> Metrics:
    headline, configs = texts(report)
    return parse_metrics(json.dumps(headline), json.dumps(configs), "here")


def write_metrics(root: Path, report: Evaluation) -> None:
    write_evaluation(root, report)


def commit_all(run: Run, message: str) -> None:
    run("git", "add", "-A")
    run("git", "commit", "-q", "--allow-empty", "-m", message)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, Run]:
    """The project on `main` with the base metrics committed, checked out on a change branch."""
    root = tmp_path / "project"
    run = copy_project(root)
    write_metrics(root, metrics(BASE_RUNS))
    commit_all(run, "base metrics")
    run("git", "checkout", "-q", "-b", "change")
    return root, run


def gate(root: Path, run: Run, *args: str, summary: Path | None = None):
    """`python -m overfit.gate` in the repository, as CI runs it."""
    env = env_for(root)
    # CI runs these tests too: never write into the real job summary.
    env.pop("GITHUB_STEP_SUMMARY", None)
    if summary is not None:
        env["GITHUB_STEP_SUMMARY"] = str(summary)
    return run(sys.executable, "-m", "overfit.gate", *args, check=False, env=env, timeout=120)


def verdicts(report: str) -> dict[str, str]:
    """rule -> pass/FAIL from the report's rule table."""
    rows = re.findall(r"^\| (\w+) \|.*\| (pass|\*\*FAIL\*\*) \|$", report, flags=re.M)
    return {rule: result.strip("*") for rule, result in rows}


def failed(report: str) -> set[str]:
    return {rule for rule, result in verdicts(report).items() if result == "FAIL"}


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- the CLI on a real repository ------------------------------------------------------------


def test_an_improvement_passes(repo, tmp_path) -> None:
    root, run = repo
    write_metrics(root, changed({"l2_1e-03": (1e-3, 0.966667, 68, 0.935)}))
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")

    result = gate(root, run, "--base", "main", "--report", "out/gate.md", summary=summary)

    assert result.returncode == 0, result.stdout + result.stderr
    report = (root / "out/gate.md").read_text(encoding="utf-8")
    assert "| rule | base | new | tolerance | result |" in report
    assert verdicts(report) == dict.fromkeys(RULES, "pass")
    # DVC's diff of the key metrics: best test accuracy up by one point of 70.
    assert re.search(r"^\| best\.test \| 0\.9571 \| 0\.9714 \| \+0\.0143 \|$", report, re.M)
    assert "No parameter changed." in report
    assert summary.read_text(encoding="utf-8") == "earlier step\n" + report + "\n"


def test_a_drop_in_best_test_accuracy_beyond_tolerance_fails(repo) -> None:
    root, run = repo
    write_metrics(root, changed(TWO_POINTS_LOST))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL best_test_accuracy: base 0.9571 (l2_1e-03); new 0.9286" in result.stdout
    report = (root / "reports/gate.md").read_text(encoding="utf-8")
    assert failed(report) == {"best_test_accuracy"}
    assert "**FAIL**: 1 of 5 rules broken (best_test_accuracy)" in report
    assert "| best_test_accuracy | 0.9571 (l2_1e-03) | 0.9286 (l1_1e-03) |" in report


def test_a_baseline_that_stops_overfitting_fails(repo) -> None:
    root, run = repo
    # The unregularized run no longer learns its training points by heart.
    write_metrics(root, changed({"none": (0.0, 0.933333, 64, 0.9)}))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 1, result.stdout + result.stderr
    assert failed((root / "reports/gate.md").read_text(encoding="utf-8")) == {"baseline_overfits"}
    assert "FAIL baseline_overfits" in result.stdout


def test_a_vanished_configuration_fails(repo) -> None:
    root, run = repo
    write_metrics(root, metrics({k: v for k, v in BASE_RUNS.items() if k != "l2_1e-02"}))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 1, result.stdout + result.stderr
    report = (root / "reports/gate.md").read_text(encoding="utf-8")
    assert failed(report) == {"configurations_kept"}
    row = "| configurations_kept | 4 configurations | 3 configurations, missing: l2_1e-02 |"
    assert row in report


def test_an_edited_tolerance_changes_the_verdict(repo) -> None:
    root, run = repo
    write_metrics(root, changed(TWO_POINTS_LOST))
    assert gate(root, run, "--base", "main").returncode == 1

    # What a person does: edit conf/gate/default.yaml, then `make params`.
    conf = root / "conf/gate/default.yaml"
    text, count = re.subn(
        r"^best_test_drop:.*$", "best_test_drop: 0.03", conf.read_text(encoding="utf-8"), flags=re.M
    )
    assert count == 1
    conf.write_text(text, encoding="utf-8")
    run(sys.executable, "-m", "overfit.config")

    result = gate(root, run, "--base", "main")

    assert result.returncode == 0, result.stdout + result.stderr
    report = (root / "reports/gate.md").read_text(encoding="utf-8")
    assert verdicts(report)["best_test_accuracy"] == "pass"
    assert "drop at most 0.0300" in report
    # DVC's params diff shows the edited tolerance.
    assert re.search(r"^\|.*gate\.best_test_drop.*0\.03", report, re.M), report


def test_a_base_without_metrics_cannot_compare(repo) -> None:
    root, run = repo
    run("git", "checkout", "-q", "main")
    run("git", "rm", "-q", METRICS)
    commit_all(run, "no metrics")
    write_metrics(root, metrics(BASE_RUNS))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 2
    assert "reports/metrics.json: not in base revision main" in one_error_line(result)
    report = (root / "reports/gate.md").read_text(encoding="utf-8")
    assert "**Could not compare** (exit 2)" in report


def test_a_base_revision_that_does_not_exist_cannot_compare(repo) -> None:
    root, run = repo
    result = gate(root, run, "--base", "origin/no-such-branch")
    assert result.returncode == 2
    assert "base revision 'origin/no-such-branch' not found" in one_error_line(result)


def test_missing_or_unreadable_working_tree_metrics_cannot_compare(repo) -> None:
    root, run = repo
    (root / METRICS).unlink()
    result = gate(root, run, "--base", "main")
    assert result.returncode == 2
    assert "not in the working tree" in one_error_line(result)

    (root / METRICS).write_text('{"configs": ', encoding="utf-8")
    result = gate(root, run, "--base", "main")
    assert result.returncode == 2
    assert "in the working tree: not valid JSON" in one_error_line(result)


def test_a_metric_missing_at_the_base_cannot_compare(repo) -> None:
    root, run = repo
    run("git", "checkout", "-q", "main")
    broken, _ = texts(metrics(BASE_RUNS))
    del broken["best"]["fresh"]
    (root / METRICS).write_text(json.dumps(broken), encoding="utf-8")
    commit_all(run, "a metric lost")
    write_metrics(root, metrics(BASE_RUNS))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 2
    assert "reports/metrics.json at main: no best.fresh" in one_error_line(result)


def test_a_base_from_before_configs_json_is_read(repo) -> None:
    """A base whose metrics.json still held every configuration, with `_acc` keys."""
    root, run = repo
    run("git", "checkout", "-q", "main")
    report = metrics(BASE_RUNS)
    configs = {name: c.to_json() for name, c in report.configs.items()}
    old = {"configs": configs}
    for entry, name in (("baseline", "none"), ("best", "l2_1e-03")):
        c = report.configs[name]
        old[entry] = {"run": name} | {
            key: c.mean(key) for key in ("train_acc", "test_acc", "fresh_acc", "gap")
        }
    (root / METRICS).write_text(json.dumps(old), encoding="utf-8")
    run("git", "rm", "-q", CONFIGS)
    commit_all(run, "the earlier layout")
    write_metrics(root, changed({"l2_1e-03": (1e-3, 0.966667, 68, 0.935)}))

    result = gate(root, run, "--base", "main")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "| best_test_accuracy | 0.9571 (l2_1e-03) | 0.9714 (l2_1e-03) |" in result.stdout


# --- the rules, on their own -----------------------------------------------------------------


def test_a_drop_of_exactly_the_tolerance_passes() -> None:
    # One test point of 70 and 0.01 fresh accuracy lost: exactly the default tolerances, after
    # evaluate's rounding to 6 decimals.
    base = parsed(metrics(BASE_RUNS))
    new = parsed(
        changed({"l2_1e-03": (1e-3, 0.966667, 66, 0.92), "l1_1e-03": (1e-3, 0.966667, 60, 0.9)})
    )
    assert new.headline.best_run == "l2_1e-03"
    assert all(rule.passed for rule in check_rules(base, new, GateConfig()))

    beyond = parsed(
        changed({"l2_1e-03": (1e-3, 0.966667, 66, 0.9199), "l1_1e-03": (1e-3, 0.966667, 60, 0.9)})
    )
    rules = {rule.name: rule.passed for rule in check_rules(base, beyond, GateConfig())}
    assert rules == dict.fromkeys(RULES, True) | {"best_fresh_accuracy": False}


def test_the_best_must_beat_the_baseline_strictly() -> None:
    base = parsed(metrics(BASE_RUNS))
    tie = {name: (s, train, 64, fresh) for name, (s, train, _, fresh) in BASE_RUNS.items()}
    rules = {r.name: r.passed for r in check_rules(base, parsed(metrics(tie)), GateConfig())}
    assert rules["best_beats_baseline"] is False

    ahead = parsed(metrics(BASE_RUNS))  # best 67 of 70 against the baseline's 64
    by_two_points = GateConfig(best_beats_baseline_by=2 / 70)
    assert {r.name: r.passed for r in check_rules(base, ahead, by_two_points)}[
        "best_beats_baseline"
    ]
    by_three_points = GateConfig(best_beats_baseline_by=3 / 70)
    assert not {r.name: r.passed for r in check_rules(base, ahead, by_three_points)}[
        "best_beats_baseline"
    ]


def _without(key: str) -> str:
    headline, _ = texts(metrics(BASE_RUNS))
    entry, _, name = key.partition(".")
    if name:
        del headline[entry][name]
    else:
        del headline[entry]
    return json.dumps(headline)


GOOD_HEADLINE, GOOD_CONFIGS = (json.dumps(t) for t in texts(metrics(BASE_RUNS)))


def _with(entry: str, key: str, value: Any) -> str:
    headline, _ = texts(metrics(BASE_RUNS))
    headline[entry][key] = value
    return json.dumps(headline)


@pytest.mark.parametrize(
    ("metrics_text", "configs_text", "message"),
    [
        ("{bad", GOOD_CONFIGS, "reports/metrics.json here: not valid JSON"),
        ("[]", GOOD_CONFIGS, "reports/metrics.json here: not a JSON object"),
        (GOOD_HEADLINE, "{bad", "reports/configs.json here: not valid JSON"),
        (GOOD_HEADLINE, "{}", "reports/configs.json here: no configs"),
        (_without("baseline"), GOOD_CONFIGS, "reports/metrics.json here: no baseline entry"),
        (_without("best.test"), GOOD_CONFIGS, "reports/metrics.json here: no best.test"),
        (_without("best.run"), GOOD_CONFIGS, "reports/metrics.json here: no best.run"),
        (
            _with("baseline", "train", "1"),
            GOOD_CONFIGS,
            "reports/metrics.json here: no baseline.train (a number)",
        ),
        (
            _with("best", "fresh", math.nan),  # JSON's NaN
            GOOD_CONFIGS,
            "reports/metrics.json here: best.fresh is nan, not a finite number",
        ),
    ],
)
def test_unreadable_metrics_are_errors_not_passes(
    metrics_text: str, configs_text: str, message: str
) -> None:
    with pytest.raises(GateError, match=re.escape(message)):
        parse_metrics(metrics_text, configs_text, "here")


def test_an_edited_configuration_that_hurts_the_model_fails(shrunk_pipeline, tmp_path) -> None:
    """The real thing: the pipeline rerun with a worse setting, gated against its own base."""
    from .conftest import SHRUNK

    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "base: the shrunk pipeline and its metrics")
    # A learning rate 100 times too small: after 60 epochs the network has barely moved.
    run(sys.executable, "-m", "overfit.config", *SHRUNK, "model.learning_rate=1.0e-5")
    run("dvc", "repro", "evaluate")  # what the gate reads; the figures are not needed
    result = run(sys.executable, "-m", "overfit.gate", "--base", "HEAD", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    report = (root / "reports/gate.md").read_text()
    assert re.search(r"\| best_test_accuracy \|[^\n]*\| \*\*FAIL\*\* \|", report), report
    assert "model.learning_rate" in report  # the params diff shows what changed
