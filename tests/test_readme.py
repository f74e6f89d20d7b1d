"""Every command the README shows works as typed there: after `source .venv/bin/activate`, in a
clone that ran the pipeline. Each one is run here, or named with the test that runs it (the
long-running ones: a server, a SLURM cluster, a whole DVC experiment)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import BIN, ROOT, env_for

README = ROOT / "README.md"
VENV = ROOT / ".venv"

# Run in this order, in one copy of the shrunk pipeline.
RUN = [
    "source .venv/bin/activate",
    "make run",
    "dvc metrics show",
    "dvc metrics diff main --md",
    "dvc plots show",
    "dvc plots diff main",
    "dvc repro",
    "dvc status",
    "make gate",
    "make gate BASE=origin/main",
    "python -m overfit.commands.gate --base HEAD~1 --report /tmp/gate.md",
    "dvc exp show --only-changed --drop 'configs|data/|models|src/|reports/'",
    "python -m overfit.commands.params sweep=quick train.epochs=2000",
]
# The test that runs each of the others (the same command, or the one a make target runs).
COVERED = {
    "make test": "the suite itself; tests/test_workflow.py::test_every_make_target_exists",
    "dvc exp run -S data=circles": (
        "tests/test_data.py::test_circles_preset_composes_and_its_training_rows_hold_both_classes"
    ),
    "dvc exp run -S data.noise=0.3": (
        "tests/test_concurrency.py::test_two_queued_experiments_share_one_store"
    ),
    "dvc exp run -S sweep=article -S 'train.seeds=[1,2,3]'": (
        "tests/test_concurrency.py::test_two_queued_experiments_share_one_store"
    ),
    "dvc exp run --queue -S 'data.n_train=20,40,60' && dvc queue start": (
        "tests/test_concurrency.py::test_two_queued_experiments_share_one_store"
    ),
    "python -m overfit.stages.train --multirun penalty.kind=l2 penalty.strength=1e-3,1e-2": (
        "tests/test_config.py::test_bad_overrides_stop_the_sweep_before_any_run"
    ),
    "python -m overfit.stages.train --multirun penalty=l1,l2": (
        "tests/test_launchers.py::test_other_launchers_train_exactly_what_the_default_does"
    ),
    "make ui": "tests/test_ui.py::test_the_link_make_ui_prints_opens_the_model_training_view",
    "dvc exp run -S launcher=joblib": (
        "tests/test_launchers.py::test_other_launchers_train_exactly_what_the_default_does"
    ),
    "dvc exp run -S launcher=joblib -S launcher.n_jobs=4 -S launcher.threads=2": (
        "tests/test_launchers.py::test_other_launchers_train_exactly_what_the_default_does"
    ),
    # No SLURM cluster here: submitit_local takes the same path, in local processes.
    "dvc exp run -S launcher=submitit_slurm -S launcher.partition=gpu": (
        "tests/test_launchers.py::test_other_launchers_train_exactly_what_the_default_does"
    ),
    "python -m overfit.stages.train --multirun hydra/launcher=joblib hydra.launcher.n_jobs=2 "
    "penalty.kind=l1,l2 penalty.strength=1e-3,1e-4": (
        "tests/test_launchers.py::test_other_launchers_train_exactly_what_the_default_does"
    ),
    "dvc exp run -S select.metric=test_acc": (
        "tests/test_pipeline.py::"
        "test_choosing_on_the_test_set_reruns_only_the_reports_and_says_it_is_optimistic"
    ),
    "make promote": "tests/test_registry.py::test_register_promote_roll_back_and_refuse",
    "python -m overfit.commands.promote --rollback": (
        "tests/test_registry.py::test_register_promote_roll_back_and_refuse"
    ),
    "make serve": "tests/test_serve.py::test_served_probabilities_are_the_evaluate_stages",
    "curl -s http://127.0.0.1:5002/invocations -H 'Content-Type: application/json' -d "
    '\'{"dataframe_split": {"columns": ["x1", "x2"], "data": [[0.0, 1.0], [1.0, -0.5]]}}\'': (
        "tests/test_serve.py::test_it_says_where_it_serves_and_how_to_call_it"
    ),
    "make predict IN=data/split/test.csv OUT=predictions.json": (
        "tests/test_serve.py::test_batch_predict_writes_the_served_probabilities"
    ),
    "make server": (
        "tests/test_server.py::"
        "test_start_prints_the_uri_to_export_and_keeps_the_db_password_private"
    ),
    "export MLFLOW_TRACKING_URI=http://127.0.0.1:5001": (
        "tests/test_server.py::test_the_sweep_reads_back_through_the_server"
    ),
    "dvc exp run -S tracking=server": (
        "tests/test_server.py::test_the_sweep_reads_back_through_the_server"
    ),
    "make server-stop": "tests/test_server.py::test_stop_ends_postgresql_and_the_server",
    "dvc remote add -d store /mnt/shared/overfit-dvc": (
        "tests/test_remote.py::test_a_fresh_clone_pulls_the_results_and_reruns_nothing"
    ),
    'git add .dvc/config && git commit -m "DVC remote"': (
        "tests/test_remote.py::test_a_fresh_clone_pulls_the_results_and_reruns_nothing"
    ),
    "dvc push": "tests/test_remote.py::test_a_fresh_clone_pulls_the_results_and_reruns_nothing",
    "git clone <repo> && cd overfit && make setup && source .venv/bin/activate && dvc pull": (
        "tests/test_remote.py::test_a_fresh_clone_pulls_the_results_and_reruns_nothing"
    ),
}


def readme_commands() -> list[str]:
    """Each command of the README's bash blocks, comments and line continuations removed."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s+)#\s.*$", "", line.strip())
            if line:
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def test_every_readme_command_is_run_here_or_by_a_named_test() -> None:
    shown = readme_commands()
    assert set(shown) == set(RUN) | set(COVERED), (
        f"not covered: {sorted(set(shown) - set(RUN) - set(COVERED))}; "
        f"no longer in the README: {sorted((set(RUN) | set(COVERED)) - set(shown))}"
    )
    assert not set(RUN) & set(COVERED)


