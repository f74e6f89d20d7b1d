"""The compiled training loop: every epoch of a stack of models inside one XLA-compiled
`tf.while_loop`, reproducing `model.fit`'s arithmetic (Keras' binary cross-entropy from the
sigmoid's logits plus the kernel and activity penalties, then a Keras 3 Adam step), with
dropout, Gaussian noise, a hidden-kernel constraint and early stopping per model. Tensors
only: trainer.py reads the Keras models into them and writes the results back."""

from __future__ import annotations

import typing

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
# Where a model adds Gaussian noise, and where its activity penalty measures the hidden layer.
NO_NOISE = NO_ACTIVITY = 0
INPUT, PRE_ACTIVATION, POST_ACTIVATION = 1, 2, 3
PLACES = {"input": INPUT, "pre_activation": PRE_ACTIVATION, "post_activation": POST_ACTIVATION}


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
    """Hidden pre-activations [K,n,H] of every model for inputs x [1 or K, n, 2]."""
    w1, b1, _, _ = params
    z = x[:, :, 0:1] * w1[:, tf.newaxis, 0] + x[:, :, 1:2] * w1[:, tf.newaxis, 1]
    return z + b1[:, tf.newaxis]


def logits_of(params, x, keep=None, pre=None, post=None):
    """Logits [K,n] for inputs x [1 or K, n, 2] (or shared, [n, 2]). Computed hidden-major
    ([K,H,n]) so the sum over H is vectorised over n (summed over the last axis, the same sums
    take 2.5 times as long).
    In training: `keep` [K,H,n], with dropout: each hidden activation's scale (0 or
    1/(1-rate)); `pre`, `post` [K,H,n], with noise: what is added before and after the ReLU."""
    w1, b1, w2, b2 = params
    if len(x.shape) == 2:  # shared rows (a tensor, or an array outside the loop)
        x = x[tf.newaxis]
    x0, x1 = x[:, tf.newaxis, :, 0], x[:, tf.newaxis, :, 1]
    z = x0 * w1[:, 0, :, tf.newaxis] + x1 * w1[:, 1, :, tf.newaxis]
    z = z + b1[..., tf.newaxis]
    active = tf.nn.relu(z if pre is None else z + pre)
    if post is not None:
        active = active + post
    active = active if keep is None else active * keep
    return _tree_sum(active * w2[..., tf.newaxis], 1) + b2[:, tf.newaxis]


# --- dropout masks: a counter-based hash, so a model's mask is a function of its key, its
# epoch and the (row, unit) alone. TensorFlow's stateless generators take one seed per call,
# which would mean one call per model per epoch: 20x the cost of this hash in the loop.

U32 = tf.uint32


