"""From-scratch baselines of the source studies: the dog-breed baseline CNN and the
land-cover reference U-Net. Both scale 0-255 input themselves (preprocessing "model")."""
from __future__ import annotations

from zoo.backbones.spec import BackboneSpec, register_backbone

BASELINE_FILTERS = (32, 64, 64, 64)
# Keras's default 0.99 leaves the moving statistics far from the batch statistics after the
# few hundred steps a small dataset gives, so evaluation collapses to chance while training
# accuracy is high; 0.9 converges within an epoch or two.
BATCH_NORM_MOMENTUM = 0.9


def build_baseline_cnn(input_shape, filters=BASELINE_FILTERS):
    """The dog-breed study's baseline: conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool)."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=tuple(input_shape))
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for index, width in enumerate(filters, start=1):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{index}_conv")(x)
        x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"block{index}_bn")(x)
        x = layers.ReLU(name=f"block{index}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{index}_pool")(x)
    return keras.Model(inputs, x, name="baseline_cnn")


def build_unet(input_shape, base_filters=64, depth=4):
    """The classic U-Net (Ronneberger et al. 2015) as the land-cover study used it.

    ``depth`` is the number of 2x down-samplings; filters double at each one. With 64 base
    filters and depth 4 (the study's "8 layers": 4 down, 4 up) it has 31.1 M parameters
    for a 4-band input. The output is the last decoder feature map at full resolution
    (stride 1); put the ``fcn`` head on it to get per-pixel classes.
    """
    import keras
    from keras import layers

    def double_conv(x, width, prefix):
        for step in (1, 2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{prefix}_conv{step}")(x)
            x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"{prefix}_bn{step}")(x)
            x = layers.ReLU(name=f"{prefix}_relu{step}")(x)
        return x

    inputs = keras.Input(shape=tuple(input_shape))
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    skips = []
    for level in range(depth):
        x = double_conv(x, base_filters * 2**level, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = double_conv(x, base_filters * 2**depth, "bottleneck")
    for level in reversed(range(depth)):
        width = base_filters * 2**level
        x = layers.Conv2DTranspose(width, 2, strides=2, name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = double_conv(x, width, f"dec{level}")
    return keras.Model(inputs, x, name="unet")


register_backbone(BackboneSpec(
    name="baseline_cnn", family="baseline", build=build_baseline_cnn, preprocessing="model",
    default_size=128, min_size=16, output_stride=16,
    feature_layers_by_stride={2: "block1_pool", 4: "block2_pool", 8: "block3_pool", 16: "block4_pool"},
    license="Apache-2.0", paper="dog-breed study baseline (4 conv blocks: 32, 64, 64, 64 filters)",
))
register_backbone(BackboneSpec(
    name="unet", family="baseline", build=build_unet, preprocessing="model",
    default_size=256, min_size=16, output_stride=1,
    feature_layers_by_stride={2: "enc1_relu2", 4: "enc2_relu2", 8: "enc3_relu2", 16: "bottleneck_relu2"},
    license="Apache-2.0", paper="arXiv:1505.04597 (U-Net); land-cover study reference, 31.1 M parameters",
))
