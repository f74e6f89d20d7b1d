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
never depends on the stack), a GaussianNoise layer on the inputs or the hidden layer (its noise
drawn from the same kind of hash), an activity penalty on the hidden layer's outputs (Keras'
activity_regularizer), a MaxNorm or UnitNorm constraint on the hidden kernel (applied after
each update, as Keras' optimizer does), and early stopping with Keras' EarlyStopping rules (a
stopped model's weights and Adam state freeze while the others go on).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from overfit.core.keras_state import ModelStart, read_start
from overfit.core.loop import METRICS, U32, Activity, Remedies, Rows, train_loop
from overfit.core.stack import DataSet, History, Slot, Stopping, Variant, train_one_stack
from overfit.runtime import tensorflow_quiet

with tensorflow_quiet():
    import keras
    import tensorflow as tf

# The loop is traced once per variant (dropout, per-epoch validation) and stack shape, by
# design: TensorFlow's warning that calls five such traces "excessive retracing" is noise here.
tf.get_logger().setLevel(logging.ERROR)

# Models per compiled call. Per-model time is lowest around 16 here (95 models: 6.9 s in
# groups of 16, 8.4 s in two of 48): larger stacks outgrow the caches.
MAX_GROUP = 16


@dataclass(frozen=True)
class Layout:
    """How a call lays out its compiled loop: `stack_size` models per stack (None: as the
    call's model count gives), a loop compiled for `max_epochs` epochs (None: the most any
    model trains; each model still stops at its own count) and validation rows that include
    the training rows (as a call with folds lays them out) or not. XLA compiles the loop once
    per shape and epoch bound (~3 s): a call given the layout an earlier call reports
    (`FinishedStack.layout`) reuses that call's compiled loop."""

    stack_size: int | None = None
    max_epochs: int | None = None
    with_training_rows: bool = False
    # Models on their own draws: the (training, validation) rows each is padded to.
    rows: tuple[int, int] | None = None


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
    layout: Layout = Layout(),
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
    `layout` can make this call reuse the loop an earlier call compiled; a model's results
    are the same whatever the layout.
    """
    untrained = History({name: np.zeros(0, np.float32) for name in METRICS}, {})
    model_histories, fold_histories = [untrained] * len(models), [untrained] * len(folds)
    for stack in train_stack_by_stack(
        models, folds, x_train, y_train, x_test, y_test, epochs, checkpoint, stopping, layout
    ):
        for i, history in stack.models.items():
            model_histories[i] = history
        for i, history in stack.folds.items():
            fold_histories[i] = history
    return model_histories, fold_histories


@dataclass(frozen=True)
class FinishedStack:
    """The histories of the models and folds one stack trained, by index (a model's weights
    are written back by then), and the layout of the loop it ran."""

    models: dict[int, History]
    folds: dict[int, History]
    layout: Layout


def train_stack_by_stack(
    models: list[keras.Model],
    folds: Sequence[Fold],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    epochs: int | Sequence[int],
    checkpoint: Callable[[], None] | None = None,
    stopping: Sequence[Stopping | None] | None = None,
    layout: Layout = Layout(),
) -> Iterator[FinishedStack]:
    """`train_with_folds`, yielding each stack as it finishes, so that the caller can use its
    models while the other stacks train. A model's folds are stacked next to it, so that a
    model and its folds tend to finish together. Models given 0 epochs are in no stack."""
    # Idempotent; makes repeated runs bit-identical.
    tf.config.experimental.enable_op_determinism()
    with_training_rows = bool(folds) or layout.with_training_rows
    slots, data = _slots(
        models, folds, x_train, y_train, x_test, y_test, epochs, stopping, with_training_rows
    )
    owner = list(range(len(models))) + [fold.start for fold in folds]
    wanted = Layout(layout.stack_size, layout.max_epochs, with_training_rows)
    n = len(models)
    for ran, by_slot in _train_slots(slots, data, wanted, owner, checkpoint):
        yield FinishedStack(
            {i: h for i, h in by_slot.items() if i < n},
            {i - n: h for i, h in by_slot.items() if i >= n},
            ran,
        )


def _train_slots(
    slots: list[Slot],
    data: Sequence[DataSet],
    layout: Layout,
    owner: Sequence[int],
    checkpoint: Callable[[], None] | None,
) -> Iterator[tuple[Layout, dict[int, History]]]:
    """Lay the slots that train out in equal stacks and train them (`_run_groups`), yielding
    the layout the stacks ran and each finished stack's histories by slot. Slots alike share
    stacks, a slot next to its `owner`'s (a fold beside its model): slots that may stop early
    share stacks, so a stack whose models all stopped ends early; slots of another `Slot.kind`
    (noise, an activity penalty) never share one."""
    trained = [i for i, slot in enumerate(slots) if slot.epochs > 0]
    if not trained:  # no folds either: a fold trains at least one epoch
        return
    size, workers = _stacking(len(trained), layout.stack_size)
    max_epochs = max([slots[i].epochs for i in trained] + [layout.max_epochs or 0])
    ran = Layout(size, max_epochs, layout.with_training_rows, layout.rows)
    order = sorted(trained, key=lambda i: (slots[i].cost, owner[i], i))
    kinds: dict[tuple[int, int], list[int]] = {}
    for i in order:
        kinds.setdefault(slots[i].kind, []).append(i)
    stacks = [alike[a : a + size] for alike in kinds.values() for a in range(0, len(alike), size)]
    groups = [[slots[i] for i in stack] for stack in stacks]
    for group, histories in _run_groups(groups, data, ran, workers, checkpoint or (lambda: None)):
        yield ran, dict(zip(stacks[group], histories, strict=True))


def _slots(
    models: list[keras.Model],
    folds: Sequence[Fold],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    epochs: int | Sequence[int],
    stopping: Sequence[Stopping | None] | None,
    with_training_rows: bool,
) -> tuple[list[Slot], list[DataSet]]:
    """Every model's and fold's place to train, checked, and the rows they share."""
    per_model = [epochs] * len(models) if isinstance(epochs, int) else list(epochs)
    stopping = list(stopping) if stopping is not None else [None] * len(models)
    if len(per_model) != len(models) or len(stopping) != len(models):
        raise ValueError("epochs and stopping, when given per model, need one entry per model")
    if min(per_model, default=0) < 0:
        raise ValueError("a model trains 0 epochs or more")
    y_train, y_test = np.ravel(y_train), np.ravel(y_test)
    starts = [read_start(model) for model in models]
    every_train_row = np.ones(len(x_train), bool)
    if with_training_rows:
        x_val, y_val = np.concatenate([x_test, x_train]), np.concatenate([y_test, y_train])
        test_rows = np.concatenate([np.ones(len(x_test), bool), ~every_train_row])
    else:  # validation on the test rows alone: no row that no model uses
        x_val, y_val, test_rows = x_test, y_test, np.ones(len(x_test), bool)
    slots = [
        Slot(start, every_train_row, test_rows, model, n, stop)
        for start, model, n, stop in zip(starts, models, per_model, stopping, strict=True)
    ]
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
        slots.append(Slot(starts[fold.start], ~held_out, val, None, n, fold.stopping, fold.stream))
    return slots, [(x_train, y_train, x_val, y_val)]


def _stacking(count: int, stack_size: int | None = None) -> tuple[int, int]:
    """(models per stack, stacks trained at once) for `count` models: equal stacks of at most
    MAX_GROUP, at least one per core, of two models at least; `stack_size`, if larger, pads
    every stack to it. (XLA compiles a stack of one model, a degenerate axis, into another
    program, which can round the activity penalty's gradient differently.)"""
    workers = min(parallel_groups(), count)
    size = -(-count // max(workers, -(-count // MAX_GROUP)))  # one compiled shape for all
    size = max(size, 2)
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
    variant: Variant = (False, (), False),
) -> None:
    """Compile the loop `train_with_folds` will run for `count` models and folds (stacked as
    it stacks them) of `hidden_units` units, on `train_rows` and `test_rows`, with or without
    folds, for at most `epochs` epochs, in the loop's `variant` (`stack.variant`: with or
    without dropout, noise at which places, an activity penalty). XLA compiles once per shape
    and number of epochs (~3 s): called on another thread, this lets the compilation overlap
    other work. The loop runs, on zeros, for no epoch."""
    k, _ = _stacking(count)
    rows = train_rows + test_rows if folds else test_rows

    def zeros(*shape: int, dtype: tf.DType = tf.float32) -> tf.Tensor:
        return tf.zeros(shape, dtype)

    def masks(n: int) -> Rows:
        return Rows(zeros(k, n), tf.ones([k]), tf.ones([k]))

    params = (zeros(k, 2, hidden_units), zeros(k, hidden_units), zeros(k, hidden_units), zeros(k))
    none, ints = zeros(k, dtype=tf.int32), tf.ones([k], tf.int32)
    remedies = Remedies(
        zeros(k), zeros(k), zeros(k, dtype=U32), none, zeros(k), none, ints,
        zeros(k, dtype=tf.float64), zeros(k, dtype=tf.bool), none,
        zeros(k), none, zeros(k, dtype=U32), Activity(zeros(k), zeros(k), none),
    )  # fmt: skip
    dropout, noise, activity = variant
    train_loop(
        params, params, params, none, zeros(k, 2), zeros(k, 2), zeros(k),
        zeros(train_rows, 2), zeros(train_rows), masks(train_rows), zeros(rows, 2), zeros(rows),
        masks(rows), tf.constant(epochs, tf.int32), remedies, dropout, True, noise, activity,
    )  # fmt: skip


def _run_groups(
    groups: list[list[Slot]],
    data: Sequence[DataSet],
    layout: Layout,
    workers: int,
    check: Callable[[], None],
) -> Iterator[tuple[int, list[History]]]:
    """Train every group, yielding (group, histories) in this thread as each one finishes;
    `check` is called about every 0.1 s meanwhile."""
    if len(groups) == 1:
        check()
        yield 0, train_one_stack(groups[0], data, layout.stack_size, layout.max_epochs, layout.rows)
        check()
        return
    pool = ThreadPoolExecutor(workers)
    futures = {
        pool.submit(
            train_one_stack, group, data, layout.stack_size, layout.max_epochs, layout.rows
        ): i
        for i, group in enumerate(groups)
    }
    try:
        pending = set(futures)
        while pending:
            check()
            ended, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            for future in sorted(ended, key=futures.__getitem__):
                yield futures[future], future.result()
        check()
    finally:  # on a stop: drop the groups not started, leave the running ones to finish
        pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class Draw:
    """One model's own data: the rows it trains on and the rows it is validated on (a draw of
    the data set, a training-set size, or a cross-validation fold of either)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class OnDraw:
    """A model to train on its own draw: where it starts (`read_start` of a compiled model, or
    one such start with other initial weights), for how many epochs, with which early
    stopping (watching the draw's validation rows) and dropout stream (a fold's number), and
    whether its per-epoch validation curves are wanted (without them or early stopping, its
    validation rows are measured once, after training: the same weights, sooner)."""

    start: ModelStart
    draw: Draw
    epochs: int
    stopping: Stopping | None = None
    stream: int = 0
    curves: bool = False


def train_draws(
    models: Sequence[OnDraw],
    rows: tuple[int, int],
    checkpoint: Callable[[], None] | None = None,
) -> list[History]:
    """Train each model on its own draw, as `train_stacked` would train it alone, and return
    its history with its trained weights (`History.weights`). The draws' rows go to the
    compiled loop per model, padded with rows that weigh 0 to `rows` (training, validation),
    so models of different draws and sizes train in the same compiled calls. A model's result
    is bit-identical to that model trained alone on its draw with the same `rows`: XLA may
    round another row count differently, so the caller fixes it from its settings."""
    if any(m.epochs <= 0 for m in models):
        raise ValueError("a model trains 1 epoch or more")
    tf.config.experimental.enable_op_determinism()
    index: dict[int, int] = {}  # one data set per distinct draw
    datasets: list[DataSet] = []
    slots = []
    for model in models:
        draw = model.draw
        if id(draw) not in index:
            index[id(draw)] = len(datasets)
            y_train, y_test = np.ravel(draw.y_train), np.ravel(draw.y_test)
            datasets.append((draw.x_train, y_train, draw.x_test, y_test))
        fit, val = np.ones(len(draw.x_train), bool), np.ones(len(draw.x_test), bool)
        slots.append(
            Slot(model.start, fit, val, None, model.epochs, model.stopping, model.stream,
                 index[id(draw)], model.curves)
        )  # fmt: skip
    histories: dict[int, History] = {}
    owner = range(len(slots))
    for _, by_slot in _train_slots(slots, datasets, Layout(rows=rows), owner, checkpoint):
        histories |= by_slot
    return [histories[i] for i in range(len(slots))]


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
