"""Vision transformers and self-supervised foundation models from keras-hub.

Each entry ships its preset's architecture (the keras-hub backbone class and its configuration),
so ``weights: none`` builds the real model with no network; pretrained weights come from the
keras-hub preset (see zoo.weights). keras-hub is imported only when one of these is built.

zoo's backbone contract holds for them as for the CNNs:

- Plain ViTs (DINOv2, DINOv3, ViT, DeiT, SigLIP, CLIP) output their patch tokens as a feature
  map at stride 16 (``patch_map``; patch-14 models' 16x16 grid per 224 px is resized onto the
  stride-16 grid), and a pooled vector (``pooled``: the class token, the mean of the patch
  tokens, or SigLIP's own attention pooling; ``backbone_options: {pool: ...}``) that the
  classification heads use instead of averaging the map. Segmentation heads that need a pyramid
  get one in the ViTDet manner (a "simple feature pyramid" built beside the head).
- Hierarchical models (MiT, SegFormer's encoder; Swin; HGNetV2; CSPNet) output their real
  multi-scale feature maps, tapped by name (``stride_4`` ... ``stride_32``) as a CNN's are; the
  classification heads average the deepest. MiT, Swin and HGNetV2 are held whole by one zoo layer
  (``HubPyramid``) that returns the maps, because their inner layers do not all save alone in
  keras-hub 0.32 (MiT's HierarchicalTransformerEncoder.get_config leaves out its sr_ratio); CSPNet
  is laid out layer by layer, so ``top:N`` counts its layers as for any CNN.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from zoo.backbones.spec import BackboneSpec, register_backbone

PATCH_MAP = "patch_map"
POOLED = "pooled"


@dataclass(frozen=True)
class HubModel:
    """Where an entry's architecture and weights come from in keras-hub.

    ``config`` is the preset's backbone configuration (what ``weights: none`` builds);
    ``small`` overrides it into a small configuration of the same family, for tests;
    ``preset_params`` is the parameter count keras-hub publishes for the preset, and
    ``native_size`` the input size it is counted at."""

    class_name: str
    preset: str
    config: dict
    block_class: str                # the transformer block, for trainable: top:N
    pretraining: str
    preset_params: int | None = None
    native_size: int = 224
    small: dict = field(default_factory=dict)
    vision_tower: bool = False      # the preset is an image-text model; zoo takes its vision encoder
    prefix_tokens: int = 1          # tokens before the patch tokens (class, distillation, registers)
    pools: tuple = ("cls", "mean")  # pooling choices, default first
    # Kept whole as one layer of zoo's model (saved by its own configuration) rather than laid out
    # layer by layer: ViT's and DeiT's inner layers do not save alone in keras-hub 0.32.
    nest: bool = False
    # Hierarchical models: (stride, source) for each feature map, a source being a key of the
    # model's pyramid_outputs or outputs, or a layer name (Swin's token sequences become maps).
    taps: tuple = ()
    # Parameters of a classifier the published count includes (MiT's presets carry a 10-class one).
    preset_head_params: int = 0


def _keras_hub():
    """keras-hub, imported only when a keras-hub backbone is built or loaded."""
    try:
        import keras_hub
    except ImportError:
        from zoo.errors import ConfigError

        raise ConfigError("this backbone comes from keras-hub: pip install 'zoo[hub]' (or pip install keras-hub)") \
            from None
    return keras_hub


def hub_class(hub: HubModel):
    return getattr(_keras_hub().models, hub.class_name)


def _hub_layers():
    """zoo's own layers over token sequences, registered so that models reload in safe mode."""
    import keras

    @keras.saving.register_keras_serializable(package="zoo")
    class PatchTokens(keras.layers.Layer):
        """(batch, tokens, dim) -> (batch, rows, cols, dim): the patch tokens as a feature map."""

        def __init__(self, prefix, rows, cols, **kwargs):
            super().__init__(**kwargs)
            self.prefix, self.rows, self.cols = int(prefix), int(rows), int(cols)

        def call(self, tokens):
            patches = tokens[:, self.prefix:self.prefix + self.rows * self.cols, :]
            return keras.ops.reshape(patches, (-1, self.rows, self.cols, keras.ops.shape(tokens)[-1]))

        def compute_output_shape(self, shape):
            return (shape[0], self.rows, self.cols, shape[-1])

        def get_config(self):
            return {**super().get_config(), "prefix": self.prefix, "rows": self.rows, "cols": self.cols}

    @keras.saving.register_keras_serializable(package="zoo")
    class TokenPool(keras.layers.Layer):
        """(batch, tokens, dim) -> (batch, dim): the class token, or the mean of the patch tokens."""

        def __init__(self, mode, prefix, **kwargs):
            super().__init__(**kwargs)
            self.mode, self.prefix = mode, int(prefix)

        def call(self, tokens):
            if self.mode == "cls":
                return tokens[:, 0, :]
            return keras.ops.mean(tokens[:, self.prefix:, :], axis=1)

        def compute_output_shape(self, shape):
            return (shape[0], shape[-1])

        def get_config(self):
            return {**super().get_config(), "mode": self.mode, "prefix": self.prefix}

    @keras.saving.register_keras_serializable(package="zoo")
    class HubPyramid(keras.layers.Layer):
        """A keras-hub backbone held whole, returning its feature maps at the strides of ``taps``,
        ``[[stride, source], ...]`` (a source is a key of its pyramid_outputs or outputs, or a layer
        name), token sequences reshaped to maps. It saves the backbone by the backbone's own
        configuration."""

        def __init__(self, backbone, taps, **kwargs):
            super().__init__(**kwargs)
            if isinstance(backbone, dict):
                backbone = keras.saving.deserialize_keras_object(backbone)
            self.backbone, self.taps = backbone, [[int(stride), source] for stride, source in taps]
            self._graph = keras.Function(backbone.inputs, [hub_tensor(backbone, source) for _, source in self.taps])
            self.built = True

        def call(self, images):
            height, width = self.backbone.inputs[0].shape[1:3]
            maps = []
            for (stride, _), tensor in zip(self.taps, self._graph([images])):
                if len(tensor.shape) == 3:  # (batch, tokens, dim)
                    tensor = keras.ops.reshape(tensor, (-1, height // stride, width // stride, tensor.shape[-1]))
                maps.append(tensor)
            return maps

        def get_config(self):
            return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone),
                    "taps": self.taps}

    return PatchTokens, TokenPool, HubPyramid


