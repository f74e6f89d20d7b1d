"""Full-batch training of Keras MLPs with every epoch inside one XLA-compiled loop.

`model.fit` spends ~40 ms per epoch in Python overhead on a 30-row batch; running
all epochs inside one compiled `tf.while_loop` removes that overhead while
reproducing fit's arithmetic: the loss is Keras' binary cross-entropy (computed
from the sigmoid's logits, as the TF backend does) plus the kernel regularizers,
and the update is Keras 3 Adam.

Models are stacked along a leading axis: weights, Adam state, penalty
coefficients and learning rate are per-model slices of tensors, so every seed of
every configuration trains together, and one compiled function serves any mix of
penalties. Everything is read from and written back to the compiled Keras models,
so a saved `.keras` file holds exactly what `fit` would have left: weights,
regularizers and optimizer state.

The other remedies are per-model too: a Dropout layer between the two Dense layers (inverted
dropout, masks drawn from a counter-based hash of the model's key and its epoch, so a mask
never depends on the stack), a MaxNorm or UnitNorm constraint on the hidden kernel (applied
after each update, as Keras' optimizer does), and early stopping with Keras' EarlyStopping
rules (a stopped model's weights and Adam state freeze while the others go on).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from overfit.runtime import tensorflow_quiet

with tensorflow_quiet():
    import keras
    import tensorflow as tf

# Keras 3 Adam defaults; the loop reproduces only this configuration.
BETA_1 = 0.9
BETA_2 = 0.999
EPSILON = 1e-7

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")

# The hidden kernel's constraint, per model; and what early stopping monitors, per model.
NO_CONSTRAINT, MAX_NORM, UNIT_NORM = 0, 1, 2
MONITORS = {"val_loss": 1, "val_accuracy": 2}


# Models per compiled call. Per-model time is lowest around 16 here (95 models: 6.9 s in
# groups of 16, 8.4 s in two of 48): larger stacks outgrow the caches.
MAX_GROUP = 16


@dataclass(frozen=True)
class History:
    """Per-epoch float32 curves, named as in `model.fit(...).history`, and final metrics.

    `loss`/`accuracy` are measured before each epoch's update (as fit logs them);
    `val_loss`/`val_accuracy` after it. Both losses include the weight penalty.
    `final` holds the four metrics of the trained weights, as Python floats.
    """

    history: dict[str, np.ndarray]
    final: dict[str, float]
    # Epochs trained (fewer than asked when early stopping stopped the model), and with early
    # stopping the epoch (1-based) of the best monitored value.
    epochs: int = 0
    best_epoch: int | None = None


@dataclass(frozen=True)
class Stopping:
    """Keras' `EarlyStopping(monitor, patience, min_delta, restore_best_weights)` for one
    model (mode "auto": val_loss falls, val_accuracy rises; no baseline, no warm-up): it
    watches the model's validation rows after every epoch."""

    monitor: str = "val_loss"
    patience: int = 20
    min_delta: float = 0.0
    restore_best_weights: bool = False

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {', '.join(MONITORS)}, not {self.monitor!r}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, not {self.patience}")


# --- reading the Keras models ----------------------------------------------------------------


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


# --- the compiled computation; every tensor has a leading model axis K -----------------------
#
# Layout: W1 [K,2,H], B1 [K,H], W2 [K,H] (the output kernel's column), B2 [K]. The forward and
# backward passes are written out by hand with broadcasts and `_tree_sum`, never with matmul or
# reduce_sum: XLA picks kernels (and so float32 summation orders) by tensor shape, and Adam
# amplifies a one-ulp difference into visibly different weights. Elementwise ops and sums in a
# fixed order compute every model's slice the same way whatever K is, so a model's result is
# bit-identical whether it is trained alone or stacked with any others. Sums run over a middle
# axis, so XLA vectorises them along the last one.


def _tree_sum(t: tf.Tensor, axis: int) -> tf.Tensor:
    """Sum over a static axis by pairwise halving (zero-padded to a power of two)."""
    n = t.shape[axis]
    width = 1 << max(n - 1, 0).bit_length()
    if width != n:
        pad = [[0, 0]] * t.shape.rank
        pad[axis] = [0, width - n]
        t = tf.pad(t, pad)
    while width > 1:
        width //= 2
        low = [slice(None)] * t.shape.rank
        high = list(low)
        low[axis], high[axis] = slice(0, width), slice(width, 2 * width)
        t = t[tuple(low)] + t[tuple(high)]
    return tf.squeeze(t, axis)