def _mix(h):
    """MurmurHash3's 32-bit finaliser: a bijection that spreads every input bit."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, U32)))
    h = h * tf.constant(0x85EBCA6B, U32)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(13, U32)))
    h = h * tf.constant(0xC2B2AE35, U32)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, U32)))


def _keep_scale(rate, scale, key, epoch, cells):
    """Inverted dropout's scale [K, *cells.shape[1:]]: `scale` (1/(1-rate), rounded once from
    float64 as TensorFlow's dropout does) where a unit is kept, 0 where dropped, as Keras'
    Dropout. `cells` numbers each (row, unit); a uniform draw in [0, 1) from the hash of (key,
    epoch, cell) keeps the unit when it is >= rate."""
    stream = _mix(tf.bitwise.bitwise_xor(key, _mix(tf.cast(epoch, U32) + 0x9E3779B9)))
    stream = tf.reshape(stream, [-1] + [1] * (cells.shape.rank - 1))
    bits = _mix(_mix(tf.bitwise.bitwise_xor(cells, stream)) + stream)
    uniform = tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, U32)), tf.float32) * 2.0**-24
    rate, scale = tf.reshape(rate, tf.shape(stream)), tf.reshape(scale, tf.shape(stream))
    return tf.where(uniform >= rate, scale, 0.0)


def inverse_keep(rate: float) -> np.float32:
    return np.float32(1 / (1 - rate))


def dropout_scale(rate: float, key: int, epoch: int, rows: int, units: int) -> np.ndarray:
    """The scale [rows, units] the loop multiplies a model's hidden activations by in training
    epoch `epoch` (its optimizer's iteration count): 0 for a dropped unit, 1/(1-rate) else."""
    cells = tf.constant(np.arange(rows * units, dtype=np.uint32).reshape(1, rows, units))
    rates, scales = tf.constant([rate], tf.float32), tf.constant([inverse_keep(rate)])
    return _keep_scale(rates, scales, tf.constant([key], U32), epoch, cells).numpy()[0]


def _gaussian(key, epoch, cells):
    """Standard normal draws [K, *cells.shape[1:]]: Box-Muller on two uniform draws from the
    hash of (key, epoch, cell), a stream apart from dropout's masks of the same key."""
    stream = _mix(tf.bitwise.bitwise_xor(key, _mix(tf.cast(epoch, U32) + 0x7F4A7C15)))
    stream = tf.reshape(stream, [-1] + [1] * (cells.shape.rank - 1))

    def uniform(half):  # in [0, 1), 24 bits
        bits = _mix(_mix(tf.bitwise.bitwise_xor(cells * 2 + half, stream)) + stream)
        return tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, U32)), tf.float32) * 2.0**-24

    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - uniform(0)))  # 1 - u: in (0, 1], exactly
    return radius * tf.cos((2 * np.pi) * uniform(1))


def _noise(stddev, place, at, key, epoch, cells):
    """The noise [K, *cells.shape[1:]] the models whose noise is at `place` add in training
    epoch `epoch`: stddev times a standard normal draw; exactly 0 for the others."""
    shape = [-1] + [1] * (cells.shape.rank - 1)
    drawn = _gaussian(key, epoch, cells) * tf.reshape(stddev, shape)
    return tf.where(tf.reshape(at == place, shape), drawn, 0.0)


def gaussian_noise(
    stddev: float, key: int, epoch: int, rows: int, width: int, place: int = INPUT
) -> np.ndarray:
    """The noise [rows, width] the loop adds at `place` to a model's inputs (width 2) or hidden
    outputs (width: its units) in training epoch `epoch` (its optimizer's iteration count)."""
    cells = tf.constant(np.arange(rows * width, dtype=np.uint32).reshape(1, rows, width))
    stddevs, places = tf.constant([stddev], tf.float32), tf.constant([place], tf.int32)
    return _noise(stddevs, place, places, tf.constant([key], U32), epoch, cells).numpy()[0]


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
    """Per-sample binary cross-entropy [K,n] from logits (labels y [1 or K, n]), as the Keras TF
    backend computes it."""
    labels = tf.broadcast_to(y, tf.shape(logits))
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)


def _cross_entropy(logits, y, rows):
    """Per-model mean cross-entropy [K] over the rows a model uses (`rows` [K,n]: 1 or 0)."""
    # A row left out contributes an exact 0, so with every row in, the sum is the plain one.
    return _tree_sum(_losses(logits, y) * rows.mask, 1) / rows.count


def _scores(params, logits, l1, l2, y, rows, activity=None):
    """Per-model (penalised loss [K], correct predictions [K]) over each model's rows;
    `activity` [K], the activity penalty on those rows, is added to the loss."""
    # Keras thresholds the sigmoid output, not the logit; they differ where sigmoid rounds to 0.5.
    hits = tf.cast(tf.equal(tf.cast(tf.sigmoid(logits) > 0.5, tf.float32), y), tf.float32)
    # Counts, not means: XLA would divide by n as a multiply by 1/n, which rounds
    # differently from the true division Keras' Mean metric does. Sums of 0/1 are exact.
    loss = _cross_entropy(logits, y, rows) + _penalty(params, l1, l2)
    if activity is not None:
        loss = loss + activity
    return loss, tf.reduce_sum(hits * rows.mask, axis=1)


