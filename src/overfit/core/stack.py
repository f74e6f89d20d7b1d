"""One stack: models and folds side by side in one compiled call of the training loop, read
from their Keras models and written back; what each trained, as a `History`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from overfit.core.keras_state import ModelStart, write_back
from overfit.core.loop import (
    METRICS,
    MONITORS,
    NO_ACTIVITY,
    NO_NOISE,
    U32,
    Activity,
    Remedies,
    Rows,
    inverse_keep,
    mask_key,
    train_loop,
)
from overfit.runtime import tensorflow_quiet

with tensorflow_quiet():
    import keras
    import tensorflow as tf


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
    # A slot with no Keras model to write back: its trained weights, in Keras' shapes.
    weights: list[np.ndarray] | None = None


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


def _stack(arrays_per_model: list[list[np.ndarray]]) -> tuple[tf.Tensor, ...]:
    """Keras weights per model -> (W1 [K,2,H], B1 [K,H], W2 [K,H], B2 [K])."""
    w1, b1, w2, b2 = (np.stack(a) for a in zip(*arrays_per_model, strict=True))
    return tuple(tf.constant(a) for a in (w1, b1, w2[..., 0], b2[..., 0]))


def _unstack(params: tuple[tf.Tensor, ...], k: int) -> list[np.ndarray]:
    """Model k's slice of stacked tensors, in Keras' weight shapes."""
    w1, b1, w2, b2 = (p[k] for p in params)
    return [w1, b1, w2[:, np.newaxis], b2[np.newaxis]]


@dataclass(frozen=True)
class Slot:
    """One place in a stack: where the model starts, the rows it fits and is validated on
    (masks over the stage's x_fit and x_val), and the Keras model to write back (None: a fold)."""

    start: ModelStart
    fit: np.ndarray
    val: np.ndarray
    model: keras.Model | None
    epochs: int
    stopping: Stopping | None = None
    stream: int = 0
    # Which of the call's data sets its masks are over (`DataSet`).
    data: int = 0
    # Whether it keeps its validation curves (without early stopping, a model whose curves
    # are not wanted may be validated once, after training: its curves' val_ entries are NaN).
    curves: bool = True

    @property
    def validates(self) -> bool:
        return self.curves or self.stopping is not None

    @property
    def kind(self) -> tuple[int, int]:
        """Which slots may share a stack: those with noise at the same place (or none) and an
        activity penalty alike (or none). The loop's variant for noise or a penalty is another
        XLA program, whose fusions can round the other models' sums differently (by an ulp,
        which 4000 epochs of Adam amplify); dropout's variant leaves them bit-identical."""
        start = self.start
        return (start.noise[1] if start.noise[0] > 0 else NO_NOISE, start.activity[2])

    @property
    def cost(self) -> tuple[int, ...]:
        """Sort key putting slots that may end early, and slots alike, in the same stacks.
        Early stopping and dropout come first: the early-stopping stacks may end early and
        others may wait on them, and the dropout variant then compiles beside the plain one
        instead of after it."""
        return (
            self.stopping is None,
            self.start.dropout[0] == 0,
            *self.kind,
            self.validates,
            self.epochs,
        )


# The rows a slot trains and is validated on: x_fit [n, 2], y_fit [n], x_val [m, 2], y_val [m].
DataSet = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _stacked_data(
    slots: list[Slot], datasets: Sequence[DataSet], rows: tuple[int, int] | None
) -> tuple[list, Rows, Rows]:
    """The stack's rows and each slot's masks over them. Without `rows`: one data set's rows,
    shared (the loop broadcasts them); with `rows` (fit, val), each slot's own rows, padded to
    those counts with rows its masks leave out. A row weighing 0 adds an exact 0, and XLA
    computes a model's slice the same way whatever the stack: with the same `rows`, a slot's
    results do not depend on the other slots. (XLA vectorises along the rows, so a different
    row count may round differently: the count is fixed by the caller, not by the stack.)"""
    if rows is None:
        [used] = {slot.data for slot in slots}
        shared = [tf.constant(a, tf.float32) for a in datasets[used]]
        return shared, _rows([s.fit for s in slots]), _rows([s.val for s in slots])
    fit_rows, val_rows = rows
    longest = (
        max(len(datasets[s.data][0]) for s in slots),
        max(len(datasets[s.data][2]) for s in slots),
    )
    if longest[0] > fit_rows or longest[1] > val_rows:
        raise ValueError(f"a data set has more rows than the {rows} the call pads to")

    def padded(a: np.ndarray, n: int) -> np.ndarray:
        return np.concatenate([a, np.zeros((n - len(a), *a.shape[1:]), a.dtype)])

    columns = [(0, fit_rows), (1, fit_rows), (2, val_rows), (3, val_rows)]
    data = [
        tf.constant(np.stack([padded(datasets[s.data][i], n) for s in slots]), tf.float32)
        for i, n in columns
    ]
    fit = _rows([padded(s.fit, fit_rows) for s in slots])
    return data, fit, _rows([padded(s.val, val_rows) for s in slots])


def _rows(masks: list[np.ndarray]) -> Rows:
    mask = np.stack(masks).astype(np.float32)
    count = mask.sum(axis=1)
    # 1/count in float64 rounded once to float32: the constant `1 / n` is for the full batch.
    return Rows(*(tf.constant(a) for a in (mask, count, (1.0 / count).astype(np.float32))))


def _remedies(slots: list[Slot]) -> Remedies:
    stops = [slot.stopping for slot in slots]
    sign = {"val_loss": 1.0, "val_accuracy": -1.0}  # Keras negates min_delta for a falling value
    return Remedies(
        tf.constant([s.start.dropout[0] for s in slots], tf.float32),
        tf.constant([inverse_keep(s.start.dropout[0]) for s in slots], tf.float32),
        tf.constant([mask_key(s.start.dropout[1], s.stream) for s in slots], U32),
        tf.constant([s.start.constraint[0] for s in slots], tf.int32),
        tf.constant([s.start.constraint[1] for s in slots], tf.float32),
        tf.constant([MONITORS[s.monitor] if s else 0 for s in stops], tf.int32),
        tf.constant([s.patience if s else 1 for s in stops], tf.int32),
        tf.constant([sign[s.monitor] * abs(s.min_delta) if s else 0.0 for s in stops], tf.float64),
        tf.constant([bool(s and s.restore_best_weights) for s in stops], tf.bool),
        tf.constant([slot.epochs for slot in slots], tf.int32),
        tf.constant([s.start.noise[0] for s in slots], tf.float32),
        tf.constant([s.start.noise[1] for s in slots], tf.int32),
        tf.constant([mask_key(s.start.noise[2], s.stream) for s in slots], U32),
        Activity(
            tf.constant([s.start.activity[0] for s in slots], tf.float32),
            tf.constant([s.start.activity[1] for s in slots], tf.float32),
            tf.constant([s.start.activity[2] for s in slots], tf.int32),
        ),
    )


# (with dropout, the places where noise is added, with an activity penalty)
Variant = tuple[bool, tuple[int, ...], bool]


def variant(slots: Sequence[Slot]) -> Variant:
    """The loop's variant a stack of these slots compiles: (with dropout, the places where
    noise is added, with an activity penalty). Measured per epoch (`make bench`): dropout's
    masks cost 13% more, noise on the hidden layer 5.5 times as much (Box-Muller on every
    cell), an activity penalty 8 to 13%, noise on the inputs 1%: a stack without them compiles
    without their work. Constraints and early stopping cost nothing measurable, and one variant
    fewer saves a compilation (~3 s)."""
    kinds = {slot.kind for slot in slots}
    return (
        any(slot.start.dropout[0] > 0 for slot in slots),
        tuple(sorted({noise for noise, _ in kinds} - {NO_NOISE})),
        any(activity != NO_ACTIVITY for _, activity in kinds),
    )


def train_one_stack(
    slots: list[Slot],
    datasets: Sequence[DataSet],
    pad_to: int,
    max_epochs: int,
    rows: tuple[int, int] | None = None,
) -> list[History]:
    """Train slots in one compiled call (padded to `pad_to` models, compiled for `max_epochs`
    epochs), each on its data set (its own rows padded to `rows`, if given; else one data set
    shared), and write their models back."""
    padded = slots + [slots[-1]] * (pad_to - len(slots))  # the copies' results are dropped
    starts = [slot.start for slot in padded]
    # A strength beyond float32 becomes inf: the loss it makes is reported as diverged.
    with np.errstate(over="ignore"):
        pens = np.array([s.penalties for s in starts], np.float32)
    data, fit, val = _stacked_data(padded, datasets, rows)
    dropout, noise, activity = variant(padded)
    # Validating every epoch costs about a third of an epoch on 30 training and 70 test rows;
    # a stack where no model stops early or keeps its curves compiles without it.
    validate = any(slot.validates for slot in slots)
    # Keras Adam keeps one momentum and one velocity per trainable variable, in weight order.
    params, m, v, curves, final, ran, best = train_loop(
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
        tf.constant(max_epochs, tf.int32),
        _remedies(padded),
        dropout,
        validate,
        noise,
        activity,
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
        if not slot.validates:  # measured or not, as its stack did: not kept
            history |= {name: np.full(ran[k], np.nan, np.float32) for name in METRICS[2:]}
        last = {name: float(final[i, k]) for i, name in enumerate(METRICS)}
        last["val_crossentropy"] = float(final[len(METRICS), k])
        best_epoch = int(best[k]) + 1 if slot.stopping else None
        if slot.model is None:
            weights = [np.asarray(w) for w in _unstack(params, k)]
            results.append(History(history, last, int(ran[k]), best_epoch, weights))
            continue
        results.append(History(history, last, int(ran[k]), best_epoch))
        write_back(slot.model, _unstack(params, k), _unstack(m, k), _unstack(v, k), int(ran[k]))
    return results
