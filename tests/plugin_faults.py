"""A plugin for the failure tests: backbones that crash their process or produce NaN."""
import os
import signal

from zoo.backbones import BACKBONES, BackboneSpec, register_backbone
from zoo.backbones.baselines import build_baseline_cnn


def build_crashing(input_shape):
    os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would


def build_nan(input_shape):
    import keras

    model = build_baseline_cnn(input_shape)
    outputs = keras.layers.Rescaling(float("nan"))(model.output)
    return keras.Model(model.input, outputs, name="nan_backbone")


for name, build in (("crash_backbone", build_crashing), ("nan_backbone", build_nan)):
    if name not in BACKBONES:
        register_backbone(BackboneSpec(name=name, family="test", build=build, preprocessing="model",
                                       default_size=32, min_size=16, output_stride=16, license="-", paper="-"))