def hub_tensor(model, source):
    """The symbolic tensor ``source`` names in a keras-hub model: a pyramid level, an output, a layer."""
    pyramid = getattr(model, "pyramid_outputs", None) or {}
    if source in pyramid:
        return pyramid[source]
    if isinstance(model.output, dict) and source in model.output:
        return model.output[source]
    return model.get_layer(source).output


_LAYERS = None


def zoo_layers():
    global _LAYERS
    if _LAYERS is None:
        _LAYERS = _hub_layers()
    return _LAYERS


def build_hub_model(hub: HubModel, input_shape, **options):
    """The keras-hub model of ``hub`` at ``input_shape`` with random weights: its configuration,
    with ``options`` overriding configuration keys (``pool`` is zoo's, not keras-hub's)."""
    config = {**hub.config, **{k: v for k, v in options.items() if k != "pool"}}
    unknown = set(config) - set(hub.config)
    if unknown:
        raise ValueError(f"unknown backbone option(s) {sorted(unknown)} for {hub.class_name}; "
                         f"use pool or keys of its configuration: {', '.join(sorted(hub.config))}")
    return hub_class(hub)(**config, image_shape=tuple(input_shape))


def wrap(hub: HubModel, model, input_shape, pool: str | None = None):
    """zoo's backbone over a keras-hub ViT: a functional model with two outputs, the patch tokens
    as a stride-16 map (``patch_map``) and the pooled vector (``pooled``). It is laid out on
    keras-hub's own graph, or holds the keras-hub model as one layer where ``hub.nest``."""
    import keras

    if hub.taps:
        return wrap_pyramid(hub, model, input_shape)
    pool = pool or hub.pools[0]
    if pool not in hub.pools:
        raise ValueError(f"pool must be one of {', '.join(hub.pools)} for {hub.class_name}, got {pool!r}")
    PatchTokens, TokenPool, _ = zoo_layers()
    if hub.nest:
        inputs = keras.Input(shape=tuple(input_shape), name="images")
        tokens = model(inputs)
    else:
        inputs = model.inputs[0]
        # SigLIP's encoder (the one pooling with its own attention head, "map") ends in that head:
        # its tokens are the final LayerNorm's.
        tokens = _layer_named(model, "post_layer_norm").output if "map" in hub.pools else model.output
    patch = int(hub.config["patch_size"])
    rows, cols = input_shape[0] // patch, input_shape[1] // patch
    grid = PatchTokens(hub.prefix_tokens, rows, cols, name="patch_tokens")(tokens)
    size = (input_shape[0] // 16, input_shape[1] // 16)
    feature_map = keras.layers.Resizing(*size, interpolation="bilinear", name=PATCH_MAP)(grid) \
        if (rows, cols) != size else keras.layers.Identity(name=PATCH_MAP)(grid)
    if pool == "map":
        pooled = keras.layers.Identity(name=POOLED)(_layer_named(model, "head").output)
    else:
        pooled = TokenPool(pool, hub.prefix_tokens, name=POOLED)(tokens)
    return keras.Model(inputs, [feature_map, pooled], name=f"{model.name}_features")


def _layer_named(model, name):
    """The layer called ``name``, or ``<encoder>_<name>`` as in an image-text preset's vision encoder."""
    matches = [layer for layer in model.layers if layer.name == name or layer.name.endswith(f"_{name}")]
    if len(matches) != 1:
        raise ValueError(f"{model.name} has {len(matches)} layers named like {name!r}, expected one")
    return matches[0]


def tap_name(stride: int) -> str:
    return f"stride_{stride}"


def wrap_pyramid(hub: HubModel, model, input_shape):
    """zoo's backbone over a hierarchical keras-hub model: one output per tapped stride, the deepest
    first (what the classification heads average), each an identity layer named ``stride_<s>``."""
    import keras

    strides = [stride for stride, _ in hub.taps]
    if hub.nest:
        inputs = keras.Input(shape=tuple(input_shape), name="images")
        maps = zoo_layers()[2](model, hub.taps, name=model.name)(inputs)
    else:
        inputs = model.inputs[0]
        maps = [hub_tensor(model, source) for _, source in hub.taps]
    named = {stride: keras.layers.Identity(name=tap_name(stride))(tensor) for stride, tensor in zip(strides, maps)}
    deepest = max(strides)
    outputs = [named[deepest]] + [named[stride] for stride in strides if stride != deepest]
    return keras.Model(inputs, outputs, name=f"{model.name}_features")


def hub_builder(hub: HubModel):
    """The BackboneSpec builder of a keras-hub entry."""

    def build(input_shape, **options):
        return wrap(hub, build_hub_model(hub, input_shape, **options), tuple(input_shape), options.get("pool"))

    build.__qualname__ = f"keras_hub.models.{hub.class_name}"
    return build


# Weights keras-hub builds for a pretraining task that an image's forward pass never reads: DINOv2's and
# DINOv3's mask token (masked-image modelling). Trainable, they get no gradient, and Keras's optimizer
# warns of it in every run ("Gradients do not exist ... did you forget to provide a `loss`?").
UNREAD_WEIGHTS = ("mask_token",)


def freeze_unread_weights(model) -> None:
    """Keep the weights no forward pass reads (UNREAD_WEIGHTS) out of training."""
    for variable in model.trainable_variables:
        if variable.path.rsplit("/", 1)[-1] in UNREAD_WEIGHTS:
            variable.trainable = False


def transformer_blocks(backbone) -> list:
    """The transformer (or HGNetV2) blocks inside a built backbone (any keras-hub entry's), first to
    last; empty for a CNN laid out layer by layer."""
    classes = {spec.hub.block_class for spec in _registered_hub_specs()} - {""}
    found = {}

    def walk(layer, path):
        for child in layer._flatten_layers(include_self=False, recursive=False):
            # Blocks are numbered in their names and in their containers' (layers_3, stage_1/blocks_0,
            # hierarchical_encoder_1_0); Keras's own walk does not keep their order.
            key = path + [int(n) for n in re.findall(r"\d+", child.name)]
            if type(child).__name__ in classes:
                found.setdefault(id(child), (key, child))
            else:
                walk(child, key)

    walk(backbone, [])
    return [layer for _, layer in sorted(found.values(), key=lambda item: item[0])]


def _registered_hub_specs():
    from zoo.backbones.spec import BACKBONES

    return [spec for _, spec in BACKBONES.items() if spec.hub is not None]


def register_hub(name, family, hub: HubModel, *, preprocessing, license, paper, default_size=224, min_size=32,
                 license_restricts_use=False, size_multiple=1) -> BackboneSpec:
    """Register one keras-hub model as a zoo backbone. A plain ViT gets its stride-16 patch map,
    its pooled vector and the simple feature pyramid for pyramid heads; a hierarchical model
    (``hub.taps``) its own feature maps, tapped by stride."""
    if hub.taps:
        return register_backbone(BackboneSpec(
            name=name, family=family, build=hub_builder(hub), preprocessing=preprocessing,
            default_size=default_size, min_size=min_size,
            feature_layers_by_stride={stride: tap_name(stride) for stride, _ in hub.taps}, license=license,
            paper=paper, output_stride=max(stride for stride, _ in hub.taps), hub=hub,
            license_restricts_use=license_restricts_use, size_multiple=size_multiple))
    return register_backbone(BackboneSpec(
        name=name, family=family, build=hub_builder(hub), preprocessing=preprocessing, default_size=default_size,
        min_size=min_size, feature_layers_by_stride={16: PATCH_MAP}, license=license, paper=paper,
        output_stride=16, hub=hub, pooled_layer=POOLED, simple_pyramid=(4, 8, 32),
        license_restricts_use=license_restricts_use, size_multiple=size_multiple))


# --- entries ------------------------------------------------------------------------------

# Small configurations for tests: the same family, two blocks.
SMALL_VIT = {"num_layers": 2}
APACHE = "Apache-2.0"
# keras-hub's ViT and DeiT patch embeddings refuse a size their patch does not divide; DINOv2/v3,
# SigLIP and CLIP take any size (their grids round down, position embeddings interpolated).
PATCH_16 = 16

register_hub("dinov2_small", "dinov2", HubModel(
    "DINOV2Backbone", "dinov2_small", dict(patch_size=14, num_layers=12, hidden_dim=384, num_heads=6,
                                           intermediate_dim=1536, layer_scale_init_value=1.0,
                                           position_embedding_shape=(518, 518, 3)),
    block_class="DINOV2Layer", pretraining="LVD-142M (self-supervised)", preset_params=22_582_656, native_size=518,
    small=SMALL_VIT, pools=("cls", "mean")),
    preprocessing="torch", license=APACHE, paper="arXiv:2304.07193", min_size=28)
register_hub("dinov2_base", "dinov2", HubModel(
    "DINOV2Backbone", "dinov2_base", dict(patch_size=14, num_layers=12, hidden_dim=768, num_heads=12,
                                          intermediate_dim=3072, layer_scale_init_value=1.0,
                                          position_embedding_shape=(518, 518, 3)),
    block_class="DINOV2Layer", pretraining="LVD-142M (self-supervised)", preset_params=87_632_640, native_size=518,
    small=SMALL_VIT, pools=("cls", "mean")),
    preprocessing="torch", license=APACHE, paper="arXiv:2304.07193", min_size=28)
register_hub("dinov3_small", "dinov3", HubModel(
    "DINOV3Backbone", "dinov3_vit_small_lvd1689m", dict(patch_size=16, num_layers=12, hidden_dim=384, num_heads=6,
                                                       intermediate_dim=1536, layer_scale_init_value=1.0,
                                                       num_register_tokens=4, use_key_bias=False),
    block_class="DINOV3Layer", pretraining="LVD-1689M (self-supervised)", small=SMALL_VIT, pools=("cls", "mean"),
    prefix_tokens=5),
    preprocessing="torch", license="DINOv3 License (Meta): use restricted, read it before commercial use",
    license_restricts_use=True, paper="arXiv:2508.10104")
register_hub("vit_base", "vit", HubModel(
    "ViTBackbone", "vit_base_patch16_224_imagenet", dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
                                                        mlp_dim=3072),
    block_class="ViTEncoderBlock", pretraining="ImageNet-21k, fine-tuned on ImageNet-1k", preset_params=85_798_656,
    small=SMALL_VIT, pools=("cls", "mean"), nest=True),
    preprocessing="tf", license=APACHE, paper="arXiv:2010.11929", size_multiple=PATCH_16)
