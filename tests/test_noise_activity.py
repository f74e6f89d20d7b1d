"""Gaussian noise and the activity penalty in the compiled trainer, against Keras."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from scipy import stats

from overfit.core.loop import PLACES, gaussian_noise, logits_of, mask_key
from overfit.core.model import build_model, save_reproducibly
from overfit.core.trainer import train_one, train_stacked

from .conftest import max_weight_diff

HIDDEN = 500


def layer_names(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


# --- the activity penalty ---------------------------------------------------------------------


# As in test_trainer: fit (oneDNN) and the loop (XLA) round differently by ~1 ulp a step, and
# the weights stay ~1e-7 apart until a training point lands on a ReLU kink. An L1 penalty
# before the ReLU pulls the pre-activations towards that kink, so it is the gentlest that
# stays clear of it for 200 epochs here (1e-3 parts them by 4e-4 at epoch 150).
@pytest.mark.parametrize(
    ("kind", "strength", "place"),
    [
        ("l1", 1e-4, "pre_activation"),
        ("l1", 1e-3, "post_activation"),
        ("l1_l2", 1e-3, "post_activation"),
    ],
)
def test_activity_penalty_matches_keras_fit(moons, kind, strength, place):
    x_tr, y_tr, x_te, y_te = moons
    settings = {"activity": kind, "activity_strength": strength, "activity_at": place}
    by_fit, ours = (build_model(HIDDEN, seed=1, **settings) for _ in range(2))
    expected = ["Dense", "Activation", "Dense"] if place == "pre_activation" else ["Dense"] * 2
    assert layer_names(ours) == expected
    assert max_weight_diff(by_fit, build_model(HIDDEN, seed=1)) == 0.0  # the same start

    fitted = by_fit.fit(
        x_tr, y_tr, batch_size=30, epochs=200, verbose=0, shuffle=False,
        validation_data=(x_te, y_te),
    )  # fmt: skip
    result = train_one(ours, x_tr, y_tr, x_te, y_te, 200)

    assert max_weight_diff(by_fit, ours) < 1e-4
    # The losses hold the penalty as Keras adds it: averaged over the batch, on the training
    # rows in training and on the test rows in evaluation.
    np.testing.assert_allclose(result.history["loss"], fitted.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(result.history["val_loss"], fitted.history["val_loss"], rtol=1e-5)
    # The penalty does act: without it the same start ends elsewhere.
    plain = build_model(HIDDEN, seed=1)
    train_one(plain, x_tr, y_tr, x_te, y_te, 200)
    assert max_weight_diff(plain, ours) > 1e-3


def test_noise_and_activity_penalties_do_not_change_the_other_models(moons):
    """Models without noise or an activity penalty train bit for bit as they would without
    such models in the call: they never share a stack (the loop's variants for noise and the
    penalty are other XLA programs, which can round the others' sums by an ulp; over 4000
    epochs of Adam that moved a unit-norm model's weights by 5e-3). A penalised or noisy model
    is bit-identical alone and stacked with others of its kind."""
    x_tr, y_tr, x_te, y_te = moons
    penalised = {"activity": "l2", "activity_strength": 1e-3, "activity_at": "pre_activation"}
    noisy = {"noise": 0.1, "noise_at": "input"}

    def trained(*models: keras.Model) -> list[keras.Model]:
        train_stacked(list(models), x_tr, y_tr, x_te, y_te, 4000)
        return list(models)

    plain = trained(build_model(HIDDEN, seed=1, constraint="unit_norm"), build_model(HIDDEN))
    alike = trained(build_model(HIDDEN, seed=4, **penalised), build_model(HIDDEN, seed=6, **noisy))
    mixed = trained(
        build_model(HIDDEN, seed=1, constraint="unit_norm"),
        build_model(HIDDEN, seed=4, **penalised),
        build_model(HIDDEN, seed=5, activity="l1", activity_strength=1e-2),
        build_model(HIDDEN, seed=6, **noisy),
        build_model(HIDDEN, seed=7, noise=0.3),
    )
    assert max_weight_diff(plain[0], mixed[0]) == 0.0
    assert max_weight_diff(alike[0], mixed[1]) == 0.0
    assert max_weight_diff(alike[1], mixed[3]) == 0.0


# --- Gaussian noise ---------------------------------------------------------------------------


@pytest.mark.parametrize(("stddev", "place"), [(0.3, "input"), (0.1, "pre_activation")])
def test_the_drawn_noise_is_normal_with_the_stddev(stddev, place):
    width = 2 if place == "input" else HIDDEN
    noise = gaussian_noise(stddev, mask_key(1, 0), 7, 30, width, PLACES[place])
    draws = noise.ravel()
    # Mean within 4 standard errors of 0; the spread within 3% (n = 60 or 15,000).
    assert abs(draws.mean()) < 4 * stddev / np.sqrt(draws.size)
    assert draws.std() == pytest.approx(stddev, rel=0.03 if draws.size > 1000 else 0.25)
    # Normal: Kolmogorov-Smirnov does not tell it from N(0, stddev).
    assert stats.kstest(draws, "norm", args=(0, stddev)).pvalue > 0.01
    assert np.abs(draws).max() < 6 * stddev
    # A draw per cell, epoch, model and fold; the same key and epoch draw the same.
    again = gaussian_noise(stddev, mask_key(1, 0), 7, 30, width, PLACES[place])
    np.testing.assert_array_equal(noise, again)
    for key, epoch in ((mask_key(1, 0), 8), (mask_key(2, 0), 7), (mask_key(1, 1), 7)):
        other = gaussian_noise(stddev, key, epoch, 30, width, PLACES[place]).ravel()
        # Uncorrelated: within 4 standard errors of 0.
        assert abs(np.corrcoef(draws, other)[0, 1]) < 4 / np.sqrt(draws.size)


def test_many_draws_are_standard_normal():
    """Over every cell of 200 epochs (3,000,000 draws), the moments and tails of N(0, 1)."""
    draws = np.concatenate(
        [gaussian_noise(1.0, mask_key(5, 0), e, 30, HIDDEN, PLACES["post_activation"]).ravel()
         for e in range(200)]
    )  # fmt: skip
    assert abs(draws.mean()) < 4 / np.sqrt(draws.size)
    assert draws.std() == pytest.approx(1.0, abs=0.002)
    assert stats.skew(draws) == pytest.approx(0.0, abs=0.01)
    assert stats.kurtosis(draws) == pytest.approx(0.0, abs=0.02)
    assert np.mean(np.abs(draws) > 1.96) == pytest.approx(0.05, abs=0.001)


def test_zero_noise_is_the_identity(moons):
    """stddev 0 draws exact zeros; a GaussianNoise layer of stddev 0 trains bit for bit as
    no layer; the setting 0 builds none."""
    x_tr, y_tr, x_te, y_te = moons
    for place in PLACES.values():
        assert not gaussian_noise(0.0, mask_key(1, 0), 3, 30, HIDDEN, place).any()
    assert layer_names(build_model(HIDDEN, seed=1, noise=0.0, noise_at="pre_activation")) == [
        "Dense",
        "Dense",
    ]
    plain = build_model(HIDDEN, "l2", 1e-3, seed=3)
    silent = build_model(HIDDEN, "l2", 1e-3, seed=3)
    silent = keras.Sequential(
        [keras.Input((2,)), keras.layers.GaussianNoise(0.0, seed=3), *silent.layers]
    )
    silent.compile(optimizer=keras.optimizers.Adam(0.001), loss="binary_crossentropy")
    train_stacked([plain, silent], x_tr, y_tr, x_te, y_te, 200)
    assert max_weight_diff(plain, silent) == 0.0


@pytest.mark.parametrize("place", list(PLACES))
def test_noise_results_do_not_depend_on_the_stack(moons, place):
    x_tr, y_tr, x_te, y_te = moons
    alone = build_model(HIDDEN, seed=4, noise=0.1, noise_at=place)
    first = train_one(alone, x_tr, y_tr, x_te, y_te, 50)
    stacked = [build_model(HIDDEN, seed=s, noise=0.1, noise_at=place) for s in (9, 4)]
    stacked.append(build_model(HIDDEN, seed=4, dropout=0.3))
    histories = train_stacked(stacked, x_tr, y_tr, x_te, y_te, 50)
    assert max_weight_diff(alone, stacked[1]) == 0.0
    np.testing.assert_array_equal(first.history["loss"], histories[1].history["loss"])
    # Noise does act: the same start without it ends elsewhere.
    without = build_model(HIDDEN, seed=4)
    train_one(without, x_tr, y_tr, x_te, y_te, 50)
    assert max_weight_diff(alone, without) > 1e-4


class AddDrawn(keras.layers.Layer):
    """Adds a fixed tensor (set before each epoch): the loop's noise, for Keras to fit with."""

    def __init__(self, shape: tuple[int, int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.drawn = keras.Variable(np.zeros(shape, np.float32), trainable=False)

    def call(self, x):
        return x + self.drawn


@pytest.mark.parametrize("place", list(PLACES))
def test_the_loop_adds_its_draws_where_the_layer_is(moons, place):
    """`model.fit`, epoch by epoch, on a model that adds `gaussian_noise`'s draws for that
    epoch where the GaussianNoise layer is, ends where the loop does: the loop adds those
    very draws, at that place, and trains through them."""
    x_tr, y_tr, x_te, y_te = moons
    stddev, seed, epochs = 0.3, 2, 20
    ours = build_model(HIDDEN, seed=seed, noise=stddev, noise_at=place)
    train_one(ours, x_tr, y_tr, x_te, y_te, epochs)

    start = build_model(HIDDEN, seed=seed)
    add = AddDrawn((len(x_tr), 2 if place == "input" else HIDDEN), name="drawn")
    hidden = keras.layers.Dense(HIDDEN, activation=None, name="hidden")
    layers = {
        "input": [add, hidden, keras.layers.ReLU()],
        "pre_activation": [hidden, add, keras.layers.ReLU()],
        "post_activation": [hidden, keras.layers.ReLU(), add],
    }[place]
    output = keras.layers.Dense(1, activation="sigmoid", name="output")
    reference = keras.Sequential([keras.Input((2,)), *layers, output])
    w1, b1, w2, b2 = start.get_weights()
    hidden.set_weights([w1, b1])
    output.set_weights([w2, b2])
    reference.compile(optimizer=keras.optimizers.Adam(0.001), loss="binary_crossentropy")
    for epoch in range(epochs):
        add.drawn.assign(
            gaussian_noise(stddev, mask_key(seed, 0), epoch, len(x_tr), add.drawn.shape[1],
                           PLACES[place])
        )  # fmt: skip
        reference.fit(x_tr, y_tr, batch_size=30, epochs=1, verbose=0, shuffle=False)
    trained = zip([*hidden.get_weights(), *output.get_weights()], ours.get_weights(), strict=True)
    assert max(float(np.max(np.abs(u - w))) for u, w in trained) < 1e-5


@pytest.mark.parametrize("place", list(PLACES))
def test_a_saved_noise_model_predicts_what_the_loop_computes(moons, tmp_path, place):
    """At inference GaussianNoise is the identity: the saved model, loaded in safe mode,
    predicts what the same weights predict without the layer, and scores what the loop
    reported for the trained weights."""
    x_tr, y_tr, x_te, y_te = moons
    model = build_model(HIDDEN, seed=2, noise=0.3, noise_at=place)
    result = train_one(model, x_tr, y_tr, x_te, y_te, 100)
    path = tmp_path / "model.keras"
    save_reproducibly(model, path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert "GaussianNoise" in layer_names(loaded)
    [noise] = [layer for layer in loaded.layers if isinstance(layer, keras.layers.GaussianNoise)]
    assert (noise.stddev, noise.seed) == (0.3, 2)

    without = build_model(HIDDEN, seed=2)
    without.set_weights(loaded.get_weights())
    predicted = loaded.predict(x_te, verbose=0)[:, 0]
    np.testing.assert_array_equal(predicted, without.predict(x_te, verbose=0)[:, 0])
    w1, b1, w2, b2 = loaded.get_weights()
    params = tuple(np.asarray(a, np.float32)[np.newaxis] for a in (w1, b1, w2[:, 0], b2[0]))
    inferred = 1 / (1 + np.exp(-logits_of(params, np.asarray(x_te, np.float32)).numpy()[0]))
    np.testing.assert_allclose(predicted, inferred, atol=1e-6)
    scores = loaded.evaluate(x_te, y_te, batch_size=len(x_te), verbose=0, return_dict=True)
    assert result.final["val_accuracy"] == pytest.approx(scores["accuracy"], abs=1e-6)
    assert result.final["val_loss"] == pytest.approx(scores["loss"], abs=1e-5)
