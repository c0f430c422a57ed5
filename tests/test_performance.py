"""Feature cache, zoo speed, mixed precision and XLA (multi-device training: tests/test_backends.py)."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from zoo.cli import main
from zoo.harness.runner import run_suite
from zoo.harness.suite import load_suite

FROZEN = {"name": "frozen", "datasets": ["synthetic_terrain"], "backbones": ["baseline_cnn"],
          "heads": ["linear", "mlp"], "trainable": "frozen",
          "train": {"image_size": 32, "batch_size": 32, "epochs": 3, "learning_rate": 0.003}}


def run_in_process(suite, out, **overrides):
    return run_suite(load_suite(suite, [f"{k}={v}" for k, v in overrides.items()]), out, executor="in-process",
                     report=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def trained_backbone(tmp_path_factory):
    """baseline_cnn's backbone after a short training on the terrain tiles, saved as a weights file: a
    frozen backbone whose features tell the classes apart (random weights give near-constant ones)."""
    import keras

    root = tmp_path_factory.mktemp("pretrained")
    suite = {**FROZEN, "heads": ["linear"], "trainable": "all", "train": {**FROZEN["train"], "epochs": 2}}
    assert run_in_process(suite, root / "out") == 0
    model = keras.saving.load_model(next((root / "out" / "runs").iterdir()) / "model.keras", compile=False)
    path = root / "baseline_cnn.weights.h5"
    model.get_layer("backbone").save_weights(str(path))
    return path


@pytest.fixture(scope="module")
def cached_and_uncached(tmp_path_factory, trained_backbone):
    root = tmp_path_factory.mktemp("cache")
    suite = {**FROZEN, "weights": str(trained_backbone)}
    assert run_in_process(suite, root / "off", **{"train.cache_features": "false"}) == 0
    assert run_in_process(suite, root / "on") == 0  # auto: frozen, no augmentation -> cached
    return [pd.read_csv(root / name / "results.csv").set_index("head") for name in ("off", "on")] + [root]


def test_feature_cache_is_computed_once_and_reused_by_the_next_head(cached_and_uncached):
    off, on, _ = cached_and_uncached
    assert set(off["features"]) == {"off"}
    assert sorted(on["features"]) == ["computed", "reused"]
    assert on.loc[on["features"] == "reused", "feature_seconds"].iloc[0] == 0


def test_feature_cache_gives_the_same_predictions_as_the_images(cached_and_uncached):
    """Over a trained frozen backbone (informative features), a head on cached features predicts the test
    images as the same head trained on the images does: same batches, same features."""
    off, on, root = cached_and_uncached
    for head in ("linear", "mlp"):
        assert on.loc[head, "accuracy"] == off.loc[head, "accuracy"], head
        assert on.loc[head, "accuracy"] > 0.6, head  # the features carry the classes
        assert on.loc[head, "params"] == off.loc[head, "params"]
        assert on.loc[head, "trainable_params"] == off.loc[head, "trainable_params"]
        cached, uncached = (np.load(next((root / name / "runs").glob(f"*-{head}-*")) / "predictions.npz")
                            for name in ("on", "off"))
        np.testing.assert_array_equal(cached["example_ids"], uncached["example_ids"])
        # The same classes; probabilities within rounding carried through training (the feature pass
        # batches images differently, so float sums differ in the last bits).
        assert np.mean(cached["y_pred"] == uncached["y_pred"]) >= 0.99, head
        np.testing.assert_allclose(cached["probabilities"], uncached["probabilities"], atol=0.05)


@pytest.mark.parametrize("in_memory_bytes", [1 << 30, 0], ids=["in-memory", "memory-mapped"])
def test_feature_dataset_serves_every_cached_example_once_per_epoch(tmp_path, monkeypatch, in_memory_bytes):
    from zoo.harness import features

    monkeypatch.setattr(features, "IN_MEMORY_BYTES", in_memory_bytes)
    values = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    np.save(tmp_path / "train-feature0.npy", values)
    np.save(tmp_path / "train-feature1.npy", values * 2)
    np.save(tmp_path / "train-target0.npy", np.arange(10))
    batches = list(features.feature_dataset(tmp_path, "train", batch_size=4, shuffle_seed=0))
    assert [len(b[1]) for b in batches] == [4, 4, 4]  # the last completed with the epoch's first rows
    first, second = (np.concatenate([np.asarray(b[0][i]) for b in batches]) for i in (0, 1))
    labels = np.concatenate([np.asarray(b[1]) for b in batches])
    assert sorted(labels[:10]) == list(range(10)) and list(labels[10:]) == list(labels[:2])  # each example once
    np.testing.assert_array_equal(first, values[labels])  # features stay with their targets
    np.testing.assert_array_equal(second, values[labels] * 2)


def test_feature_cache_key_follows_what_changes_features_not_how_runs_carve_splits(monkeypatch):
    from dataclasses import replace

    from zoo.harness.features import cache_key
    from zoo.heads import HEADS
    from zoo.runspec import RunSpec

    linear, flatten, unet = HEADS.get("linear"), HEADS.get("flatten"), HEADS.get("unet")

    spec = RunSpec.from_dict({"run_id": "r", "suite": "s", "dataset": {"name": "d"}, "backbone": "baseline_cnn",
                              "head": "linear", "weights": "none", "trainable": "frozen", "seed": 0,
                              "train": {"image_size": 32, "preprocessing": "none"}})
    content = {"train": "train:100"}
    base = cache_key(spec, content, linear, "float32")
    assert base == cache_key(replace(spec, dataset={"name": "d", "split": {"val": 0.3, "test": 0.3}}), content,
                             linear, "float32")  # carving is per run: the features are the same
    changed = [cache_key(replace(spec, train=replace(spec.train, image_size=48)), content, linear, "float32"),
               cache_key(replace(spec, backbone="mobilenet_v2"), content, linear, "float32"),
               cache_key(replace(spec, train=replace(spec.train, preprocessing="equalize")), content, linear,
                         "float32"),
               cache_key(spec, {"train": "train:101"}, linear, "float32"),
               cache_key(spec, content, unet, "float32"), cache_key(spec, content, linear, "mixed_bfloat16")]
    assert base not in changed and len(set(changed)) == len(changed)
    # Heads taking the same outputs share features; a transformer's pooled vector is a feature only of
    # the heads that read it (flatten reads the patch map alone).
    assert cache_key(spec, content, flatten, "float32") == base
    vit = replace(spec, backbone="deit_tiny")
    assert cache_key(vit, content, flatten, "float32") != cache_key(vit, content, linear, "float32")
    # A random frozen backbone's features follow the seed; pretrained ones do not.
    assert cache_key(replace(spec, seed=1), content, linear, "float32") != base
    pretrained = replace(spec, weights="imagenet")
    assert (cache_key(replace(pretrained, seed=1), content, linear, "float32")
            == cache_key(pretrained, content, linear, "float32"))

    # Rows decoded another way (a new decode version) give other features.
    monkeypatch.setattr("zoo.data.decoded.DECODE_VERSION", 999)
    assert cache_key(spec, content, linear, "float32") != base


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory):
    """A baseline_cnn backbone weights file, standing in for pretrained weights."""
    import keras

    from zoo.backbones import BACKBONES

    keras.utils.set_random_seed(7)
    path = tmp_path_factory.mktemp("weights") / "baseline_cnn.weights.h5"
    BACKBONES.get("baseline_cnn").build((32, 32, 3)).save_weights(path)
    return path


def test_a_seed_and_split_seed_sweep_computes_features_once_and_speed_once(tmp_path, backbone_weights, monkeypatch):
    from zoo.data import pipeline

    image_pipelines = []  # what read images: only the one feature pass, never a run's own pipelines
    real_input_pipeline = pipeline.input_pipeline

    def recording_input_pipeline(source, split, indices, info, options, training):
        image_pipelines.append((split, training))
        return real_input_pipeline(source, split, indices, info, options, training)

    monkeypatch.setattr(pipeline, "input_pipeline", recording_input_pipeline)
    suite = {**FROZEN, "heads": ["linear"], "seeds": [0, 1], "split_seed": [0, 1], "weights": str(backbone_weights),
             "train": {**FROZEN["train"], "epochs": 1}}
    assert run_in_process(suite, tmp_path) == 0
    frame = pd.read_csv(tmp_path / "results.csv")
    assert sorted(frame["features"]) == ["computed", "reused", "reused", "reused"]
    assert image_pipelines == [("train", False)]
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 1
    measured = frame[frame["speed_measured_in"].isna()]
    assert len(measured) == 1  # one architecture: its speed is measured by one run, reused by the rest
    assert set(frame["speed_measured_in"].dropna()) == set(measured["run_id"])
    assert frame["images_per_second"].nunique() == 1
    # Different split seeds test on different images; the same split seed on the same ones.
    tests = {row.run_id: tuple(np.load(tmp_path / "runs" / row.run_id / "split_indices.npz")["test"])
             for row in frame.itertuples()}
    by_split = frame.groupby("split_seed")["run_id"].apply(lambda ids: {tests[i] for i in ids})
    assert all(len(sets) == 1 for sets in by_split) and by_split[0] != by_split[1]


def test_cache_features_true_where_it_cannot_apply_is_a_config_error():
    from zoo.errors import ConfigError
    from zoo.harness.suite import expand_suite

    with pytest.raises(ConfigError, match="needs trainable: frozen"):
        expand_suite(load_suite({**FROZEN, "trainable": "all", "train": {"cache_features": True}}))


def test_speed_rows_and_batch_halving_on_out_of_memory(tmp_path, monkeypatch, capsys):
    import zoo.runtime

    original = zoo.runtime.device_predict

    def small_memory(model):
        predict = original(model)

        def checked(images):
            if images.shape[0] > 8:
                raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
            return predict(images)

        return checked

    monkeypatch.setattr(zoo.runtime, "device_predict", small_memory)
    out = tmp_path / "speed.csv"
    assert main(["speed", "baseline_cnn", "--size", "32", "--batch", "32", "--out", str(out)]) == 0
    row = pd.read_csv(out).iloc[0]
    assert row["batch_size"] == 8 and row["infer_images_per_second"] > 0 and row["train_images_per_second"] > 0
    assert row["device"].startswith("CPU") and row["precision"] == "float32" and row["params"] > 0
    assert row["backend"] == "tensorflow" and row["backend_version"] == tf.__version__


@pytest.mark.parametrize("setting, expected_precision", [("train.precision=mixed", "mixed_bfloat16"),
                                                         ("train.xla=true", "float32")])
def test_mixed_precision_and_xla_runs(tmp_path, setting, expected_precision):
    suite = {**FROZEN, "trainable": "all", "heads": ["linear"],
             "train": {"image_size": 32, "batch_size": 16, "epochs": 1, "steps_per_epoch": 3}}
    key, value = setting.split("=")
    assert run_in_process(suite, tmp_path, **{key: value}) == 0
    row = pd.read_csv(tmp_path / "results.csv").iloc[0]
    assert row["precision"] == expected_precision and row["status"] == "ok"
    assert row["xla"] == (key == "train.xla")  # what Keras actually compiled, not what was asked
    assert row["precise_bn_batches"] > 0  # BatchNorm recalibrated under mixed precision and XLA too


def test_xla_refused_by_a_layer_fails_the_run_naming_it(tmp_path):
    suite = {**FROZEN, "backbones": ["nojit_backbone"], "heads": ["linear"], "trainable": "all",
             "plugins": [str(Path(__file__).parent / "plugin_faults.py")],
             "train": {"image_size": 32, "batch_size": 16, "epochs": 1, "steps_per_epoch": 2, "xla": True}}
    assert run_in_process(suite, tmp_path) == 1
    row = pd.read_csv(tmp_path / "results.csv").iloc[0]
    assert row["status"] == "failed" and row["epochs_run"] == 0
    assert "Keras cannot XLA-compile this model: no_jit (NoJit) do(es) not support XLA" in row["error"]