register_hub("deit_tiny", "deit", HubModel(
    "DeiTBackbone", "deit_tiny_distilled_patch16_224_imagenet", dict(patch_size=16, num_layers=12, num_heads=3,
                                                                    hidden_dim=192, intermediate_dim=768),
    block_class="DeiTEncoderBlock", pretraining="ImageNet-1k (distilled)", preset_params=5_524_800,
    small=SMALL_VIT, pools=("cls", "mean"), prefix_tokens=2, nest=True),
    preprocessing="torch", license=APACHE, paper="arXiv:2012.12877", size_multiple=PATCH_16)
register_hub("deit_small", "deit", HubModel(
    "DeiTBackbone", "deit_small_distilled_patch16_224_imagenet", dict(patch_size=16, num_layers=12, num_heads=6,
                                                                     hidden_dim=384, intermediate_dim=1536),
    block_class="DeiTEncoderBlock", pretraining="ImageNet-1k (distilled)", preset_params=21_666_432,
    small=SMALL_VIT, pools=("cls", "mean"), prefix_tokens=2, nest=True),
    preprocessing="torch", license=APACHE, paper="arXiv:2012.12877", size_multiple=PATCH_16)
register_hub("siglip_base", "siglip", HubModel(
    "SigLIPVisionEncoder", "siglip_base_patch16_224", dict(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12,
                                                          intermediate_dim=3072),
    block_class="SigLIPEncoderLayer", pretraining="WebLI (image-text, sigmoid loss)", vision_tower=True,
    small=SMALL_VIT, pools=("map", "mean"), prefix_tokens=0),
    preprocessing="tf", license=APACHE, paper="arXiv:2303.15343")
