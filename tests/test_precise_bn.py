"""Precise BatchNorm: exact population statistics, frozen layers untouched, and the effect on a
short training (a collapsed score without it, the long-training score with it)."""
import numpy as np
import pandas as pd
import pytest

from zoo.harness.precise_bn import recalibrate_batchnorm, trained_batchnorm_layers
from zoo.harness.runner import run_suite
from zoo.harness.suite import load_suite


def small_model():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 3, padding="same")(x)
    x = keras.layers.BatchNormalization(name="frozen_bn")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(6)(x)
    x = keras.layers.BatchNormalization(name="bn_dense")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.get_layer("frozen_bn").trainable = False
    return model


def test_recalibrated_statistics_are_the_population_moments_of_each_layers_inputs(rng):
    import keras

    keras.utils.set_random_seed(1)
    model = small_model()
    batches = [rng.normal(3.0, 2.0, (16, 8, 8, 3)).astype("float32") for _ in range(3)]
    batches.append(rng.normal(3.0, 2.0, (5, 8, 8, 3)).astype("float32"))  # a short last batch: skipped
    frozen = model.get_layer("frozen_bn")
    frozen.moving_mean.assign(rng.normal(size=5).astype("float32"))
    frozen_before = [np.array(w) for w in frozen.get_weights()]
    names = ["bn1", "bn2", "bn_dense"]
    taps = keras.Model(model.input, [model.get_layer(n).input for n in names])
    # The inputs each trained layer sees in training mode (batch statistics), computed apart;
    # the tap model shares the layers, so their moving statistics are scrambled afterwards.
    inputs = [np.concatenate(parts) for parts in
              zip(*[[np.asarray(t, np.float64) for t in taps(b, training=True)] for b in batches[:3]])]
    for name in names:
        layer = model.get_layer(name)
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 7.0, "float32"))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 0.01, "float32"))
    weights_before = [np.array(w) for w in model.trainable_weights]

    assert [l.name for l in trained_batchnorm_layers(model)] == names
    assert recalibrate_batchnorm(model, iter(batches), max_batches=10) == 3
    for name, values in zip(names, inputs):
        axes = tuple(range(values.ndim - 1))
        layer = model.get_layer(name)
        np.testing.assert_allclose(np.asarray(layer.moving_mean), values.mean(axis=axes), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(layer.moving_variance), values.var(axis=axes), rtol=1e-4, atol=1e-5)
        assert layer.momentum == 0.99  # restored
    for before, after in zip(frozen_before, frozen.get_weights()):
        np.testing.assert_array_equal(before, after)  # bit for bit
    for before, after in zip(weights_before, model.trainable_weights):
        np.testing.assert_array_equal(before, np.asarray(after))
    assert recalibrate_batchnorm(model, iter(batches), max_batches=0) == 0


def test_frozen_backbone_statistics_stay_bit_for_bit_and_the_decoder_is_recalibrated(rng):
    from zoo import build_model

    model = build_model("baseline_cnn", "unet", 4, (32, 32, 3), trainable="frozen")
    backbone = model.get_layer("backbone")
    before = [np.array(w) for w in backbone.weights]
    trained = trained_batchnorm_layers(model)
    assert trained and not any(layer in backbone.layers for layer in trained)
    decoder_before = np.array(trained[0].moving_mean)
    batches = [rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32") for _ in range(2)]
    assert recalibrate_batchnorm(model, batches) == 2
    for old, new in zip(before, backbone.weights):
        np.testing.assert_array_equal(old, np.asarray(new))
    assert not np.array_equal(decoder_before, np.asarray(trained[0].moving_mean))


SHORT = {"name": "precise", "datasets": ["synthetic_terrain"], "backbones": ["baseline_cnn"], "heads": ["linear"],
         # Keras's default BatchNorm momentum: after 2 epochs of 20 steps the moving averages still
         # hold two thirds of their initial values.
         "train": {"image_size": 32, "batch_size": 32, "epochs": 2, "batchnorm_momentum": 0.99,
                   "precise_bn": [False, {"batches": 200}]}}


def test_short_training_scores_what_it_learned_and_early_stopping_sees_current_statistics(tmp_path):
    long = {**SHORT, "train": {**SHORT["train"], "epochs": 4, "early_stopping": 2}}
    assert run_suite(load_suite(SHORT), tmp_path / "short", executor="in-process", report=False, log=lambda *_: None) == 0
    assert run_suite(load_suite(long), tmp_path / "long", executor="in-process", report=False, log=lambda *_: None) == 0
    short = pd.read_csv(tmp_path / "short" / "results.csv")
    stale = short[short["precise_bn_batches"] == 0].iloc[0]
    precise = short[short["precise_bn_batches"] > 0].iloc[0]
    long_runs = pd.read_csv(tmp_path / "long" / "results.csv").set_index("precise_bn_batches", drop=False)
    long_accuracy = long_runs.loc[long_runs["precise_bn_batches"].max(), "accuracy"]
    assert long_accuracy > 0.9
    assert precise["accuracy"] >= long_accuracy - 0.05
    assert stale["accuracy"] < long_accuracy - 0.3  # the collapse precise BN removes
    # 630 training tiles at batch 32: 20 full batches (the 20th completed with the epoch's first rows).
    assert precise["precise_bn_batches"] == 20

    # Early stopping on validation loss: with stale averages a model whose training accuracy
    # climbs past 0.95 shows a validation accuracy near chance; recalibrated before each
    # validation, every epoch's validation shows what the model learned.
    histories = {}
    for _, row in long_runs.iterrows():
        histories[row["precise_bn_batches"] > 0] = pd.read_csv(tmp_path / "long" / "runs" / row["run_id"] /
                                                               "history.csv")
    assert histories[False]["val_accuracy"].max() < 0.6 and histories[False]["accuracy"].iloc[-1] > 0.9
    assert histories[True]["val_accuracy"].min() > 0.9


def test_precise_bn_setting_is_validated():
    from zoo.errors import ConfigError

    for bad in ({"batches": 0}, {"batchs": 10}, "yes", 3):
        with pytest.raises(ConfigError, match="train.precise_bn"):
            load_suite({**SHORT, "train": {"precise_bn": bad}})
    assert load_suite({**SHORT, "train": {"precise_bn": True}})["train"]["precise_bn"] == {"batches": 200}
