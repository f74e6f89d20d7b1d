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
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

# Keras 3 Adam defaults; the loop reproduces only this configuration.
BETA_1 = 0.9
BETA_2 = 0.999
EPSILON = 1e-7

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


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


# --- reading the Keras models ----------------------------------------------------------------


def _check_architecture(model: keras.Model) -> None:
    """Reject anything but Dense(H, relu) -> Dense(1, sigmoid), the network the loop computes."""
    layers = model.layers
    ok = (
        len(layers) == 2
        and all(isinstance(layer, keras.layers.Dense) and layer.use_bias for layer in layers)
        and layers[0].activation is keras.activations.relu
        and layers[1].activation is keras.activations.sigmoid
        and layers[0].kernel.shape[0] == 2
        and layers[1].units == 1
    )
    if not ok:
        raise ValueError("train_stacked expects Dense(H, relu) -> Dense(1, sigmoid) on 2 inputs")


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


def _logits(params, x):
    """Logits [K,n]. Computed hidden-major ([K,H,n]) so the sum over H is vectorised over n."""
    w1, b1, w2, b2 = params
    x0, x1 = x[tf.newaxis, tf.newaxis, :, 0], x[tf.newaxis, tf.newaxis, :, 1]
    z = x0 * w1[:, 0, :, tf.newaxis] + x1 * w1[:, 1, :, tf.newaxis]
    z = z + b1[..., tf.newaxis]
    return _tree_sum(tf.nn.relu(z) * w2[..., tf.newaxis], 1) + b2[:, tf.newaxis]


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


def _gradients(params, z, logits, l1, l2, x, y, rows):
    """Per-model gradients of the mean loss plus penalty, by the chain rule written out."""
    w1, _, w2, _ = params
    with tf.GradientTape() as tape:  # elementwise only: d loss_i / d logit_i, as TF's autodiff
        tape.watch(logits)
        losses = _losses(logits, y)
    # d mean / d loss_i is 1/n for a row the model trains on, 0 for one it leaves out.
    d_logits = tape.gradient(losses, logits, output_gradients=rows.mask * rows.weight[:, None])
    d_z = tf.where(z > 0, d_logits[..., tf.newaxis] * w2[:, tf.newaxis], 0.0)
    d_w1 = tf.stack([_tree_sum(d_z * x[tf.newaxis, :, i : i + 1], 1) for i in range(2)], axis=1)
    d_w2 = _tree_sum(tf.nn.relu(z) * d_logits[..., tf.newaxis], 1)
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


@tf.function(jit_compile=True)
def _train(params, m, v, iterations, l1, l2, lr, x_fit, y_fit, fit, x_val, y_val, val, epochs):
    """Trained (params, m, v), per-epoch metrics [E, 4, K] and final metrics [5, K].

    Model k fits the rows of x_fit that `fit` marks for it and is validated on the rows of
    x_val that `val` marks; the fifth final metric is the validation cross-entropy alone.
    """
    curves = tf.TensorArray(tf.float32, size=epochs, element_shape=[4, params[0].shape[0]])

    def body(step, params, m, v, curves):
        z, logits = _hidden(params, x_fit), _logits(params, x_fit)
        loss, hits = _scores(params, logits, l1, l2, y_fit, fit)
        grads = _gradients(params, z, logits, l1, l2, x_fit, y_fit, fit)
        params, m, v = _adam_step(params, grads, m, v, iterations + step, lr)
        val_loss, val_hits = _scores(params, _logits(params, x_val), l1, l2, y_val, val)
        curves = curves.write(step, tf.stack([loss, hits, val_loss, val_hits]))
        return step + 1, params, m, v, curves

    _, params, m, v, curves = tf.while_loop(
        lambda step, *_: step < epochs, body, (tf.constant(0), params, m, v, curves)
    )
    fit_scores = _scores(params, _logits(params, x_fit), l1, l2, y_fit, fit)
    val_logits = _logits(params, x_val)
    val_scores = _scores(params, val_logits, l1, l2, y_val, val)
    val_entropy = _cross_entropy(val_logits, y_val, val)
    return params, m, v, curves.stack(), tf.stack([*fit_scores, *val_scores, val_entropy])