def _hidden(params, x):
    """Hidden pre-activations [K,n,H] of every model for shared inputs x [n,2]."""
    w1, b1, _, _ = params
    z = x[tf.newaxis, :, 0:1] * w1[:, tf.newaxis, 0] + x[tf.newaxis, :, 1:2] * w1[:, tf.newaxis, 1]
    return z + b1[:, tf.newaxis]


def _logits(params, x, keep=None):
    """Logits [K,n]. Computed hidden-major ([K,H,n]) so the sum over H is vectorised over n
    (summed over the last axis, the same sums take 2.5 times as long).
    `keep` [K,H,n], in training with dropout: each hidden activation's scale (0 or 1/(1-rate))."""
    w1, b1, w2, b2 = params
    x0, x1 = x[tf.newaxis, tf.newaxis, :, 0], x[tf.newaxis, tf.newaxis, :, 1]
    z = x0 * w1[:, 0, :, tf.newaxis] + x1 * w1[:, 1, :, tf.newaxis]
    z = z + b1[..., tf.newaxis]
    active = tf.nn.relu(z) if keep is None else tf.nn.relu(z) * keep
    return _tree_sum(active * w2[..., tf.newaxis], 1) + b2[:, tf.newaxis]


# --- dropout masks: a counter-based hash, so a model's mask is a function of its key, its
# epoch and the (row, unit) alone. TensorFlow's stateless generators take one seed per call,
# which would mean one call per model per epoch: 20x the cost of this hash in the loop.

_U32 = tf.uint32


def _mix(h):
    """MurmurHash3's 32-bit finaliser: a bijection that spreads every input bit."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, _U32)))
    h = h * tf.constant(0x85EBCA6B, _U32)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(13, _U32)))
    h = h * tf.constant(0xC2B2AE35, _U32)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, _U32)))


def _keep_scale(rate, scale, key, epoch, cells):
    """Inverted dropout's scale [K, *cells.shape[1:]]: `scale` (1/(1-rate), rounded once from
    float64 as TensorFlow's dropout does) where a unit is kept, 0 where dropped, as Keras'
    Dropout. `cells` numbers each (row, unit); a uniform draw in [0, 1) from the hash of (key,
    epoch, cell) keeps the unit when it is >= rate."""
    stream = _mix(tf.bitwise.bitwise_xor(key, _mix(tf.cast(epoch, _U32) + 0x9E3779B9)))
    stream = tf.reshape(stream, [-1] + [1] * (cells.shape.rank - 1))
    bits = _mix(_mix(tf.bitwise.bitwise_xor(cells, stream)) + stream)
    uniform = tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, _U32)), tf.float32) * 2.0**-24
    rate, scale = tf.reshape(rate, tf.shape(stream)), tf.reshape(scale, tf.shape(stream))
    return tf.where(uniform >= rate, scale, 0.0)


def _scale(rate: float) -> np.float32:
    return np.float32(1 / (1 - rate))


def dropout_scale(rate: float, key: int, epoch: int, rows: int, units: int) -> np.ndarray:
    """The scale [rows, units] the loop multiplies a model's hidden activations by in training
    epoch `epoch` (its optimizer's iteration count): 0 for a dropped unit, 1/(1-rate) else."""
    cells = tf.constant(np.arange(rows * units, dtype=np.uint32).reshape(1, rows, units))
    rates, scales = tf.constant([rate], tf.float32), tf.constant([_scale(rate)])
    return _keep_scale(rates, scales, tf.constant([key], _U32), epoch, cells).numpy()[0]


def mask_key(seed: int, stream: int) -> int:
    """A model's mask key: its Dropout layer's seed and a stream (0: the model, i: fold i)."""
    return int((seed * 0x9E3779B1 + stream * 0x85EBCA77) % 2**32)


def _constrain(w1, code, max_value):
    """Keras' MaxNorm / UnitNorm (axis 0) on hidden kernels [K,2,H]; unconstrained models'
    kernels pass through unchanged."""
    norms = tf.sqrt(tf.square(w1[:, 0]) + tf.square(w1[:, 1]))[:, tf.newaxis]
    limit = tf.reshape(max_value, [-1, 1, 1])
    code = tf.reshape(code, [-1, 1, 1])
    fuzz = keras.config.epsilon()  # what Keras' constraints add to a norm before dividing
    max_norm = w1 * (tf.clip_by_value(norms, 0.0, limit) / (fuzz + norms))
    unit_norm = w1 / (fuzz + norms)
    return tf.where(code == MAX_NORM, max_norm, tf.where(code == UNIT_NORM, unit_norm, w1))


def _penalty(params, l1, l2):
    """Per-model penalty [K]: l1 * sum|W| + l2 * sum W^2 for each kernel, as keras.regularizers."""
    total = 0.0
    for j, w in enumerate((tf.reshape(params[0], [tf.shape(params[0])[0], -1]), params[2])):
        total += l1[:, j] * _tree_sum(tf.abs(w), 1) + l2[:, j] * _tree_sum(tf.square(w), 1)
    return total


def _penalty_grads(params, l1, l2):
    """Gradients of `_penalty` for the two kernels, as autodiff of the Keras regularizers."""
    return tuple(
        tf.sign(w) * tf.reshape(l1[:, j], shape) + tf.reshape(l2[:, j], shape) * (2 * w)
        for j, (w, shape) in enumerate(((params[0], [-1, 1, 1]), (params[2], [-1, 1])))
    )


def _losses(logits, y):
    """Per-sample binary cross-entropy [K,n] from logits, as the Keras TF backend computes it."""
    labels = tf.broadcast_to(y[tf.newaxis], tf.shape(logits))
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)


