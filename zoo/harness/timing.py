"""Honest timing: per-epoch wall clock (first epoch apart: it includes tracing and
compilation), and inference throughput and latency measured after warm-up."""
from __future__ import annotations

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
