"""Heads as plug-ins: each takes the backbone's features and returns the model's output.

Heads use built-in Keras layers only, so every assembled model saves to ``.keras`` and
reloads in safe mode. Outputs are float32 softmax even under mixed precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from zoo.backbones.baselines import BATCH_NORM_MOMENTUM
from zoo.registry import Registry

# What a head predicts, and so which datasets and losses it goes with.
HEAD_TASKS = ("classification", "segmentation", "distribution")
DECODER_WIDTHS = (256, 128, 64, 32, 16)  # segmentation_models' U-Net defaults, deepest first


@dataclass(frozen=True)
class HeadSpec:
    """A registered head. ``build(features, num_classes, input_shape)`` returns the output tensor.

    ``features`` holds ``last`` (the backbone's output), ``by_stride`` (stride -> tensor), filled
    only when ``needs_pyramid`` is set, and ``pooled`` (a transformer's own pooled vector), given
    only when ``reads_pooled`` is set: a head that never reads it keeps the backbone's pooling
    layers (SigLIP's attention pooling) out of its model, so no weight trains for nothing.
    """

    name: str
    task: str
    build: Callable
    description: str
    needs_pyramid: bool = False
    min_pyramid_levels: int = 0
    reads_pooled: bool = True

    def incompatibility(self, backbone) -> str | None:
        """Why this head cannot sit on ``backbone`` (a BackboneSpec), or None if it can."""
        if not self.needs_pyramid:
            return None
        if backbone.output_stride == 1:
            return (f"{backbone.name} is already a full-resolution encoder-decoder (output stride 1); "
                    f"a {self.name} decoder needs a down-sampling encoder")
        levels = len(backbone.pyramid_strides)
        if levels < self.min_pyramid_levels:
            return (f"{self.name} needs feature layers at {self.min_pyramid_levels} or more strides; "
                    f"{backbone.name} names {levels}")
        return None


HEADS: Registry[HeadSpec] = Registry("head")


def head_task(head: str) -> str:
    """The task a registered head serves: classification, segmentation or distribution."""
    return HEADS.get(head).task


def register_head(name, task, description, needs_pyramid=False, min_pyramid_levels=0, reads_pooled=True):
    """Decorator registering a head builder."""
    def decorate(build):
        HEADS.register(name, HeadSpec(name, task, build, description, needs_pyramid, min_pyramid_levels,
                                      reads_pooled))
        return build
    return decorate


def _softmax(x, name="probabilities"):
    from keras import layers

    return layers.Activation("softmax", dtype="float32", name=name)(x)


def resize_to(x, height, width, name):
    """Bilinear resize of a feature map to (height, width): exact 2x up-sampling where it fits."""
    from keras import layers

    h, w = x.shape[1], x.shape[2]
    if (h, w) == (height, width):
        return x
    if (2 * h, 2 * w) == (height, width):
        return layers.UpSampling2D(2, interpolation="bilinear", name=name)(x)
    return layers.Resizing(height, width, interpolation="bilinear", name=name)(x)


def pooled_features(features):
    """One vector per image: the backbone's own pooled vector (a ViT's class token), else the
    average of its last feature map."""
    from keras import layers

    if features.get("pooled") is not None:
        return features["pooled"]
    return layers.GlobalAveragePooling2D(name="head_pool")(features["last"])


def conv_bn_relu(x, width, name, kernel=3):
    from keras import layers

    x = layers.Conv2D(width, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


# --- classification ----------------------------------------------------------------

@register_head("linear", "classification", "global average pooling, dropout 0.2, dense softmax")
def linear_head(features, num_classes, input_shape, dropout=0.2):
    from keras import layers

    x = pooled_features(features)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return _softmax(layers.Dense(num_classes, name="head_logits")(x))


@register_head("mlp", "classification",
               "global average pooling, Dense(1024, relu), dense softmax (the industrial DenseNet121 head)")
def mlp_head(features, num_classes, input_shape, hidden_units=1024):
    from keras import layers

    x = pooled_features(features)
    x = layers.Dense(hidden_units, activation="relu", name="head_hidden")(x)
    return _softmax(layers.Dense(num_classes, name="head_logits")(x))


@register_head("flatten", "classification", "flatten, dense softmax (the dog-breed study's baseline head)",
               reads_pooled=False)
def flatten_head(features, num_classes, input_shape):
    from keras import layers

    x = layers.Flatten(name="head_flatten")(features["last"])
    return _softmax(layers.Dense(num_classes, name="head_logits")(x))


# --- class distribution ------------------------------------------------------------

@register_head("distribution", "distribution",
               "predicts the image's class-proportion vector (pooling, dense softmax), trained with KL divergence")
def distribution_head(features, num_classes, input_shape):
    from keras import layers

    x = pooled_features(features)
    x = layers.Dense(256, activation="relu", name="head_hidden")(x)
    return _softmax(layers.Dense(num_classes, name="head_logits")(x), name="proportions")


# --- segmentation --------------------------------------------------------------------

@register_head("fcn", "segmentation", "1x1 convolution on the last features, bilinear up-sampling to the input",
               reads_pooled=False)
def fcn_head(features, num_classes, input_shape):
    from keras import layers

    x = layers.Conv2D(num_classes, 1, name="head_classifier")(features["last"])
    x = resize_to(x, input_shape[0], input_shape[1], name="head_upsample")
    return _softmax(x)


@register_head("unet", "segmentation",
               "U-Net decoder: up-sample, concatenate the skip at each stride, two 3x3 convs",
               needs_pyramid=True, min_pyramid_levels=3, reads_pooled=False)
def unet_head(features, num_classes, input_shape):
    from keras import layers

    strides = sorted(features["by_stride"], reverse=True)
    x = features["by_stride"][strides[0]]
    for index, stride in enumerate(strides[1:]):
        skip = features["by_stride"][stride]
        width = DECODER_WIDTHS[min(index, len(DECODER_WIDTHS) - 1)]
        x = resize_to(x, skip.shape[1], skip.shape[2], name=f"decoder{stride}_up")
        x = layers.Concatenate(name=f"decoder{stride}_concat")([x, skip])
        x = conv_bn_relu(x, width, f"decoder{stride}_a")
        x = conv_bn_relu(x, width, f"decoder{stride}_b")
    x = resize_to(x, input_shape[0], input_shape[1], name="decoder1_up")
    x = conv_bn_relu(x, DECODER_WIDTHS[-1], "decoder1_a")
    return _softmax(layers.Conv2D(num_classes, 1, name="head_classifier")(x))


@register_head("fpn", "segmentation",
               "feature pyramid network: top-down path with lateral 1x1 convs, merged segmentation features",
               needs_pyramid=True, min_pyramid_levels=3, reads_pooled=False)
def fpn_head(features, num_classes, input_shape, pyramid_width=128, segmentation_width=64):
    from keras import layers

    strides = sorted(features["by_stride"], reverse=True)[:4]  # the four deepest, as in the FPN paper
    finest = features["by_stride"][strides[-1]]
    merged, top_down = [], None
    for stride in strides:
        lateral = layers.Conv2D(pyramid_width, 1, name=f"fpn{stride}_lateral")(features["by_stride"][stride])
        if top_down is not None:
            upsampled = resize_to(top_down, lateral.shape[1], lateral.shape[2], name=f"fpn{stride}_up")
            lateral = layers.Add(name=f"fpn{stride}_add")([lateral, upsampled])
        top_down = lateral
        level = conv_bn_relu(lateral, segmentation_width, f"fpn{stride}_seg")
        merged.append(resize_to(level, finest.shape[1], finest.shape[2], name=f"fpn{stride}_to_finest"))
    x = layers.Add(name="fpn_merge")(merged) if len(merged) > 1 else merged[0]
    x = layers.Conv2D(num_classes, 1, name="head_classifier")(x)
    return _softmax(resize_to(x, input_shape[0], input_shape[1], name="head_upsample"))