def _cross_entropy(logits, y, rows):
    """Per-model mean cross-entropy [K] over the rows a model uses (`rows` [K,n]: 1 or 0)."""
    # A row left out contributes an exact 0, so with every row in, the sum is the plain one.
    return _tree_sum(_losses(logits, y) * rows.mask, 1) / rows.count


def _scores(params, logits, l1, l2, y, rows):
    """Per-model (penalised loss [K], correct predictions [K]) over each model's rows."""
    # Keras thresholds the sigmoid output, not the logit; they differ where sigmoid rounds to 0.5.
    hits = tf.cast(tf.equal(tf.cast(tf.sigmoid(logits) > 0.5, tf.float32), y), tf.float32)
    # Counts, not means: XLA would divide by n as a multiply by 1/n, which rounds
    # differently from the true division Keras' Mean metric does. Sums of 0/1 are exact.
    loss = _cross_entropy(logits, y, rows) + _penalty(params, l1, l2)
    return loss, tf.reduce_sum(hits * rows.mask, axis=1)


def _gradients(params, z, logits, l1, l2, x, y, rows, keep=None):
    """Per-model gradients of the mean loss plus penalty, by the chain rule written out.
    `keep` [K,n,H]: the dropout scale the forward pass used, if any."""
    w1, _, w2, _ = params
    with tf.GradientTape() as tape:  # elementwise only: d loss_i / d logit_i, as TF's autodiff
        tape.watch(logits)
        losses = _losses(logits, y)
    # d mean / d loss_i is 1/n for a row the model trains on, 0 for one it leaves out.
    d_logits = tape.gradient(losses, logits, output_gradients=rows.mask * rows.weight[:, None])
    d_active = d_logits[..., tf.newaxis] * w2[:, tf.newaxis]
    active = tf.nn.relu(z)
    if keep is not None:
        d_active, active = d_active * keep, active * keep
    d_z = tf.where(z > 0, d_active, 0.0)
    d_w1 = tf.stack([_tree_sum(d_z * x[tf.newaxis, :, i : i + 1], 1) for i in range(2)], axis=1)
    d_w2 = _tree_sum(active * d_logits[..., tf.newaxis], 1)
    pen_w1, pen_w2 = _penalty_grads(params, l1, l2)
    return d_w1 + pen_w1, _tree_sum(d_z, 1), d_w2 + pen_w2, _tree_sum(d_logits, 1)


def _adam_step(params, grads, m, v, iterations, lr):
    """One Keras 3 Adam update; `iterations` [K] counts each model's earlier updates."""
    t = tf.cast(iterations + 1, tf.float32)
    alpha = lr * tf.sqrt(1 - tf.pow(BETA_2, t)) / (1 - tf.pow(BETA_1, t))
    new_p, new_m, new_v = [], [], []
    for p, g, mi, vi in zip(params, grads, m, v, strict=True):
        a = tf.reshape(alpha, [-1] + [1] * (p.shape.rank - 1))
        mi = mi + (g - mi) * (1 - BETA_1)
        vi = vi + (tf.square(g) - vi) * (1 - BETA_2)
        new_p.append(p - (mi * a) / (tf.sqrt(vi) + EPSILON))
        new_m.append(mi)
        new_v.append(vi)
    return tuple(new_p), tuple(new_m), tuple(new_v)


class _Rows(typing.NamedTuple):
    """Which rows of a data set each model uses: mask [K,n] of 1/0, count [K] = the mask's
    sum, weight [K] = 1/count (rounded once, as `1 / n` is for `fit`'s mean)."""

    mask: tf.Tensor
    count: tf.Tensor
    weight: tf.Tensor


