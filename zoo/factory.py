"""build_model: any registered backbone with any compatible head."""
from __future__ import annotations

import json
import re

from zoo.backbones import BACKBONES, BackboneSpec
from zoo.errors import IncompatibleError
from zoo.heads import HEADS, HeadSpec

BACKBONE_LAYER_NAME = "backbone"
_TOP_N = re.compile(r"top:(\d+)")


def compatible_heads(backbone: str | BackboneSpec) -> list[str]:
    """Names of the heads that fit ``backbone``."""
    spec = BACKBONES.get(backbone) if isinstance(backbone, str) else backbone
    return [name for name, head in HEADS.items() if head.incompatibility(spec) is None]


def check_compatible(backbone: BackboneSpec, head: HeadSpec) -> None:
    reason = head.incompatibility(backbone)
    if reason:
        raise IncompatibleError(f"head {head.name!r} does not fit backbone {backbone.name!r}: {reason}. "
                                f"Heads that fit {backbone.name}: {', '.join(compatible_heads(backbone))}")


def check_input_shape(backbone: BackboneSpec, input_shape) -> tuple:
    if len(input_shape) != 3:
        raise IncompatibleError(f"input_shape must be (height, width, channels), got {tuple(input_shape)}")
    height, width, channels = input_shape
    if min(height, width) < backbone.min_size:
        raise IncompatibleError(f"{backbone.name} needs inputs of at least {backbone.min_size}x{backbone.min_size} "
                                f"pixels, got {height}x{width}; raise image_size")
    if backbone.size_multiple > 1 and (height % backbone.size_multiple or width % backbone.size_multiple):
        raise IncompatibleError(f"{backbone.name} needs an input size that is a multiple of {backbone.size_multiple} "
                                f"({backbone.size_multiple}, {2 * backbone.size_multiple}, ...), got {height}x{width}; "
                                f"set image_size accordingly")
    if channels < 1:
        raise IncompatibleError(f"input_shape needs at least one channel, got {channels}")
    return (int(height), int(width), int(channels))


def parse_trainable(trainable: str) -> tuple[str, int]:
    """``"frozen"``, ``"all"`` or ``"top:N"`` as (mode, N)."""
    if trainable in ("frozen", "all"):
        return trainable, 0
    match = _TOP_N.fullmatch(str(trainable))
    if not match:
        raise ValueError(f"trainable must be 'frozen', 'all' or 'top:N' (N a whole number), got {trainable!r}")
    return "top", int(match.group(1))


def set_trainable(model, trainable: str) -> None:
    """Apply a fine-tuning mode to an assembled model's backbone; the head stays trainable.

    ``frozen``: no backbone layer trains, and BatchNorm runs in inference mode.
    ``top:N``: only the last N backbone layers train, BatchNorm layers excepted, so their
    statistics are not wrecked by small fine-tuning batches (the Keras guide's advice); on a
    transformer, the last N blocks (see train_last_blocks).
    """
    from zoo.backbones.hub import freeze_unread_weights

    _apply_trainable(model, trainable)
    freeze_unread_weights(model)  # after the mode: Keras's trainable flags reach the variables too


def _apply_trainable(model, trainable: str) -> None:
    import keras

    mode, count = parse_trainable(trainable)
    _trainable_everywhere(model)
    backbone = model.get_layer(BACKBONE_LAYER_NAME)
    if mode == "all":
        return
    if mode == "frozen":
        backbone.trainable = False
        return
    from zoo.backbones.hub import transformer_blocks

    blocks = transformer_blocks(backbone)
    if blocks:
        train_last_blocks(backbone, blocks[len(blocks) - min(count, len(blocks)):] if count else [])
        return
    first_trainable = len(backbone.layers) - count
    for index, layer in enumerate(backbone.layers):
        is_batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= first_trainable and not is_batch_norm


def _trainable_everywhere(model) -> None:
    """Every layer trainable, nested ones included. Keras's own recursion stops at a layer whose
    flag already has the value (TensorFlow's attribute tracking skips ``self.x = self.x``), which
    would leave a block frozen by ``top:N`` inside a trainable container."""
    import keras

    for layer in model._flatten_layers(include_self=True, recursive=True):
        keras.layers.Layer.trainable.fset(layer, True)


