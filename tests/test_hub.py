"""keras-hub backbones: their published sizes, presets found offline, pooling, and whole suites."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("keras_hub", reason="the keras-hub backbones need the hub extra: pip install -e '.[hub]'")

from zoo import build_model  # noqa: E402
from zoo.backbones import BACKBONES  # noqa: E402
from zoo.backbones.hub import build_hub_model, transformer_blocks, wrap  # noqa: E402
from zoo.harness.runner import run_suite  # noqa: E402
from zoo.harness.suite import expand_suite, load_suite  # noqa: E402
from zoo.weights import WeightsUnavailableError, build_backbone_with_weights  # noqa: E402

HUB = [name for name, spec in BACKBONES.items() if spec.hub is not None]
COUNTED = [name for name in HUB if BACKBONES.get(name).hub.preset_params]


def test_the_families_people_try_first_are_registered_with_their_licences():
    assert {"dinov2_small", "dinov2_base", "dinov3_small", "vit_base", "deit_tiny", "deit_small", "siglip_base",
            "clip_vit_b16", "swin_tiny", "mit_b0", "mit_b1", "mit_b2", "cspdarknet53", "hgnetv2_b4"} <= set(HUB)
    restricted = {name for name in HUB if BACKBONES.get(name).license_restricts_use}
    assert restricted == {"dinov3_small", "mit_b0", "mit_b1", "mit_b2"}


@pytest.mark.parametrize("name", COUNTED)
def test_shipped_configuration_is_the_presets_architecture(name):
    """Built offline from zoo's configuration at the preset's own input size, the model has exactly
    the parameters keras-hub publishes for the preset (less the classifier a published count includes)."""
    hub = BACKBONES.get(name).hub
    model = build_hub_model(hub, (hub.native_size, hub.native_size, 3))
    assert model.count_params() + hub.preset_head_params == hub.preset_params


@pytest.fixture
def deit_preset(tmp_path, monkeypatch):
    """deit_tiny with random weights saved as a keras-hub preset where ZOO_WEIGHTS_DIR points."""
    spec = BACKBONES.get("deit_tiny")
    source = build_hub_model(spec.hub, (224, 224, 3))
    source.save_to_preset(str(tmp_path / "presets" / spec.hub.preset))
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(tmp_path / "presets"))
    return spec, wrap(spec.hub, source, (224, 224, 3))


def test_a_preset_in_the_weights_folder_gives_the_saved_models_features(deit_preset, rng):
    spec, saved = deit_preset
    x = rng.uniform(-2, 2, (2, 224, 224, 3)).astype("float32")
    model = build_backbone_with_weights(spec, (224, 224, 3), "imagenet")
    for got, expected in zip(model(x), saved(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6)
    # Six channels: the patch embedding adapted so that RGB twice gives the RGB response.
    six = build_backbone_with_weights(spec, (224, 224, 6), "imagenet")
    for got, expected in zip(six(np.concatenate([x, x], axis=-1)), saved(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-4)
    # Another input size: the learned position embeddings resampled to the new grid.
    small = build_backbone_with_weights(spec, (64, 64, 3), "imagenet")
    assert small.outputs[0].shape[1:3] == (4, 4)
    last_block = lambda m: transformer_blocks(m)[-1].get_weights()  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(last_block(small), last_block(saved)))


def test_a_hierarchical_preset_gives_the_saved_models_feature_maps(tmp_path, monkeypatch, rng):
    """MiT (held whole by zoo's HubPyramid): every tapped map equals the saved model's, and six channels
    of RGB twice give the RGB maps."""
    spec = BACKBONES.get("mit_b0")
    source = build_hub_model(spec.hub, (128, 128, 3), **spec.hub.small)
    source.save_to_preset(str(tmp_path / spec.hub.preset))
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(tmp_path))
    saved = wrap(spec.hub, source, (128, 128, 3))
    x = rng.uniform(-2, 2, (2, 128, 128, 3)).astype("float32")
    model = build_backbone_with_weights(spec, (128, 128, 3), "imagenet", **spec.hub.small)
    assert [tuple(t.shape[1:3]) for t in model.outputs] == [(4, 4), (32, 32), (16, 16), (8, 8)]
    for got, expected in zip(model(x), saved(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6)
    six = build_backbone_with_weights(spec, (128, 128, 6), "imagenet", **spec.hub.small)
    for got, expected in zip(six(np.concatenate([x, x], axis=-1)), saved(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-4)


def test_an_image_text_preset_gives_its_vision_tower(tmp_path, monkeypatch, rng):
    """A SigLIP image-text preset: zoo takes its vision encoder, pooled by SigLIP's own attention head."""
    import keras_hub

    spec = BACKBONES.get("siglip_base")
    vision = build_hub_model(spec.hub, (224, 224, 3), **spec.hub.small)
    text = keras_hub.models.SigLIPTextEncoder(vocabulary_size=64, embedding_dim=32, hidden_dim=32, num_layers=1,
                                              num_heads=2, intermediate_dim=64, max_sequence_length=8,
                                              projection_dim=spec.hub.config["hidden_dim"])
    keras_hub.models.SigLIPBackbone(vision, text).save_to_preset(str(tmp_path / spec.hub.preset))
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(tmp_path))
    x = rng.uniform(-1, 1, (1, 224, 224, 3)).astype("float32")
    model = build_backbone_with_weights(spec, (224, 224, 3), "pretrained", **spec.hub.small)
    for got, expected in zip(model(x), wrap(spec.hub, vision, (224, 224, 3))(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


def test_offline_without_the_preset_the_error_says_where_to_put_it():
    with pytest.raises(WeightsUnavailableError) as error:
        build_model("dinov2_small", "linear", 3, (56, 56, 3), weights="pretrained")  # = imagenet
    message = str(error.value)
    assert "dinov2_small" in message and "ZOO_WEIGHTS_DIR" in message and "zoo weights fetch 'dinov2_small'" in message
    runs = expand_suite(load_suite({"name": "x", "datasets": ["synthetic_terrain"], "weights": "pretrained",
                                    "backbones": ["dinov2_small", "baseline_cnn"]}))
    assert {run.backbone: run.weights for run in runs} == {"dinov2_small": "imagenet", "baseline_cnn": "none"}


def test_pooling_is_the_class_token_or_the_mean_of_the_patch_tokens(rng):
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")  # 4x4 patches of 14 px: the stride-16 grid
    by_cls = BACKBONES.get("dinov2_small").build((64, 64, 3), num_layers=1, pool="cls")
    by_mean = BACKBONES.get("dinov2_small").build((64, 64, 3), num_layers=1, pool="mean")
    by_mean.set_weights(by_cls.get_weights())
    feature_map, mean = (np.asarray(t) for t in by_mean(x))
    _, cls = (np.asarray(t) for t in by_cls(x))
    np.testing.assert_allclose(mean, feature_map.mean(axis=(1, 2)), atol=1e-5)
    assert not np.allclose(cls, mean)
    with pytest.raises(ValueError, match="pool must be one of cls, mean"):
        build_model("dinov2_small", "linear", 3, (56, 56, 3), backbone_options={"pool": "max", "num_layers": 1})


@pytest.fixture(scope="module")
def hub_suite(tmp_path_factory):
    """Transformers and a CNN, frozen then fine-tuned (top:1): a plain ViT classifies, a
    hierarchical one segments, the CNN classifies beside them (3 of the 6 combinations)."""
    out = tmp_path_factory.mktemp("hub")
    suite = load_suite({
        "name": "hub", "datasets": ["synthetic_terrain", "synthetic_landcover"],
        "backbones": ["deit_tiny", "mit_b0", "baseline_cnn"], "heads": ["linear", "fpn"], "trainable": "frozen",
        "finetune": {"trainable": "top:1", "epochs": 1, "learning_rate": 1e-4},
        "overrides": [{"match": {"backbone": "deit_tiny"}, "set": {"backbone_options": {"num_layers": 2}}},
                      {"match": {"backbone": "mit_b0"},  # keras-hub's MiT takes 64 px and up
                       "set": {"backbone_options": BACKBONES.get("mit_b0").hub.small, "train": {"image_size": 64}}}],
        "train": {"image_size": 32, "batch_size": 16, "epochs": 1, "steps_per_epoch": 2}})
    for only in ("*-deit_tiny-linear-*", "*-mit_b0-fpn-*", "*-baseline_cnn-linear-*"):
        assert run_suite(suite, out, only=only, executor="in-process", report=False, log=lambda *_: None) == 0
    return out


def test_a_suite_trains_transformers_beside_cnns(hub_suite):
    table = pd.read_csv(hub_suite / "results.csv")
    assert len(table) == 3 and (table["status"] == "ok").all()
    assert sorted(zip(table["backbone"], table["head"])) == [("baseline_cnn", "linear"), ("deit_tiny", "linear"),
                                                             ("mit_b0", "fpn")]
    # A plain ViT and a hierarchical one, each frozen then fine-tuned.
    assert (table.loc[table["backbone"] != "baseline_cnn", "trainable"] == "frozen+finetune top:1").all()


def test_a_transformer_run_predicts_in_a_fresh_process(hub_suite, tmp_path):
    from PIL import Image

    run = next(p for p in (hub_suite / "runs").iterdir() if "deit_tiny-linear" in p.name)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "predict", str(run), str(tmp_path / "a.png"),
                             "--top-k", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    classes = json.loads((run / "dataset.json").read_text())["class_names"]
    assert sum(line.strip().split("  ")[-1] in classes for line in result.stdout.splitlines()[1:]) == 2


def test_heads_over_a_frozen_transformer_share_one_forward_pass(tmp_path):
    suite = load_suite({"name": "probe", "datasets": ["synthetic_terrain"], "backbones": ["deit_tiny"],
                        "heads": ["linear", "mlp"], "trainable": "frozen", "weights": "none",
                        "backbone_options": {"num_layers": 1},
                        "train": {"image_size": 32, "batch_size": 16, "epochs": 1, "steps_per_epoch": 2}})
    assert run_suite(suite, tmp_path, executor="in-process", report=False, log=lambda *_: None) == 0
    features = pd.read_csv(tmp_path / "results.csv").set_index("head")["features"]
    assert sorted(features) == ["computed", "reused"]
