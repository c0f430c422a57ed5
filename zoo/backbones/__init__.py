"""The backbone registry. Each family module registers its entries on import."""
from zoo.backbones.spec import (BACKBONES, PREPROCESSING_MODES, BackboneSpec, WeightsFile,
                                register_backbone)
from zoo.backbones import baselines, convnext, densenet, efficientnet, hub, inception, mobilenet, resnet, vgg  # noqa: F401

__all__ = ["BACKBONES", "PREPROCESSING_MODES", "BackboneSpec", "WeightsFile", "register_backbone"]
