"""Evaluate checks what it loads: each model file is the one training saved for its seed and
configuration, with the configured architecture, and every folder belongs to the sweep. Each
problem is one line naming the file, exit 1, and the reports stay as they were."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from overfit.stages import evaluate

RUN = "l1_1e-02"  # the first configuration evaluate reads


def swap_in_another_seed(folder: Path) -> None:
    shutil.copy(folder / "seed_2.keras", folder / "seed_1.keras")


def same_weights_other_activation(folder: Path) -> None:
    import keras

    from overfit.core.model import build_model

    saved = keras.models.load_model(folder / "seed_1.keras", safe_mode=True, compile=False)
    other = build_model(500, "l1", 1e-2, "hidden", 0.001, seed=1)
    other.layers[0].activation = keras.activations.tanh
    other.set_weights(saved.get_weights())
    other.save(folder / "seed_1.keras")


def garbage(folder: Path) -> None:
    (folder / "seed_1.keras").write_bytes(b"PK\x03\x04 not really a zip file" * 10)


def empty(folder: Path) -> None:
    (folder / "seed_1.keras").write_bytes(b"")


def a_stray_seed(folder: Path) -> None:
    shutil.copy(folder / "seed_2.keras", folder / "seed_5.keras")


def from_another_sweep(folder: Path) -> None:
    # Another sweep's job: the same configuration, with another result.
    result = json.loads((folder / "result.json").read_text())
    result["per_seed"]["1"]["train_loss"] += 1e-3
    (folder / "result.json").write_text(json.dumps(result, indent=2))


def a_nan_in_its_result(folder: Path) -> None:
    result = json.loads((folder / "result.json").read_text())
    result["per_seed"]["1"]["test_acc"] = math.nan
    (folder / "result.json").write_text(json.dumps(result, indent=2))


CASES = {
    "another seed's file": (
        swap_in_another_seed,
        "seed_1.keras: not the weights training saved there (their SHA-256 differs",
    ),
    "same weights, tanh": (
        same_weights_other_activation,
        "seed_1.keras: not the model its configuration describes: "
        "layer 1's activation is 'tanh', not 'relu'",
    ),
    "garbage": (garbage, "seed_1.keras: not a readable Keras model (not a .keras zip archive)"),
    "empty file": (empty, "seed_1.keras: not a readable Keras model ("),
    "a stray seed": (a_stray_seed, "seed_5.keras: not one of the job's seeds [1, 2]"),
    "a NaN in result.json": (
        a_nan_in_its_result,
        f"{RUN}/result.json: per_seed.1.test_acc must be a number in [0, 1], got nan",
    ),
    "another sweep's folder": (
        from_another_sweep,
        f"{RUN}: left by another sweep (its result.json is not the one reports/sweep.json",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_evaluate_refuses_what_training_did_not_save(shrunk_pipeline, tmp_path, entry, case):
    spoil, message = CASES[case]
    root = tmp_path / "project"
    shrunk_pipeline.copy_to(root)
    reports = {p: p.read_bytes() for p in (root / "reports").rglob("*") if p.is_file()}
    spoil(root / "models" / RUN)

    status, _, err = entry(evaluate.main, root)

    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert {p: p.read_bytes() for p in (root / "reports").rglob("*") if p.is_file()} == reports


def test_an_untouched_copy_evaluates_as_the_pipeline_did(shrunk_pipeline, tmp_path, entry):
    """The checks pass on what training saved: the reports come out the same."""
    root = tmp_path / "project"
    shrunk_pipeline.copy_to(root)
    assert entry(evaluate.main, root)[0] == 0
    for name in ("metrics.json", "configs.json"):
        ours = (root / "reports" / name).read_bytes()
        assert ours == (shrunk_pipeline.root / "reports" / name).read_bytes(), name