class _Remedies(typing.NamedTuple):
    """Per-model settings [K] of the remedies other than penalties.

    rate, scale, key: dropout rate, 1/(1-rate) and mask key; constraint, max_value: the
    hidden kernel's constraint; monitor (0: no early stopping), patience, min_delta (signed:
    added to a val_loss, subtracted from a val_accuracy), restore: early stopping; limit: the
    epochs a model may train at most.
    """

    rate: tf.Tensor
    scale: tf.Tensor
    key: tf.Tensor
    constraint: tf.Tensor
    max_value: tf.Tensor
    monitor: tf.Tensor
    patience: tf.Tensor
    min_delta: tf.Tensor
    restore: tf.Tensor
    limit: tf.Tensor


def _where(flags, new, old):
    """Per model: `new` where flags [K] is true, `old` elsewhere, for tensors [K, ...]."""
    return tuple(
        tf.where(tf.reshape(flags, [-1] + [1] * (n.shape.rank - 1)), n, o)
        for n, o in zip(new, old, strict=True)
    )


@tf.function(jit_compile=True, autograph=False)
def _train(
    params, m, v, iterations, l1, l2, lr, x_fit, y_fit, fit, x_val, y_val, val, epochs, remedies,
    dropout,
):  # fmt: skip
    """Trained (params, m, v), per-epoch metrics [E, 4, K], final metrics [5, K], the epochs
    each model trained [K] and its best monitored epoch [K] (0-based; early stopping only).

    Model k fits the rows of x_fit that `fit` marks for it and is validated on the rows of
    x_val that `val` marks; the fifth final metric is the validation cross-entropy alone.
    `dropout` (a Python boolean) says whether any model of the stack uses dropout.
    """
    k = params[0].shape[0]
    curves = tf.TensorArray(tf.float32, size=epochs, element_shape=[4, k])
    units = params[0].shape[2]
    rows = x_fit.shape[0]
    cells = tf.constant(np.arange(rows * units, dtype=np.uint32).reshape(1, rows, units))
    r = remedies
    zeros = tf.zeros([k], tf.int32)
    # Early stopping's state: best value, epochs without improvement, stopped, best weights.
    watch = (zeros, zeros, tf.zeros([k], tf.bool), tf.fill([k], np.float32(np.inf)), params)

    def masks(step):
        """This epoch's dropout scales, in the two layouts the passes use. They travel in the
        loop's state: XLA would otherwise recompute the hash inside every fused consumer."""
        if not dropout:
            return ()
        epoch = iterations + step
        keep_nh = _keep_scale(r.rate, r.scale, r.key, epoch, cells)
        return keep_nh, tf.transpose(keep_nh, [0, 2, 1])

    def body(step, params, m, v, curves, ran, watch, keep):
        best_epoch, wait, stopped, best, best_params = watch
        active = tf.logical_and(tf.logical_not(stopped), step < r.limit)
        epoch = iterations + step
        keep_nh, keep_hn = keep if dropout else (None, None)
        z, logits = _hidden(params, x_fit), _logits(params, x_fit, keep_hn)
        loss, hits = _scores(params, logits, l1, l2, y_fit, fit)
        grads = _gradients(params, z, logits, l1, l2, x_fit, y_fit, fit, keep_nh)
        new_params, new_m, new_v = _adam_step(params, grads, m, v, epoch, lr)
        new_params = (_constrain(new_params[0], r.constraint, r.max_value), *new_params[1:])
        # A stopped model (or one past its epochs) keeps its weights and Adam state.
        params, m, v = (
            _where(active, n, o) for n, o in ((new_params, params), (new_m, m), (new_v, v))
        )
        val_loss, val_hits = _scores(params, _logits(params, x_val), l1, l2, y_val, val)
        curves = curves.write(step, tf.stack([loss, hits, val_loss, val_hits]))
        ran = ran + tf.cast(active, tf.int32)
        # Keras' EarlyStopping.on_epoch_end, per model: the value as `fit` logs it (a
        # float32), shifted by min_delta in float64 and compared in float32, as ops.less does.
        current = tf.where(r.monitor == MONITORS["val_loss"], val_loss, val_hits / val.count)
        shifted = tf.cast(tf.cast(current, tf.float64) + r.min_delta, tf.float32)
        better = tf.where(r.monitor == MONITORS["val_loss"], shifted < best, shifted > best)
        watching = tf.logical_and(active, r.monitor > 0)
        improved = tf.logical_and(watching, tf.logical_or(better, tf.equal(step, 0)))
        best = tf.where(improved, current, best)
        best_epoch = tf.where(improved, step, best_epoch)
        best_params = _where(tf.logical_and(improved, r.restore), params, best_params)
        wait = tf.where(improved, 0, wait + tf.cast(watching, tf.int32))
        patience_out = tf.logical_and(wait >= r.patience, step > 0)
        stopped = tf.logical_or(stopped, tf.logical_and(watching, patience_out))
        watch = (best_epoch, wait, stopped, best, best_params)
        return step + 1, params, m, v, curves, ran, watch, masks(step + 1)

    def going(step, params, m, v, curves, ran, watch, keep):
        running = tf.logical_and(tf.logical_not(watch[2]), step < r.limit)
        return tf.logical_and(step < epochs, tf.reduce_any(running))

    _, params, m, v, curves, ran, watch, _ = tf.while_loop(
        going, body, (tf.constant(0), params, m, v, curves, zeros, watch, masks(0))
    )
    # restore_best_weights: the weights only, as Keras (Adam's state stays where it stopped).
    params = _where(tf.logical_and(r.monitor > 0, r.restore), watch[4], params)
    fit_scores = _scores(params, _logits(params, x_fit), l1, l2, y_fit, fit)
    val_logits = _logits(params, x_val)
    val_scores = _scores(params, val_logits, l1, l2, y_val, val)
    val_entropy = _cross_entropy(val_logits, y_val, val)
    final = tf.stack([*fit_scores, *val_scores, val_entropy])
    return params, m, v, curves.stack(), final, ran, watch[0]


