"""Table-driven over the registry: a new backbone entry is covered with no test edit."""
import re

import keras
import numpy as np
import pytest

from conftest import test_input_size
from zoo import build_model, list_backbones
from zoo.backbones import BACKBONES, PREPROCESSING_MODES
from zoo.backbones.hub import transformer_blocks
from zoo.factory import backbone_extractor, compatible_heads, set_trainable
from zoo.heads import HEADS

KERAS_AUTO_NAME = re.compile(r"(activation|conv2d|batch_normalization|zero_padding2d|max_pooling2d|add|concatenate|"
                             r"layer_normalization|re_lu|dense|normalization|rescaling)_\d+")
EXPECTED = {"mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet50", "resnet101",
            "resnet152", "resnet50_v2", "resnet101_v2", "resnet152_v2", "vgg16", "vgg19", "densenet121",
            "densenet169", "densenet201", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
            "efficientnet_b3", "efficientnet_v2_b0", "convnext_tiny", "xception", "inception_v3",
            "baseline_cnn", "unet"}


def test_registry_holds_the_backbones_users_choose_from():
    assert EXPECTED <= set(list_backbones())
    assert list_backbones("vgg*") == ["vgg16", "vgg19"]


@pytest.mark.parametrize("name", list_backbones())
def test_metadata_is_complete(name):
    spec = BACKBONES.get(name)
    assert spec.preprocessing in PREPROCESSING_MODES
    assert spec.min_size <= spec.default_size
    assert spec.license and spec.paper and spec.family
    assert set(spec.feature_layers_by_stride) <= {2, 4, 8, 16, 32}
    if spec.hub is not None:  # keras-hub: a preset, its pretraining data and the licence's reach
        assert spec.hub.preset and spec.hub.pretraining and spec.describe()["preset"] == spec.hub.preset
        assert ("non-commercial" in spec.license or "restricted" in spec.license) == spec.license_restricts_use
    elif spec.has_imagenet_weights:
        assert spec.imagenet_no_top.file_name.endswith(".h5") and spec.imagenet_no_top.url.startswith("https://")
        assert spec.imagenet_no_top.url.endswith(spec.imagenet_no_top.file_name)


def small_options(spec) -> dict:
    """A keras-hub entry's small configuration (two blocks); CNNs are built whole."""
    return dict(spec.hub.small) if spec.hub is not None else {}


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def shared_outputs(head):
    """Heads taking the same backbone outputs can share one build of it."""
    return HEADS.get(head).needs_pyramid, HEADS.get(head).reads_pooled


