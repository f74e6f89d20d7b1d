"""The two-layer MLP of the experiment and its remedies: weight penalties, dropout between the
two layers, a norm constraint on the hidden kernel."""

from __future__ import annotations

import keras

from overfit.config import Config

PENALTY_KINDS = ("none", "l1", "l2", "l1_l2")
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
) -> keras.Model:
    """Compiled Dense(hidden, relu) -> [Dropout] -> Dense(1, sigmoid) classifier with seeded
    initial weights; the Dropout layer (seeded too) only when `dropout` > 0."""
    if apply_to not in APPLY_TO:
        raise ValueError(f"unknown apply_to {apply_to!r}, expected one of {APPLY_TO}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), not {dropout}")
    # Seeding right before building makes the Glorot draws a function of `seed` alone.
    keras.utils.set_random_seed(seed)
    hidden = keras.layers.Dense(
        hidden_units,
        activation="relu",
        kernel_regularizer=make_regularizer(kind, strength),
        kernel_constraint=make_constraint(constraint, max_norm),
    )
    between = [keras.layers.Dropout(dropout, seed=seed)] if dropout > 0 else []
    output = keras.layers.Dense(
        1,
        activation="sigmoid",
        kernel_regularizer=make_regularizer(kind, strength) if apply_to == "all" else None,
    )
    model = keras.Sequential([keras.Input(shape=(2,)), hidden, *between, output])
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_configured(config: Config, seed: int) -> keras.Model:
    """`build_model` with a job's settings: its model, its penalty."""
    return build_model(
        hidden_units=config.model.hidden_units,
        kind=config.penalty.kind,
        strength=config.penalty.strength,
        apply_to=config.penalty.apply_to,
        learning_rate=config.model.learning_rate,
        seed=seed,
        dropout=config.model.dropout,
        constraint=config.model.constraint,
        max_norm=config.model.max_norm,
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
            "rate": getattr(layer, "rate", None),
        }
        for layer in model.layers
    ]
