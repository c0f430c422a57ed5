"""The one GPU check: what zoo does with a GPU, in one command that anyone with one runs.

    python benchmarks/gpu_check.py [--backends jax torch tensorflow] [--out-dir reports]
    python benchmarks/gpu_check.py --quick      # the same steps, tiny, to try the script on a CPU

Four measurements, each in its own processes, on the machine's first device:
1. ``vs_timm``: inference and training images/s of mobilenet_v2, resnet50, densenet121 and vgg16 at 224 px,
   batch 64, mixed precision, on every installed Keras backend, beside timm's (benchmarks/vs_timm.py);
   targets zoo / timm >= 1.0 for inference and >= 0.9 for training.
2. ``quickstart``: `zoo run benchmarks/quickstart.yaml` on the fastest backend of (1), whole-command wall
   time and each run's compile seconds (and the functions they went to), compilations and first and later
   epochs (target <= 60 s on an H200).
3. ``input``: the input path at 224 px against mobilenet_v2's mixed-precision training on that backend
   (benchmarks/pipeline_throughput.py; target delivered >= 3x training).
4. ``evaluation``: a run's own evaluation loop of mobilenet_v2 (input pipeline, prediction, metrics) against
   `zoo speed`'s figure for the same model (benchmarks/eval_speed.py; target >= 0.9: a report's images/s is
   what a run sees).
5. ``bfloat16``: `zoo speed --precision mixed_bfloat16` of the first two models on the fastest backend against
   timm's figures of (1) (AMP float16) and zoo's own float16 figures: whether bfloat16, which needs no loss
   scaling and is as fast on Hopper's tensor cores, should be what ``mixed`` means on such a GPU.
Writes ``reports/gpu-<device>.csv`` (one row per figure: check, subject, backend, value, unit, target) and
``reports/gpu-<device>.md`` (a short summary with the device, versions and every figure against its target).
Meant to take at most 8 minutes on an H100/H200; TensorFlow is optional (JAX and/or PyTorch suffice).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(__file__).resolve().parent
BACKEND_MODULES = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}
MODELS = ["mobilenet_v2", "resnet50", "densenet121", "vgg16"]
COLUMNS = ["date", "device", "check", "subject", "backend", "value", "unit", "target", "detail"]


def load(name: str):
    """A sibling benchmark script as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "device"


def check_vs_timm(models, size, batch, backends, precision, folder: Path) -> list[dict]:
    """Rows of benchmarks/vs_timm.py for ``models`` on ``backends``."""
    out = folder / "vs_timm.csv"
    load("vs_timm").main(["--models", *models, "--size", str(size), "--batch", str(batch), "--backends", *backends,
                          "--precision", precision, "--out", str(out)])
    return list(csv.DictReader(open(out))) if out.is_file() else []


def check_quickstart(backend: str, overrides: list[str], only, folder: Path) -> tuple[float, list[dict]]:
    """The quickstart's whole-command wall time and result rows on ``backend``."""
    seconds, rows, tail = load("quickstart_backends").run_quickstart(backend, overrides, only, folder)
    if not rows:
        print(f"quickstart on {backend}: no results\n{tail}", flush=True)
    return seconds, rows


def check_input(backend: str, size: int, batch: int, precision: str, batches: int, folder: Path) -> dict:
    """benchmarks/pipeline_throughput.py's row at ``size`` against mobilenet_v2 training on ``backend``."""
    out = folder / "input.csv"
    command = [sys.executable, str(BENCHMARKS / "pipeline_throughput.py"), "synthetic_terrain", "--size", str(size),
               "--batch", str(batch), "--model", "mobilenet_v2", "--precision", precision, "--batches", str(batches),
               "--csv", str(out), "--cache-dir", str(folder / "input-cache")]
    done = subprocess.run(command, env={**environment(), "KERAS_BACKEND": backend}, capture_output=True, text=True)
    if not out.is_file():
        print(f"input path on {backend}: {(done.stdout + done.stderr)[-1500:]}", flush=True)
        return {}
    return next(csv.DictReader(open(out)))