register_hub("clip_vit_b16", "clip", HubModel(
    "CLIPVisionEncoder", "clip_vit_base_patch16", dict(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12,
                                                      intermediate_dim=3072),
    block_class="CLIPEncoderLayer", pretraining="OpenAI WIT-400M (image-text, contrastive)", vision_tower=True,
    small=SMALL_VIT, pools=("cls", "mean")),
    preprocessing="clip", license="MIT", paper="arXiv:2103.00020")

# Hierarchical models: their own multi-scale feature maps.
register_hub("swin_tiny", "swin", HubModel(
    "SwinTransformerBackbone", "swin_tiny_patch4_window7_224",
    dict(patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0,
         qkv_bias=True, dropout_rate=0.0, attention_dropout=0.0, drop_path=0.1, patch_norm=True),
    block_class="SwinTransformerBlock", pretraining="ImageNet-1k", preset_params=27_519_354,
    small={"embed_dim": 32, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}, pools=(), nest=True,
    # Each stage's output is taken after its patch merging, at the next stage's stride.
    taps=((8, "stage_0"), (16, "stage_1"), (32, "norm"))),
    preprocessing="torch", license="MIT", paper="arXiv:2103.14030", min_size=224, size_multiple=224)
_MIT = dict(num_layers=4, layerwise_num_heads=[1, 2, 5, 8], layerwise_sr_ratios=[8, 4, 2, 1], max_drop_path_rate=0.1,
            layerwise_patch_sizes=[7, 3, 3, 3], layerwise_strides=[4, 2, 2, 2])
