"""The compiled trainer against Keras' own `fit`, and its stacking and determinism guarantees."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from sklearn.datasets import make_moons

from overfit.core.model import build_model
from overfit.core.stack import Stopping
from overfit.core.trainer import Fold, Layout, train_one, train_stacked, train_with_folds

from .conftest import max_weight_diff


def keras_scores(model, x, y) -> dict[str, float]:
    """Keras' own loss and accuracy of `model` on (x, y), full batch: the reference."""
    return model.evaluate(x, np.reshape(y, (-1, 1)), batch_size=len(x), verbose=0, return_dict=True)


def max_diff(a: list, b: list) -> float:
    pairs = zip(a, b, strict=True)
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(w)))) for u, w in pairs)


# fit (oneDNN kernels) and the trainer (XLA) round differently by ~1 ulp per step; weights
# stay ~1e-7 apart until a training point lands on a ReLU kink, after which Adam can move
# them apart by ~lr. A 1-ulp nudge of the initial weights alone does the same, so these
# cases use seed 1, which stays clear of kinks for this long. One step per epoch (30 rows,
# batches of 32): the penalty on every layer gets 100 steps, Adam's bias correction still
# far from 1 (1 - 0.999**100 = 0.095); the others 50 (fit's ~40 ms an epoch is the cost).
@pytest.mark.parametrize(
    ("kind", "strength", "apply_to", "epochs"),
    [("none", 0.0, "hidden", 50), ("l2", 1e-2, "all", 100), ("l1", 1e-3, "all", 50)],
)
def test_matches_keras_fit(moons, kind, strength, apply_to, epochs):
    x_tr, y_tr, x_te, y_te = moons
    by_fit = build_model(500, kind, strength, apply_to, 0.001, seed=1)
    ours = build_model(500, kind, strength, apply_to, 0.001, seed=1)
    assert max_weight_diff(by_fit, ours) == 0.0

    fitted = by_fit.fit(x_tr, y_tr, batch_size=32, epochs=epochs, verbose=0, shuffle=False)
    result = train_one(ours, x_tr, y_tr, x_te, y_te, epochs)

    assert max_weight_diff(by_fit, ours) < 1e-4
    # Adam's state is left as fit leaves it, so either model can carry on training.
    fit_state, our_state = by_fit.optimizer.variables, ours.optimizer.variables
    assert [v.shape for v in our_state] == [v.shape for v in fit_state]
    assert int(ours.optimizer.iterations.numpy()) == epochs
    assert max_diff(fit_state, our_state) < 1e-6
    np.testing.assert_allclose(result.history["loss"], fitted.history["loss"], atol=1e-5)
    np.testing.assert_allclose(result.history["accuracy"], fitted.history["accuracy"], atol=1e-6)
    # fit's val_* would be Keras' evaluate after each epoch, penalty included.
    on_test = keras_scores(by_fit, x_te, y_te)
    assert result.history["val_loss"][-1] == pytest.approx(on_test["loss"], abs=1e-5)
    assert result.history["val_accuracy"][-1] == pytest.approx(on_test["accuracy"], abs=1e-6)
    assert result.final["val_accuracy"] == result.history["val_accuracy"][-1]


STACK = [(1, "none", 0.0, "hidden"), (2, "l1", 1e-3, "hidden"), (3, "l2", 1e-2, "all")]
STACK += [(4, "l1_l2", 1e-4, "all"), (5, "l2", 1e-3, "hidden")]


def test_stacked_equals_alone_and_saves(moons, tmp_path):
    """Five models with mixed penalties train in one stack (split into parallel groups, one
    padded); each ends exactly where it ends trained alone from the same initial weights."""
    x_tr, y_tr, x_te, y_te = moons
    stacked = [build_model(500, k, s, a, 0.001, seed) for seed, k, s, a in STACK]
    results = train_stacked(stacked, x_tr, y_tr, x_te, y_te, 500)

    for (seed, k, s, a), model, result in zip(STACK, stacked, results, strict=True):
        alone = build_model(500, k, s, a, 0.001, seed)
        alone_result = train_one(alone, x_tr, y_tr, x_te, y_te, 500)
        # The target is below 1e-5; sums in a fixed order make it exact.
        assert max_weight_diff(model, alone) == 0.0
        assert max_diff(model.optimizer.variables, alone.optimizer.variables) == 0.0
        assert result.final == alone_result.final
        for name, curve in result.history.items():
            assert curve.shape == (500,)
            np.testing.assert_array_equal(curve, alone_result.history[name])

        # The saved file is an ordinary Keras model.
        path = tmp_path / f"seed{seed}.keras"
        model.save(path)
        loaded = keras.models.load_model(path, safe_mode=True)
        assert isinstance(loaded, keras.Sequential)
        predict = [m.predict(x_te, verbose=0) for m in (loaded, model)]
        np.testing.assert_array_equal(*predict)
        on_test = keras_scores(loaded, x_te, y_te)
        assert on_test["accuracy"] == pytest.approx(result.final["val_accuracy"])