def check_evaluation(backend: str, size: int, batch: int, precision: str, folder: Path) -> dict:
    """benchmarks/eval_speed.py's row: a run's own evaluation of mobilenet_v2 against zoo speed's figure."""
    out = folder / "evaluation.csv"
    command = [sys.executable, str(BENCHMARKS / "eval_speed.py"), "--backbone", "mobilenet_v2", "--size", str(size),
               "--batch", str(batch), "--precision", precision, "--csv", str(out)]
    done = subprocess.run(command, env={**environment(), "KERAS_BACKEND": backend}, capture_output=True, text=True)
    if not out.is_file():
        print(f"evaluation on {backend}: {(done.stdout + done.stderr)[-1500:]}", flush=True)
        return {}
    return next(csv.DictReader(open(out)))


def check_bfloat16(models, size, batch, backend: str) -> dict:
    """``zoo speed`` rows of ``models`` in mixed_bfloat16 on ``backend``, by model."""
    zoo_speed = load("vs_timm").zoo_speed
    return {model: zoo_speed(model, size, batch, backend, "mixed_bfloat16") for model in models}


def float16_figures(row: dict, backend: str) -> tuple:
    """(inference, training) images/s of ``backend`` in a vs_timm row's ``zoo_by_backend``, else (None, None)."""
    found = re.search(rf"(?:^|; ){re.escape(backend)} [^:]*: ([0-9.]+)/([0-9.]+) img/s", row.get("zoo_by_backend", ""))
    return (float(found.group(1)), float(found.group(2))) if found else (None, None)


def compile_breakdown(run_dir: Path, shown: int = 5) -> str:
    """A run's largest compile times by function (metrics.json's compile_seconds_by_function), as text."""
    try:
        by_function = json.loads((run_dir / "metrics.json").read_text()).get("compile_seconds_by_function") or {}
    except (OSError, ValueError):
        return "-"
    return ", ".join(f"{name} {seconds:.1f}" for name, seconds in list(by_function.items())[:shown]) or "-"


