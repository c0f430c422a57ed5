"""Precise BatchNorm: test accuracy of short trainings with BatchNorm recalibration on and off.

    python benchmarks/precise_bn.py [--backbones baseline_cnn mobilenet_v2] [--epochs 2 4] [--size 32]

scikit-learn's handwritten digits (1,797 images of 8x8, bundled with scikit-learn: nothing to
download) are written as a folder dataset of PNGs and trained from scratch through `zoo run`,
each backbone with its own BatchNorm momentum (Keras's MobileNets: 0.999), at every epoch count,
with `train.precise_bn` off and on. The two runs of a pair train identically (same seed, same
batches); only the statistics used for validation and evaluation differ. Prints test accuracy
of each, the difference, and the seconds the final recalibration cost.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_digits(root: Path) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * (255 / 16)).astype(np.uint8)).save(folder / f"{index:04d}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["baseline_cnn", "mobilenet_v2"])
    parser.add_argument("--epochs", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    import pandas as pd

    from zoo.harness.runner import run_suite
    from zoo.harness.suite import load_suite

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        write_digits(work / "digits")
        suite = load_suite({
            "name": "precise-bn", "backbones": args.backbones, "heads": ["linear"],
            "datasets": [{"name": "digits", "source": "folder", "path": str(work / "digits"),
                          "split": {"val": 0.1, "test": 0.1}}],
            "train": {"image_size": args.size, "batch_size": args.batch, "epochs": args.epochs,
                      "precise_bn": [False, True]}})
        run_suite(suite, work / "out", executor="in-process", report=False, log=lambda *_: None)
        frame = pd.read_csv(work / "out" / "results.csv")
        frame["recalibration_seconds"] = [
            json.loads((work / "out" / "runs" / run_id / "metrics.json").read_text())["precise_bn"]["seconds"]
            if status == "ok" else None for run_id, status in zip(frame["run_id"], frame["status"])]
    frame["epochs"] = frame["swept"].str.extract(r"epochs=(\d+)")[0].astype(int)
    frame["precise"] = frame["precise_bn_batches"] > 0
    print(f"device: {frame['device'].iloc[0]}; {frame['precision'].iloc[0]}; digits (1,797 images, test "
          f"{round(0.1 * 1797)}) at {args.size} px, batch {args.batch}, from scratch")
    print(f"{'backbone':16s} {'epochs':>6s} {'moving averages':>16s} {'precise BN':>11s} {'difference':>11s} "
          f"{'batches':>8s} {'recalibration s':>16s}")
    for (backbone, epochs), pair in frame.groupby(["backbone", "epochs"], sort=False):
        off = pair[~pair["precise"]].iloc[0]
        on = pair[pair["precise"]].iloc[0]
        print(f"{backbone:16s} {epochs:6d} {off['accuracy']:16.3f} {on['accuracy']:11.3f} "
              f"{on['accuracy'] - off['accuracy']:+11.3f} {int(on['precise_bn_batches']):8d} "
              f"{on['recalibration_seconds']:16.2f}")
    failed = frame[frame["status"] != "ok"]
    for _, row in failed.iterrows():
        print(f"failed: {row['run_id']}: {row['error']}")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
