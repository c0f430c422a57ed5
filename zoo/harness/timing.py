"""Honest timing: per-epoch wall clock (first epoch apart: it includes tracing and
compilation), and inference throughput and latency measured after warm-up."""
from __future__ import annotations

import os
import platform
import statistics
import time

import keras
import numpy as np


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of every epoch, kept across training phases."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)

    def summary(self) -> dict:
        later = self.seconds[1:]
        return {"train_seconds": float(sum(self.seconds)),
                "first_epoch_seconds": float(self.seconds[0]) if self.seconds else None,
                "epoch_seconds": float(statistics.median(later)) if later else None}


def compiled_function(function):
    """``function`` traced into one graph on TensorFlow (retraced only for new shapes); as is on
    backends whose eager calls are already compiled or that trace elsewhere."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(function, reduce_retracing=True)
    return function


def compiled_predict(model):
    """``model(images, training=False)`` as one compiled function returning NumPy; correct under any
    distribution strategy (Keras's predict_on_batch under MirroredStrategy returns one copy of
    the batch per replica). On TensorFlow it is traced once for any batch size: a last short
    batch or a batch-1 latency measurement does not trace the model again."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        specs = [tf.TensorSpec(tensor.shape, tensor.dtype) for tensor in model.inputs]
        signature = [specs[0] if len(specs) == 1 else specs]
        traced = tf.function(lambda images: model(images, training=False), input_signature=signature)
        # Several inputs (a pyramid head on cached features) come as a tuple from tf.data.
        compiled = lambda images: traced(list(images) if isinstance(images, tuple) else images)  # noqa: E731
    else:
        compiled = compiled_function(lambda images: model(images, training=False))
    return lambda images: keras.ops.convert_to_numpy(compiled(images))


def inference_speed(predict, input_shape, batch_size, min_seconds=1.0, warmup=3) -> dict:
    """Images/s at ``batch_size`` and median batch-1 latency (ms) of ``predict(images)``
    (returning a NumPy array, so the time includes the result), both after warm-up, on
    random input (speed does not depend on the values)."""
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 255, (batch_size, *input_shape)).astype("float32")
    for _ in range(warmup):
        predict(batch)
    count, start = 0, time.perf_counter()
    while count < 3 or (time.perf_counter() - start < min_seconds and count < 200):
        predict(batch)
        count += 1
    images_per_second = count * batch_size / (time.perf_counter() - start)
    single = batch[:1]
    for _ in range(warmup):
        predict(single)
    latencies = []
    for _ in range(20):
        tick = time.perf_counter()
        predict(single)
        latencies.append((time.perf_counter() - tick) * 1000)
    return {"images_per_second": float(images_per_second), "latency_ms": float(statistics.median(latencies))}


def describe_device() -> str:
    """The device runs train on: GPU names, or the CPU model and core count."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in gpus]
        return f"{len(gpus)}x {names[0]}"
    model_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model_name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model_name} ({os.cpu_count()} cores)"
