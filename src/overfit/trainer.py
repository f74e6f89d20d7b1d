"""Full-batch training of Keras MLPs with every epoch inside one XLA-compiled loop.

`model.fit` spends ~40 ms per epoch in Python overhead on a 30-row batch; running
all epochs inside one compiled `tf.while_loop` removes that overhead while
reproducing fit's arithmetic: the loss is Keras' binary cross-entropy (computed
from the sigmoid's logits, as the TF backend does) plus the kernel regularizers,
and the update is Keras 3 Adam.

Models are stacked along a leading axis: weights, Adam state, penalty
coefficients and learning rate are per-model slices of tensors, so one compiled
function serves any mix of penalties without retracing. Everything is read from
and written back to the compiled Keras models, so a saved `.keras` file holds
exactly what `fit` would have left: weights, regularizers and optimizer state.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

# Keras 3 Adam defaults; the loop reproduces only this configuration.
BETA_1 = 0.9
BETA_2 = 0.999
EPSILON = 1e-7

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")

# Models are trained BLOCK at a time, padded to a full block. XLA picks different
# kernels (and so different float32 rounding) for different batch shapes, and Adam
# amplifies rounding into visibly different weights, so a fixed block shape is what
# makes a model's result independent of how many models it is trained with.
# Changing BLOCK changes results at rounding level. On a 2-core CPU the time per
# model does not fall with larger blocks, so 1 wastes no padding.
BLOCK = 1


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


def _adam(model: keras.Model) -> keras.optimizers.Adam:
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
        and not isinstance(opt._learning_rate, keras.optimizers.schedules.LearningRateSchedule)
    )
    if not plain:
        raise ValueError("train_stacked supports only models compiled with default Keras Adam")
    opt.build(model.trainable_variables)  # no-op once built; creates zero moments otherwise
    return opt


def _kernel_penalty(layer: keras.layers.Layer) -> tuple[float, float]:
    """(l1, l2) coefficients of a layer's kernel regularizer; zeros if it has none."""
    reg = layer.kernel_regularizer
    if reg is None:
        return 0.0, 0.0
    if not isinstance(reg, (keras.regularizers.L1, keras.regularizers.L2, keras.regularizers.L1L2)):
        raise ValueError(f"unsupported regularizer {type(reg).__name__}")
    return float(getattr(reg, "l1", 0.0)), float(getattr(reg, "l2", 0.0))


# --- the compiled computation; every tensor has a leading model axis K -----------------------


def _forward(params, x):
    """Logits [K, n, 1] of every model for shared inputs x [n, 2]."""
    w1, b1, w2, b2 = params
    hidden = tf.nn.relu(tf.matmul(x[tf.newaxis], w1) + b1[:, tf.newaxis, :])
    return tf.matmul(hidden, w2) + b2[:, tf.newaxis, :]


def _penalty(params, l1, l2):
    """Per-model penalty [K]: l1 * sum|W| + l2 * sum W^2 for each kernel, as keras.regularizers."""
    total = 0.0
    for j, w in enumerate((params[0], params[2])):
        total += l1[:, j] * tf.reduce_sum(tf.abs(w), axis=(1, 2))
        total += l2[:, j] * tf.reduce_sum(tf.square(w), axis=(1, 2))
    return total


def _metrics(params, l1, l2, x, y):
    """Per-model (penalised loss [K], correct predictions [K]) on one full batch."""
    logits = _forward(params, x)
    n = tf.cast(tf.shape(x)[0], tf.float32)
    labels = tf.broadcast_to(y, tf.shape(logits))
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    bce = tf.reduce_sum(bce, axis=(1, 2)) / n
    # Keras thresholds the sigmoid output, not the logit; they differ where sigmoid rounds to 0.5.
    hits = tf.cast(tf.equal(tf.cast(tf.sigmoid(logits) > 0.5, tf.float32), y), tf.float32)
    # Counts, not means: XLA would divide by n as a multiply by 1/n, which rounds
    # differently from the true division Keras' Mean metric does.
    return bce + _penalty(params, l1, l2), tf.reduce_sum(hits, axis=(1, 2))


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


