"""Feature cache: a sweep of five head trainings on one frozen backbone, cache on against off.

    python benchmarks/feature_cache.py [--backbone mobilenet_v2] [--size 64] [--epochs 5]

Training cost per configuration = train seconds + seconds spent computing features (once,
then reused). Prints the total of each, the ratio off / on (target >= 10x) and the largest
accuracy difference between matching runs (target: within one point, 0.01).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def sweep(backbone, size, epochs, cache):
    import pandas as pd

    from zoo.harness.runner import run_suite
    from zoo.harness.suite import load_suite

    suite = load_suite({"name": "feature-cache", "datasets": ["synthetic_terrain"], "backbones": [backbone],
                        "heads": ["linear"], "trainable": "frozen",
                        "train": {"image_size": size, "batch_size": 32, "epochs": epochs, "cache_features": cache,
                                  "learning_rate": [0.0003, 0.001, 0.003, 0.01, 0.03]}})
    with tempfile.TemporaryDirectory() as out:
        run_suite(suite, out, isolate=False, report=False, log=lambda *_: None)
        return pd.read_csv(os.path.join(out, "results.csv"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    off = sweep(args.backbone, args.size, args.epochs, False)
    on = sweep(args.backbone, args.size, args.epochs, "auto")
    cost_off = off["train_seconds"].sum()
    cost_on = on["train_seconds"].sum() + on["feature_seconds"].fillna(0).sum()
    difference = (off.set_index("swept")["accuracy"] - on.set_index("swept")["accuracy"]).abs().max()
    print(f"device: {off['device'].iloc[0]}; float32; frozen {args.backbone} + linear head, 5 learning rates, "
          f"{args.epochs} epochs, synthetic_terrain {args.size}px")
    print(f"cache off: {cost_off:.1f}s of training for 5 runs")
    print(f"cache on:  {cost_on:.1f}s (features computed once in {on['feature_seconds'].max():.1f}s, "
          f"reused {int((on['features'] == 'reused').sum())} times)")
    print(f"ratio off/on: {cost_off / cost_on:.1f}x (target >= 10x)")
    print(f"largest accuracy difference between matching runs: {difference:.4f} (target <= 0.01)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