def untrained_weights(model, x):
    """The trainable weights of ``model`` that get no gradient from a loss on its output for ``x``."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        output = model(x, training=True)
        loss = tf.reduce_sum(output * tf.random.stateless_normal(output.shape, seed=(1, 2)))
    gradients = tape.gradient(loss, model.trainable_variables)
    return [variable.path for variable, gradient in zip(model.trainable_variables, gradients) if gradient is None]


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_builds_with_every_compatible_head(name, tmp_path, rng):
    spec = BACKBONES.get(name)
    size = test_input_size(spec)
    small = small_options(spec)

    heads = compatible_heads(name)
    assert {"linear", "mlp", "flatten", "distribution", "fcn"} <= set(heads)
    # Heads that take the same backbone outputs share one build of it (deep backbones take seconds),
    # on 4 bands: the N-channel path (RGB is what every other test trains on).
    channels = 4
    extractors = {}
    for head in heads:
        if shared_outputs(head) not in extractors:
            extractors[shared_outputs(head)] = backbone_extractor(name, head, (size, size, channels),
                                                                  backbone_options=small)

    # Feature layers are names that exist and sit at their stated stride (a pyramid head's
    # backbone outputs them all; a classification head's may prune them).
    base = extractors.get(shared_outputs("unet")) or spec.build((size, size, 3), **small)
    for stride, layer_name in spec.feature_layers_by_stride.items():
        assert not KERAS_AUTO_NAME.fullmatch(layer_name), f"{layer_name} is an unstable auto-generated name"
        height = base.get_layer(layer_name).output.shape[1]
        # 'valid' padding (Inception, Xception) loses a few pixels per stage.
        assert size // stride - 3 <= height <= size // stride, (layer_name, height)
    assert size // spec.output_stride - 3 <= base.outputs[0].shape[1] <= size // spec.output_stride

    for head in heads:
        model = build_model(name, head, num_classes=5, input_shape=(size, size, channels), backbone_options=small,
                            extractor=extractors[shared_outputs(head)])
        x = rng.uniform(0, 255, (2, size, size, channels)).astype("float32")
        y = np.asarray(model(x, training=False))
        expected = (2, 5) if HEADS.get(head).task != "segmentation" else (2, size, size, 5)
        assert y.shape == expected, head
        np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-4)
        if head in ("linear", "fcn"):
            # Every weight that trains is reached by the loss: none trains for nothing (and no optimizer
            # warns of missing gradients in a user's run), whether the head reads the pooled vector or not.
            assert untrained_weights(model, x) == [], head

    # Save and reload in safe mode: identical outputs.
    head = "unet" if "unet" in heads else "fcn"
    model = build_model(name, head, num_classes=3, input_shape=(size, size, 4), backbone_options=small,
                        extractor=extractors[shared_outputs(head)])
    x = rng.uniform(0, 255, (1, size, size, 4)).astype("float32")
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), np.asarray(model(x, training=False)),
                               atol=1e-6)

    # Trainable-weight counts for each fine-tuning mode (the last use of the shared backbone).
    model = build_model(name, "linear", num_classes=5, input_shape=(size, size, channels), backbone_options=small,
                        extractor=extractors[shared_outputs("linear")])
    backbone = model.get_layer("backbone")
    head_count = sum(int(np.prod(w.shape)) for layer in model.layers[2:] for w in layer.trainable_weights)
    all_count = trainable_count(model)
    assert all_count == head_count + trainable_count(backbone) and all_count > head_count

    set_trainable(model, "frozen")
    assert trainable_count(model) == head_count
    assert all(not layer.trainable for layer in backbone.layers)

    blocks = transformer_blocks(backbone)
    if blocks:  # a transformer: top:N counts blocks, and what follows the first of them trains too
        set_trainable(model, "top:1")
        size_of = lambda weights: sum(int(np.prod(w.shape)) for w in weights)  # noqa: E731
        norms = [layer for layer in backbone._flatten_layers(recursive=True)
                 if isinstance(layer, keras.layers.BatchNormalization)]
        in_last = [layer for layer in norms if any(layer is inner for inner in blocks[-1]._flatten_layers())]
        last = size_of(blocks[-1].weights) - sum(size_of(layer.weights) for layer in in_last)
        assert head_count + last <= trainable_count(model) < all_count
        assert not any(layer.trainable for layer in norms)  # BatchNorm stays frozen, as in a CNN's top:N
        assert all(not block.trainable_weights for block in blocks[:-1])
        set_trainable(model, "all")
        assert trainable_count(model) == all_count
        return
    set_trainable(model, "top:10")
    top = backbone.layers[-10:]
    expected_top = sum(int(np.prod(w.shape)) for layer in top
                       if not isinstance(layer, keras.layers.BatchNormalization) for w in layer.trainable_weights)
    assert trainable_count(model) == head_count + expected_top
    assert all(not layer.trainable for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))

    set_trainable(model, "all")
    assert trainable_count(model) == all_count


def test_incompatible_pair_fails_at_once_with_the_heads_that_fit():
    with pytest.raises(ValueError) as error:
        build_model("unet", "fpn", num_classes=3, input_shape=(64, 64, 4))
    message = str(error.value)
    assert "encoder-decoder" in message and "fcn" in message and "linear" in message


def test_a_shared_backbone_must_fit_the_head_and_input():
    plain = backbone_extractor("baseline_cnn", "linear", (32, 32, 3))
    with pytest.raises(ValueError, match="does not fit baseline_cnn/fpn"):
        build_model("baseline_cnn", "fpn", 3, (32, 32, 3), extractor=plain)
    with pytest.raises(ValueError, match="backbone_extractor"):
        build_model("baseline_cnn", "linear", 3, (64, 64, 3), extractor=plain)
    shared = [build_model("baseline_cnn", head, 3, (32, 32, 3), extractor=plain) for head in ("linear", "mlp")]
    assert all(model.get_layer("backbone") is plain for model in shared)


def test_too_small_input_and_bad_trainable_are_rejected():
    with pytest.raises(ValueError, match="at least 75x75"):
        build_model("inception_v3", "linear", 3, (64, 64, 3))
    with pytest.raises(ValueError, match="top:N"):
        build_model("baseline_cnn", "linear", 3, (32, 32, 3), trainable="top")
    for name, size in [(name, spec.min_size + spec.size_multiple // 2) for name, spec in BACKBONES.items()
                       if spec.size_multiple > 1]:  # refused before anything is built
        with pytest.raises(ValueError, match=f"multiple of {BACKBONES.get(name).size_multiple}"):
            build_model(name, "linear", 3, (size, size, 3))


def test_unet_matches_the_land_cover_reference_size():
    model = BACKBONES.get("unet").build((256, 256, 4))
    assert model.count_params() == pytest.approx(31.1e6, rel=0.01)


def test_baseline_cnn_is_the_dog_breed_baseline():
    model = BACKBONES.get("baseline_cnn").build((64, 64, 3))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 64, 64]
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 4
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == 4


def test_batchnorm_momentum_reaches_nested_backbone_layers():
    model = build_model("mobilenet_v2", "unet", 3, (64, 64, 3), batchnorm_momentum=0.9)
    momenta = {layer.momentum for layer in model.get_layer("backbone").layers
               if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}
    assert {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)} <= {0.9}
