"""The CI workflow: triggers, least privilege, and only `make` targets that exist."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import yaml

from .conftest import ROOT

WORKFLOW = ROOT / ".github/workflows/ci.yml"


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def step_using(workflow: dict[str, Any], action: str) -> dict[str, Any]:
    (step,) = [s for s in steps(workflow) if s.get("uses", "").startswith(f"{action}@")]
    return step


def step_running(workflow: dict[str, Any], command: str) -> dict[str, Any]:
    (step,) = [s for s in steps(workflow) if command in s.get("run", "")]
    return step


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    # `name [name ...]:` at the start of a line; `:=` is an assignment, not a rule.
    rules = re.findall(r"^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?!=)", text, re.M)
    # Special targets such as .PHONY are not something to call.
    return {name for rule in rules for name in rule.split() if not name.startswith(".")}


def make_targets(workflow: dict[str, Any]) -> list[str]:
    """Every target a step's `make` call names (after any VAR=value arguments)."""
    found = []
    for step in steps(workflow):
        for call in re.findall(r"\bmake((?:[ \t]+[^\s;&|]+)+)", step.get("run", "")):
            found += [arg for arg in call.split() if "=" not in arg and not arg.startswith("-")]
    return found


def test_triggers_are_pull_requests_and_pushes_to_main(workflow) -> None:
    # YAML 1.1 reads a bare `on` key as true.
    on = workflow.get("on", workflow.get(True))
    assert "pull_request" in on
    assert on["push"]["branches"] == ["main"]


def test_permissions_are_read_code_and_comment_only(workflow) -> None:
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert all("permissions" not in job for job in workflow["jobs"].values())


def test_environment_keeps_dvc_and_mlflow_quiet(workflow) -> None:
    assert workflow["env"]["DVC_NO_ANALYTICS"] == "1"
    assert workflow["env"]["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_checkout_and_python(workflow) -> None:
    assert step_using(workflow, "actions/checkout")["with"]["fetch-depth"] == 0
    python = step_using(workflow, "actions/setup-python")["with"]
    assert python == {
        "python-version": "3.11",
        "cache": "pip",
        "cache-dependency-path": "requirements.lock",
    }


def test_every_make_target_exists(workflow) -> None:
    called = make_targets(workflow)
    assert {"test", "run", "gate"} <= set(called)
    assert set(called) <= makefile_targets(), set(called) - makefile_targets()


def position(workflow: dict[str, Any], step: dict[str, Any]) -> int:
    return next(i for i, s in enumerate(steps(workflow)) if s is step)


def test_steps_run_in_order_and_the_gate_uses_the_base_branch(workflow) -> None:
    test, run = step_running(workflow, "make test"), step_running(workflow, "make run")
    pr_gate = step_running(workflow, 'make gate BASE="origin/$BASE_REF"')
    assert pr_gate["env"]["BASE_REF"] == "${{ github.base_ref }}"
    assert pr_gate["if"] == "github.event_name == 'pull_request'"
    assert position(workflow, test) < position(workflow, run) < position(workflow, pr_gate)
    # The gate's failure fails the job: nothing softens it.
    assert "continue-on-error" not in pr_gate


def test_the_run_must_reproduce_the_committed_lock_and_reports(workflow) -> None:
    run = step_running(workflow, "make run")
    same = step_running(workflow, "git diff --exit-code")
    assert 'test -z "$(git status --porcelain)"' in same["run"]
    assert position(workflow, run) < position(workflow, same)
    assert "if" not in same and "continue-on-error" not in same


def test_the_report_is_commented_and_uploaded_whatever_the_gate_said(workflow) -> None:
    comment = step_running(workflow, "gh pr comment")
    assert "--body-file reports/gate.md" in comment["run"]
    assert "${{ github.event.pull_request.number }}" in comment["run"]
    assert comment["env"]["GH_TOKEN"] == "${{ github.token }}"
    assert comment["if"].startswith("always()")
    upload = step_using(workflow, "actions/upload-artifact")
    assert upload["if"] == "always()"
    assert upload["with"]["path"] == "reports/"
    gate = step_running(workflow, 'make gate BASE="origin/$BASE_REF"')
    assert position(workflow, gate) < position(workflow, comment) < position(workflow, upload)


@pytest.mark.parametrize("made_in", ["elsewhere", "here", "linked"])
def test_a_venv_made_in_another_folder_is_made_again(tmp_path, made_in: str) -> None:
    """A moved or copied project's .venv names its old folder in its scripts and its editable
    install: `make` removes it and makes it again (shown with `make -n`, which plans the
    commands without running them); a venv made here, or a link to one kept elsewhere, is
    left as it is."""
    import shutil
    import subprocess

    project = tmp_path / "project"
    project.mkdir()
    for name in ("Makefile", "requirements.lock", "pyproject.toml"):
        shutil.copy2(ROOT / name, project / name)
    venv = (tmp_path / "shared-venv") if made_in == "linked" else project / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    folder = str(project) if made_in == "here" else "/moved/from/here"
    (venv / ".installed").write_text(folder + "\n")
    if made_in == "linked":
        (project / ".venv").symlink_to(venv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}  # not a sub-make
    done = subprocess.run(
        ["make", "-n", "setup"], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    said = f".venv was made in {folder}: making it again in {project}\n"
    if made_in == "elsewhere":
        assert done.stdout.startswith(said), done.stdout
        assert not venv.exists()
        assert "pip install" in done.stdout
    else:
        assert (project / ".venv" / "bin" / "python").exists()
        assert "making it again" not in done.stdout
