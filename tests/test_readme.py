"""Every command the README shows works as typed there: after `source .venv/bin/activate`, in a
clone that ran the pipeline.

Each one is run here, queued here (a `dvc exp run -S ...` whose run would retrain a whole
sweep: DVC composes its settings as typed, and they are read back), or exercised by a named
test (the long-running ones: a server, a SLURM cluster, a whole DVC experiment). A named test
must invoke the command: the words given with it (taken from the command, or from what `make`
runs for it) are arguments in the test's code, in the test itself or in the fixtures and
helpers of its module it uses; `python -m M` may be called in-process as `M.main`.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
from functools import cache
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
# Queued with --queue in the same copy, after those; what the queued experiment's params.yaml
# holds then (DVC composed it from conf/ with the settings as typed).
QUEUED = {
    "dvc exp run -S data=circles": {
        "data": {"name": "circles", "n_train": 30},
        "registry": {"name": "overfit-circles"},
    },
    "dvc exp run -S data.noise=0.3": {"data": {"name": "moons", "noise": 0.3}},
    "dvc exp run -S select.rule=one_se": {"select": {"rule": "one_se", "metric": "cv_acc"}},
    "dvc exp run -S study.select=true": {"study": {"select": True, "draws": 10}},
    "dvc exp run -S 'study.n_train=[20,30,50,100]'": {"study": {"n_train": [20, 30, 50, 100]}},
    "dvc exp run -S study.draws=100 -S launcher=joblib": {
        "study": {"draws": 100, "group_size": 10},
        "launcher": {"name": "joblib", "n_jobs": 2},
    },
    "dvc exp run -S study.draws=100 -S launcher=submitit_slurm": {
        "study": {"draws": 100},
        "launcher": {"name": "submitit_slurm"},
    },
    "dvc exp run -S sweep=article -S 'train.seeds=[1,2,3]'": {
        "sweep": {"name": "article", "kinds": ["l2"], "strengths": [1e-3]},
        "train": {"seeds": [1, 2, 3]},
    },
    "dvc exp run -S launcher=joblib": {"launcher": {"name": "joblib", "n_jobs": 2, "threads": 1}},
    "dvc exp run -S launcher=joblib -S launcher.n_jobs=4 -S launcher.threads=2": {
        "launcher": {"name": "joblib", "n_jobs": 4, "threads": 2}
    },
    "dvc exp run -S launcher=submitit_slurm -S launcher.partition=gpu": {
        "launcher": {"name": "submitit_slurm", "partition": "gpu"}
    },
}
# `make test` is this suite: what it runs.
SUITE = {"make test": ("-m", "pytest")}
# The test that invokes each of the others, and the words that show it does: the program (or
# entry point) first.
COVERED: dict[str, tuple[str, tuple[str, ...]]] = {
    "dvc exp run --queue -S 'data.n_train=20,40,60' && dvc queue start": (
        "tests/test_concurrency.py::test_two_queued_experiments_share_one_store",
        ("dvc", "exp", "run", "--queue", "-S", "queue", "start"),
    ),
    "python -m overfit.stages.train --multirun penalty.kind=l2 penalty.strength=1e-3,1e-2": (
        "tests/test_config.py::test_bad_overrides_stop_the_sweep_before_any_run",
        ("overfit.stages.train.main", "--multirun", "penalty.kind=l2"),
    ),
    "python -m overfit.stages.train --multirun penalty=l1,l2": (
        "tests/test_launchers.py::test_other_launchers_train_exactly_what_the_default_does",
        ("overfit.stages.train", "-m", "--multirun", "penalty=l1,l2"),
    ),
    "python -m overfit.stages.train --multirun hydra/launcher=joblib hydra.launcher.n_jobs=2 "
    "penalty.kind=l1,l2 penalty.strength=1e-3,1e-4": (
        "tests/test_launchers.py::test_other_launchers_train_exactly_what_the_default_does",
        ("overfit.stages.train", "-m", "--multirun", "hydra/launcher=joblib"),
    ),
    "make ui": (
        "tests/test_ui.py::test_the_link_make_ui_prints_opens_the_model_training_view",
        ("scripts/ui_screenshot.py", "--store", "--link"),
    ),
    "dvc exp run -S select.metric=test_acc": (
        "tests/test_pipeline.py::"
        "test_choosing_on_the_test_set_reruns_only_the_reports_and_says_it_is_optimistic",
        ("dvc", "exp", "run", "-S", "select.metric=test_acc"),
    ),
    "make promote": (
        "tests/test_registry.py::test_register_promote_roll_back_and_refuse",
        ("overfit.commands.promote.main",),
    ),
    "make prune KEEP=5": (
        "tests/test_prune.py::test_prune_keeps_the_newest_the_recorded_and_the_registered",
        ("overfit.commands.prune.main", "--keep"),
    ),
    "python -m overfit.commands.promote --rollback": (
        "tests/test_registry.py::test_register_promote_roll_back_and_refuse",
        ("overfit.commands.promote.main", "--rollback"),
    ),
    "make serve": (
        "tests/test_serve.py::test_served_probabilities_are_the_evaluate_stages",
        ("overfit.commands.serve", "-m"),
    ),
    "curl -s http://127.0.0.1:5002/invocations -H 'Content-Type: application/json' -d "
    '\'{"dataframe_split": {"columns": ["x1", "x2"], "data": [[0.0, 1.0], [1.0, -0.5]]}}\'': (
        "tests/test_serve.py::test_the_printed_curl_command_gets_predictions",
        ("curl", "-s", "-H", "-d"),
    ),
    "make predict IN=data/split/test.csv OUT=predictions.json": (
        "tests/test_serve.py::test_batch_predict_writes_the_served_probabilities",
        ("overfit.commands.serve", "-m", "predict"),
    ),
    "make server": (
        "tests/test_server.py::"
        "test_start_prints_the_uri_to_export_and_keeps_the_db_password_private",
        ("overfit.commands.server", "-m", "start"),
    ),
    "export MLFLOW_TRACKING_URI=http://127.0.0.1:5001": (
        "tests/test_server.py::test_the_sweep_reads_back_through_the_server",
        ("MLFLOW_TRACKING_URI",),
    ),
    "dvc exp run -S tracking=server": (
        "tests/test_server.py::test_the_sweep_reads_back_through_the_server",
        ("dvc", "tracking=server"),
    ),
    "make server-stop": (
        "tests/test_server.py::test_stop_ends_postgresql_and_the_server",
        ("overfit.commands.server", "-m", "stop"),
    ),
    "dvc remote add -d store /mnt/shared/overfit-dvc": (
        "tests/test_remote.py::test_a_fresh_clone_pulls_the_results_and_reruns_nothing",
        ("dvc", "remote", "add", "-d", "store"),
    ),
    'git add .dvc/config && git commit -m "DVC remote"': (
        "tests/test_remote.py::test_a_fresh_clone_pulls_the_results_and_reruns_nothing",
        ("git", "add", "commit", "-m"),
    ),
    "dvc push": (
        "tests/test_remote.py::test_a_fresh_clone_pulls_the_results_and_reruns_nothing",
        ("dvc", "push"),
    ),
    "git clone <repo> && cd overfit && make setup && source .venv/bin/activate && dvc pull": (
        "tests/test_remote.py::test_a_fresh_clone_pulls_the_results_and_reruns_nothing",
        ("git", "clone", "dvc", "pull"),
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
    kinds = [set(RUN), set(QUEUED), set(SUITE), set(COVERED)]
    listed = set().union(*kinds)
    assert set(shown) == listed, (
        f"not covered: {sorted(set(shown) - listed)}; "
        f"no longer in the README: {sorted(listed - set(shown))}"
    )
    assert sum(map(len, kinds)) == len(listed), "a command is listed twice"


@cache
def make_runs(command: str) -> str:
    """What `make` would run for a README `make ...` command (its set-up aside)."""
    target = shlex.split(command)[1:]
    done = subprocess.run(
        ["make", "-n", "-o", "setup", "--no-print-directory", *target],
        cwd=ROOT,
        env=env_for(ROOT),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def words_of(text: str) -> set[str]:
    """The words of a shell command, with the name of each NAME=value too."""
    words = set(text.split()) | set(shlex.split(text))
    return words | {w.split("=", 1)[0] for w in words if "=" in w}


def program(command: str) -> set[str]:
    """How a test may name what `command` runs: the module (or its `main`), the script, the
    variable exported, or the program with its subcommand."""
    runs = make_runs(command) if command.startswith("make ") else command
    modules = re.findall(r"python -m (\S+)", runs)
    if modules:
        return {*modules, *(f"{module}.main" for module in modules)}
    scripts = re.findall(r"python (\S+\.py)", runs)
    if scripts:
        return set(scripts)
    first = shlex.split(command)
    return {first[1].split("=")[0]} if first[0] == "export" else {first[0]}


def allowed(command: str) -> set[str]:
    """The words a test may show it invokes `command` by."""
    runs = make_runs(command) if command.startswith("make ") else ""
    return words_of(command) | words_of(runs) | program(command)


@cache
def module_tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text(encoding="utf-8"))


def imported_names(tree: ast.Module) -> dict[str, str]:
    """Each name the module imports (anywhere in it), as the dotted path it stands for."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.asname and alias.name
    return {k: v for k, v in names.items() if v}


