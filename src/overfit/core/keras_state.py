"""A compiled Keras model as the training loop sees it: its architecture and remedies checked
and read (weights, Adam's moments, penalties, dropout, constraint), and its trained state
written back, so that a saved `.keras` file holds exactly what `fit` would have left."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from overfit.core.loop import BETA_1, BETA_2, EPSILON, MAX_NORM, NO_CONSTRAINT, UNIT_NORM
from overfit.runtime import tensorflow_quiet

with tensorflow_quiet():
    import keras


def _dense_layers(model: keras.Model) -> tuple[keras.layers.Dense, keras.layers.Dense]:
    """The hidden and output layers of Dense(H, relu) -> [Dropout] -> Dense(1, sigmoid) on 2
    inputs, the network the loop computes; anything else is rejected."""
    layers = model.layers
    dense = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    dropout = [layer for layer in layers if isinstance(layer, keras.layers.Dropout)]
    ok = (
        len(dense) == 2
        and len(dropout) == len(layers) - 2 <= 1
        and layers[0] is dense[0]
        and layers[-1] is dense[1]
        and all(layer.use_bias and layer.bias_constraint is None for layer in dense)
        and dense[1].kernel_constraint is None
        and all(d.noise_shape is None for d in dropout)
        and dense[0].activation is keras.activations.relu
        and dense[1].activation is keras.activations.sigmoid
        and dense[0].kernel.shape[0] == 2
        and dense[1].units == 1
    )
    if not ok:
        raise ValueError(
            "train_stacked expects Dense(H, relu) -> [Dropout] -> Dense(1, sigmoid) on 2 inputs"
        )
    return dense[0], dense[1]


def _dropout(model: keras.Model) -> tuple[float, int]:
    """(rate, seed) of the model's Dropout layer; (0, 0) without one."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            return float(layer.rate), int(layer.seed or 0)
    return 0.0, 0


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


def _kernel_penalty(layer: keras.layers.Layer) -> tuple[float, float]:
    """(l1, l2) coefficients of a layer's kernel regularizer; zeros if it has none."""
    reg = layer.kernel_regularizer
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


def read_start(model: keras.Model) -> ModelStart:
    hidden, output = _dense_layers(model)
    adam = _adam(model)
    return ModelStart(
        model.get_weights(),
        [x.numpy() for x in adam.momentums],
        [x.numpy() for x in adam.velocities],
        int(adam.optimizer.iterations.numpy()),
        float(adam.optimizer.learning_rate.numpy()),
        [_kernel_penalty(layer) for layer in (hidden, output)],
        _dropout(model),
        _constraint(hidden),
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
