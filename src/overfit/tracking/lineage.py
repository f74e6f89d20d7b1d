"""Where a run came from, as MLflow records it: the process that made it, the commit and
whether the work tree had other changes, the data's md5 from dvc.lock, and the data files as
MLflow datasets.

Identity is the store's; this module only reads git, dvc.yaml, dvc.lock and the data files.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from overfit import layout

# libyaml's loader when present: the pure-Python one takes ~40 ms per read of dvc.lock.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The data each stage reads, by the context MLflow's datasets name it with.
TRAINING, TEST, FRESH = "training", "test", "fresh"
DATA_FILES = {TRAINING: layout.TRAIN_CSV, TEST: layout.TEST_CSV, FRESH: layout.FRESH_CSV}


# Which process owns a run, so that a later start can tell that it died.
PID_TAG = "overfit.pid"
HOST_TAG = "overfit.host"


def run_tags(root: Path) -> dict[str, str]:
    """What every run of this process is tagged with: its owner, the commit, the data."""
    return process_tags() | git_tags(root) | data_tags(root)


def process_tags() -> dict[str, str]:
    """This process and its host, as the tags of the runs it owns."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: os.uname().nodename}


def _stages(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return (yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER) or {}).get("stages", {})


def dvc_outputs(root: Path) -> list[str]:
    """Every path dvc.yaml's stages write (outs, metrics, plots), as dvc.yaml spells it."""
    paths = []
    for stage in _stages(root / layout.DVC_YAML).values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                paths.append(out if isinstance(out, str) else next(iter(out)))
    return paths


def git_tags(root: Path) -> dict[str, str]:
    """The commit the run came from, and whether the work tree differs from it.

    What DVC writes (its stages' outputs and dvc.lock) does not count: `dvc repro` removes and
    rewrites those while it runs, and they are a function of the rest. So a clean clone's
    pipeline says `git.dirty: false`, and an edited source or params.yaml says `true`.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    products = [layout.DVC_LOCK.as_posix(), *dvc_outputs(root)]
    try:
        commit = git("rev-parse", "HEAD")
        changed = git(
            "status", "--porcelain", "--untracked-files=no", "--", ".",
            *(f":(exclude,top){path}" for path in products),
        )  # fmt: skip
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    return {"git.commit": commit, "git.dirty": str(bool(changed)).lower()}


def data_tags(root: Path) -> dict[str, str]:
    """The md5 DVC recorded in dvc.lock for each data output the training reads."""
    stages = _stages(root / layout.DVC_LOCK)
    tags = {}
    for stage in ("generate", "split"):
        for out in stages.get(stage, {}).get("outs", []):
            tags[f"data.md5.{out['path']}"] = out.get("md5", "")
    return tags


def file_md5(path: Path) -> str:
    """A file's md5, as DVC records it for each file of a tracked folder (DVC 3 hashes a file's
    bytes as they are)."""
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def datasets(root: Path, contexts: Mapping[str, str], name: str, commit: str) -> list[Any]:
    """MLflow dataset inputs for the data files of `contexts` ({context: table name}): each
    named `<name>-<table>`, its digest the file's DVC md5, its source the file's path at the
    commit (`data/split/train.csv?rev=<commit>`), schema and row count from the table."""
    import mlflow.data
    import pandas as pd
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for context, table in contexts.items():
        path = DATA_FILES[context]
        frame = pd.read_csv(root / path)
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice, then warns that a path could be
            # either: both are the same class.
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
            # A hint for model signatures (integer columns cannot hold NaN): not for a record.
            warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer")
            dataset = mlflow.data.from_pandas(
                frame,
                source=f"{path.as_posix()}?rev={commit}",
                targets="label",
                name=f"{name}-{table}",
                digest=file_md5(root / path),
            )
            # The entity the client logs, from the dataset's public dict form.
            entity = Dataset(**dataset.to_dict())
        inputs.append(DatasetInput(entity, [InputTag("mlflow.data.context", context)]))
    return inputs