def test_result_independent_of_stack_size_and_layout(moons):
    """The same model trained among 1, 3 and 9 models, and alone in a stack padded to 4 of a
    loop compiled for twice its epochs with the training rows among the validation rows (as a
    second pass reuses the first pass's loop): identical weights and curves every time."""
    x_tr, y_tr, x_te, y_te = moons

    def model(seed: int) -> keras.Model:
        return build_model(500, "l1", 1e-4, "hidden", 0.001, seed=seed)

    finals, curves = [], []
    for size in (1, 3, 9):
        models = [model(s) for s in range(1, size + 1)]
        curves.append(train_stacked(models, x_tr, y_tr, x_te, y_te, 300)[0].history)
        finals.append(models[0].get_weights())
    alone = model(1)
    layout = Layout(stack_size=4, max_epochs=600, with_training_rows=True)
    [history], _ = train_with_folds([alone], [], x_tr, y_tr, x_te, y_te, 300, layout=layout)
    finals.append(alone.get_weights())
    curves.append(history.history)
    for weights, curve in zip(finals[1:], curves[1:], strict=True):
        assert max_diff(weights, finals[0]) == 0.0
        for name, values in curve.items():
            np.testing.assert_array_equal(values, curves[0][name])


def test_same_inputs_give_identical_results(moons):
    x_tr, y_tr, x_te, y_te = moons
    runs = []
    for _ in range(2):
        models = [build_model(500, "l2", 1e-3, "hidden", 0.001, seed) for seed in (5, 6)]
        runs.append((train_stacked(models, x_tr, y_tr, x_te, y_te, 500), models))
    (first, first_models), (second, second_models) = runs
    for a, b in zip(first, second, strict=True):
        assert a.final == b.final
        for name in a.history:
            np.testing.assert_array_equal(a.history[name], b.history[name])
    for a, b in zip(first_models, second_models, strict=True):
        assert max_weight_diff(a, b) == 0.0


def test_training_in_two_calls_equals_one(moons):
    x_tr, y_tr, x_te, y_te = moons
    once, twice = (build_model(500, "l1", 1e-3, "all", 0.001, seed=7) for _ in range(2))
    whole = train_one(once, x_tr, y_tr, x_te, y_te, 500)
    halves = [train_one(twice, x_tr, y_tr, x_te, y_te, 250) for _ in range(2)]
    assert max_weight_diff(once, twice) == 0.0
    for name, curve in whole.history.items():
        np.testing.assert_array_equal(curve, np.concatenate([h.history[name] for h in halves]))


def test_article_result(moons):
    """Seed 1, no penalty, 4000 epochs: Train 1.000, Test 0.914 (64 of 70)."""
    x_tr, y_tr, x_te, y_te = moons
    model = build_model(500, "none", 0.0, "hidden", 0.001, seed=1)
    result = train_one(model, x_tr, y_tr, x_te, y_te, 4000)
    assert result.final["accuracy"] == 1.0
    assert result.final["val_accuracy"] == np.float32(64) / np.float32(70)
    # The weights written back into the Keras model give the same verdict through Keras itself.
    assert keras_scores(model, x_te, y_te)["accuracy"] == pytest.approx(64 / 70)


def test_rejects_what_it_cannot_reproduce(moons):
    model = build_model(8, "none", 0.0, "hidden", 0.001, seed=1)
    model.compile(optimizer=keras.optimizers.SGD(), loss="binary_crossentropy")
    with pytest.raises(ValueError, match="Adam"):
        train_one(model, *moons, epochs=1)


# --- cross-validation folds in the same stacks ----------------------------------------------

HELD_OUT = np.isin(np.arange(30), [0, 5, 11, 17, 23, 29])


