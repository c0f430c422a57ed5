"""Feature cache: a sweep of head trainings over seeds and learning rates on one frozen
backbone, as whole `zoo run` commands, cache on against off.

    python benchmarks/feature_cache.py [--backbone mobilenet_v2] [--size 64] [--epochs 10] [--examples 900]

ImageNet weights cannot be assumed here, and a frozen randomly initialised backbone gives
near-constant features (every head then predicts one class, and equal metrics would prove
nothing). So the backbone is first pretrained on other synthetic terrain tiles (another
generator seed), saved as a weights file, and frozen for the sweep, as a pretrained backbone is.

Each side is one `zoo run` of the same suite (2 seeds x 3 learning rates = 6 runs) in a fresh
process, timed from outside: the wall time a user waits, with start-up, evaluation, speed
measurement, saving and the report. Prints both, the ratio off / on (targets: >= 5x at 64 px,
>= 10x at 128 px) and the largest accuracy difference between matching runs (within 0.01).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LEARNING_RATES = [0.001, 0.003, 0.01]
SEEDS = [0, 1]


def pretrain_backbone(backbone, size, folder) -> tuple[str, float]:
    """Train ``backbone`` on tiles from another seed; return its backbone weights file and accuracy."""
    import keras
    import pandas as pd

    from zoo.harness.runner import run_suite
    from zoo.harness.suite import load_suite

    suite = load_suite({"name": "pretrain", "backbones": [backbone], "heads": ["linear"],
                        "datasets": [{"name": "synthetic_terrain", "seed": 1, "num_examples": 1200}],
                        "train": {"image_size": size, "batch_size": 32, "epochs": 8, "learning_rate": 0.001,
                                  # Keras's 0.99/0.999 would leave the moving statistics, which a
                                  # frozen backbone uses, far from the data after a few hundred steps.
                                  "batchnorm_momentum": 0.9}})
    out = os.path.join(folder, "pretrain")
    run_suite(suite, out, executor="in-process", report=False, log=lambda *_: None)
    row = pd.read_csv(os.path.join(out, "results.csv")).iloc[0]
    if row["status"] != "ok":
        raise SystemExit(f"pretraining {backbone} failed: {row['error']}")
    model = keras.saving.load_model(os.path.join(out, "runs", row["run_id"], "model.keras"))
    path = os.path.join(folder, f"{backbone}-pretrained.weights.h5")
    model.get_layer("backbone").save_weights(path)
    return path, float(row["accuracy"])


def sweep(backbone, size, epochs, examples, weights, cache, folder):
    """One `zoo run` of the sweep in its own process; (wall seconds, results)."""
    import json
    import subprocess
    import time

    import pandas as pd

    suite = os.path.join(folder, f"sweep-{cache}.yaml")
    with open(suite, "w") as stream:
        json.dump({"name": f"feature-cache-{cache}", "backbones": [backbone], "heads": ["linear"], "seeds": SEEDS,
                   "datasets": [{"name": "synthetic_terrain", "num_examples": examples}],
                   "weights": weights, "trainable": "frozen",
                   "train": {"image_size": size, "batch_size": 32, "epochs": epochs, "cache_features": cache,
                             "learning_rate": LEARNING_RATES}}, stream)
    out = os.path.join(folder, f"sweep-{cache}")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "run", suite, "--out", out], capture_output=True,
                            text=True, cwd=folder)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"zoo run (cache {cache}) failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    frame = pd.read_csv(os.path.join(out, "results.csv"))
    # The last epoch's validation loss still differs where accuracy has saturated.
    frame["val_loss"] = [pd.read_csv(os.path.join(out, "runs", run_id, "history.csv"))["val_loss"].iloc[-1]
                         for run_id in frame["run_id"]]
    return seconds, frame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--examples", type=int, default=900, help="synthetic_terrain tiles (the card has 900)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        weights, pretrain_accuracy = pretrain_backbone(args.backbone, args.size, folder)
        seconds_off, off = sweep(args.backbone, args.size, args.epochs, args.examples, weights, False, folder)
        seconds_on, on = sweep(args.backbone, args.size, args.epochs, args.examples, weights, "auto", folder)
    failed = [f"{r.swept}: {r.error}" for frame in (off, on) for r in frame.itertuples() if r.status != "ok"]
    if failed:
        print("runs failed:\n  " + "\n  ".join(failed))
        return 1
    columns = ["accuracy", "val_loss"]
    key = ["swept", "seed"]
    accuracy = off.set_index(key)[columns].add_suffix(" off").join(on.set_index(key)[columns].add_suffix(" on"))
    difference = (accuracy["accuracy off"] - accuracy["accuracy on"]).abs().max()
    print(f"device: {off['device'].iloc[0]}; float32; frozen pretrained {args.backbone} + linear head, "
          f"{len(SEEDS)} seeds x {len(LEARNING_RATES)} learning rates, {args.epochs} epochs, synthetic_terrain "
          f"{args.examples} tiles at {args.size}px")
    print(f"pretraining (other tiles, all layers trained): test accuracy {pretrain_accuracy:.4f}")
    print(accuracy.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"cache off: zoo run {seconds_off:.1f} s for {len(off)} runs (training {off['train_seconds'].sum():.1f} s; "
          f"first epoch {off['first_epoch_seconds'].median():.2f} s, later {off['epoch_seconds'].median():.3f} s)")
    print(f"cache on:  zoo run {seconds_on:.1f} s (features computed once in {on['feature_seconds'].max():.1f} s, "
          f"reused {int((on['features'] == 'reused').sum())} times; training {on['train_seconds'].sum():.1f} s)")
    target = 5 if args.size < 128 else 10
    print(f"ratio off/on, whole command: {seconds_off / seconds_on:.1f}x (target >= {target}x)")
    print(f"largest accuracy difference between matching runs: {difference:.4f} (target <= 0.01); "
          f"largest validation-loss difference: {(accuracy['val_loss off'] - accuracy['val_loss on']).abs().max():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
