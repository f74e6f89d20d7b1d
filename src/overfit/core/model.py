"""The two-layer MLP of the experiment and its remedies: weight penalties, dropout between the
two layers, a norm constraint on the hidden kernel, Gaussian noise and an activity penalty."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

from overfit import layout
from overfit.config import ACTIVITY_PLACES, NOISE_PLACES, PENALTY_KINDS, Config
from overfit.runtime import tensorflow_quiet

with tensorflow_quiet():
    import keras

APPLY_TO = ("hidden", "all")
CONSTRAINTS = ("none", "max_norm", "unit_norm")


def make_constraint(kind: str, max_norm: float) -> keras.constraints.Constraint | None:
    """Keras' constraint on each hidden unit's incoming weights (axis 0 of a Dense kernel)."""
    if kind == "none":
        return None
    if kind == "max_norm":
        return keras.constraints.MaxNorm(max_value=max_norm, axis=0)
    if kind == "unit_norm":
        return keras.constraints.UnitNorm(axis=0)
    raise ValueError(f"unknown constraint {kind!r}, expected one of {CONSTRAINTS}")


def make_regularizer(kind: str, strength: float) -> keras.regularizers.Regularizer | None:
    """Keras regularizer for a penalty kind; l1_l2 uses the same strength for both terms."""
    if kind == "none":
        return None
    if kind == "l1":
        return keras.regularizers.L1(strength)
    if kind == "l2":
        return keras.regularizers.L2(strength)
    if kind == "l1_l2":
        return keras.regularizers.L1L2(l1=strength, l2=strength)
    raise ValueError(f"unknown penalty kind {kind!r}, expected one of {PENALTY_KINDS}")


def build_model(
    hidden_units: int = 500,
    kind: str = "none",
    strength: float = 0.0,
    apply_to: str = "hidden",
    learning_rate: float = 0.001,
    seed: int = 1,
    dropout: float = 0.0,
    constraint: str = "none",
    max_norm: float = 2.0,
    noise: float = 0.0,
    noise_at: str = "input",
    activity: str = "none",
    activity_strength: float = 0.0,
    activity_at: str = "post_activation",
) -> keras.Model:
    """Compiled Dense(hidden, relu) -> [Dropout] -> Dense(1, sigmoid) classifier with seeded
    initial weights; the Dropout layer (seeded too) only when `dropout` > 0.

    `noise` > 0 adds a GaussianNoise layer (seeded) at `noise_at`; `activity` other than none
    gives the hidden layer's outputs a Keras activity_regularizer at `activity_at`. Either at
    pre_activation splits the hidden layer into Dense(hidden) -> [GaussianNoise] ->
    Activation(relu), so the noise and the penalty see the outputs before the ReLU."""
    if apply_to not in APPLY_TO:
        raise ValueError(f"unknown apply_to {apply_to!r}, expected one of {APPLY_TO}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), not {dropout}")
    if noise_at not in NOISE_PLACES or activity_at not in ACTIVITY_PLACES:
        raise ValueError(
            f"noise_at must be one of {NOISE_PLACES} and activity_at one of {ACTIVITY_PLACES}, "
            f"not {noise_at!r} and {activity_at!r}"
        )
    # Seeding right before building makes the Glorot draws a function of `seed` alone.
    keras.utils.set_random_seed(seed)

    def noise_layer(place: str) -> list[keras.layers.Layer]:
        if noise == 0 or noise_at != place:
            return []
        return [keras.layers.GaussianNoise(noise, seed=seed, name="noise")]

    penalty = make_regularizer(activity, activity_strength)
    before_relu = activity_at == "pre_activation"
    pre_penalty, post_penalty = (penalty, None) if before_relu else (None, penalty)
    split = (noise > 0 and noise_at == "pre_activation") or pre_penalty is not None
    # Every name given: Keras numbers the names it makes up per process (dense_2, adam_3, ...),
    # and they are saved, so the same model would be saved as other bytes.
    hidden = keras.layers.Dense(
        hidden_units,
        name="hidden",
        activation=None if split else "relu",
        kernel_regularizer=make_regularizer(kind, strength),
        kernel_constraint=make_constraint(constraint, max_norm),
        # A layer's activity penalty measures its outputs: after the ReLU unless split.
        activity_regularizer=pre_penalty if split else post_penalty,
    )
    relu = []
    if split:
        relu = [
            *noise_layer("pre_activation"),
            keras.layers.Activation("relu", name="relu", activity_regularizer=post_penalty),
        ]
    between = [keras.layers.Dropout(dropout, seed=seed, name="dropout")] if dropout > 0 else []
    output = keras.layers.Dense(
        1,
        name="output",
        activation="sigmoid",
        kernel_regularizer=make_regularizer(kind, strength) if apply_to == "all" else None,
    )
    inputs = keras.Input(shape=(2,), name="x1_x2")
    layers = [
        *noise_layer("input"),
        hidden,
        *relu,
        *noise_layer("post_activation"),
        *between,
        output,
    ]
    model = keras.Sequential([inputs, *layers], name="mlp")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate, name="adam"),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_configured(config: Config, seed: int) -> keras.Model:
    """`build_model` with a job's settings: its model, its penalty."""
    model = config.model
    return build_model(
        hidden_units=model.hidden_units,
        kind=config.penalty.kind,
        strength=config.penalty.strength,
        apply_to=config.penalty.apply_to,
        learning_rate=model.learning_rate,
        seed=seed,
        dropout=model.dropout,
        constraint=model.constraint,
        max_norm=model.max_norm,
        noise=model.noise,
        noise_at=model.noise_at,
        activity=model.activity,
        activity_strength=model.activity_strength,
        activity_at=model.activity_at,
    )