def train_last_blocks(backbone, chosen) -> None:
    """``top:N`` on a transformer: the chosen (last) blocks train, and so does every layer after the
    first of them (MiT's patch embeddings between stages, the final LayerNorm, a pooling head);
    everything before stays frozen. LayerNorm layers inside train: unlike BatchNorm they keep
    no running statistics that small batches could wreck; BatchNorm layers (HGNetV2's blocks) stay
    frozen, as in a CNN's top:N."""
    import keras

    if not chosen:
        backbone.trainable = False
        return
    _freeze_before(backbone, chosen[0])
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _freeze_before(container, first) -> None:
    """Freeze the layers of ``container`` that come before ``first`` (a block inside it, at any depth)."""
    children = list(container._flatten_layers(include_self=False, recursive=False))
    holder = next(index for index, child in enumerate(children)
                  if child is first or any(inner is first for inner in child._flatten_layers(include_self=False)))
    for child in children[:holder]:
        child.trainable = False
    if children[holder] is not first:
        _freeze_before(children[holder], first)


def set_batchnorm_momentum(model, momentum: float) -> int:
    """Set the momentum of every BatchNormalization layer (nested ones too); returns how many.

    Keras applications use 0.99-0.999, tuned for ImageNet's million steps; trained from
    scratch for a few hundred steps, their moving statistics stay far from the batch
    statistics and evaluation collapses while training accuracy is high.
    """
    import keras

    def walk(layer):
        yield layer
        for inner in getattr(layer, "layers", []):
            yield from walk(inner)

    layers = [layer for layer in walk(model) if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.momentum = float(momentum)
    return len(layers)


def tapped_strides(backbone_spec: BackboneSpec, head_spec: HeadSpec) -> list:
    """The strides whose feature layers the backbone outputs for ``head_spec``, in increasing order."""
    return sorted(backbone_spec.feature_layers_by_stride) if head_spec.needs_pyramid else []


def takes_pooled(backbone_spec: BackboneSpec, head_spec: HeadSpec) -> bool:
    """Whether the backbone outputs its own pooled vector for this head: it has one and the head reads it."""
    return bool(backbone_spec.pooled_layer) and head_spec.reads_pooled


def head_features(backbone_spec: BackboneSpec, head_spec: HeadSpec, outputs) -> dict:
    """What a head gets from the backbone's outputs ``[last, *taps by increasing stride, pooled?]``:
    ``last``, ``by_stride`` (with the simple feature pyramid a plain ViT's pyramid heads need, built
    here beside the head so it trains with it) and ``pooled`` (None where the head averages ``last``)."""
    strides = tapped_strides(backbone_spec, head_spec)
    last, rest = outputs[0], list(outputs[1:])
    pooled = rest.pop() if takes_pooled(backbone_spec, head_spec) else None
    by_stride = dict(zip(strides, rest))
    if head_spec.needs_pyramid and backbone_spec.simple_pyramid:
        by_stride.update(simple_feature_pyramid(by_stride[16], backbone_spec.simple_pyramid))
    return {"last": last, "by_stride": by_stride, "pooled": pooled}


def simple_feature_pyramid(stride16, strides) -> dict:
    """ViTDet's simple feature pyramid from a plain ViT's stride-16 map (Li et al., arXiv:2203.16527):
    transposed convolutions up to strides 8 and 4, max pooling down to 32."""
    from keras import layers

    width = int(stride16.shape[-1])
    made = {}
    if 8 in strides or 4 in strides:
        up = layers.Conv2DTranspose(width // 2, 2, strides=2, name="pyramid_s8")(stride16)
        made[8] = up
        if 4 in strides:
            x = layers.LayerNormalization(name="pyramid_s4_norm")(up)
            x = layers.Activation("gelu", name="pyramid_s4_gelu")(x)
            made[4] = layers.Conv2DTranspose(width // 4, 2, strides=2, name="pyramid_s4")(x)
    if 32 in strides:
        made[32] = layers.MaxPooling2D(2, name="pyramid_s32")(stride16)
    return {stride: made[stride] for stride in strides}


def backbone_extractor(backbone: str, head: str, input_shape, weights=None, backbone_options: dict | None = None):
    """The backbone as the nested model ``build_model`` puts under the head: outputs
    ``[last, *feature maps by increasing stride (pyramid heads only), pooled (if the backbone has it
    and the head reads it)]``.
    Pass it as ``build_model(..., extractor=...)`` to put several heads over one backbone."""
    import keras

    from zoo.weights import build_backbone_with_weights

    backbone_spec, head_spec = BACKBONES.get(backbone), HEADS.get(head)
    input_shape = check_input_shape(backbone_spec, input_shape)
    weights = "imagenet" if weights == "pretrained" else weights
    base = build_backbone_with_weights(backbone_spec, input_shape, weights, **(backbone_options or {}))
    taps = [base.get_layer(backbone_spec.feature_layers_by_stride[s]).output
            for s in tapped_strides(backbone_spec, head_spec)]
    last = base.outputs[0]  # a multi-output backbone (keras-hub) puts its deepest map first
    pooled = [base.get_layer(backbone_spec.pooled_layer).output] if takes_pooled(backbone_spec, head_spec) else []
    return keras.Model(base.input, [last, *taps, *pooled], name=BACKBONE_LAYER_NAME)


# The frozen pretrained backbone last built, kept by a worker process for the next run of a
# sweep: its weights never change while frozen, and building a deep backbone costs seconds.
_FROZEN_BACKBONE: dict = {}


def build_model(backbone: str, head: str, num_classes: int, input_shape, weights=None,
                trainable: str = "all", backbone_options: dict | None = None,
                batchnorm_momentum: float | None = None, head_seed: int | None = None,
                reuse_frozen_backbone: bool = False, extractor=None):
    """Assemble ``backbone`` and ``head`` into one ``keras.Model``.

    Args:
        backbone: registered backbone name (``zoo list backbones``).
        head: registered head name (``zoo list heads``).
        num_classes: number of output classes.
        input_shape: (height, width, channels); any channel count.
        weights: None (random init), ``"imagenet"`` (or ``"pretrained"``: the backbone's own
            pretrained weights, a keras-hub preset for those entries), or the path of a backbone
            weights file or preset folder (3-channel weights are adapted to other channel counts).
        trainable: ``"all"``, ``"frozen"`` or ``"top:N"``.
        backbone_options: extra arguments of the backbone's builder (e.g. ``depth`` of ``unet``).
        batchnorm_momentum: if given, the momentum of every BatchNorm layer (see
            :func:`set_batchnorm_momentum`); None keeps each model's own.
        head_seed: if given, the random seed is set to it just before the head is built, so the
            head starts the same whether the backbone was built or reused.
        reuse_frozen_backbone: with ``trainable="frozen"`` and pretrained weights, reuse the
            backbone this process built last for the same settings (never trained: frozen).
        extractor: a model from :func:`backbone_extractor` for this backbone, head and input
            shape, to share instead of building the backbone again (several heads over one
            backbone share its weights and its trainable flags).

    The backbone is a nested model named ``"backbone"``; the output is float32 softmax. On JAX the
    initial weights are drawn on the host (zoo.runtime.initial_values_on_host).
    """
    from zoo.runtime import initial_values_on_host

    with initial_values_on_host():
        return _build_model(backbone, head, num_classes, input_shape, weights, trainable, backbone_options,
                            batchnorm_momentum, head_seed, reuse_frozen_backbone, extractor)


def _build_model(backbone, head, num_classes, input_shape, weights, trainable, backbone_options, batchnorm_momentum,
                 head_seed, reuse_frozen_backbone, extractor):
    import keras

    from zoo.weights import weights_identity

    backbone_spec, head_spec = BACKBONES.get(backbone), HEADS.get(head)
    weights = "imagenet" if weights == "pretrained" else weights  # a backbone's own pretraining, either name
    check_compatible(backbone_spec, head_spec)
    input_shape = check_input_shape(backbone_spec, input_shape)
    parse_trainable(trainable)
    if num_classes < 2:
        raise IncompatibleError(f"num_classes must be at least 2, got {num_classes}")

    strides = tapped_strides(backbone_spec, head_spec)
    if extractor is not None:
        expected = 1 + len(strides) + takes_pooled(backbone_spec, head_spec)
        if tuple(extractor.input.shape[1:]) != tuple(input_shape) or len(extractor.outputs) != expected:
            raise ValueError(f"the extractor given does not fit {backbone}/{head} at {tuple(input_shape)}: "
                             f"make it with backbone_extractor({backbone!r}, {head!r}, {tuple(input_shape)})")
    else:
        identity = weights_identity(weights)
        # Random weights differ by seed: never shared.
        shareable = reuse_frozen_backbone and trainable == "frozen" and identity != "none"
        key = json.dumps([backbone, list(input_shape), identity, backbone_options or {}, strides,
                          takes_pooled(backbone_spec, head_spec), batchnorm_momentum,
                          keras.mixed_precision.global_policy().name], default=str)
        extractor = _FROZEN_BACKBONE.get(key) if shareable else None
        if extractor is None:
            extractor = backbone_extractor(backbone, head, input_shape, weights, backbone_options)
            _FROZEN_BACKBONE.clear()
            if shareable:
                _FROZEN_BACKBONE[key] = extractor
    if head_seed is not None:
        keras.utils.set_random_seed(head_seed)

    inputs = keras.Input(shape=input_shape, name="image")
    outputs = extractor(inputs)
    features = head_features(backbone_spec, head_spec, outputs if isinstance(outputs, (list, tuple)) else [outputs])
    outputs = head_spec.build(features, num_classes, input_shape)
    model = keras.Model(inputs, outputs, name=f"{backbone}_{head}")
    set_trainable(model, trainable)
    if batchnorm_momentum is not None:
        set_batchnorm_momentum(model, batchnorm_momentum)
    return model