_MIT_SMALL = {"layerwise_depths": [1, 1, 1, 1], "hidden_dims": [8, 16, 16, 32], "layerwise_num_heads": [1, 1, 1, 1]}
_MIT_TAPS = ((4, "P1"), (8, "P2"), (16, "P3"), (32, "P4"))
_MIT_LICENSE = "NVIDIA Source Code License for SegFormer: non-commercial use only"
for _name, _depths, _dims, _params in (("mit_b0", [2, 2, 2, 2], [32, 64, 160, 256], 3_321_962),
                                       ("mit_b1", [2, 2, 2, 2], [64, 128, 320, 512], 13_156_554),
                                       ("mit_b2", [3, 4, 6, 3], [64, 128, 320, 512], 24_201_418)):
    register_hub(_name, "mit", HubModel(
        "MiTBackbone", f"{_name}_ade20k_512", dict(_MIT, layerwise_depths=_depths, hidden_dims=_dims),
        block_class="HierarchicalTransformerEncoder",
        pretraining="ImageNet-1k, then ADE20K segmentation (SegFormer's encoder)", preset_params=_params,
        preset_head_params=_dims[-1] * 10 + 10, native_size=512, small=_MIT_SMALL, pools=(), nest=True,
        taps=_MIT_TAPS),
        preprocessing="torch", license=_MIT_LICENSE, license_restricts_use=True, paper="arXiv:2105.15203",
        min_size=64, size_multiple=32)  # keras-hub's MiT reshapes each level to size // stride