# --- public API ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fold:
    """A cross-validation model: it starts from the initial state of `models[start]`, fits the
    training rows outside `held_out` (a boolean mask over them) and is validated on the rows
    inside it, which `stopping` (if any) watches. Only its history is kept; its weights are
    dropped. `stream` numbers its dropout masks apart from its model's (stream 0); `epochs`
    (None: as many as its model) caps its training."""

    start: int
    held_out: np.ndarray
    stopping: Stopping | None = None
    stream: int = 1
    epochs: int | None = None


def _stack(arrays_per_model: list[list[np.ndarray]]) -> tuple[tf.Tensor, ...]:
    """Keras weights per model -> (W1 [K,2,H], B1 [K,H], W2 [K,H], B2 [K])."""
    w1, b1, w2, b2 = (np.stack(a) for a in zip(*arrays_per_model, strict=True))
    return tuple(tf.constant(a) for a in (w1, b1, w2[..., 0], b2[..., 0]))


def _unstack(params: tuple[tf.Tensor, ...], k: int) -> list[np.ndarray]:
    """Model k's slice of stacked tensors, in Keras' weight shapes."""
    w1, b1, w2, b2 = (p[k] for p in params)
    return [w1, b1, w2[:, np.newaxis], b2[np.newaxis]]


@dataclass(frozen=True)
class _Start:
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


def _start(model: keras.Model) -> _Start:
    hidden, output = _dense_layers(model)
    adam = _adam(model)
    return _Start(
        model.get_weights(),
        [x.numpy() for x in adam.momentums],
        [x.numpy() for x in adam.velocities],
        int(adam.optimizer.iterations.numpy()),
        float(adam.optimizer.learning_rate.numpy()),
        [_kernel_penalty(layer) for layer in (hidden, output)],
        _dropout(model),
        _constraint(hidden),
    )


@dataclass(frozen=True)
class _Slot:
    """One place in a stack: where the model starts, the rows it fits and is validated on
    (masks over the stage's x_fit and x_val), and the Keras model to write back (None: a fold)."""

    start: _Start
    fit: np.ndarray
    val: np.ndarray
    model: keras.Model | None
    epochs: int
    stopping: Stopping | None = None
    stream: int = 0

    @property
    def cost(self) -> tuple[int, ...]:
        """Sort key putting slots that may end early, and slots alike, in the same stacks.
        Early stopping and dropout come first: the early-stopping stacks may end early and
        others may wait on them, and the dropout variant then compiles beside the plain one
        instead of after it."""
        return (self.stopping is None, self.start.dropout[0] == 0, self.epochs)


def _rows(masks: list[np.ndarray]) -> _Rows:
    mask = np.stack(masks).astype(np.float32)
    count = mask.sum(axis=1)
    # 1/count in float64 rounded once to float32: the constant `1 / n` is for the full batch.
    return _Rows(*(tf.constant(a) for a in (mask, count, (1.0 / count).astype(np.float32))))


