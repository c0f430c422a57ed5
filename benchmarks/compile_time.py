"""Where a quickstart run's first epoch goes, under XLA flag settings: compile seconds by function, first and
later epochs, the run's whole time and its score, each setting in a fresh process and a fresh output folder (no
compilation cache shared between them).

    python benchmarks/compile_time.py [--run "synthetic_terrain-mobilenet_v3_small*"] [--backend jax]
                                      [--settings default autotune_level_0 autotune_level_2]
                                      [--csv reports/compile-time-<device>.csv] [--budget SECONDS]

On an H200 the quickstart's whole command took 262.7 s against a target of 60 s, nearly all of it XLA
compiling at 32 px (README, "Measured on a GPU"): mobilenet_v3_small's train step compiled in 24.8 s there
against 7.7 s on a 2-core CPU. XLA:GPU autotunes every convolution and matrix product while it compiles
(``--xla_gpu_autotune_level``, 4 by default: it runs each candidate kernel on the GPU); tiny 32 px layers
gain little from the fastest kernel. This script measures what each setting costs and gives back (compile
seconds, later epochs' seconds, the score), so that a default is chosen from measurements. On a CPU the
``xla_gpu_*`` flags change nothing: the rows there only try the script.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from budget import Budget  # noqa: E402
from zoo.results import write_atomic  # noqa: E402
# Name -> XLA_FLAGS added to the environment's own.
SETTINGS = {"default": "", "autotune_level_0": "--xla_gpu_autotune_level=0",
            "autotune_level_1": "--xla_gpu_autotune_level=1", "autotune_level_2": "--xla_gpu_autotune_level=2"}
COLUMNS = ["date", "device", "backend", "setting", "xla_flags", "command_seconds", "run_id", "status", "run_seconds",
           "first_epoch_seconds", "epoch_seconds", "compile_seconds", "compilations", "accuracy", "miou",
           "compile_seconds_by_function", "error"]


def measure(setting: str, only: str, backend: str, folder: Path, budget: Budget) -> list[dict]:
    """`zoo run benchmarks/quickstart.yaml --only ONLY` under ``setting``'s XLA flags: one row per run."""
    out = folder / setting
    flags = " ".join(part for part in (os.environ.get("XLA_FLAGS", ""), SETTINGS[setting]) if part)
    env = {**os.environ, "KERAS_BACKEND": backend, "XLA_FLAGS": flags,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    done = budget.run([sys.executable, "-m", "zoo.cli", "run", str(ROOT / "benchmarks" / "quickstart.yaml"), "--out",
                       str(out), "--set", f"train.backend={backend}", "--only", only, "--no-report"], env=env, cwd=folder)
    seconds = time.perf_counter() - start
    results = out / "results.csv"
    runs = list(csv.DictReader(open(results))) if results.is_file() else []
    if not runs:
        why = "cut at the time budget" if done.cut else (done.output.strip().splitlines() or ["no output"])[-1][:300]
        return [{"setting": setting, "xla_flags": SETTINGS[setting], "command_seconds": round(seconds, 1),
                 "status": "not run", "error": why}]
    rows = []
    for run in runs:
        try:
            by_function = json.loads((out / "runs" / run["run_id"] / "metrics.json").read_text()).get(
                "compile_seconds_by_function") or {}
        except (OSError, ValueError):
            by_function = {}
        rows.append({"device": run.get("device"), "backend": run.get("backend") or backend, "setting": setting,
                     "xla_flags": SETTINGS[setting], "command_seconds": round(seconds, 1),
                     **{key: run.get(key) for key in ("run_id", "status", "run_seconds", "first_epoch_seconds",
                                                      "epoch_seconds", "compile_seconds", "compilations", "accuracy",
                                                      "miou", "error")},
                     "compile_seconds_by_function": "; ".join(f"{name} {value:.1f}" for name, value in
                                                              list(by_function.items())[:6])})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="synthetic_terrain-mobilenet_v3_small*",
                        help="the quickstart's runs to time (a glob of run ids, as `zoo run --only`)")
    parser.add_argument("--backend", default="jax", choices=["jax", "tensorflow"])
    parser.add_argument("--settings", nargs="+", default=["default", "autotune_level_0", "autotune_level_2"],
                        choices=list(SETTINGS))
    parser.add_argument("--csv", help="write the rows here (after every setting)")
    parser.add_argument("--budget", type=float, default=0, metavar="SECONDS",
                        help="stop when this many seconds are spent (each setting gets an equal share of what is left)")
    args = parser.parse_args(argv)
    budget = Budget(args.budget)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as work:
        for index, setting in enumerate(args.settings):
            part = budget.share(1 / (len(args.settings) - index))
            for row in measure(setting, args.run, args.backend, Path(work), part):
                rows.append({"date": date, **row})
                print(f"{setting:18s} {row.get('run_id') or '-'}: {row.get('status')}, command "
                      f"{row['command_seconds']} s, first epoch {row.get('first_epoch_seconds') or '-'} s, later "
                      f"{row.get('epoch_seconds') or '-'} s, compile {row.get('compile_seconds') or '-'} s "
                      f"[{row.get('compile_seconds_by_function') or row.get('error') or ''}]", flush=True)
            if args.csv:
                text = io.StringIO()
                writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
                write_atomic(Path(args.csv), text.getvalue())
    return 0 if rows and all(row.get("status") == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
