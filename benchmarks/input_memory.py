"""Resident memory of the input path when a dataset's decoded rows exceed ``train.input_memory_gb``.

    python benchmarks/input_memory.py [--images 600] [--size 224] [--limit-mb 20] [--csv reports/input_memory.csv]

Generates a folder of photos whose decoded rows at ``--size`` are larger than the limit, then reads two
training epochs through the pipeline twice in separate processes: once with the limit (rows read from the
disk cache batch by batch) and once without one (rows held in memory). Each process reports its resident
memory (VmRSS) after start-up and the cache build, and the highest value seen while the epochs run. The
promise: over the limit, resident memory grows by no more than the limit plus a few batches.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MEASURE = """
import json, sys
import numpy as np

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

from zoo.data import open_source
from zoo.data.pipeline import input_pipeline
from zoo.data.steps import PipelineOptions

folder, cache, size, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
limit = None if limit == "none" else int(limit)
source = open_source({"name": "photos", "source": "folder", "path": folder})
options = PipelineOptions(image_size=size, batch_size=32, augment=True, cache_root=cache, memory_limit=limit)
batches = input_pipeline(source, "train", None, source.info, options, training=True)
batches[0]
start = rss()
peak = start
for epoch in range(2):
    for batch in batches:
        peak = max(peak, rss())
    batches.on_epoch_end()
print(json.dumps({"start": start, "peak": peak, "cache": batches.input_cache,
                  "batch_bytes": 32 * size * size * 3 * (1 + 4)}))
"""


def make_photos(folder: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / ("a" if index % 2 else "b") / f"{index}.png", compress_level=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--limit-mb", type=float, default=20.0)
    parser.add_argument("--csv", default="reports/input_memory.csv")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zoo-memory-"))
    make_photos(work / "photos", args.images)
    limit = int(args.limit_mb * 1e6)
    dataset_bytes = args.images * args.size * args.size * 3
    print(f"{args.images} photos; decoded rows at {args.size} px: {dataset_bytes / 1e6:.0f} MB; "
          f"limit {limit / 1e6:.0f} MB")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    rows = []
    for label, given in (("over the limit: read from the disk cache", str(limit)), ("no limit: held", "none")):
        done = subprocess.run([sys.executable, "-c", MEASURE, str(work / "photos"), str(work / "cache"),
                               str(args.size), given], capture_output=True, text=True, env=env, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        growth = figures["peak"] - figures["start"]
        print(f"{label:42} resident after start {figures['start'] / 1e6:6.0f} MB, growth over two epochs "
              f"{growth / 1e6:6.0f} MB (a batch: {figures['batch_bytes'] / 1e6:.0f} MB)")
        rows.append({"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "case": label,
                     "images": args.images, "size": args.size, "dataset_mb": round(dataset_bytes / 1e6, 1),
                     "limit_mb": round(limit / 1e6, 1) if given != "none" else "",
                     "rss_after_start_mb": round(figures["start"] / 1e6, 1),
                     "rss_growth_mb": round(growth / 1e6, 1), "batch_mb": round(figures["batch_bytes"] / 1e6, 1)})
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
