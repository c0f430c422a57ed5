"""A plugin for the quiet-output test: a backbone whose build raises a Python warning and writes a native
log line, as a library would; zoo must let both through."""
import os
import warnings

from zoo.backbones import BACKBONES, BackboneSpec, register_backbone
from zoo.backbones.baselines import build_baseline_cnn

PYTHON_WARNING = "noisy_backbone: a library warning the user must see"
NATIVE_LINE = "W0000 00:00:1795900000.000000    1234 custom_kernel.cc:42] noisy_backbone: a native warning kept"


def build_noisy(input_shape):
    warnings.warn(PYTHON_WARNING, UserWarning)
    os.write(2, (NATIVE_LINE + "\n").encode())
    return build_baseline_cnn(input_shape)


if "noisy_backbone" not in BACKBONES:
    register_backbone(BackboneSpec(name="noisy_backbone", family="test", build=build_noisy, preprocessing="model",
                                   default_size=32, min_size=16, output_stride=16, license="-", paper="-"))
