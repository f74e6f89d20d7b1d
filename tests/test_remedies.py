"""Dropout, weight constraints and early stopping in the compiled trainer, against Keras."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from overfit.core.loop import dropout_scale, logits_of, mask_key
from overfit.core.model import build_model
from overfit.core.trainer import (
    Fold,
    Stopping,
    train_one,
    train_stacked,
    train_with_folds,
)

from .conftest import max_weight_diff

# --- early stopping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("monitor", "patience", "restore"),
    [("val_loss", 20, True), ("val_loss", 20, False), ("val_accuracy", 20, True)],
)
def test_early_stopping_stops_where_keras_does(moons, monitor, patience, restore):
    x_tr, y_tr, x_te, y_te = moons
    # At a learning rate of 0.03 the test loss turns up within 50 epochs (stopping by 70).
    by_fit = build_model(500, learning_rate=0.03, seed=1)
    ours = build_model(500, learning_rate=0.03, seed=1)
    callback = keras.callbacks.EarlyStopping(
        monitor=monitor, patience=patience, restore_best_weights=restore
    )
    fitted = by_fit.fit(
        x_tr, y_tr, batch_size=30, epochs=300, verbose=0, shuffle=False,
        validation_data=(x_te, y_te), callbacks=[callback],
    )  # fmt: skip
    rule = Stopping(monitor, patience, 0.0, restore)
    result = train_stacked([ours], x_tr, y_tr, x_te, y_te, 300, stopping=[rule])[0]

    stopped = len(fitted.history["loss"])
    assert stopped < 300, "the case must stop early to test anything"
    assert result.epochs == stopped
    assert result.best_epoch == callback.best_epoch + 1
    assert len(result.history["val_loss"]) == stopped
    assert int(ours.optimizer.iterations.numpy()) == stopped
    assert max_weight_diff(by_fit, ours) < 1e-4


def test_a_stopped_model_freezes_while_the_others_go_on(moons):
    x_tr, y_tr, x_te, y_te = moons
    alone = [build_model(500, "l2", 1e-3, learning_rate=0.01, seed=s) for s in (1, 2)]
    stacked = [build_model(500, "l2", 1e-3, learning_rate=0.01, seed=s) for s in (1, 2)]
    rule = Stopping("val_loss", 5, 0.0, False)
    first = train_stacked(alone[:1], x_tr, y_tr, x_te, y_te, 200, stopping=[rule])[0]
    second = train_one(alone[1], x_tr, y_tr, x_te, y_te, 200)
    both = train_stacked(stacked, x_tr, y_tr, x_te, y_te, 200, stopping=[rule, None])
    assert first.epochs < 200 and second.epochs == 200
    assert [h.epochs for h in both] == [first.epochs, 200]
    for a, b in zip(alone, stacked, strict=True):
        assert max_weight_diff(a, b) == 0.0
        for u, w in zip(a.optimizer.variables, b.optimizer.variables, strict=True):
            np.testing.assert_array_equal(u.numpy(), w.numpy())


def test_min_delta_counts_small_gains_as_none(moons):
    x_tr, y_tr, x_te, y_te = moons
    epochs = {}
    for min_delta in (0.0, 0.01):
        by_fit = build_model(500, learning_rate=0.01, seed=1)
        ours = build_model(500, learning_rate=0.01, seed=1)
        callback = keras.callbacks.EarlyStopping(patience=10, min_delta=min_delta)
        fitted = by_fit.fit(
            x_tr, y_tr, batch_size=30, epochs=300, verbose=0, shuffle=False,
            validation_data=(x_te, y_te), callbacks=[callback],
        )  # fmt: skip
        rule = Stopping("val_loss", 10, min_delta, False)
        result = train_stacked([ours], x_tr, y_tr, x_te, y_te, 300, stopping=[rule])[0]
        assert result.epochs == len(fitted.history["loss"])
        epochs[min_delta] = result.epochs
    assert epochs[0.01] < epochs[0.0]


def test_a_fold_stops_on_its_held_out_rows(moons):
    x_tr, y_tr, x_te, y_te = moons
    held_out = np.zeros(30, bool)
    held_out[::5] = True
    rule = Stopping("val_loss", 10, 0.0, True)
    model = build_model(500, learning_rate=0.01, seed=1)
    folds = [Fold(0, held_out, rule, epochs=300)]
    _, (fold,) = train_with_folds([model], folds, x_tr, y_tr, x_te, y_te, 0)
    # The same fold by fit: its 24 rows, validated on its 6 held-out rows.
    by_fit = build_model(500, learning_rate=0.01, seed=1)
    callback = keras.callbacks.EarlyStopping(patience=10, restore_best_weights=True)
    fitted = by_fit.fit(
        x_tr[~held_out], y_tr[~held_out], batch_size=24, epochs=300, verbose=0, shuffle=False,
        validation_data=(x_tr[held_out], y_tr[held_out]), callbacks=[callback],
    )  # fmt: skip
    assert fold.epochs == len(fitted.history["loss"]) < 300
    assert fold.best_epoch == callback.best_epoch + 1
    # A model given 0 epochs stays untouched: its weights are its initial ones.
    assert max_weight_diff(model, build_model(500, learning_rate=0.01, seed=1)) == 0.0


# --- constraints ------------------------------------------------------------------------------


@pytest.mark.parametrize(("constraint", "max_norm"), [("max_norm", 0.2), ("unit_norm", 2.0)])
def test_constrained_model_matches_keras_fit(moons, constraint, max_norm):
    x_tr, y_tr, x_te, y_te = moons
    by_fit = build_model(500, seed=1, constraint=constraint, max_norm=max_norm)
    ours = build_model(500, seed=1, constraint=constraint, max_norm=max_norm)
    # 50 epochs: max-norm binds by then (asserted below), unit-norm from the first.
    by_fit.fit(x_tr, y_tr, batch_size=30, epochs=50, verbose=0, shuffle=False)
    train_one(ours, x_tr, y_tr, x_te, y_te, 50)
    assert max_weight_diff(by_fit, ours) < 1e-4
    norms = np.linalg.norm(ours.get_weights()[0], axis=0)
    if constraint == "unit_norm":
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    else:
        assert norms.max() <= max_norm + 1e-5
        assert (norms > max_norm - 1e-5).any(), "the case must bind to test anything"


# --- dropout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_masks_drop_the_rate_and_rescale(rate):
    scale = dropout_scale(rate, mask_key(1, 0), 7, 30, 500)
    dropped = np.mean(scale == 0)
    # 15,000 independent draws: the share is within 5 standard deviations of the rate.
    assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / scale.size)
    kept = scale[scale != 0]
    # 1/(1-rate) rounded once to float32, as TensorFlow's dropout scales.
    np.testing.assert_array_equal(kept, np.float32(1 / (1 - rate)))
    # Each row drops its own units; each epoch and each model draws anew.
    assert not np.array_equal(scale[0] == 0, scale[1] == 0)
    assert not np.array_equal(scale, dropout_scale(rate, mask_key(1, 0), 8, 30, 500))
    assert not np.array_equal(scale, dropout_scale(rate, mask_key(2, 0), 7, 30, 500))
    assert not np.array_equal(scale, dropout_scale(rate, mask_key(1, 1), 7, 30, 500))
    np.testing.assert_array_equal(scale, dropout_scale(rate, mask_key(1, 0), 7, 30, 500))


def test_rate_zero_is_the_identity():
    np.testing.assert_array_equal(dropout_scale(0.0, mask_key(3, 0), 1, 30, 500), 1.0)


def test_rate_zero_trains_as_without_dropout_whatever_the_stack(moons):
    """A model without dropout is bit-identical whether or not its stack has dropout, a
    constraint or early stopping in it."""
    x_tr, y_tr, x_te, y_te = moons
    alone = build_model(500, "l2", 1e-3, seed=3)
    train_one(alone, x_tr, y_tr, x_te, y_te, 100)
    plain = build_model(500, "l2", 1e-3, seed=3)
    others = [
        build_model(500, seed=4, dropout=0.5),
        build_model(500, seed=5, constraint="max_norm", max_norm=0.3),
        build_model(500, seed=6),
    ]
    rule = Stopping("val_loss", 3, 0.0, True)
    train_stacked([plain, *others], x_tr, y_tr, x_te, y_te, 100, stopping=[None] * 3 + [rule])
    assert max_weight_diff(alone, plain) == 0.0


def test_dropout_results_do_not_depend_on_the_stack(moons):
    x_tr, y_tr, x_te, y_te = moons
    alone = build_model(500, seed=4, dropout=0.3)
    first = train_one(alone, x_tr, y_tr, x_te, y_te, 50)
    stacked = [build_model(500, seed=s, dropout=0.3) for s in (9, 4)]
    histories = train_stacked(stacked, x_tr, y_tr, x_te, y_te, 50)
    assert max_weight_diff(alone, stacked[1]) == 0.0
    np.testing.assert_array_equal(first.history["loss"], histories[1].history["loss"])
    # Dropout does act: the same start without it ends elsewhere.
    without = build_model(500, seed=4)
    train_one(without, x_tr, y_tr, x_te, y_te, 50)
    assert max_weight_diff(alone, without) > 1e-3


def test_saved_dropout_model_predicts_what_the_loop_infers(moons, tmp_path):
    x_tr, y_tr, x_te, y_te = moons
    model = build_model(500, seed=2, dropout=0.5)
    train_one(model, x_tr, y_tr, x_te, y_te, 100)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert [type(layer).__name__ for layer in loaded.layers] == ["Dense", "Dropout", "Dense"]
    assert loaded.layers[1].rate == 0.5
    w1, b1, w2, b2 = loaded.get_weights()
    params = tuple(np.asarray(a, np.float32)[np.newaxis] for a in (w1, b1, w2[:, 0], b2[0]))
    inferred = 1 / (1 + np.exp(-logits_of(params, np.asarray(x_te, np.float32)).numpy()[0]))
    predicted = loaded.predict(x_te, verbose=0)[:, 0]
    np.testing.assert_allclose(predicted, inferred, atol=1e-6)


# --- jobs handed over as they finish -------------------------------------------------------------


def test_every_job_is_handed_over_once_early_stopping_on_cv_after_its_second_pass(project, entry):
    """`train_together` hands over each job once, as trained; a job stopping early on cv only
    once its final models have trained for the epochs its folds chose."""
    import dataclasses

    from overfit.commands import params as config_entry
    from overfit.config import load_params
    from overfit.stages import prepare
    from overfit.sweep.phases import Phases
    from overfit.sweep.stacked import train_together

    root, _ = project
    small = ["model.hidden_units=8", "train.epochs=30", "train.seeds=[1,2]", "select.folds=2"]
    assert entry(config_entry.main, root, *small, "data.fresh_samples=200")[0] == 0
    for stage in ("generate", "split"):
        assert entry(prepare.main, root, stage)[0] == 0
    plain = load_params(root)
    watch = dataclasses.replace(plain.train.early_stopping, watch="cv", patience=3)
    on_cv = dataclasses.replace(plain, train=dataclasses.replace(plain.train, early_stopping=watch))
    handed = list(train_together(root, [on_cv, plain, on_cv], Phases()))
    assert sorted(i for i, _ in handed) == [0, 1, 2]
    assert all(h.epochs > 0 for _, trained in handed for h in trained.histories)
    jobs = dict(handed)
    assert jobs[0].final_epochs is not None and jobs[1].final_epochs is None
    assert [h.epochs for h in jobs[0].histories] == [jobs[0].final_epochs] * 2
