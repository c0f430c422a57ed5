"""What the decoded-once image cache saves and what it costs in memory, measured as a user meets it.

    python benchmarks/decoded_cache.py sweep  [--images 600] [--size 64] [--epochs 3]
    python benchmarks/decoded_cache.py photos [--images 12] [--size 224]
    python benchmarks/decoded_cache.py memory [--images 600] [--size 224] [--limit-mb 20]

``sweep``: a 3-seed suite of one backbone on a folder of JPEGs of 500x375 pixels (Stanford Dogs' typical
size, so decoding costs what it costs on real photos), run as a user runs it (`zoo run`, whole-command wall
time), with the decoded cache (``train.cache: auto``) and without it (``none``: every epoch of every run
decodes and resizes every image again); prints each variant's wall time, the runs' ``input_cache`` and epoch
times, and the ratio -> reports/decoded_cache_sweep.csv.

``photos``: phone photos (4032x3024 JPEGs) as a shelter's breed classifier meets them: per photo, on one
thread, the folder scan's check (a full decode before, libjpeg's 1/8 scale now, which still reads every
block) and the decode of its row at --size px (full resolution before, the smallest scale keeping the short
side at least twice the size now), each against the other, and how far the rows differ (grey levels)
-> reports/decoded_cache_photos.csv.

``memory``: a folder of photos whose decoded rows are larger than ``train.input_memory_gb``, read for two
training epochs in separate processes, once with the limit (rows read from the disk cache batch by batch)
and once without (rows held in memory); each reports its resident memory (VmRSS) after start-up and the
cache build and the highest value seen during the epochs -> reports/decoded_cache_memory.csv. The promise:
over the limit, resident memory grows by no more than the limit plus a few batches.
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


def make_photos(folder: Path, count: int, jpeg: bool) -> None:
    """``count`` photos in class folders: smooth 500x375 JPEGs (``jpeg``), else noisy 300x300 PNGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(count):
        label = ("beagle", "collie", "husky")[index % 3]
        (folder / label).mkdir(parents=True, exist_ok=True)
        if jpeg:
            base = Image.fromarray(rng.integers(0, 255, (47, 63, 3), dtype=np.uint8))
            base.resize((500, 375), Image.BILINEAR).save(folder / label / f"{index}.jpg", quality=90)
        else:
            pixels = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{index}.png", compress_level=1)


def sweep(args) -> list[dict]:
    import pandas as pd

    from zoo.runtime import backend, backend_version, describe_device

    work = Path(tempfile.mkdtemp(prefix="zoo-decode-once-"))
    make_photos(work / "photos", args.images, jpeg=True)
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
    return rows


def photos(args) -> list[dict]:
    import numpy as np
    from PIL import Image

    from zoo.data.decoded import stored_image
    from zoo.data.images import probe_file, read_image
    from zoo.runtime import describe_device

    work = Path(tempfile.mkdtemp(prefix="zoo-photos-"))
    rng = np.random.default_rng(0)
    paths = []
    for index in range(args.images):
        # A photo's detail at every scale: a smooth scene with fine texture on top.
        scene = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).resize((4032, 3024), Image.BICUBIC)
        texture = rng.normal(0, 12, (3024, 4032, 1))
        photo = np.clip(np.asarray(scene, np.float32) + texture, 0, 255).astype(np.uint8)
        paths.append(work / f"{index}.jpg")
        Image.fromarray(photo).save(paths[-1], quality=92)

    def per_photo(step) -> float:
        times = []
        for path in paths:
            start = time.perf_counter()
            step(path)
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    figures = {
        "scan_full_decode": per_photo(lambda path: read_image(path, reduce=False)),
        "scan_eighth_scale": per_photo(probe_file),
        "row_from_full_resolution": per_photo(lambda path: stored_image(read_image(path), args.size, 255.0)),
        "row_from_reduced_scale": per_photo(lambda path: stored_image(read_image(path, size=args.size), args.size,
                                                                      255.0)),
    }
    # Against an area-averaged reference (Pillow's box filter from full resolution: every pixel counted),
    # how far each row is: a bilinear resize from full resolution samples a few pixels per output pixel.
    full_error, reduced_error = [], []
    for path in paths:
        with Image.open(path) as image:
            reference = np.asarray(image.resize((args.size, args.size), Image.BOX), dtype=np.float32)
        full_error.append(np.abs(stored_image(read_image(path), args.size, 255.0) - reference).mean())
        reduced_error.append(np.abs(stored_image(read_image(path, size=args.size), args.size, 255.0) - reference).mean())
    before = figures["scan_full_decode"] + figures["row_from_full_resolution"]
    after = figures["scan_eighth_scale"] + figures["row_from_reduced_scale"]
    print(f"{args.images} photos of 4032x3024, rows at {args.size} px, one thread, median seconds per photo:")
    print(f"  scan check    full decode {figures['scan_full_decode']:.3f}  1/8 scale {figures['scan_eighth_scale']:.3f}"
          f"  ({figures['scan_full_decode'] / figures['scan_eighth_scale']:.1f}x)")
    print(f"  row decode    full {figures['row_from_full_resolution']:.3f}  reduced {figures['row_from_reduced_scale']:.3f}"
          f"  ({figures['row_from_full_resolution'] / figures['row_from_reduced_scale']:.1f}x)")
    print(f"  a photo's first run: {before:.3f} s before, {after:.3f} s now ({before / after:.1f}x)")
    print(f"  mean distance to the area-averaged row: {np.mean(full_error):.2f} grey levels before, "
          f"{np.mean(reduced_error):.2f} now")
    day, device = datetime.now(timezone.utc).strftime("%Y-%m-%d"), describe_device()
    measured = [(name, round(value, 4), "median seconds per photo") for name, value in figures.items()]
    measured += [("first_run_speedup", round(before / after, 2), "x (scan + row, before / now)"),
                 ("row_from_full_resolution_vs_area_average", round(float(np.mean(full_error)), 3),
                  "mean absolute grey levels"),
                 ("row_from_reduced_scale_vs_area_average", round(float(np.mean(reduced_error)), 3),
                  "mean absolute grey levels")]
    return [{"date": day, "device": device, "photo": "4032x3024 JPEG q92", "images": args.images, "size": args.size,
             "measure": name, "value": value, "unit": unit} for name, value, unit in measured]


def memory(args) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="zoo-memory-"))
    make_photos(work / "photos", args.images, jpeg=False)
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
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["sweep", "photos", "memory"])
    parser.add_argument("--images", type=int, help="photos (sweep, memory: 600; photos: 12)")
    parser.add_argument("--size", type=int, help="image size (sweep: 64, memory: 224)")
    parser.add_argument("--epochs", type=int, default=3, help="sweep: epochs per run")
    parser.add_argument("--limit-mb", type=float, default=20.0, help="memory: train.input_memory_gb in MB")
    parser.add_argument("--csv", help="default reports/decoded_cache_<what>.csv ('' for none)")
    args = parser.parse_args()
    args.size = args.size or (64 if args.what == "sweep" else 224)
    args.images = args.images or (12 if args.what == "photos" else 600)
    rows = {"sweep": sweep, "photos": photos, "memory": memory}[args.what](args)
    path = Path(f"reports/decoded_cache_{args.what}.csv" if args.csv is None else args.csv)
    if str(path) not in ("", "."):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