# --- public API ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fold:
    """A cross-validation model: it starts from the initial state of `models[start]`, fits the
    training rows outside `held_out` (a boolean mask over them) and is validated on the rows
    inside it. Only its history is kept; its weights are dropped."""

    start: int
    held_out: np.ndarray


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


def _start(model: keras.Model) -> _Start:
    adam = _adam(model)
    return _Start(
        model.get_weights(),
        [x.numpy() for x in adam.momentums],
        [x.numpy() for x in adam.velocities],
        int(adam.optimizer.iterations.numpy()),
        float(adam.optimizer.learning_rate.numpy()),
        [_kernel_penalty(layer) for layer in model.layers],
    )


@dataclass(frozen=True)
class _Slot:
    """One place in a stack: where the model starts, the rows it fits and is validated on
    (masks over the stage's x_fit and x_val), and the Keras model to write back (None: a fold)."""

    start: _Start
    fit: np.ndarray
    val: np.ndarray
    model: keras.Model | None


def _rows(masks: list[np.ndarray]) -> _Rows:
    mask = np.stack(masks).astype(np.float32)
    count = mask.sum(axis=1)
    # 1/count in float64 rounded once to float32: the constant `1 / n` is for the full batch.
    return _Rows(*(tf.constant(a) for a in (mask, count, (1.0 / count).astype(np.float32))))


def _train_group(
    slots: list[_Slot], data: list[tf.Tensor], epochs: int, pad_to: int
) -> list[History]:
    """Train slots in one compiled call (padded to `pad_to`) and write their models back."""
    padded = slots + [slots[-1]] * (pad_to - len(slots))  # the copies' results are dropped
    starts = [slot.start for slot in padded]
    pens = np.array([s.penalties for s in starts], np.float32)
    fit, val = _rows([s.fit for s in padded]), _rows([s.val for s in padded])
    # Keras Adam keeps one momentum and one velocity per trainable variable, in weight order.
    params, m, v, curves, final = _train(
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
    )
    params, m, v = ([x.numpy() for x in group] for group in (params, m, v))
    # Turn hit counts into accuracies with float32 division, as Keras' Mean metric does.
    ones = np.ones_like(fit.count.numpy())
    sizes = np.stack([ones, fit.count.numpy(), ones, val.count.numpy()])
    curves = curves.numpy() / sizes[np.newaxis]
    final = final.numpy() / np.concatenate([sizes, ones[np.newaxis]])
    results = []
    for k, slot in enumerate(slots):
        history = {name: curves[:, i, k] for i, name in enumerate(METRICS)}
        last = {name: float(final[i, k]) for i, name in enumerate(METRICS)}
        last["val_crossentropy"] = float(final[len(METRICS), k])
        results.append(History(history, last))
        if slot.model is None:
            continue
        slot.model.set_weights(_unstack(params, k))
        adam = _adam(slot.model)
        state = _unstack(m, k) + _unstack(v, k)
        for var, value in zip(adam.momentums + adam.velocities, state, strict=True):
            var.assign(value)
        adam.optimizer.iterations.assign_add(epochs)
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
    epochs: int,
    checkpoint: Callable[[], None] | None = None,
) -> list[History]:
    """Train compiled models full-batch for `epochs` epochs, in place, as `model.fit` would.

    Each model must be `build_model`'s architecture compiled with default Keras Adam; their
    hidden sizes must agree. Training starts from each model's current weights and optimizer
    state, honours its kernel regularizers and learning rate, and leaves weights and Adam
    state where `model.fit(x_train, y_train, batch_size=len(x_train), epochs=epochs,
    shuffle=False, validation_data=(x_test, y_test))` would, up to float32 rounding.

    The models train stacked, in groups of equal size (at most MAX_GROUP, at least one group
    per core), one compiled call per group, as many groups at once as there are cores (XLA
    releases the GIL). A model's result is bit-identical whichever other models, and however
    many, it is trained with.

    `checkpoint`, if given, is called about every 0.1 s while groups train: when it raises, the
    groups not started are dropped and the exception propagates (a compiled call that is
    running cannot be stopped; it finishes in the background).
    """
    histories, _ = train_with_folds(
        models, [], x_train, y_train, x_test, y_test, epochs, checkpoint
    )
    return histories


