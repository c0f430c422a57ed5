"""The quickstart suite on each installed Keras backend: whole-command wall time and results.

    python benchmarks/quickstart_backends.py [--backends tensorflow jax torch] [--out reports/quickstart-backends.csv]
                                             [--set train.epochs=1 ...] [--only PATTERN] [--workers 1 3]

Each backend gets one `zoo run benchmarks/quickstart.yaml --set train.backend=B` in a fresh
process with KERAS_BACKEND=B (so it works on machines without TensorFlow), timed from outside:
the wall time a user waits, start-up, data, training, evaluation, saving and the report included.
Prints, per backend, the wall time, runs ok / failed, summed training seconds and each run's
accuracy or mIoU; with --out, one CSV row per run with the backend's wall time and device.
Figures from different devices or backends say which device they come from; compare rows of one
file only. ``--workers 1 3`` runs each backend's quickstart with 1, then 3 runs at once (`zoo run --workers N`)
and prints each command's time against the first's: one run compiles while another trains.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # zoo from this checkout, installed or not (the GPU machine has it as files)

from budget import Budget  # noqa: E402
from zoo.runtime import installed  # noqa: E402
BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
COLUMNS = ["backend", "backend_version", "device", "precision", "command_seconds", "run_id", "status", "error",
           "run_seconds", "train_seconds", "first_epoch_seconds", "epoch_seconds", "accuracy", "miou", "overrides",
           "workers", "images_per_second"]


def quickstart_folder(folder: Path, backend: str, workers: int = 1) -> Path:
    """Where run_quickstart's `zoo run` writes (its --out) under ``folder``."""
    return folder / (backend if workers == 1 else f"{backend}-workers-{workers}")


def run_quickstart(backend: str, overrides: list[str], only: str | None, folder: Path,
                   budget: Budget | None = None, workers: int = 1) -> tuple[float, list, str, bool]:
    """One `zoo run` of the quickstart on ``backend``, its report included as the README's main job writes it
    (into ``folder``/reports/): (wall seconds, result rows, output tail, cut). Where ``budget`` is spent
    first, `zoo run` is interrupted (cut True): the rows are the runs it finished and the one it was
    running, ``interrupted``. ``workers``: runs at once (`zoo run --workers`)."""
    out = quickstart_folder(folder, backend, workers)
    command = [sys.executable, "-m", "zoo.cli", "run", str(ROOT / "benchmarks" / "quickstart.yaml"), "--out", str(out),
               "--set", f"train.backend={backend}"]
    for override in overrides:
        command += ["--set", override]
    if only:
        command += ["--only", only]
    if workers != 1:
        command += ["--workers", str(workers)]
    env = {**os.environ, "KERAS_BACKEND": backend,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    done = (budget or Budget(None)).run(command, env=env, cwd=folder)
    seconds = time.perf_counter() - start
    results = out / "results.csv"
    rows = list(csv.DictReader(open(results))) if results.is_file() else []
    return seconds, rows, done.output[-1500:], done.cut


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKEND_MODULES), choices=list(BACKEND_MODULES))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="a suite override for every backend, e.g. train.precision=mixed (repeatable)")
    parser.add_argument("--only", help="run only the runs whose id matches this glob")
    parser.add_argument("--out", help="write one CSV row per run (e.g. reports/quickstart-backends-h100.csv)")
    parser.add_argument("--workers", nargs="+", type=int, default=[1], metavar="N",
                        help="runs at once, each count in its own command (default 1)")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends if installed(BACKEND_MODULES[b])]
    skipped = sorted(set(args.backends) - set(backends))
    print(f"backends: {', '.join(backends) or 'none'}" + (f" (not installed: {', '.join(skipped)})" if skipped else ""),
          flush=True)
    table = []
    with tempfile.TemporaryDirectory() as folder:
        for backend in backends:
            first = None
            for workers in args.workers:
                seconds, rows, tail, _ = run_quickstart(backend, args.overrides, args.only, Path(folder),
                                                        workers=workers)
                first = first or seconds
                ok = [r for r in rows if r["status"] == "ok"]
                device = rows[0].get("device", "?") if rows else "?"
                train = sum(float(r["train_seconds"] or 0) for r in ok)
                in_runs = sum(float(r.get("run_seconds") or 0) for r in rows)
                against = f" ({first / seconds:.2f}x the first count's speed)" if len(args.workers) > 1 else ""
                print(f"{backend:10s} {device}: zoo run --workers {workers}: {seconds:7.1f} s{against}, {len(ok)} of "
                      f"{len(rows)} runs ok, {in_runs:.1f} s in the runs (training {train:.1f} s)", flush=True)
                if not rows:
                    print(f"  no results: {tail}", flush=True)
                for row in rows:
                    score = (f"mIoU {float(row['miou']):.4f}" if row.get("miou") else
                             f"accuracy {float(row['accuracy']):.4f}" if row.get("accuracy") else row.get("error", ""))
                    print(f"  {row['run_id']}: {row['status']} {score}", flush=True)
                    table.append({"backend": backend, "backend_version": (row.get("backend") or "").split(" ")[-1],
                                  "command_seconds": round(seconds, 1), "overrides": " ".join(args.overrides),
                                  "workers": workers,
                                  **{key: row.get(key) for key in COLUMNS
                                     if key in row and key not in ("backend", "overrides", "workers")}})
    if args.out and table:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({key: row.get(key) for key in COLUMNS} for row in table)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
