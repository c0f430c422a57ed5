"""Honest timing: per-epoch wall clock (first epoch apart: it includes tracing and
compilation), and inference throughput and latency measured after warm-up."""
from __future__ import annotations

import contextlib
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


class StageClock:
    """Wall-clock seconds of a run's stages (metrics.json's ``stage_seconds``) and of the whole run
    (results.csv's ``run_seconds``): where a run's time goes besides its epochs, its compilations among
    them (opening the data, building, scoring, measuring speed, exporting, saving)."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> dict:
        return {"run_seconds": time.perf_counter() - self.started,
                "stage_seconds": {name: round(value, 3) for name, value in self.seconds.items()}}


def _seconds_per_step(timed_steps, warmup: int, min_seconds: float, max_steps: int) -> float:
    """Seconds per step of ``timed_steps(count)`` (the wall time of ``count`` steps in one go): after
    ``warmup`` steps, three steps estimate how many fill ``min_seconds`` (3 to ``max_steps``), and those
    are timed."""
    timed_steps(warmup)
    per_step = timed_steps(3) / 3
    count = int(min(max_steps, max(3, min_seconds / max(per_step, 1e-6))))
    return timed_steps(count) / count


def inference_speed(predict, input_shape, batch_size, min_seconds=1.0, warmup=3, latency=True,
                    max_steps=200, quiet=contextlib.nullcontext) -> dict:
    """Images/s at ``batch_size`` and (``latency``) median batch-1 latency (ms) of ``predict(images)``
    (device tensors or NumPy out), both after warm-up, on random input (speed does not depend on the
    values). Throughput is timed the way a run's evaluation predicts (zoo.runtime.predictions_ahead:
    the next batch queued before this one's outputs are copied to NumPy), every output copied, over
    at least ``min_seconds`` (at most ``max_steps`` batches); latency waits for each single image's
    output. ``quiet``: a context manager the timing happens in, entered once both programs are compiled
    and warm (zoo.harness.sharing.measured_alone pauses the other runs of a pool there)."""
    from zoo.runtime import host_outputs, predictions_ahead

    rng = np.random.default_rng(0)
    batch = keras.ops.convert_to_tensor(rng.uniform(0, 255, (batch_size, *input_shape)).astype("float32"))
    single = batch[:1]

    def timed_steps(count: int) -> float:
        start = time.perf_counter()
        for _ in predictions_ahead(predict, (batch for _ in range(count))):
            pass
        return time.perf_counter() - start

    def warm_up() -> None:
        timed_steps(warmup)
        if latency:
            for _ in range(warmup):
                host_outputs(predict(single))

    warm_up()  # compiles both programs before ``quiet``
    with quiet():
        warm_up()  # what others queued on the device before they paused drains here, not in the timing
        images_per_second = batch_size / _seconds_per_step(timed_steps, 0, min_seconds, max_steps)
        if not latency:
            return {"images_per_second": float(images_per_second), "step_seconds": batch_size / images_per_second}
        latencies = []
        for _ in range(20):
            tick = time.perf_counter()
            host_outputs(predict(single))
            latencies.append((time.perf_counter() - tick) * 1000)
    return {"images_per_second": float(images_per_second), "step_seconds": batch_size / images_per_second,
            "latency_ms": float(statistics.median(latencies))}


def training_speed(model, images, labels, min_seconds=2.0, warmup=3, max_steps=200) -> dict:
    """Images/s and seconds per step of ``model.fit`` on one batch (``images``, ``labels``: tensors on
    the backend's device) read again and again through the run's own reader (zoo.data.pipeline's
    ArrayBatches) as a run's epochs read theirs: Keras's compiled train step, no synchronisation per
    step. Warm-up epochs first (the first compiles), then one timed epoch of at least ``min_seconds``
    (at most ``max_steps`` steps). ``model`` is compiled; its weights move."""
    from zoo.data.pipeline import ArrayBatches

    batch_size = int(images.shape[0])

    def epoch_seconds(steps: int) -> float:
        batches = ArrayBatches(steps * batch_size, batch_size, lambda positions, epoch, index: (images, labels),
                               shuffle_seed=0)
        start = time.perf_counter()
        model.fit(batches, epochs=1, verbose=0)
        return time.perf_counter() - start

    step_seconds = _seconds_per_step(epoch_seconds, warmup, min_seconds, max_steps)
    return {"images_per_second": batch_size / step_seconds, "step_seconds": step_seconds}