def train_with_folds(
    models: list[keras.Model],
    folds: Sequence[Fold],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    epochs: int,
    checkpoint: Callable[[], None] | None = None,
) -> tuple[list[History], list[History]]:
    """`train_stacked` for `models`, with cross-validation models trained in the same stacks.

    Fold models share the models' shapes: every model computes its loss over all training
    rows with a 0/1 mask (a fold's held-out rows weigh 0) and is validated on the test rows
    followed by the training rows, again through a mask (a model: the test rows; a fold: its
    held-out rows). A fold never sees a test row, and a model never sees a held-out mask; a
    row weighing 0 adds an exact 0, so each result is the one it would get stacked alone.
    Returns the models' histories (validated on the test set) and the folds' (validated on
    their held-out rows; `final["val_crossentropy"]` is that loss without the penalty).
    """
    for model in models:
        _check_architecture(model)
    # Idempotent; makes repeated runs bit-identical.
    tf.config.experimental.enable_op_determinism()
    y_train, y_test = np.ravel(y_train), np.ravel(y_test)
    starts = [_start(model) for model in models]
    every_train_row = np.ones(len(x_train), bool)
    if folds:
        x_val, y_val = np.concatenate([x_test, x_train]), np.concatenate([y_test, y_train])
        test_rows = np.concatenate([np.ones(len(x_test), bool), ~every_train_row])
    else:  # validation on the test rows alone: no row that no model uses
        x_val, y_val, test_rows = x_test, y_test, np.ones(len(x_test), bool)
    slots = [_Slot(s, every_train_row, test_rows, m) for s, m in zip(starts, models, strict=True)]
    for fold in folds:
        held_out = np.asarray(fold.held_out, bool)
        if held_out.shape != every_train_row.shape or held_out.all() or not held_out.any():
            raise ValueError("a fold's held_out must mark some, not all, of the training rows")
        if not 0 <= fold.start < len(models):
            raise ValueError(
                f"a fold starts from one of the {len(models)} models, not {fold.start}"
            )
        val = np.concatenate([np.zeros(len(x_test), bool), held_out])
        slots.append(_Slot(starts[fold.start], ~held_out, val, None))
    data = [tf.constant(a, tf.float32) for a in (x_train, y_train, x_val, y_val)]
    workers = min(parallel_groups(), len(slots))
    n_groups = max(workers, -(-len(slots) // MAX_GROUP))
    size = -(-len(slots) // n_groups)  # equal sizes: one compiled shape for every group
    groups = [slots[start : start + size] for start in range(0, len(slots), size)]
    histories = _run_groups(groups, data, epochs, size, workers, checkpoint or (lambda: None))
    return histories[: len(models)], histories[len(models) :]


def _run_groups(
    groups: list[list[_Slot]],
    data: list[tf.Tensor],
    epochs: int,
    size: int,
    workers: int,
    check: Callable[[], None],
) -> list[History]:
    """Every group's histories, in order; `check` is called about every 0.1 s."""
    if len(groups) == 1:
        check()
        histories = _train_group(groups[0], data, epochs, size)
        check()
        return histories
    pool = ThreadPoolExecutor(workers)
    futures = [pool.submit(_train_group, group, data, epochs, size) for group in groups]
    try:
        pending = set(futures)
        while pending:
            check()
            pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED).not_done
        check()
        return [history for future in futures for history in future.result()]
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
