"""The two-layer MLP of the experiment and its weight penalties."""

from __future__ import annotations

import keras

from overfit.config import Config

PENALTY_KINDS = ("none", "l1", "l2", "l1_l2")
APPLY_TO = ("hidden", "all")


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
) -> keras.Model:
    """Compiled Dense(hidden, relu) -> Dense(1, sigmoid) classifier with seeded initial weights."""
    if apply_to not in APPLY_TO:
        raise ValueError(f"unknown apply_to {apply_to!r}, expected one of {APPLY_TO}")
    # Seeding right before building makes the Glorot draws a function of `seed` alone.
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(2,)),
            keras.layers.Dense(
                hidden_units,
                activation="relu",
                kernel_regularizer=make_regularizer(kind, strength),
            ),
            keras.layers.Dense(
                1,
                activation="sigmoid",
                kernel_regularizer=make_regularizer(kind, strength) if apply_to == "all" else None,
            ),
        ]
    )
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
        }
        for layer in model.layers
    ]