def _remedies(slots: list[_Slot]) -> _Remedies:
    stops = [slot.stopping for slot in slots]
    sign = {"val_loss": 1.0, "val_accuracy": -1.0}  # Keras negates min_delta for a falling value
    return _Remedies(
        tf.constant([s.start.dropout[0] for s in slots], tf.float32),
        tf.constant([_scale(s.start.dropout[0]) for s in slots], tf.float32),
        tf.constant([mask_key(s.start.dropout[1], s.stream) for s in slots], _U32),
        tf.constant([s.start.constraint[0] for s in slots], tf.int32),
        tf.constant([s.start.constraint[1] for s in slots], tf.float32),
        tf.constant([MONITORS[s.monitor] if s else 0 for s in stops], tf.int32),
        tf.constant([s.patience if s else 1 for s in stops], tf.int32),
        tf.constant([sign[s.monitor] * abs(s.min_delta) if s else 0.0 for s in stops], tf.float64),
        tf.constant([bool(s and s.restore_best_weights) for s in stops], tf.bool),
        tf.constant([slot.epochs for slot in slots], tf.int32),
    )


def _train_group(slots: list[_Slot], data: list[tf.Tensor], pad_to: int) -> list[History]:
    """Train slots in one compiled call (padded to `pad_to`) and write their models back."""
    padded = slots + [slots[-1]] * (pad_to - len(slots))  # the copies' results are dropped
    starts = [slot.start for slot in padded]
    pens = np.array([s.penalties for s in starts], np.float32)
    fit, val = _rows([s.fit for s in padded]), _rows([s.val for s in padded])
    epochs = max(slot.epochs for slot in padded)
    # Dropout's masks cost a third more per epoch: a stack without dropout compiles without
    # them. Constraints and early stopping cost nothing measurable, and one variant fewer
    # saves a compilation (~3 s).
    dropout = any(s.dropout[0] > 0 for s in starts)
    # Keras Adam keeps one momentum and one velocity per trainable variable, in weight order.
    params, m, v, curves, final, ran, best = _train(
        _stack([s.weights for s in starts]),
        _stack([s.momentums for s in starts]),
        _stack([s.velocities for s in starts]),
        tf.constant([s.iterations for s in starts], tf.int32),
        tf.constant(pens[..., 0]),
        tf.constant(pens[..., 1]),
        tf.constant([s.learning_rate for s in starts], tf.float32),
        data[0],
        data[1],
        fit,
        data[2],
        data[3],
        val,
        tf.constant(epochs, tf.int32),
        _remedies(padded),
        dropout,
    )
    params, m, v = ([x.numpy() for x in group] for group in (params, m, v))
    ran, best = ran.numpy(), best.numpy()
    # Turn hit counts into accuracies with float32 division, as Keras' Mean metric does.
    ones = np.ones_like(fit.count.numpy())
    sizes = np.stack([ones, fit.count.numpy(), ones, val.count.numpy()])
    curves = curves.numpy() / sizes[np.newaxis]
    final = final.numpy() / np.concatenate([sizes, ones[np.newaxis]])
    results = []
    for k, slot in enumerate(slots):
        history = {name: curves[: ran[k], i, k] for i, name in enumerate(METRICS)}
        last = {name: float(final[i, k]) for i, name in enumerate(METRICS)}
        last["val_crossentropy"] = float(final[len(METRICS), k])
        best_epoch = int(best[k]) + 1 if slot.stopping else None
        results.append(History(history, last, int(ran[k]), best_epoch))
        if slot.model is None:
            continue
        slot.model.set_weights(_unstack(params, k))
        adam = _adam(slot.model)
        state = _unstack(m, k) + _unstack(v, k)
        for var, value in zip(adam.momentums + adam.velocities, state, strict=True):
            var.assign(value)
        adam.optimizer.iterations.assign_add(int(ran[k]))
    return results


def parallel_groups() -> int:
    """How many stacks train at once: TensorFlow's intra-op thread count (default: the cores)."""
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    return max(1, threads or os.cpu_count() or 1)


def train_stacked(
    models: list[keras.Model],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    epochs: int | Sequence[int],
    checkpoint: Callable[[], None] | None = None,
    stopping: Sequence[Stopping | None] | None = None,
) -> list[History]:
    """Train compiled models full-batch for `epochs` epochs, in place, as `model.fit` would.

    Each model must be `build_model`'s architecture compiled with default Keras Adam; their
    hidden sizes must agree. Training starts from each model's current weights and optimizer
    state, honours its kernel regularizers, kernel constraint, dropout and learning rate, and
    leaves weights and Adam state where `model.fit(x_train, y_train, batch_size=len(x_train),
    epochs=epochs, shuffle=False, validation_data=(x_test, y_test))` would, up to float32
    rounding (with dropout, up to the random masks, which differ from Keras' draws).

    `epochs` may differ per model. `stopping[k]`, if given, is model k's EarlyStopping,
    watching the test rows, as the callback would in that `fit`.

    The models train stacked, in groups of equal size (at most MAX_GROUP, at least one group
    per core), one compiled call per group, as many groups at once as there are cores (XLA
    releases the GIL). A model's result is bit-identical whichever other models, and however
    many, it is trained with.

    `checkpoint`, if given, is called about every 0.1 s while groups train: when it raises, the
    groups not started are dropped and the exception propagates (a compiled call that is
    running cannot be stopped; it finishes in the background).
    """
    histories, _ = train_with_folds(
        models, [], x_train, y_train, x_test, y_test, epochs, checkpoint, stopping
    )
    return histories


