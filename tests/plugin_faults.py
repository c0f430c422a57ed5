"""A plugin for the failure tests: backbones that crash their process or produce NaN."""
import os
import signal

from zoo.backbones import BACKBONES, BackboneSpec, register_backbone
from zoo.backbones.baselines import build_baseline_cnn


def build_crashing(input_shape):
    os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would


def build_crashing_while_others_paused(input_shape):
    """In a pool (``zoo run --workers N``), dies as a worker would that the out-of-memory killer takes while
    it measures its speed: the pool's other workers paused, nobody left to continue them."""
    from zoo.harness.sharing import measured_alone

    with measured_alone(os.environ["ZOO_TEST_LOCK"]):
        os.kill(os.getpid(), signal.SIGKILL)


def build_nan(input_shape):
    """Features at float32's edge: any head's logits overflow (inf - inf), so the loss is NaN on every CPU.
    (NaN features themselves are not enough: oneDNN's fused Dense+ReLU turns NaN into 0 on some CPUs, and
    the mlp head then trains on zeros.)"""
    import keras

    model = build_baseline_cnn(input_shape)
    outputs = keras.layers.Rescaling(0.0, offset=3e38)(model.output)
    return keras.Model(model.input, outputs, name="nan_backbone")


def build_without_jit(input_shape):
    """A layer Keras will not XLA-compile (its supports_jit is False), as some custom layers are."""
    import keras

    class NoJit(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_jit = False

        def call(self, x):
            return x

    model = build_baseline_cnn(input_shape)
    return keras.Model(model.input, NoJit(name="no_jit")(model.output), name="nojit_backbone")


for name, build in (("crash_backbone", build_crashing), ("crash_measuring_backbone", build_crashing_while_others_paused),
                    ("nan_backbone", build_nan),
                    ("nojit_backbone", build_without_jit)):
    if name not in BACKBONES:
        register_backbone(BackboneSpec(name=name, family="test", build=build, preprocessing="model",
                                       default_size=32, min_size=16, output_stride=16, license="-", paper="-"))