def test_a_fold_trained_stacked_equals_the_fold_trained_alone(moons):
    """A fold model stacked with other models and folds ends bit-identical to the same fold
    trained alone; adding folds to a stack changes nothing for its models."""
    x_tr, y_tr, x_te, y_te = moons
    plain = [build_model(500, k, s, a, 0.001, seed) for seed, k, s, a in STACK]
    with_folds = [build_model(500, k, s, a, 0.001, seed) for seed, k, s, a in STACK]
    folds = [Fold(0, HELD_OUT), Fold(2, ~HELD_OUT), Fold(2, HELD_OUT)]
    histories = train_stacked(plain, x_tr, y_tr, x_te, y_te, 150)
    stacked, fold_histories = train_with_folds(with_folds, folds, x_tr, y_tr, x_te, y_te, 150)

    for a, b, ha, hb in zip(plain, with_folds, histories, stacked, strict=True):
        assert max_weight_diff(a, b) == 0.0
        np.testing.assert_array_equal(ha.history["accuracy"], hb.history["accuracy"])
        np.testing.assert_array_equal(ha.history["val_accuracy"], hb.history["val_accuracy"])
        np.testing.assert_allclose(ha.history["val_loss"], hb.history["val_loss"], rtol=1e-6)
    for fold, history in zip(folds, fold_histories, strict=True):
        seed, k, s, a = STACK[fold.start]
        alone = build_model(500, k, s, a, 0.001, seed)
        alone_fold = Fold(0, fold.held_out)
        _, (alone_history,) = train_with_folds([alone], [alone_fold], x_tr, y_tr, x_te, y_te, 150)
        assert history.final == alone_history.final
        for name, curve in history.history.items():
            np.testing.assert_array_equal(curve, alone_history.history[name])


def test_a_fold_learns_its_rows_only_and_is_scored_on_the_held_out_ones(moons):
    """The masked fold model follows the model trained on its 24 rows alone (sums over 24
    rows instead of masked 30 round differently, so within float tolerance); its held-out
    figures are Keras' own on the 6 held-out rows."""
    x_tr, y_tr, x_te, y_te = moons
    reference = build_model(500, "l2", 1e-3, "hidden", 0.001, seed=1)
    source = build_model(500, "l2", 1e-3, "hidden", 0.001, seed=1)
    on_rows = train_one(reference, x_tr[~HELD_OUT], y_tr[~HELD_OUT], x_te, y_te, 200)
    _, (fold,) = train_with_folds([source], [Fold(0, HELD_OUT)], x_tr, y_tr, x_te, y_te, 200)

    np.testing.assert_allclose(fold.history["loss"], on_rows.history["loss"], rtol=1e-4)
    np.testing.assert_array_equal(fold.history["accuracy"], on_rows.history["accuracy"])
    held = keras_scores(reference, x_tr[HELD_OUT], y_tr[HELD_OUT])
    assert fold.final["val_accuracy"] == pytest.approx(held["accuracy"], abs=1e-6)
    assert fold.final["val_loss"] == pytest.approx(held["loss"], abs=1e-4)
    penalty = float(sum(np.asarray(loss) for loss in reference.losses))
    assert fold.final["val_crossentropy"] == pytest.approx(held["loss"] - penalty, abs=1e-4)


def test_each_stack_reports_its_models_and_folds_as_it_finishes(moons):
    """`train_stack_by_stack` hands over every trained model and fold once, with the history
    `train_with_folds` returns and the model's weights already written back; an untrained
    model is not handed over."""
    from overfit.core.trainer import train_stack_by_stack

    x_tr, y_tr, x_te, y_te = moons
    models = [build_model(8, "none", 0.0, "hidden", 0.001, seed) for seed in range(1, 6)]
    folds = [Fold(i, HELD_OUT, epochs=5) for i in range(5)] + [Fold(0, ~HELD_OUT, epochs=5)]
    epochs = [5, 5, 0, 5, 5]
    handed: tuple[dict, dict] = ({}, {})
    for stack in train_stack_by_stack(
        models, folds, x_tr, y_tr, x_te, y_te, epochs, layout=Layout(stack_size=4)
    ):
        for seen, new in zip(handed, (stack.models, stack.folds), strict=True):
            assert not set(seen) & set(new)
            seen.update(new)
        for i in stack.models:
            assert int(models[i].optimizer.iterations.numpy()) == 5
    assert sorted(handed[0]) == [0, 1, 3, 4]
    assert sorted(handed[1]) == list(range(6))
    again = [build_model(8, "none", 0.0, "hidden", 0.001, seed) for seed in range(1, 6)]
    histories, fold_histories = train_with_folds(
        again, folds, x_tr, y_tr, x_te, y_te, epochs, layout=Layout(stack_size=4)
    )
    for i, history in handed[0].items():
        assert np.array_equal(history.history["loss"], histories[i].history["loss"])
    for i, history in handed[1].items():
        assert np.array_equal(history.history["val_loss"], fold_histories[i].history["val_loss"])


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_compile_ahead_compiles_the_loop_the_stacks_then_run(moons, dropout):
    """`compile_ahead` traces the very signature `train_with_folds` then calls: no new trace."""
    from overfit.core.loop import train_loop
    from overfit.core.trainer import compile_ahead

    x_tr, y_tr, x_te, y_te = moons
    units = 7 if dropout else 6  # widths no other test uses: a signature traced here first
    before = train_loop.experimental_get_tracing_count()
    compile_ahead(6, units, len(x_tr), len(x_te), True, 3, (dropout > 0, (), False))
    assert train_loop.experimental_get_tracing_count() == before + 1
    models = [build_model(units, seed=seed, dropout=dropout) for seed in (1, 2, 3)]
    folds = [Fold(i, HELD_OUT) for i in range(3)]
    train_with_folds(models, folds, x_tr, y_tr, x_te, y_te, 3)
    assert train_loop.experimental_get_tracing_count() == before + 1