def train_with_folds(
    models: list[keras.Model],
    folds: Sequence[Fold],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    epochs: int | Sequence[int],
    checkpoint: Callable[[], None] | None = None,
    stopping: Sequence[Stopping | None] | None = None,
    stack_size: int | None = None,
    done: Callable[[dict[int, History], dict[int, History]], None] | None = None,
    with_training_rows: bool = False,
) -> tuple[list[History], list[History]]:
    """`train_stacked` for `models`, with cross-validation models trained in the same stacks.

    Fold models share the models' shapes: every model computes its loss over all training
    rows with a 0/1 mask (a fold's held-out rows weigh 0) and is validated on the test rows
    followed by the training rows, again through a mask (a model: the test rows; a fold: its
    held-out rows). A fold never sees a test row, and a model never sees a held-out mask; a
    row weighing 0 adds an exact 0, so each result is the one it would get stacked alone.
    Returns the models' histories (validated on the test set) and the folds' (validated on
    their held-out rows; `final["val_crossentropy"]` is that loss without the penalty). A fold
    trains as many epochs as the model it starts from may, unless it says otherwise. A model
    given 0 epochs is not trained (its folds still start from it); its history is empty.
    `stack_size` pads every stack to that many models, and `with_training_rows` lays out the
    validation rows as a call with folds does even without folds (the models' results are the
    same), so that this call reuses the loop an earlier call compiled for that shape (each
    new shape, or number of epochs, costs a compilation, ~3 s).

    `done(models, folds)`, if given, is called in this thread each time a stack finishes, with
    the histories of the models and folds it trained (by index; a model's weights are then
    written back), so that the caller can use them while the other stacks train. A model's
    folds are stacked next to it, so that a model and its folds tend to finish together.
    """
    per_model = [epochs] * len(models) if isinstance(epochs, int) else list(epochs)
    stopping = list(stopping) if stopping is not None else [None] * len(models)
    if len(per_model) != len(models) or len(stopping) != len(models):
        raise ValueError("epochs and stopping, when given per model, need one entry per model")
    if min(per_model, default=0) < 0:
        raise ValueError("a model trains 0 epochs or more")
    # Idempotent; makes repeated runs bit-identical.
    tf.config.experimental.enable_op_determinism()
    y_train, y_test = np.ravel(y_train), np.ravel(y_test)
    starts = [_start(model) for model in models]
    every_train_row = np.ones(len(x_train), bool)
    if folds or with_training_rows:
        x_val, y_val = np.concatenate([x_test, x_train]), np.concatenate([y_test, y_train])
        test_rows = np.concatenate([np.ones(len(x_test), bool), ~every_train_row])
    else:  # validation on the test rows alone: no row that no model uses
        x_val, y_val, test_rows = x_test, y_test, np.ones(len(x_test), bool)
    slots = [
        _Slot(start, every_train_row, test_rows, model, n, stop)
        for start, model, n, stop in zip(starts, models, per_model, stopping, strict=True)
    ]
    untrained = [i for i, slot in enumerate(slots) if slot.epochs == 0]
    for fold in folds:
        held_out = np.asarray(fold.held_out, bool)
        if held_out.shape != every_train_row.shape or held_out.all() or not held_out.any():
            raise ValueError("a fold's held_out must mark some, not all, of the training rows")
        if not 0 <= fold.start < len(models):
            raise ValueError(
                f"a fold starts from one of the {len(models)} models, not {fold.start}"
            )
        val = np.concatenate([np.zeros(len(x_test), bool), held_out])
        n = per_model[fold.start] if fold.epochs is None else fold.epochs
        if n < 1:
            raise ValueError("a fold trains at least one epoch")
        slot = _Slot(starts[fold.start], ~held_out, val, None, n, fold.stopping, fold.stream)
        slots.append(slot)
    data = [tf.constant(a, tf.float32) for a in (x_train, y_train, x_val, y_val)]
    count = len(slots) - len(untrained)
    untrained_history = History({name: np.zeros(0, np.float32) for name in METRICS}, {})
    if count == 0:  # no folds either: a fold trains at least one epoch
        return [untrained_history] * len(models), []
    size, workers = _stacking(count, stack_size)
    # Slots that may stop early share stacks, so a stack whose models all stopped ends early.
    owner = list(range(len(models))) + [fold.start for fold in folds]
    order = sorted(
        set(range(len(slots))) - set(untrained), key=lambda i: (slots[i].cost, owner[i], i)
    )
    at = range(0, count, size)
    groups = [[slots[i] for i in order[a : a + size]] for a in at]
    histories = [untrained_history] * len(slots)

    def finished(group: int, trained: list[History]) -> None:
        indices = order[at[group] : at[group] + size]
        for i, history in zip(indices, trained, strict=True):
            histories[i] = history
        if done is not None:
            n = len(models)
            done(
                {i: histories[i] for i in indices if i < n},
                {i - n: histories[i] for i in indices if i >= n},
            )

    _run_groups(groups, data, size, workers, checkpoint or (lambda: None), finished)
    return histories[: len(models)], histories[len(models) :]