def number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=list(BACKEND_MODULES), choices=list(BACKEND_MODULES))
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--out-dir", default=str(ROOT / "reports"))
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (32 px, batch 8, float32; the quickstart's baseline_cnn runs for two steps): "
                             "tries the script on a CPU")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    backends = [b for b in args.backends if importlib.util.find_spec(BACKEND_MODULES[b])]
    size, batch, precision = (32, 8, "float32") if args.quick else (224, 64, "mixed")
    overrides = ["train.epochs=1", "train.steps_per_epoch=2"] if args.quick else []
    rows, lines = [], []
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        timm_rows = check_vs_timm(args.models, size, batch, backends, precision, folder)
        device = next((r["device"] for r in timm_rows if r.get("device")), "unknown device")
        date = datetime.now(timezone.utc).strftime("%Y-%m-%d")

        def add(check, subject, backend, value, unit, target="", detail=""):
            rows.append({"date": date, "device": device, "check": check, "subject": subject, "backend": backend,
                         "value": "" if value is None else round(value, 3), "unit": unit, "target": target,
                         "detail": detail})

        speeds = {}
        for row in timm_rows:
            for kind, target in (("infer", ">= 1.0"), ("train", ">= 0.9")):
                add("vs_timm", row["model"], row.get(f"best_{kind}_backend") or "",
                    number(row.get(f"{kind}_ratio")), f"zoo/timm {kind}", target,
                    f"zoo {row.get(f'zoo_{kind}_images_per_second') or '-'} img/s, timm "
                    f"{row.get(f'timm_{kind}_images_per_second') or '-'} img/s; {row.get('zoo_by_backend', '')}"
                    f"{'; ' + row['error'] if row.get('error') else ''}")
                backend = row.get(f"best_{kind}_backend")
                if kind == "train" and backend:
                    speeds[backend] = speeds.get(backend, 0.0) + (number(row.get("zoo_train_images_per_second")) or 0)
        fastest = max(speeds, key=speeds.get) if speeds else (backends[0] if backends else None)
        if fastest:
            seconds, runs = check_quickstart(fastest, overrides, "*baseline_cnn*" if args.quick else None, folder)
            add("quickstart", "whole command", fastest, seconds, "s", "<= 60 on an H200",
                f"{sum(r['status'] == 'ok' for r in runs)} of {len(runs)} runs ok")
            for run in runs:
                add("quickstart", run["run_id"], fastest, number(run.get("compile_seconds")), "compile s", "",
                    f"status {run['status']}; compilations {run.get('compilations') or '-'}; first epoch "
                    f"{run.get('first_epoch_seconds') or '-'} s; later epochs {run.get('epoch_seconds') or '-'} s; "
                    f"compile s by function: {compile_breakdown(folder / fastest / 'runs' / run['run_id'])}")
            measured = check_input(fastest, size, batch, precision, 5 if args.quick else 30, folder)
            if measured:
                delivered = number(measured.get("delivered_images_per_second"))
                training = number(measured.get("model_train_images_per_second"))
                add("input", "delivered / mobilenet_v2 training", fastest,
                    delivered / training if delivered and training else None, "ratio", ">= 3",
                    f"host {measured.get('host_images_per_second')} img/s, delivered {delivered} img/s, training "
                    f"{training} img/s ({measured.get('precision')}), cache built in "
                    f"{measured.get('cache_build_seconds')} s")
            evaluated = check_evaluation(fastest, size, batch, precision, folder)
            if evaluated:
                add("evaluation", "run's evaluation / zoo speed, mobilenet_v2", fastest, number(evaluated.get("ratio")),
                    "ratio", ">= 0.9", f"evaluation {evaluated.get('evaluation_images_per_second')} img/s over "
                    f"{evaluated.get('test_examples')} test images, zoo speed {evaluated.get('speed_images_per_second')}"
                    f" img/s ({evaluated.get('precision')})")
            by_model = {row["model"]: row for row in timm_rows}
            for model, measured in check_bfloat16(args.models[:2], size, batch, fastest).items():
                reference = by_model.get(model, {})
                half = float16_figures(reference, fastest)
                for index, kind in enumerate(("infer", "train")):
                    zoo = number(measured.get(f"{kind}_images_per_second"))
                    timm = number(reference.get(f"timm_{kind}_images_per_second"))
                    add("bfloat16", f"{model} {kind}", fastest, zoo / timm if zoo and timm else None,
                        "zoo bfloat16/timm", ">= 1.0" if kind == "infer" else ">= 0.9",
                        f"zoo mixed_bfloat16 {zoo or '-'} img/s, zoo {precision} {half[index] or '-'} img/s, timm "
                        f"{timm or '-'} img/s ({reference.get('timm_precision') or '-'})"
                        f"{'; ' + measured['error'] if measured.get('error') else ''}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"gpu-{slug(device)}" + ("-quick" if args.quick else "")
    with open(out_dir / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    from importlib.metadata import version

    versions = ", ".join(f"{module} {version(module)}" for module in ("keras", "jax", "torch", "tensorflow", "timm")
                         if importlib.util.find_spec(module))
    lines = [f"# GPU check: {device}", "",
             f"{date}; `python benchmarks/gpu_check.py{' --quick' if args.quick else ''}` in "
             f"{time.perf_counter() - started:.0f} s; {versions}; backends measured: {', '.join(backends)}; "
             f"{'float32, 32 px, batch 8 (--quick: a try of the script, not a measurement of a GPU)' if args.quick else 'mixed precision, 224 px, batch 64'}.",
             "", "| check | subject | backend | value | target | detail |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['check']} | {r['subject']} | {r['backend']} | {r['value']} {r['unit']} | {r['target']} | "
              f"{r['detail']} |" for r in rows]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[4:]))
    print(f"wrote {out_dir / name}.csv and .md in {time.perf_counter() - started:.0f} s")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
