"""What a registered backbone is: a builder plus the metadata users choose by."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from zoo.registry import Registry

PREPROCESSING_MODES = ("caffe", "tf", "torch", "clip", "model")


@dataclass(frozen=True)
class WeightsFile:
    """One downloadable weights file: its Keras cache name, origin URL and hash.

    ``file_hash`` is the md5 or sha256 Keras publishes; ``None`` where Keras publishes none.
    """

    file_name: str
    url: str
    file_hash: Optional[str]


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone entry.

    ``build(input_shape)`` returns a headless ``keras.Model`` with random weights whose
    output is the backbone's last feature map. ``feature_layers_by_stride`` maps an output
    stride (2, 4, 8, 16, 32) to the *name* of the last layer at that stride, which
    segmentation decoders tap. ``output_stride`` is the stride of the model's output
    (32 for classification backbones, 1 for an encoder-decoder such as ``unet``).
    """

    name: str
    family: str
    build: Callable
    preprocessing: str
    default_size: int
    min_size: int
    feature_layers_by_stride: dict = field(default_factory=dict)
    imagenet_no_top: Optional[WeightsFile] = None
    imagenet_top: Optional[WeightsFile] = None
    license: str = ""
    paper: str = ""
    output_stride: int = 32
    # Called on the 3-channel model after ImageNet weights are loaded, for families whose
    # Keras constructor does something extra when ``weights == "imagenet"``.
    after_imagenet_load: Optional[Callable] = None
    # keras-hub entries (zoo.backbones.hub): where the architecture and pretrained weights come
    # from; a plain ViT's pooled vector (a layer name the classification heads use instead of
    # averaging the map) and the strides of the simple feature pyramid built beside the head.
    hub: Optional[object] = None
    pooled_layer: Optional[str] = None
    simple_pyramid: tuple = ()
    license_restricts_use: bool = False
    # Inputs whose side is not a multiple of this fail inside the model (Swin's 7x7 windows tile
    # every stage only when the side is a multiple of 224).
    size_multiple: int = 1

    def __post_init__(self):
        if self.preprocessing not in PREPROCESSING_MODES:
            raise ValueError(f"{self.name}: preprocessing must be one of {PREPROCESSING_MODES}")

    @property
    def has_imagenet_weights(self) -> bool:
        """Whether pretrained weights exist (ImageNet files, or a keras-hub preset)."""
        return self.imagenet_no_top is not None or self.hub is not None

    def option_names(self) -> list[str]:
        """The ``backbone_options`` this backbone's builder takes: a keras-hub entry's configuration
        keys and ``pool``; otherwise its builder's keyword arguments (none for keras.applications)."""
        if self.hub is not None:
            return (["pool"] if self.hub.pools else []) + sorted(self.hub.config)
        import inspect

        parameters = list(inspect.signature(self.build).parameters.values())[1:]  # after input_shape
        return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    @property
    def pyramid_strides(self) -> list:
        """The strides a pyramid head gets: tapped layers, then those the simple pyramid adds."""
        return sorted(set(self.feature_layers_by_stride) | set(self.simple_pyramid))

    def describe(self) -> dict:
        """Metadata as plain values, for `zoo list backbones --long` and reports."""
        weights = self.imagenet_no_top
        return {
            "name": self.name,
            "family": self.family,
            "preprocessing": self.preprocessing,
            "default_size": self.default_size,
            "min_size": self.min_size,
            "size_multiple": self.size_multiple,
            "output_stride": self.output_stride,
            "feature_layers_by_stride": dict(self.feature_layers_by_stride),
            "imagenet_no_top": weights.file_name if weights else None,
            "imagenet_no_top_hash": weights.file_hash if weights else None,
            "imagenet_top": self.imagenet_top.file_name if self.imagenet_top else None,
            "imagenet_top_hash": self.imagenet_top.file_hash if self.imagenet_top else None,
            "license": self.license,
            "license_restricts_use": self.license_restricts_use,
            "paper": self.paper,
            "preset": self.hub.preset if self.hub else None,
            "pretraining": self.hub.pretraining if self.hub else ("ImageNet-1k" if self.imagenet_no_top else None),
            "pool": list(self.hub.pools) if self.hub and self.hub.pools else None,
            "parameters": self.hub.preset_params - self.hub.preset_head_params
            if self.hub and self.hub.preset_params else None,
        }


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    return BACKBONES.register(spec.name, spec)


def keras_application(class_name: str) -> Callable:
    """A builder for ``keras.applications.<class_name>`` without top and with random weights.

    Keras is imported only when a model is built, so listing the registry stays fast.
    """

    def build(input_shape):
        import keras

        constructor = getattr(keras.applications, class_name)
        return constructor(include_top=False, weights=None, input_shape=tuple(input_shape))

    build.__qualname__ = f"keras.applications.{class_name}"
    return build


def register_keras_application(name, class_name, *, family, base_url, no_top, top,
                               preprocessing, strides, default_size=224, min_size=32,
                               license="Apache-2.0 (keras-applications)", paper="",
                               after_imagenet_load=None) -> BackboneSpec:
    """Register one keras.applications model; ``no_top``/``top`` are (file name, hash)."""
    return register_backbone(BackboneSpec(
        name=name, family=family, build=keras_application(class_name),
        preprocessing=preprocessing, default_size=default_size, min_size=min_size,
        feature_layers_by_stride=strides,
        imagenet_no_top=WeightsFile(no_top[0], base_url + no_top[0], no_top[1]),
        imagenet_top=WeightsFile(top[0], base_url + top[0], top[1]),
        license=license, paper=paper, after_imagenet_load=after_imagenet_load,
    ))