def dotted(node: ast.AST, imports: dict[str, str]) -> str | None:
    """`name.attr...` with its first name resolved through the module's imports."""
    if isinstance(node, ast.Attribute):
        base = dotted(node.value, imports)
        return base and f"{base}.{node.attr}"
    if isinstance(node, ast.Name):
        return imports.get(node.id, node.id)
    return None


def invoked_words(where: str) -> set[str]:
    """The words a test's code passes around: its string constants (and their words) and the
    dotted names it refers to, in the test itself and in the fixtures, helpers and constants
    of its module it uses, directly or not."""
    path, _, name = where.partition("::")
    tree = module_tree(path)
    imports = imported_names(tree)
    defined: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            defined[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    defined[target.id] = node
    assert name in defined, f"no {where}"
    seen, todo, words = set(), [name], set()
    while todo:
        current = todo.pop()
        if current in seen or current not in defined:
            continue
        seen.add(current)
        for node in ast.walk(defined[current]):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                words |= {node.value, *node.value.split()}
            elif isinstance(node, ast.Name):
                todo.append(node.id)  # a helper, a constant, a fixture (by its argument)
            elif isinstance(node, ast.arg):
                todo.append(node.arg)
            if isinstance(node, ast.Attribute | ast.Name):
                words.add(dotted(node, imports) or "")
    return words


@pytest.mark.parametrize("command", list(COVERED), ids=[c[:60] for c in COVERED])
def test_each_named_test_invokes_its_command(command: str) -> None:
    where, words = COVERED[command]
    assert set(words) <= allowed(command), (
        f"{command!r}: not its words: {set(words) - allowed(command)}"
    )
    assert words[0] in program(command), f"{command!r}: {words[0]!r} is not what it runs"
    missing = [word for word in words if word not in invoked_words(where)]
    assert not missing, f"{where} does not invoke {command!r}: no {missing} in its code"


def test_make_test_runs_this_suite() -> None:
    ((command, words),) = SUITE.items()
    assert set(words) <= words_of(make_runs(command))
    assert re.search(r'^testpaths = \["tests"\]$', (ROOT / "pyproject.toml").read_text(), re.M)


def queued_params(typed) -> dict[str, dict]:
    """Each queued experiment's params.yaml, by its name."""
    shown = json.loads(typed("dvc exp show --json --no-fetch").stdout)
    return {
        rev["name"]: rev["data"]["params"]["params.yaml"]["data"]
        for entry in shown
        for experiment in entry.get("experiments") or []
        for rev in experiment["revs"]
        if rev.get("name")
    }


def subset(expected: dict, found: dict) -> bool:
    return all(
        subset(value, found.get(key, {})) if isinstance(value, dict) else found.get(key) == value
        for key, value in expected.items()
    )


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

    names = {}
    for command in QUEUED:
        queued = typed(command.replace("dvc exp run ", "dvc exp run --queue ", 1)).stdout
        [names[command]] = re.findall(r"Queued experiment '([^']+)'", queued)
    params = queued_params(typed)
    for command, expected in QUEUED.items():
        found = params[names[command]]
        assert subset(expected, found), (command, expected, found)
