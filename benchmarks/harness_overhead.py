"""Harness overhead: seconds per epoch of a zoo run against a plain Keras fit of the same model
on the same data (same pipeline, optimizer, loss, batch size, validation each epoch). The zoo run
has train.precise_bn off for this ratio, since the plain fit does no BatchNorm recalibration; its
cost is printed apart.

    python benchmarks/harness_overhead.py [--backbone baseline_cnn] [--size 64] [--epochs 6]

Prints two ratios zoo / plain: the first epoch (tracing the train and validation steps, what a
newcomer waits for first; target <= 1.1) and the median later epoch (target <= 1.05). Each side is
measured --repeats times, interleaved, and the medians compared, with TensorFlow op determinism on for
both (zoo turns it on for reproducible runs, and it changes kernel choice and speed, so a plain fit
without it would not be the same computation).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def plain_keras(backbone, size, epochs, batch):
    import keras

    from zoo import build_model
    from zoo.backbones import BACKBONES
    from zoo.data import open_source
    from zoo.data.pipeline import input_pipeline
    from zoo.data.steps import PipelineOptions
    from zoo.data.splits import plan_splits

    keras.utils.set_random_seed(0)
    source = open_source("synthetic_terrain")
    plan = plan_splits(source.info.splits, None, 0, {"train": source.labels("train")})
    options = dict(image_size=size, batch_size=batch, preprocessing=BACKBONES.get(backbone).preprocessing, seed=0)
    train = input_pipeline(source, "train", plan["train"][1], source.info, PipelineOptions(**options), True)
    val = input_pipeline(source, "train", plan["val"][1], source.info, PipelineOptions(**options), False)
    model = build_model(backbone, "linear", source.info.num_classes, (size, size, 3))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=False)
    seconds = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    model.fit(train, validation_data=val, epochs=epochs, callbacks=[Timer()], verbose=0)
    return seconds[0], statistics.median(seconds[1:])


def zoo_run(backbone, size, epochs, batch, precise_bn=False):
    import pandas as pd

    from zoo.harness.runner import run_suite
    from zoo.harness.suite import load_suite

    suite = load_suite({"name": "overhead", "datasets": ["synthetic_terrain"], "backbones": [backbone],
                        "heads": ["linear"], "train": {"image_size": size, "batch_size": batch, "epochs": epochs,
                                                       "cache_features": False, "precise_bn": precise_bn}})
    with tempfile.TemporaryDirectory() as out:
        run_suite(suite, out, executor="in-process", report=False, log=lambda *_: None)
        row = pd.read_csv(os.path.join(out, "results.csv")).iloc[0]
    return float(row["first_epoch_seconds"]), float(row["epoch_seconds"]), row["device"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="baseline_cnn")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    plain, harness, precise = [], [], []
    for _ in range(args.repeats):
        plain.append(plain_keras(args.backbone, args.size, args.epochs, args.batch))
        harness.append(zoo_run(args.backbone, args.size, args.epochs, args.batch))
        precise.append(zoo_run(args.backbone, args.size, args.epochs, args.batch, precise_bn=True))
    device = harness[0][2]
    plain_first, zoo_first = (statistics.median(r[0] for r in runs) for runs in (plain, harness))
    plain_epoch, zoo_epoch = (statistics.median(r[1] for r in runs) for runs in (plain, harness))
    print(f"device: {device}; float32; op determinism on for both; {args.backbone}/linear, "
          f"synthetic_terrain {args.size}px, batch {args.batch}; medians of {args.repeats} interleaved repeats")
    print(f"plain keras fit: first epoch {plain_first:.2f}s {[round(p[0], 2) for p in plain]}, "
          f"later epochs {plain_epoch:.3f}s")
    print(f"zoo run:         first epoch {zoo_first:.2f}s {[round(h[0], 2) for h in harness]}, "
          f"later epochs {zoo_epoch:.3f}s")
    print(f"ratio zoo/plain first epoch: {zoo_first / plain_first:.3f} (target <= 1.1)")
    print(f"ratio zoo/plain seconds per later epoch: {zoo_epoch / plain_epoch:.3f} (target <= 1.05)")
    precise_first, precise_epoch = (statistics.median(p[i] for p in precise) for i in (0, 1))
    print(f"zoo run with precise BN before each validation (work the plain fit does not do): first epoch "
          f"{precise_first:.2f}s ({precise_first - zoo_first:+.2f}s: tracing its training-mode forward), later "
          f"epochs {precise_epoch:.3f}s, {precise_epoch / zoo_epoch:.2f}x zoo without it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
