"""A compiled Keras model as the training loop sees it: its architecture and remedies checked
and read (weights, Adam's moments, penalties, dropout, constraint, noise, activity penalty),
and its trained state written back, so that a saved `.keras` file holds exactly what `fit`
would have left."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from overfit.core.loop import (
    BETA_1,
    BETA_2,
    EPSILON,
    INPUT,
    MAX_NORM,
    NO_ACTIVITY,
    NO_CONSTRAINT,
    NO_NOISE,
    POST_ACTIVATION,
    PRE_ACTIVATION,
    UNIT_NORM,
)
from overfit.runtime import tensorflow_quiet

with tensorflow_quiet():
    import keras


NETWORK = (
    "[GaussianNoise] -> Dense(H, relu) -> [GaussianNoise] -> [Dropout] -> Dense(1, sigmoid) on 2 "
    "inputs, or with Dense(H) -> [GaussianNoise] -> Activation(relu) as its hidden layer"
)


@dataclass(frozen=True)
class _Network:
    """The layers the loop computes, and its remedies other than the kernels': noise (stddev,
    place, seed), the activity penalty (l1, l2, place) and dropout (rate, seed)."""

    hidden: keras.layers.Dense
    output: keras.layers.Dense
    noise: tuple[float, int, int]
    activity: tuple[float, float, int]
    dropout: tuple[float, int]


def _network(model: keras.Model) -> _Network:
    """The model read as the network the loop computes (NETWORK); anything else is rejected.
    One noise layer at most, and one activity penalty at most."""
    layers = list(model.layers)
    noise: list[tuple[float, int, int]] = []
    activity: list[tuple[float, float, int]] = []

    def take(kind: type) -> keras.layers.Layer | None:
        return layers.pop(0) if layers and isinstance(layers[0], kind) else None

    def noise_at(place: int) -> None:
        layer = take(keras.layers.GaussianNoise)
        if layer is not None:
            noise.append((float(layer.stddev), place, int(layer.seed or 0)))

    def activity_of(layer: keras.layers.Layer, place: int) -> None:
        if layer.activity_regularizer is not None:
            activity.append((*_coefficients(layer.activity_regularizer), place))

    noise_at(INPUT)
    hidden = take(keras.layers.Dense)
    relu = hidden
    if hidden is not None and hidden.activation is keras.activations.linear:
        activity_of(hidden, PRE_ACTIVATION)
        noise_at(PRE_ACTIVATION)
        relu = take(keras.layers.Activation)
    if relu is not None and relu.activation is keras.activations.relu:
        activity_of(relu, POST_ACTIVATION)
    noise_at(POST_ACTIVATION)
    dropout = take(keras.layers.Dropout)
    output = take(keras.layers.Dense)
    ok = (
        hidden is not None
        and output is not None
        and relu is not None
        and relu.activation is keras.activations.relu
        and not layers
        and len(noise) <= 1
        and len(activity) <= 1
        and all(layer.use_bias and layer.bias_constraint is None for layer in (hidden, output))
        and all(layer.bias_regularizer is None for layer in (hidden, output))
        and output.kernel_constraint is None
        and output.activity_regularizer is None
        and (dropout is None or dropout.noise_shape is None)
        and output.activation is keras.activations.sigmoid
        and hidden.kernel.shape[0] == 2
        and output.units == 1
    )
    if not ok:
        raise ValueError(f"train_stacked expects {NETWORK}")
    return _Network(
        hidden,
        output,
        noise[0] if noise else (0.0, NO_NOISE, 0),
        activity[0] if activity else (0.0, 0.0, NO_ACTIVITY),
        (float(dropout.rate), int(dropout.seed or 0)) if dropout is not None else (0.0, 0),
    )


def _constraint(layer: keras.layers.Dense) -> tuple[int, float]:
    """(code, max_value) of the hidden kernel's constraint: 0 none, 1 MaxNorm, 2 UnitNorm,
    each over axis 0 (a hidden unit's incoming weights), as Keras defines them."""
    constraint = layer.kernel_constraint
    if constraint is None:
        return NO_CONSTRAINT, 0.0
    if isinstance(constraint, keras.constraints.MaxNorm) and constraint.axis == 0:
        return MAX_NORM, float(constraint.max_value)
    if isinstance(constraint, keras.constraints.UnitNorm) and constraint.axis == 0:
        return UNIT_NORM, 0.0
    raise ValueError(f"unsupported kernel constraint {constraint!r} (MaxNorm or UnitNorm, axis 0)")


@dataclass(frozen=True)
class _Adam:
    """A model's Keras Adam: the optimizer, and its moments in the model's weight order."""

    optimizer: keras.optimizers.Adam
    momentums: list[keras.Variable]
    velocities: list[keras.Variable]


def _adam(model: keras.Model) -> _Adam:
    """The model's optimizer, built, if it is Keras Adam as the loop computes it."""
    opt = model.optimizer
    plain = (
        isinstance(opt, keras.optimizers.Adam)
        and (opt.beta_1, opt.beta_2, opt.epsilon) == (BETA_1, BETA_2, EPSILON)
        and not opt.amsgrad
        and opt.weight_decay is None
        and opt.clipnorm is None
        and opt.clipvalue is None
        and opt.global_clipnorm is None
        and not opt.use_ema
        # A learning-rate schedule serializes as a mapping, a constant rate as a number.
        and isinstance(opt.get_config()["learning_rate"], int | float)
    )
    if not plain:
        raise ValueError("train_stacked supports only models compiled with default Keras Adam")
    opt.build(model.trainable_variables)  # no-op once built; creates zero moments otherwise
    return _Adam(opt, *_moments(opt, model))


def _moments(
    opt: keras.optimizers.Optimizer, model: keras.Model
) -> tuple[list[keras.Variable], list[keras.Variable]]:
    """Adam's momentum and velocity for each trainable weight, from the optimizer's public
    `variables`: Keras names them `<weight path, '/' as '_'>_momentum` and `..._velocity`."""
    by_name = {variable.name: variable for variable in opt.variables}
    found = []
    for slot in ("momentum", "velocity"):
        names = [f"{w.path.replace('/', '_')}_{slot}" for w in model.trainable_variables]
        missing = [name for name in names if name not in by_name]
        if missing:
            raise ValueError(
                f"Keras {keras.__version__}: Adam has no variable {missing[0]!r}; "
                "the loop reads Adam's moments by the names Keras 3 gives them"
            )
        found.append([by_name[name] for name in names])
    return found[0], found[1]


def _coefficients(reg: keras.regularizers.Regularizer | None) -> tuple[float, float]:
    """(l1, l2) coefficients of a Keras L1, L2 or L1L2 regularizer; zeros for None."""
    if reg is None:
        return 0.0, 0.0
    if not isinstance(reg, (keras.regularizers.L1, keras.regularizers.L2, keras.regularizers.L1L2)):
        raise ValueError(f"unsupported regularizer {type(reg).__name__}")
    return float(getattr(reg, "l1", 0.0)), float(getattr(reg, "l2", 0.0))


@dataclass(frozen=True)
class ModelStart:
    """A model's state before training, read once before any group runs (a fold starts from
    the same state as its model, which another group may be training meanwhile)."""

    weights: list[np.ndarray]
    momentums: list[np.ndarray]
    velocities: list[np.ndarray]
    iterations: int
    learning_rate: float
    penalties: list[tuple[float, float]]
    dropout: tuple[float, int]  # rate, seed
    constraint: tuple[int, float]  # code, max_value
    noise: tuple[float, int, int] = (0.0, NO_NOISE, 0)  # stddev, place, seed
    activity: tuple[float, float, int] = (0.0, 0.0, NO_ACTIVITY)  # l1, l2, place


def read_start(model: keras.Model) -> ModelStart:
    network = _network(model)
    hidden, output = network.hidden, network.output
    adam = _adam(model)
    return ModelStart(
        model.get_weights(),
        [x.numpy() for x in adam.momentums],
        [x.numpy() for x in adam.velocities],
        int(adam.optimizer.iterations.numpy()),
        float(adam.optimizer.learning_rate.numpy()),
        [_coefficients(layer.kernel_regularizer) for layer in (hidden, output)],
        network.dropout,
        _constraint(hidden),
        network.noise,
        network.activity,
    )


def write_back(
    model: keras.Model,
    weights: list[np.ndarray],
    momentums: list[np.ndarray],
    velocities: list[np.ndarray],
    epochs: int,
) -> None:
    """A trained model's weights and Adam state, after `epochs` steps, into the Keras model."""
    model.set_weights(weights)
    adam = _adam(model)
    for var, value in zip(adam.momentums + adam.velocities, momentums + velocities, strict=True):
        var.assign(value)
    adam.optimizer.iterations.assign_add(epochs)
