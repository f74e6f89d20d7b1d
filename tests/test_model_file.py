"""`save_reproducibly`: the same model gives the same .keras bytes, saved again in this process
or in another one, and the file loads in safe mode as the model it was saved from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from overfit.core.model import architecture, build_model, save_reproducibly

# A penalty, dropout and a norm constraint: a config with regularizer and constraint objects.
SETTINGS: dict[str, Any] = {
    "hidden_units": 500,
    "kind": "l2",
    "strength": 1e-3,
    "dropout": 0.5,
    "constraint": "max_norm",
    "max_norm": 1.5,
}

SAVE_IN_ANOTHER_PROCESS = f"""
import sys
from pathlib import Path
from overfit.core.model import build_model, save_reproducibly
save_reproducibly(build_model(seed=1, **{SETTINGS!r}), Path(sys.argv[1]))
"""


def fresh_model(seed: int) -> keras.Model:
    """`build_model` as a new process builds it. Keras numbers the names it makes up per process
    (dense, dense_1, then dense_2 for the next model's first Dense) and the file holds them:
    clearing Keras' state gives this model a new process's names."""
    keras.backend.clear_session()
    return build_model(seed=seed, **SETTINGS)


def member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


def shared_ids(node: object) -> list[object]:
    if isinstance(node, dict):
        own = [node["shared_object_id"]] if "shared_object_id" in node else []
        return own + [i for value in node.values() for i in shared_ids(value)]
    if isinstance(node, list):
        return [i for value in node for i in shared_ids(value)]
    return []


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return fresh_model(seed=1)


def test_saving_again_here_or_in_another_process_gives_the_same_bytes(
    model: keras.Model, tmp_path: Path
) -> None:
    save_reproducibly(model, tmp_path / "first.keras")
    save_reproducibly(model, tmp_path / "second.keras")
    elsewhere = subprocess.run(
        [sys.executable, "-c", SAVE_IN_ANOTHER_PROCESS, str(tmp_path / "elsewhere.keras")],
        capture_output=True,
        text=True,
    )
    assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
    first = (tmp_path / "first.keras").read_bytes()
    assert (tmp_path / "second.keras").read_bytes() == first
    assert (tmp_path / "elsewhere.keras").read_bytes() == first


def test_shared_objects_stay_shared_under_ids_that_are_not_addresses(
    model: keras.Model, tmp_path: Path
) -> None:
    model.save(tmp_path / "plain.keras")
    save_reproducibly(model, tmp_path / "model.keras")
    plain, ours = (
        shared_ids(json.loads(member(tmp_path / name, "config.json")))
        for name in ("plain.keras", "model.keras")
    )
    # The same places share an object (the model's dtype policy, here), numbered 1, 2, ...
    assert ours
    assert [ours.index(i) for i in ours] == [plain.index(i) for i in plain]
    assert set(ours) == set(range(1, len(set(ours)) + 1))


def test_the_file_loads_in_safe_mode_as_the_model_it_was_saved_from(
    model: keras.Model, tmp_path: Path
) -> None:
    save_reproducibly(model, tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True, compile=False)
    x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    assert architecture(loaded) == architecture(model)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for got, want in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_other_weights_give_other_bytes(model: keras.Model, tmp_path: Path) -> None:
    other = fresh_model(seed=1)  # the same config and names; one weight one bit further on
    weights = other.get_weights()
    weights[0][0, 0] = np.nextafter(weights[0][0, 0], np.float32(np.inf))
    other.set_weights(weights)
    one, two = tmp_path / "model.keras", tmp_path / "other.keras"
    save_reproducibly(model, one)
    save_reproducibly(other, two)
    assert member(one, "config.json") == member(two, "config.json")
    assert member(one, "model.weights.h5") != member(two, "model.weights.h5")
    assert one.read_bytes() != two.read_bytes()


class Unsaveable(keras.layers.Layer):
    """A layer Keras cannot describe: saving a model holding it fails half-way."""

    def get_config(self) -> dict[str, Any]:
        raise RuntimeError("no config")


def test_the_file_is_written_atomically_with_a_new_files_mode(
    model: keras.Model, tmp_path: Path
) -> None:
    target = tmp_path / "model.keras"
    save_reproducibly(model, target)
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["model.keras"]

    before = target.read_bytes()
    broken = keras.Sequential([keras.Input(shape=(2,)), Unsaveable()])
    with pytest.raises(RuntimeError, match="no config"):
        save_reproducibly(broken, target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.keras"]