def architecture(model: keras.Model) -> list[dict[str, object]]:
    """What a saved model is, layer by layer: its type, units, activation and regularizers, as
    Keras serializes them; two models with the same description compute the same function of
    their weights."""
    return [
        {
            "layer": type(layer).__name__,
            "units": getattr(layer, "units", None),
            "activation": keras.activations.serialize(layer.activation)
            if hasattr(layer, "activation")
            else None,
            "use_bias": getattr(layer, "use_bias", None),
            "kernel_regularizer": keras.regularizers.serialize(layer.kernel_regularizer)
            if getattr(layer, "kernel_regularizer", None) is not None
            else None,
            "bias_regularizer": keras.regularizers.serialize(layer.bias_regularizer)
            if getattr(layer, "bias_regularizer", None) is not None
            else None,
            "kernel_constraint": keras.constraints.serialize(layer.kernel_constraint)
            if getattr(layer, "kernel_constraint", None) is not None
            else None,
            "activity_regularizer": keras.regularizers.serialize(layer.activity_regularizer)
            if layer.activity_regularizer is not None
            else None,
            "rate": getattr(layer, "rate", None),
            "stddev": getattr(layer, "stddev", None),
        }
        for layer in model.layers
    ]


# --- reproducible model files ----------------------------------------------------------------

# The earliest time a zip entry can hold, the one zipfile gives an entry by default.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
DATE_SAVED = "1980-01-01@00:00:00"


def _renumber_shared_ids(node: object, ids: dict[int, int]) -> None:
    """Each `shared_object_id` (Keras writes id(), a memory address) replaced by the rank of its
    first appearance: equal ids stay equal, so shared objects are still shared when loaded."""
    if isinstance(node, dict):
        if "shared_object_id" in node:
            node["shared_object_id"] = ids.setdefault(node["shared_object_id"], len(ids) + 1)
        for value in node.values():
            _renumber_shared_ids(value, ids)
    elif isinstance(node, list):
        for value in node:
            _renumber_shared_ids(value, ids)


def save_reproducibly(model: keras.Model, path: Path) -> None:
    """`model.save(path)` whose bytes depend only on the model (its config, layer names, weights
    and optimizer state) and the Keras version, not on when or in which process it is saved.
    (`build_model` names every part: names Keras makes up are numbered per process.)

    Written atomically: a temporary file beside `path`, renamed; with the mode any new file gets.
    model.weights.h5 is kept as Keras writes it: h5py creates datasets with track_times=False
    and groups with HDF5's version-1 object headers, which hold no times, so its bytes are
    already a function of the weights (and the same in two saves seconds apart)."""
    if path.suffix != ".keras":
        raise ValueError(f"{path}: a Keras model file must end in .keras")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.keras")
    os.close(fd)
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp) as saved:
            members = [(info.filename, saved.read(info)) for info in saved.infolist()]
        with zipfile.ZipFile(tmp, "w") as fixed:  # Keras' entries in Keras' order
            for name, data in members:
                if name == layout.KERAS_METADATA:  # date_saved is the wall clock
                    data = json.dumps({**json.loads(data), "date_saved": DATE_SAVED}).encode()
                elif name == layout.KERAS_CONFIG:  # shared_object_id is a memory address
                    config = json.loads(data)
                    _renumber_shared_ids(config, {})
                    data = json.dumps(config).encode()
                entry = zipfile.ZipInfo(name, ZIP_TIME)  # not the time of the save
                entry.create_system = 3  # nor the platform: Unix, a regular file rw-r--r--
                entry.external_attr = 0o100644 << 16
                fixed.writestr(entry, data, zipfile.ZIP_STORED)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 otherwise
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