def test_the_named_tests_exist() -> None:
    for command, where in COVERED.items():
        path, _, name = where.rpartition(";")[-1].strip().partition("::")
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"{command!r}: no {where}"


def test_readme_commands_work_after_activating_the_venv(shrunk_pipeline, tmp_path) -> None:
    """In a copy of a project that ran the pipeline, with no DVC or project Python on the
    PATH until `source .venv/bin/activate`, as in a fresh shell."""
    if not (VENV / "bin/activate").is_file():
        pytest.skip(f"no {VENV}: run the suite through `make test`")
    root = tmp_path / "overfit"
    run = shrunk_pipeline.copy_to(root)
    (root / ".venv").symlink_to(VENV)
    # As after `make run`: .venv is newer than what it was installed from, so `make` does not
    # reinstall (which would point the shared .venv's editable install at this copy).
    for name in ("requirements.lock", "pyproject.toml"):
        os.utime(root / name, (0, 0))
    # main holds the pipeline's outputs, as after `make run` and a commit, then one more commit.
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "the pipeline's outputs")
    run("git", "commit", "-q", "--allow-empty", "-m", "a second commit, for HEAD~1")
    run("git", "update-ref", "refs/remotes/origin/main", "HEAD")
    env = env_for(root)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != str(BIN))
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "GITHUB_STEP_SUMMARY"):
        env.pop(name, None)

    def typed(command: str) -> subprocess.CompletedProcess:
        line = f"source .venv/bin/activate && {command}"
        done = subprocess.run(
            ["bash", "-c", line], cwd=root, env=env, capture_output=True, text=True, timeout=300
        )
        # 60 epochs do not overfit as 4000 do, so the gate's absolute rules may fail: what
        # matters here is that it compared (exit 2, "cannot compare", prints no verdict).
        compared = "gate" in command and re.search(r"^gate: (pass|FAIL);", done.stdout, re.M)
        assert done.returncode == 0 or compared, f"{command}\n{done.stdout}\n{done.stderr}"
        return done

    bare = subprocess.run(
        ["bash", "-c", "command -v dvc || true"], cwd=root, env=env, capture_output=True, text=True
    )
    assert not bare.stdout.startswith(str(VENV)), "the venv was on the PATH already"
    outputs = {command: typed(command) for command in RUN}

    # The venv's own dvc and python (activate names the folder it was made in).
    activated = typed("command -v dvc python").stdout.split()
    assert [Path(p).parent.parent.resolve() for p in activated] == [VENV.resolve()] * 2
    assert "source .venv/bin/activate" in outputs["make run"].stdout
    assert "selected.run" in outputs["dvc metrics show"].stdout
    assert "| Path" in outputs["dvc metrics diff main --md"].stdout
    assert "Data and pipelines are up to date." in outputs["dvc status"].stdout
    assert "| rule | base | new | tolerance | result |" in outputs["make gate"].stdout
    assert (root / "dvc_plots/index.html").is_file()
    # The setting changed, so DVC now has train (and what follows) to rerun.
    assert "epochs: 2000" in (root / "params.yaml").read_text(encoding="utf-8")
    assert "train" in typed("dvc status").stdout
