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
- Hierarchical transformers (MiT, SegFormer's encoder) are not registered yet: keras-hub 0.32's
  HierarchicalTransformerEncoder.get_config leaves out its sr_ratio, so a model holding its layers
  cannot be saved and reloaded.
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

    return PatchTokens, TokenPool


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

    pool = pool or hub.pools[0]
    if pool not in hub.pools:
        raise ValueError(f"pool must be one of {', '.join(hub.pools)} for {hub.class_name}, got {pool!r}")
    PatchTokens, TokenPool = zoo_layers()
    if hub.nest:
        inputs = keras.Input(shape=tuple(input_shape), name="images")
        tokens = model(inputs)
    else:
        inputs = model.inputs[0]
        # SigLIP's encoder (the one pooling with its own attention head, "map") ends in that head:
        # its tokens are the final LayerNorm's.
        tokens = model.get_layer("post_layer_norm").output if "map" in hub.pools else model.output
    patch = int(hub.config["patch_size"])
    rows, cols = input_shape[0] // patch, input_shape[1] // patch
    grid = PatchTokens(hub.prefix_tokens, rows, cols, name="patch_tokens")(tokens)
    size = (input_shape[0] // 16, input_shape[1] // 16)
    feature_map = keras.layers.Resizing(*size, interpolation="bilinear", name=PATCH_MAP)(grid) \
        if (rows, cols) != size else keras.layers.Identity(name=PATCH_MAP)(grid)
    if pool == "map":
        pooled = keras.layers.Identity(name=POOLED)(model.get_layer("head").output)
    else:
        pooled = TokenPool(pool, hub.prefix_tokens, name=POOLED)(tokens)
    return keras.Model(inputs, [feature_map, pooled], name=f"{model.name}_features")


def hub_builder(hub: HubModel):
    """The BackboneSpec builder of a keras-hub entry."""

    def build(input_shape, **options):
        return wrap(hub, build_hub_model(hub, input_shape, **options), tuple(input_shape), options.get("pool"))

    build.__qualname__ = f"keras_hub.models.{hub.class_name}"
    return build


def transformer_blocks(backbone) -> list:
    """The transformer blocks inside a built backbone (any keras-hub entry's), first to last;
    empty for a CNN."""
    classes = {spec.hub.block_class for spec in _registered_hub_specs()}
    found = {id(layer): layer for layer in backbone._flatten_layers(include_self=False, recursive=True)
             if type(layer).__name__ in classes}
    # Blocks are numbered in their names (layers_3, encoder_block_3, hierarchical_encoder_1_0).
    return sorted(found.values(), key=lambda layer: [int(n) for n in re.findall(r"\d+", layer.name)])


def _registered_hub_specs():
    from zoo.backbones.spec import BACKBONES

    return [spec for _, spec in BACKBONES.items() if spec.hub is not None]


def register_hub(name, family, hub: HubModel, *, preprocessing, license, paper, default_size=224, min_size=32,
                 license_restricts_use=False) -> BackboneSpec:
    """Register one keras-hub ViT as a zoo backbone: its stride-16 patch map, its pooled vector,
    and the simple feature pyramid for pyramid heads."""
    return register_backbone(BackboneSpec(
        name=name, family=family, build=hub_builder(hub), preprocessing=preprocessing, default_size=default_size,
        min_size=min_size, feature_layers_by_stride={16: PATCH_MAP}, license=license, paper=paper,
        output_stride=16, hub=hub, pooled_layer=POOLED, simple_pyramid=(4, 8, 32),
        license_restricts_use=license_restricts_use))


# --- entries ------------------------------------------------------------------------------

# Small configurations for tests: the same family, two blocks.
SMALL_VIT = {"num_layers": 2}
APACHE = "Apache-2.0"

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
    preprocessing="tf", license=APACHE, paper="arXiv:2010.11929")
register_hub("deit_tiny", "deit", HubModel(
    "DeiTBackbone", "deit_tiny_distilled_patch16_224_imagenet", dict(patch_size=16, num_layers=12, num_heads=3,
                                                                    hidden_dim=192, intermediate_dim=768),
    block_class="DeiTEncoderBlock", pretraining="ImageNet-1k (distilled)", preset_params=5_524_800,
    small=SMALL_VIT, pools=("cls", "mean"), prefix_tokens=2, nest=True),
    preprocessing="torch", license=APACHE, paper="arXiv:2012.12877")
register_hub("deit_small", "deit", HubModel(
    "DeiTBackbone", "deit_small_distilled_patch16_224_imagenet", dict(patch_size=16, num_layers=12, num_heads=6,
                                                                     hidden_dim=384, intermediate_dim=1536),
    block_class="DeiTEncoderBlock", pretraining="ImageNet-1k (distilled)", preset_params=21_666_432,
    small=SMALL_VIT, pools=("cls", "mean"), prefix_tokens=2, nest=True),
    preprocessing="torch", license=APACHE, paper="arXiv:2012.12877")
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