# --- the activity penalty: Keras' activity_regularizer on the hidden layer's outputs [K,n,H]
# (before or after the ReLU), l1 * sum|h| + l2 * sum h^2 over the rows a model uses, divided
# by their count (Keras 3 divides by the batch size).


class Activity(typing.NamedTuple):
    """Per-model activity penalty [K]: l1 and l2 coefficients and place (0: none)."""

    l1: tf.Tensor
    l2: tf.Tensor
    at: tf.Tensor


def _measured(z, pre, activity):
    """The hidden outputs [K,n,H] each model's activity penalty measures: the pre-activations
    z, or the ReLU's outputs (of z plus the noise before it, if any)."""
    after = tf.nn.relu(z if pre is None else z + pre)
    return tf.where(tf.reshape(activity.at == PRE_ACTIVATION, [-1, 1, 1]), z, after)


def _activity_loss(h, activity, rows):
    """Per-model activity penalty [K] of outputs h [K,n,H] over each model's rows."""
    h = h * rows.mask[..., tf.newaxis]
    l1 = _tree_sum(_tree_sum(tf.abs(h), 1), 1)
    l2 = _tree_sum(_tree_sum(tf.square(h), 1), 1)
    loss = (activity.l1 * l1 + activity.l2 * l2) / rows.count
    return tf.where(activity.at != NO_ACTIVITY, loss, 0.0)


def _activity_grad(h, activity, place, rows):
    """d penalty / d h [K,n,H] for the models whose penalty measures h at `place`; 0 else."""
    shape = [-1, 1, 1]
    per_row = (rows.mask * rows.weight[:, tf.newaxis])[..., tf.newaxis]
    grad = tf.sign(h) * tf.reshape(activity.l1, shape) + tf.reshape(activity.l2, shape) * (2 * h)
    return tf.where(tf.reshape(activity.at == place, shape), grad * per_row, 0.0)


def _gradients(
    params, z, logits, l1, l2, x, y, rows, keep=None, pre=None, post=None, activity=None
):  # fmt: skip
    """Per-model gradients of the mean loss plus penalties, by the chain rule written out.
    z [K,n,H]: the pre-activations of the inputs x (noise included); `keep`, `pre`, `post`
    [K,n,H]: the dropout scale and the noise before and after the ReLU the forward pass used,
    if any; `activity`: the activity penalties, if any model of the stack has one."""
    w1, _, w2, _ = params
    with tf.GradientTape() as tape:  # elementwise only: d loss_i / d logit_i, as TF's autodiff
        tape.watch(logits)
        losses = _losses(logits, y)
    # d mean / d loss_i is 1/n for a row the model trains on, 0 for one it leaves out.
    d_logits = tape.gradient(losses, logits, output_gradients=rows.mask * rows.weight[:, None])
    d_active = d_logits[..., tf.newaxis] * w2[:, tf.newaxis]
    relu_in = z if pre is None else z + pre
    active = relu_out = tf.nn.relu(relu_in)
    if post is not None:
        active = active + post
    if keep is not None:
        d_active, active = d_active * keep, active * keep
    if activity is not None:
        d_active = d_active + _activity_grad(relu_out, activity, POST_ACTIVATION, rows)
    d_z = tf.where(relu_in > 0, d_active, 0.0)
    if activity is not None:
        d_z = d_z + _activity_grad(z, activity, PRE_ACTIVATION, rows)
    d_w1 = tf.stack([_tree_sum(d_z * x[:, :, i : i + 1], 1) for i in range(2)], axis=1)
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


class Rows(typing.NamedTuple):
    """Which rows of a data set each model uses: mask [K,n] of 1/0, count [K] = the mask's
    sum, weight [K] = 1/count (rounded once, as `1 / n` is for `fit`'s mean)."""

    mask: tf.Tensor
    count: tf.Tensor
    weight: tf.Tensor