@pytest.mark.parametrize("rows", [np.zeros(30, bool), np.ones(30, bool), np.ones(29, bool)])
def test_a_fold_must_hold_out_some_but_not_all_training_rows(moons, rows):
    model = build_model(8, "none", 0.0, "hidden", 0.001, seed=1)
    with pytest.raises(ValueError, match="held_out"):
        train_with_folds([model], [Fold(0, rows)], *moons, epochs=1)


def test_models_on_their_own_draws_train_together_as_each_would_alone() -> None:
    """Each model on its own draw of the data (other random states, other training-set sizes):
    trained in one stack, each model's weights and curves are bit-identical to that model
    trained alone on its draw, padded to the same row counts."""
    from overfit.core.keras_state import read_start
    from overfit.core.trainer import Draw, OnDraw, train_draws

    def draw(random_state: int, n_train: int) -> Draw:
        x, y = make_moons(n_samples=100, noise=0.2, random_state=random_state)
        return Draw(x[:n_train], y[:n_train], x[n_train:], y[n_train:])

    draws = [draw(1, 30), draw(2, 30), draw(3, 20), draw(4, 60), draw(2, 30)]
    settings = [("none", 0.0, 0.0), ("l2", 1e-3, 0.0), ("l1", 1e-4, 0.3), ("none", 0.0, 0.0)]
    settings.append(("l1_l2", 1e-3, 0.0))

    def models() -> list[keras.Model]:
        return [
            build_model(64, kind, strength, "hidden", 0.001, seed=seed, dropout=rate)
            for seed, (kind, strength, rate) in enumerate(settings, start=1)
        ]

    starts = [read_start(m) for m in models()]
    rows = (60, 80)  # the most training rows, the most test rows
    # The last model stops early on its draw's validation rows; it trains beside the others.
    stop = Stopping("val_accuracy", patience=3)
    on_draws = [OnDraw(s, d, 150) for s, d in zip(starts, draws, strict=True)]
    on_draws[-1] = OnDraw(starts[-1], draws[-1], 150, stop, stream=2)
    stacked = train_draws(on_draws, rows)
    for k, on_draw in enumerate(on_draws):
        [alone] = train_draws([on_draw], rows)
        assert max_diff(alone.weights, stacked[k].weights) == 0.0, k
        for name, values in alone.history.items():
            np.testing.assert_array_equal(values, stacked[k].history[name], f"{k} {name}")
    assert stacked[-1].epochs < 150 and stacked[-1].best_epoch is not None
    # Validated every epoch or once at the end, a model learns the same, bit for bit.
    [curves] = train_draws([dataclasses.replace(on_draws[2], curves=True)], rows)
    assert max_diff(curves.weights, stacked[2].weights) == 0.0
    assert curves.final == stacked[2].final
    assert np.isnan(stacked[2].history["val_loss"]).all()
    assert np.isfinite(curves.history["val_loss"]).all()
    # Trained on its rows shared, unpadded, a model learns the same to float32 rounding.
    shared_model = models()[3]
    d = draws[3]
    train_stacked([shared_model], d.x_train, d.y_train, d.x_test, d.y_test, 150)
    assert max_diff(shared_model.get_weights(), stacked[3].weights) < 1e-5
    # The draws differ, and so do the models trained on them.
    assert max_diff(stacked[0].weights, stacked[3].weights) > 0.0
    assert len(stacked[3].history["loss"]) == 150
