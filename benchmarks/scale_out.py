"""Scale-out: the same 8-run suite with the local worker and on a two-node Ray cluster, and batch
prediction (`zoo predict --output`, locally and with Ray Data) against `zoo predict` on each file.

    python benchmarks/scale_out.py [--runs-epochs 2] [--images 2000] [--cpus-per-node 1]

Every figure is the wall time of the whole command (`python -m zoo.cli ...`, start-up included),
timed from outside, as a user waits for it. The Ray cluster is started first (two nodes on
127.0.0.1, `python -m zoo.harness.local_ray`); its own start is printed apart, since a real
cluster is up before the suite starts. On one machine both nodes share its cores, so this
measures zoo's overhead and the parallelism those cores allow, not a real cluster's speed-up:
with N machines the suite's wall time approaches local / N when runs outnumber nodes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def suite(epochs: int) -> dict:
    """8 runs: two heads x four seeds of the baseline CNN on the embedded terrain tiles."""
    return {"name": "scale_out", "datasets": ["synthetic_terrain"], "backbones": ["baseline_cnn"],
            "heads": ["linear", "mlp"], "seeds": [0, 1, 2, 3],
            "train": {"image_size": 64, "epochs": epochs, "batch_size": 32}}


def timed(command: list[str], env=None) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1) or "Traceback" in result.stderr:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return seconds


def zoo(*args) -> list[str]:
    return [sys.executable, "-m", "zoo.cli", *map(str, args)]


def write_images(folder: Path, count: int, size: int = 64) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"tile{index:05d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=float, default=1)
    args = parser.parse_args()
    from zoo.harness.local_ray import LocalRayCluster

    work = Path(tempfile.mkdtemp(prefix="zoo-scale-out-"))
    suite_path = work / "suite.json"
    suite_path.write_text(json.dumps(suite(args.runs_epochs)))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    figures = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "runs": 8, "images": args.images}

    figures["local_suite_seconds"] = timed(zoo("run", suite_path, "--out", work / "local", "--no-report"))
    started = time.perf_counter()
    with LocalRayCluster(nodes=args.nodes, cpus_per_node=args.cpus_per_node) as cluster:
        figures["cluster_start_seconds"] = time.perf_counter() - started
        figures["ray_suite_seconds"] = timed(zoo("run", suite_path, "--out", work / "ray", "--no-report",
                                                 "--executor", "ray", "--address", cluster.address), env)
        run_dir = next(p for p in (work / "local" / "runs").iterdir() if "-linear-" in p.name)
        images = write_images(work / "images", args.images)
        figures["predict_each_file_seconds"] = timed(zoo("predict", run_dir, *images, "--top-k", 1))
        figures["predict_parquet_local_seconds"] = timed(zoo("predict", run_dir, work / "images", "--output",
                                                             work / "local.parquet"))
        figures["predict_parquet_ray_seconds"] = timed(zoo("predict", run_dir, work / "images", "--output",
                                                           work / "ray.parquet", "--executor", "ray",
                                                           "--address", cluster.address), env)
    import pandas as pd

    for name in ("local", "ray"):
        frame = pd.read_csv(work / name / "results.csv")
        figures[f"{name}_rows_ok"] = int((frame["status"] == "ok").sum())
        figures[f"{name}_mean_accuracy"] = round(float(frame["accuracy"].mean()), 4)
    for key in ("each_file", "parquet_local", "parquet_ray"):
        figures[f"predict_{key}_images_per_second"] = args.images / figures[f"predict_{key}_seconds"]
    print(f"machine: {figures['machine']}; {args.nodes}-node Ray cluster on 127.0.0.1, "
          f"{args.cpus_per_node:g} CPU per node (started in {figures['cluster_start_seconds']:.1f}s)")
    print(f"8-run suite, local worker: {figures['local_suite_seconds']:.1f}s "
          f"({figures['local_rows_ok']} ok, mean accuracy {figures['local_mean_accuracy']})")
    print(f"8-run suite, Ray:          {figures['ray_suite_seconds']:.1f}s "
          f"({figures['ray_rows_ok']} ok, mean accuracy {figures['ray_mean_accuracy']})")
    print(f"  local / Ray wall time: {figures['local_suite_seconds'] / figures['ray_suite_seconds']:.2f}x")
    each = figures["predict_each_file_images_per_second"]
    for key, label in (("each_file", "zoo predict, one process, file by file"),
                       ("parquet_local", "zoo predict --output, local batches"),
                       ("parquet_ray", "zoo predict --output --executor ray")):
        rate = figures[f"predict_{key}_images_per_second"]
        print(f"{label:42s} {args.images} images in {figures[f'predict_{key}_seconds']:5.1f}s: "
              f"{rate:6.1f} images/s ({rate / each:.2f}x)")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