@tf.function(jit_compile=True)
def _train(params, m, v, iterations, l1, l2, lr, x_tr, y_tr, x_te, y_te, epochs):
    """Trained (params, m, v), per-epoch metrics [E, 4, K] and final metrics [4, K]."""
    curves = tf.TensorArray(tf.float32, size=epochs, element_shape=[4, params[0].shape[0]])

    def body(step, params, m, v, curves):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss, hits = _metrics(params, l1, l2, x_tr, y_tr)
            # Models share no weights, so the gradient of the sum is each model's own gradient.
            total = tf.reduce_sum(loss)
        grads = tape.gradient(total, params)
        params, m, v = _adam_step(params, grads, m, v, iterations + step, lr)
        val_loss, val_hits = _metrics(params, l1, l2, x_te, y_te)
        curves = curves.write(step, tf.stack([loss, hits, val_loss, val_hits]))
        return step + 1, params, m, v, curves

    _, params, m, v, curves = tf.while_loop(
        lambda step, *_: step < epochs, body, (tf.constant(0), params, m, v, curves)
    )
    final = tf.stack([*_metrics(params, l1, l2, x_tr, y_tr), *_metrics(params, l1, l2, x_te, y_te)])
    return params, m, v, curves.stack(), final


# --- public API ------------------------------------------------------------------------------


def _stack(arrays_per_model: list[list[np.ndarray]]) -> tuple[tf.Tensor, ...]:
    """[[w1, b1, w2, b2] per model] -> (W1 [K,2,H], B1 [K,H], W2 [K,H,1], B2 [K,1])."""
    return tuple(tf.constant(np.stack(a)) for a in zip(*arrays_per_model, strict=True))


def _train_block(
    models: list[keras.Model], data: tuple[tf.Tensor, ...], epochs: int
) -> list[History]:
    """Train up to BLOCK models in one compiled call and write their state back."""
    for model in models:
        _check_architecture(model)
    # Padding with copies keeps every call at the same shape, so results never depend on K.
    padded = models + [models[-1]] * (BLOCK - len(models))
    opts = [_adam(model) for model in padded]
    pens = np.array([[_kernel_penalty(layer) for layer in m.layers] for m in padded], np.float32)
    # Keras Adam keeps one momentum and one velocity per trainable variable, in weight order.
    params, m, v, curves, final = _train(
        _stack([model.get_weights() for model in padded]),
        _stack([[x.numpy() for x in opt._momentums] for opt in opts]),
        _stack([[x.numpy() for x in opt._velocities] for opt in opts]),
        tf.constant([int(opt.iterations.numpy()) for opt in opts], tf.int32),
        tf.constant(pens[..., 0]),
        tf.constant(pens[..., 1]),
        tf.constant([float(opt.learning_rate.numpy()) for opt in opts], tf.float32),
        *data,
        tf.constant(epochs, tf.int32),
    )
    params, m, v = ([x.numpy() for x in group] for group in (params, m, v))
    # Turn hit counts into accuracies with float32 division, as Keras' Mean metric does.
    sizes = np.array([1, len(data[0]), 1, len(data[2])], np.float32)[:, None]
    curves, final = curves.numpy() / sizes, final.numpy() / sizes
    results = []
    for k, (model, opt) in enumerate(zip(models, opts, strict=False)):
        model.set_weights([p[k] for p in params])
        for var, value in zip(opt._momentums + opt._velocities, m + v, strict=True):
            var.assign(value[k])
        opt.iterations.assign_add(epochs)
        history = {name: curves[:, i, k] for i, name in enumerate(METRICS)}
        last = {name: float(final[i, k]) for i, name in enumerate(METRICS)}
        results.append(History(history, last))
    return results


def train_stacked(
    models: list[keras.Model],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    epochs: int,
) -> list[History]:
    """Train compiled models full-batch for `epochs` epochs, in place, as `model.fit` would.

    Each model must be `build_model`'s architecture compiled with default Keras Adam.
    Training starts from the model's current weights and optimizer state, honours its
    kernel regularizers and learning rate, and leaves weights and Adam state where
    `model.fit(x_train, y_train, batch_size=len(x_train), epochs=epochs, shuffle=False,
    validation_data=(x_test, y_test))` would, up to float32 rounding. A model's result is
    bit-identical whichever other models it is trained with.
    """
    # Idempotent; makes repeated runs bit-identical.
    tf.config.experimental.enable_op_determinism()

    def tensors(x, y):
        return tf.constant(x, tf.float32), tf.constant(np.reshape(y, (-1, 1)), tf.float32)

    data = (*tensors(x_train, y_train), *tensors(x_test, y_test))
    results = []
    for start in range(0, len(models), BLOCK):
        results += _train_block(models[start : start + BLOCK], data, epochs)
    return results


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