register_hub("cspdarknet53", "cspnet", HubModel(
    "CSPNetBackbone", "csp_darknet_53_ra_imagenet",
    dict(stem_filters=32, stem_kernel_size=3, stem_strides=1, stackwise_depth=[1, 2, 8, 8, 4],
         stackwise_num_filters=[64, 128, 256, 512, 1024], bottle_ratio=(0.5, 1.0), block_ratio=(1.0, 0.5),
         expand_ratio=(2.0, 1.0), stem_padding="same", stem_pooling=None, stage_type="csp", groups=1,
         block_type="dark_block", down_growth=True, stackwise_strides=[2, 2, 2, 2, 2], avg_down=False,
         cross_linear=False),
    # keras-hub's converter for timm's cspdarknet53; keras-hub publishes 27,642,184 parameters for the
    # preset but this architecture has 26,652,512 without a classifier, so no count is compared.
    block_class="", pretraining="ImageNet-1k (RandAugment)", native_size=256,
    small={"stem_filters": 8, "stackwise_depth": [1, 1, 1, 1, 1], "stackwise_num_filters": [8, 16, 16, 32, 32]},
    pools=(), taps=((2, "P2"), (4, "P3"), (8, "P4"), (16, "P5"), (32, "P6"))),
    preprocessing="torch", license=APACHE, paper="arXiv:1911.11929", default_size=256)
register_hub("hgnetv2_b4", "hgnetv2", HubModel(
    "HGNetV2Backbone", "hgnetv2_b4_ssld_stage2_ft_in1k",
    dict(stem_channels=[3, 32, 48], embedding_size=48, hidden_sizes=[128, 512, 1024, 2048], depths=[1, 1, 3, 1],
         stackwise_stage_filters=[[48, 48, 128, 1, 6, 3], [128, 96, 512, 1, 6, 3], [512, 192, 1024, 3, 6, 5],
                                  [1024, 384, 2048, 1, 6, 5]],
         apply_downsample=[False, True, True, True], use_lightweight_conv_block=[False, False, True, True],
         hidden_act="relu", use_learnable_affine_block=False),  # SSLD checkpoints have no affine blocks
    block_class="HGNetV2BasicLayer", pretraining="ImageNet-1k (SSLD distillation, then fine-tuned)",
    preset_params=13_599_072,
    small={"stem_channels": [3, 8, 8], "embedding_size": 8, "hidden_sizes": [16, 32, 32, 64], "depths": [1, 1, 1, 1],
           "stackwise_stage_filters": [[8, 8, 16, 1, 2, 3], [16, 8, 32, 1, 2, 3], [32, 8, 32, 1, 2, 5],
                                       [32, 8, 64, 1, 2, 5]]},
    pools=(), nest=True, taps=((4, "stage1"), (8, "stage2"), (16, "stage3"), (32, "stage4"))),
    preprocessing="torch", license=APACHE, paper="PaddleClas PP-HGNetV2 (the RT-DETR backbone, arXiv:2304.08069)")
