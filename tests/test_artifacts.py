"""The report files' schemas: a file read and written again is the same bytes (so the digests
MLflow's runs are tagged with still match), and a file that breaks its schema is refused in one
line naming the file, the key and what is allowed. No training: the committed reports and a
result.json written here."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from overfit import artifacts, layout, reports
from overfit.artifacts import ArtifactError, JobResult, SweepRecord
from overfit.reports import ModelRecord

from .conftest import ROOT

SHA = "4786d13f2efd1fb98a780b4f5ac44ada48d01982e8f47731ba5034459f8b565d"
# A job's result.json as training writes it (two seeds, two folds, early stopping on cv).
RESULT: dict[str, Any] = {
    "run": "patience_20",
    "penalty": {"kind": "none", "strength": 0.0, "apply_to": "hidden"},
    "remedy": {"kind": "early_stopping", "setting": 20.0},
    "seeds": [1, 2],
    "per_seed": {
        seed: {
            "train_acc": 1.0,
            "test_acc": 0.9142857193946838,
            "train_loss": 0.0001827489904826507,
            "test_loss": 0.5102987289428711,
            "gap": 0.08571428060531616,
        }
        for seed in ("1", "2")
    },
    "mean": {"train_acc": 1.0, "test_acc": 0.9142857193946838, "train_loss": 0.000186, "gap": 0.1},
    "std": {"train_acc": 0.0, "test_acc": 0.0, "train_loss": 8.86142755267725e-06, "gap": 0.0},
    "cv": {
        "per_fold": [
            {"fold": 1, "seed": 1, "rows": 6, "acc": 1.0, "loss": 0.00016502971993759274},
            {"fold": 2, "seed": 2, "rows": 6, "acc": 0.6666666865348816, "loss": 0.45214},
        ],
        "mean": {"cv_acc": 0.8333333432674408, "cv_loss": 0.226},
        "std": {"cv_acc": 0.16666665673255920, "cv_loss": 0.2259},
    },
    "weights_sha256": {"1": SHA, "2": SHA[::-1]},
    "stopping": {
        "watch": "cv",
        "monitor": "val_loss",
        "patience": 20,
        "folds": [{"fold": 1, "epochs": 4000, "best_epoch": 4000}],
        "final_epochs": 4000,
        "per_seed": {"1": {"epochs": 4000, "best_epoch": None}},
    },
}


def json_bytes(content: Any) -> bytes:
    return (json.dumps(content, indent=2) + "\n").encode("utf-8")


def test_the_committed_reports_are_read_and_written_back_byte_for_byte(tmp_path: Path) -> None:
    evaluation = reports.read_evaluation(ROOT)
    reports.write_evaluation(tmp_path, evaluation)
    sweep = artifacts.read_sweep(ROOT)
    artifacts.write_sweep(tmp_path, sweep)
    for name in (layout.CONFIGS, layout.METRICS, layout.SWEEP_RECORD):
        assert (tmp_path / name).read_bytes() == (ROOT / name).read_bytes(), name
    # The sweep's digest, the tag its MLflow parent run is found by, is what it always was.
    results = json_bytes(dict(sorted(sweep.results.items())))
    assert sweep.digest() == hashlib.sha256(results).hexdigest()


def test_a_result_is_written_back_byte_for_byte_and_its_digest_is_the_files(tmp_path) -> None:
    folder = tmp_path / "models" / "patience_20"
    folder.mkdir(parents=True)
    (folder / layout.RESULT_FILE).write_bytes(json_bytes(RESULT))

    result = artifacts.read_result(folder)
    artifacts.write_result(tmp_path / "again", result)

    assert (tmp_path / "again" / layout.RESULT_FILE).read_bytes() == json_bytes(RESULT)
    assert artifacts.result_digest(result) == artifacts.file_digest(folder / layout.RESULT_FILE)
    assert result == JobResult(**copy.deepcopy(RESULT))


def changed(path: str, value: Any) -> dict[str, Any]:
    """RESULT with the value at a dotted path replaced (DROP: removed)."""
    content = copy.deepcopy(RESULT)
    *parents, key = path.split(".")
    entry = content
    for parent in parents:
        entry = entry[int(parent) if isinstance(entry, list) else parent]
    if value is DROP:
        del entry[key]
    else:
        entry[key] = value
    return content


DROP = object()
BROKEN_RESULTS = {
    "NaN test accuracy": (
        changed("per_seed.1.test_acc", math.nan),
        "per_seed.1.test_acc must be a number in [0, 1], got nan",
    ),
    "accuracy above 1": (
        changed("mean.train_acc", 1.5),
        "mean.train_acc must be a number in [0, 1], got 1.5",
    ),
    "negative loss": (
        changed("per_seed.2.train_loss", -1.0),
        "per_seed.2.train_loss must be a finite number >= 0, got -1.0",
    ),
    "infinite gap": (
        changed("per_seed.2.gap", math.inf),
        "per_seed.2.gap must be a number in [-1, 1], got inf",
    ),
    "negative spread": (
        changed("std.test_acc", -0.1),
        "std.test_acc must be a number in [0, 1], got -0.1",
    ),
    "fold accuracy as text": (
        changed("cv.per_fold.0.acc", "1.0"),
        'cv.per_fold.0.acc must be a number in [0, 1], got "1.0"',
    ),
    "negative strength": (
        changed("penalty.strength", -0.01),
        "penalty.strength must be a finite number >= 0, got -0.01",
    ),
    "missing seeds": (changed("seeds", DROP), "seeds is missing (must be a list)"),
    "a seed without figures": (
        changed("seeds", [1, 2, 3]),
        'per_seed must be an object with one entry per seed (1, 2, 3), got ["1", "2"]',
    ),
    "a weights digest that is no SHA-256": (
        changed("weights_sha256.2", "abc"),
        'weights_sha256.2 must be a SHA-256 (64 hex digits), got "abc"',
    ),
    "an unknown key": (
        changed("note", "hand-edited"),
        "note is not a key it may have (expected run, penalty, remedy, seeds, per_seed, mean, "
        "std, cv, weights_sha256, stopping)",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_RESULTS))
def test_a_broken_result_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    content, message = BROKEN_RESULTS[case]
    (tmp_path / layout.RESULT_FILE).write_text(json.dumps(content), encoding="utf-8")

    with pytest.raises(ArtifactError) as refused:
        artifacts.read_result(tmp_path)

    assert str(refused.value) == f"{tmp_path / layout.RESULT_FILE}: {message}"


MODEL = {
    "name": "overfit-moons",
    "run": "l1_l2_1e-03",
    "seed": 1,
    "rule": "cv_acc",
    "cv": 0.966667,
    "test": 0.948571,
    "fresh": 0.93944,
    "seed_test": 0.942857,
    "model_sha256": SHA,
}


@pytest.mark.parametrize(
    ("schema", "content", "message"),
    [
        (ModelRecord, MODEL | {"seed_test": 2.0}, "seed_test must be a number in [0, 1], got 2.0"),
        (ModelRecord, MODEL | {"seed": 1.0}, "seed must be an integer, got 1.0"),
        (
            ModelRecord,
            MODEL | {"rule": "best"},
            'rule must be one of cv_acc, cv_loss, test_acc, got "best"',
        ),
        (ModelRecord, MODEL | {"cv": True}, "cv must be a number in [0, 1] or null, got true"),
        (SweepRecord, {"name": "default"}, "results is missing (must be an object)"),
        (
            SweepRecord,
            {"name": "default", "results": {"none": "x"}},
            'results.none must be a SHA-256 (64 hex digits), got "x"',
        ),
    ],
)
def test_records_are_refused_in_one_line(schema: Any, content: Any, message: str) -> None:
    with pytest.raises(ArtifactError) as refused:
        schema.parse(content, "the file")
    assert str(refused.value) == f"the file: {message}"


def test_a_model_record_is_written_back_byte_for_byte(tmp_path: Path) -> None:
    (tmp_path / layout.MODEL_RECORD).parent.mkdir(parents=True)
    (tmp_path / layout.MODEL_RECORD).write_bytes(json_bytes(MODEL))
    reports.write_model_record(tmp_path / "again", reports.read_model_record(tmp_path))
    assert (tmp_path / "again" / layout.MODEL_RECORD).read_bytes() == json_bytes(MODEL)
