"""What decoding each image once saves a seed sweep: a 3-seed suite of one backbone on a folder of photos,
run as a user runs it (`zoo run`, whole-command wall time), with the decoded cache (``train.cache: auto``)
and without it (``none``: every epoch of every run decodes and resizes every image again).

    python benchmarks/decode_once.py [--images 600] [--size 64] [--epochs 3] [--csv reports/decode_once.csv]

The photos are JPEGs of 500x375 pixels (Stanford Dogs' typical size), so decoding costs what it costs on
real photos. Prints each variant's wall time, the per-run ``input_cache`` column, and the ratio.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_photos(folder: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(count):
        label = ("beagle", "collie", "husky")[index % 3]
        (folder / label).mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (47, 63, 3), dtype=np.uint8)
        photo = Image.fromarray(base).resize((500, 375), Image.BILINEAR)
        photo.save(folder / label / f"{index}.jpg", quality=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--csv", default="reports/decode_once.csv")
    args = parser.parse_args()

    import pandas as pd

    from zoo.runtime import backend, backend_version, describe_device

    work = Path(tempfile.mkdtemp(prefix="zoo-decode-once-"))
    make_photos(work / "photos", args.images)
    rows = []
    for cache in ("auto", "none"):
        suite = {"name": f"decode-{cache}", "backbones": ["baseline_cnn"], "heads": ["linear"], "weights": "none",
                 "datasets": [{"name": "photos", "source": "folder", "path": str(work / "photos")}],
                 "seeds": [0, 1, 2], "train": {"image_size": args.size, "batch_size": 32, "epochs": args.epochs,
                                               "cache": cache, "precise_bn": False}}
        (work / f"{cache}.json").write_text(json.dumps(suite))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "zoo.cli", "run", str(work / f"{cache}.json"), "--out",
                        str(work / cache), "--no-report"], check=True, capture_output=True, cwd=work,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        seconds = time.perf_counter() - start
        table = pd.read_csv(work / cache / "results.csv").sort_values("seed")
        print(f"train.cache: {cache:4}  whole command {seconds:6.1f} s; input_cache per run: "
              f"{', '.join(table['input_cache'].astype(str))}; first epochs {table['first_epoch_seconds'].round(1).tolist()}"
              f" s, later epochs (median) {table['epoch_seconds'].round(2).tolist()} s")
        rows.append({"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "device": describe_device(),
                     "backend": f"{backend()} {backend_version()}", "precision": "float32", "images": args.images,
                     "photo": "500x375 JPEG", "size": args.size, "epochs": args.epochs, "seeds": 3,
                     "train_cache": cache, "whole_command_seconds": round(seconds, 1),
                     "input_cache": " ".join(table["input_cache"].astype(str)),
                     "first_epoch_seconds": " ".join(f"{v:.2f}" for v in table["first_epoch_seconds"]),
                     "epoch_seconds": " ".join(f"{v:.2f}" for v in table["epoch_seconds"])})
    print(f"decoded once / decoded every epoch: {rows[0]['whole_command_seconds'] / rows[1]['whole_command_seconds']:.2f}"
          f" of the wall time")
    if args.csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
