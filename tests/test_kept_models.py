"""A worker trains a kept compiled head again: same numbers as a newly compiled one."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from zoo.harness import kept_models


@pytest.fixture(autouse=True)
def nothing_kept():
    kept_models.forget()
    yield
    kept_models.forget()


def head(seed, units=8):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,), name="feature0")
    hidden = keras.layers.Dense(units, activation="relu", name="hidden")(inputs)
    hidden = keras.layers.BatchNormalization(name="norm")(hidden)
    hidden = keras.layers.Dropout(0.3, name="dropout")(hidden)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="classes")(hidden), name="head")


def settings(learning_rate, optimizer=keras.optimizers.Adam):
    return dict(optimizer=optimizer(learning_rate=learning_rate), loss=keras.losses.SparseCategoricalCrossentropy(),
                metrics=["accuracy"], steps_per_execution=4)


def train(model, seed):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(96, 16)).astype("float32"), rng.integers(0, 3, 96)
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(96, seed=seed).batch(16)
    history = model.fit(data, validation_data=data, epochs=3, verbose=0)
    return [w.copy() for w in model.get_weights()], history.history["val_loss"]


def test_a_kept_head_trains_to_the_same_weights_as_a_new_one():
    first = kept_models.compiled(head(0), settings(0.1), tf.distribute.get_strategy())
    train(first, 0)
    # Another seed and learning rate: the kept model, reset to this run's start.
    again = kept_models.compiled(head(1), settings(0.003), tf.distribute.get_strategy())
    assert again is first
    reused_weights, reused_loss = train(again, 1)

    kept_models.forget()
    fresh = kept_models.compiled(head(1), settings(0.003), tf.distribute.get_strategy())
    assert fresh is not first
    fresh_weights, fresh_loss = train(fresh, 1)
    assert reused_loss == fresh_loss
    for reused, new in zip(reused_weights, fresh_weights):
        np.testing.assert_array_equal(reused, new)


def test_a_different_head_or_optimizer_compiles_a_new_model():
    strategy = tf.distribute.get_strategy()
    first = kept_models.compiled(head(0), settings(0.1), strategy)
    assert kept_models.compiled(head(0, units=9), settings(0.1), strategy) is not first
    assert kept_models.compiled(head(0), settings(0.1, keras.optimizers.SGD), strategy) is not first
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=10)
    assert kept_models.compiled(head(0), settings(schedule), strategy) is not first
    assert kept_models.compiled(head(2), settings(0.5), strategy) is first