def _stacking(count: int, stack_size: int | None = None) -> tuple[int, int]:
    """(models per stack, stacks trained at once) for `count` models: equal stacks of at most
    MAX_GROUP, at least one per core; `stack_size`, if larger, pads every stack to it."""
    workers = min(parallel_groups(), count)
    size = -(-count // max(workers, -(-count // MAX_GROUP)))  # one compiled shape for all
    if stack_size is not None and stack_size >= size:
        size, workers = stack_size, min(workers, -(-count // stack_size))
    return size, workers


def compile_ahead(
    count: int,
    hidden_units: int,
    train_rows: int,
    test_rows: int,
    folds: bool,
    epochs: int,
    dropout: bool,
) -> None:
    """Compile the loop `train_with_folds` will run for `count` models and folds (stacked as
    it stacks them) of `hidden_units` units, on `train_rows` and `test_rows`, with or without
    folds, for at most `epochs` epochs, with or without dropout. XLA compiles once per shape
    and number of epochs (~3 s): called on another thread, this lets the compilation overlap
    other work. The loop runs, on zeros, for no epoch."""
    k, _ = _stacking(count)
    rows = train_rows + test_rows if folds else test_rows

    def zeros(*shape: int, dtype: tf.DType = tf.float32) -> tf.Tensor:
        return tf.zeros(shape, dtype)

    def masks(n: int) -> _Rows:
        return _Rows(zeros(k, n), tf.ones([k]), tf.ones([k]))

    params = (zeros(k, 2, hidden_units), zeros(k, hidden_units), zeros(k, hidden_units), zeros(k))
    none, ints = zeros(k, dtype=tf.int32), tf.ones([k], tf.int32)
    remedies = _Remedies(
        zeros(k), zeros(k), zeros(k, dtype=_U32), none, zeros(k), none, ints,
        zeros(k, dtype=tf.float64), zeros(k, dtype=tf.bool), none,
    )  # fmt: skip
    _train(
        params, params, params, none, zeros(k, 2), zeros(k, 2), zeros(k),
        zeros(train_rows, 2), zeros(train_rows), masks(train_rows), zeros(rows, 2), zeros(rows),
        masks(rows), tf.constant(epochs, tf.int32), remedies, dropout,
    )  # fmt: skip


def _run_groups(
    groups: list[list[_Slot]],
    data: list[tf.Tensor],
    size: int,
    workers: int,
    check: Callable[[], None],
    finished: Callable[[int, list[History]], None],
) -> None:
    """Train every group; `finished(group, histories)` is called in this thread as each one
    finishes, and `check` about every 0.1 s meanwhile."""
    if len(groups) == 1:
        check()
        finished(0, _train_group(groups[0], data, size))
        check()
        return
    pool = ThreadPoolExecutor(workers)
    futures = {pool.submit(_train_group, group, data, size): i for i, group in enumerate(groups)}
    try:
        pending = set(futures)
        while pending:
            check()
            ended, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            for future in sorted(ended, key=futures.__getitem__):
                finished(futures[future], future.result())
        check()
    finally:  # on a stop: drop the groups not started, leave the running ones to finish
        pool.shutdown(wait=False, cancel_futures=True)


def train_one(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    epochs: int,
) -> History:
    """`train_stacked` for a single model."""
    return train_stacked([model], x_train, y_train, x_test, y_test, epochs)[0]


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Keras' own full-batch {"loss", "accuracy"} of a model (loss includes the penalty)."""
    return model.evaluate(x, np.reshape(y, (-1, 1)), batch_size=len(x), verbose=0, return_dict=True)