class Remedies(typing.NamedTuple):
    """Per-model settings [K] of the remedies other than penalties.

    rate, scale, key: dropout rate, 1/(1-rate) and mask key; constraint, max_value: the
    hidden kernel's constraint; monitor (0: no early stopping), patience, min_delta (signed:
    added to a val_loss, subtracted from a val_accuracy), restore: early stopping; limit: the
    epochs a model may train at most; noise_stddev, noise_at, noise_key: Gaussian noise;
    activity: the activity penalty.
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
    noise_stddev: tf.Tensor
    noise_at: tf.Tensor
    noise_key: tf.Tensor
    activity: Activity


def _where(flags, new, old):
    """Per model: `new` where flags [K] is true, `old` elsewhere, for tensors [K, ...]."""
    return tuple(
        tf.where(tf.reshape(flags, [-1] + [1] * (n.shape.rank - 1)), n, o)
        for n, o in zip(new, old, strict=True)
    )


def _early_stopping(watch, r, step, active, current, params):
    """Keras' EarlyStopping.on_epoch_end, per model, on this epoch's monitored value as `fit`
    logs it (a float32): shifted by min_delta in float64 and compared in float32, as ops.less
    does. `watch` is (best epoch, epochs without improvement, stopped, best value, best
    weights)."""
    best_epoch, wait, stopped, best, best_params = watch
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
    return best_epoch, wait, stopped, best, best_params


@tf.function(jit_compile=True, autograph=False)
def train_loop(
    params, m, v, iterations, l1, l2, lr, x_fit, y_fit, fit, x_val, y_val, val, epochs, remedies,
    dropout, validate=True, noise=(), activity=False,
):  # fmt: skip
    """Trained (params, m, v), per-epoch metrics [E, 4, K], final metrics [5, K], the epochs
    each model trained [K] and its best monitored epoch [K] (0-based; early stopping only).

    Model k fits the rows of x_fit that `fit` marks for it and is validated on the rows of
    x_val that `val` marks; the fifth final metric is the validation cross-entropy alone.
    The rows are shared by every model (x [n, 2], y [n]) or each model's own (x [K, n, 2],
    y [K, n], padded with rows its masks leave out). `dropout` (a Python boolean) says whether
    any model of the stack uses dropout. `validate` (a Python boolean) False: no model of the
    stack stops early or keeps its validation curves, so the validation rows are measured once,
    after the last epoch (the curves' validation entries are 0); the training is the same.
    `noise` (a tuple of places) holds the places where models of the stack add noise, and
    `activity` (a Python boolean) says whether any has an activity penalty: a stack without
    them compiles without their work.
    """
    x_fit, x_val = (x if x.shape.rank == 3 else x[tf.newaxis] for x in (x_fit, x_val))
    y_fit, y_val = (y if y.shape.rank == 2 else y[tf.newaxis] for y in (y_fit, y_val))
    k = params[0].shape[0]
    curves = tf.TensorArray(tf.float32, size=epochs, element_shape=[4, k])
    units = params[0].shape[2]
    rows = x_fit.shape[1]
    cells = tf.constant(np.arange(rows * units, dtype=np.uint32).reshape(1, rows, units))
    input_cells = tf.constant(np.arange(rows * 2, dtype=np.uint32).reshape(1, rows, 2))
    r = remedies
    act = r.activity if activity else None
    zeros = tf.zeros([k], tf.int32)
    # Early stopping's state: best value, epochs without improvement, stopped, best weights.
    watch = (zeros, zeros, tf.zeros([k], tf.bool), tf.fill([k], np.float32(np.inf)), params)

    def draws(step):
        """This epoch's dropout scales and noise, by name, the hidden ones in the two layouts
        the passes use ([K,n,H] and [K,H,n]). They travel in the loop's state: XLA would
        otherwise recompute the hash inside every fused consumer."""
        epoch = iterations + step
        drawn = {}
        if dropout:
            drawn["keep"] = _keep_scale(r.rate, r.scale, r.key, epoch, cells)
        if INPUT in noise:
            args = (r.noise_stddev, INPUT, r.noise_at, r.noise_key, epoch, input_cells)
            drawn["input"] = _noise(*args)
        for place, name in ((PRE_ACTIVATION, "pre"), (POST_ACTIVATION, "post")):
            if place in noise:
                drawn[name] = _noise(r.noise_stddev, place, r.noise_at, r.noise_key, epoch, cells)
        for name in ("keep", "pre", "post"):
            if name in drawn:
                drawn[f"{name}_hn"] = tf.transpose(drawn[name], [0, 2, 1])
        return drawn

    def scores(params, x, y, rows):
        """(loss, hits) [K] of the inputs x in inference (no dropout, no noise); the loss with
        the activity penalty of the rows, as Keras' evaluate adds it."""
        penalty = None
        if act is not None:
            penalty = _activity_loss(_measured(_hidden(params, x), None, act), act, rows)
        return _scores(params, logits_of(params, x), l1, l2, y, rows, penalty)

    def body(step, params, m, v, curves, ran, watch, drawn):
        active = tf.logical_and(tf.logical_not(watch[2]), step < r.limit)
        epoch = iterations + step
        x_in = x_fit + drawn["input"] if "input" in drawn else x_fit
        z = _hidden(params, x_in)
        hn = {name: drawn.get(f"{name}_hn") for name in ("keep", "pre", "post")}
        logits = logits_of(params, x_in, **hn)
        pre, post = drawn.get("pre"), drawn.get("post")
        penalty = None if act is None else _activity_loss(_measured(z, pre, act), act, fit)
        loss, hits = _scores(params, logits, l1, l2, y_fit, fit, penalty)
        grads = _gradients(
            params, z, logits, l1, l2, x_in, y_fit, fit, drawn.get("keep"), pre, post, act
        )
        new_params, new_m, new_v = _adam_step(params, grads, m, v, epoch, lr)
        new_params = (_constrain(new_params[0], r.constraint, r.max_value), *new_params[1:])
        # A stopped model (or one past its epochs) keeps its weights and Adam state.
        params, m, v = (
            _where(active, n, o) for n, o in ((new_params, params), (new_m, m), (new_v, v))
        )
        ran = ran + tf.cast(active, tf.int32)
        if not validate:
            curves = curves.write(
                step, tf.stack([loss, hits, tf.zeros_like(loss), tf.zeros_like(hits)])
            )
            return step + 1, params, m, v, curves, ran, watch, draws(step + 1)
        val_loss, val_hits = scores(params, x_val, y_val, val)
        curves = curves.write(step, tf.stack([loss, hits, val_loss, val_hits]))
        current = tf.where(r.monitor == MONITORS["val_loss"], val_loss, val_hits / val.count)
        watch = _early_stopping(watch, r, step, active, current, params)
        return step + 1, params, m, v, curves, ran, watch, draws(step + 1)

    def going(step, params, m, v, curves, ran, watch, drawn):
        running = tf.logical_and(tf.logical_not(watch[2]), step < r.limit)
        return tf.logical_and(step < epochs, tf.reduce_any(running))

    _, params, m, v, curves, ran, watch, _ = tf.while_loop(
        going, body, (tf.constant(0), params, m, v, curves, zeros, watch, draws(0))
    )
    # restore_best_weights: the weights only, as Keras (Adam's state stays where it stopped).
    params = _where(tf.logical_and(r.monitor > 0, r.restore), watch[4], params)
    fit_scores = scores(params, x_fit, y_fit, fit)
    val_scores = scores(params, x_val, y_val, val)
    val_entropy = _cross_entropy(logits_of(params, x_val), y_val, val)
    final = tf.stack([*fit_scores, *val_scores, val_entropy])
    return params, m, v, curves.stack(), final, ran, watch[0]
