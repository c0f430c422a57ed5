"""Where a model's inference time goes: zoo's JAX program beside timm's PyTorch model, by each one's own profiler.

    python benchmarks/profile_inference.py densenet121 [--size 224] [--batch 64] [--precision mixed]
                                           [--steps 10] [--top 5] [--csv reports/profile-densenet121.csv]

The step before changing anything for speed (issue 31: "find where the time goes with the backend's own
profiler"): vs_timm.py says zoo's densenet121 predicts at 0.81x timm's on an H200, not why. Each side runs
in its own process, on the batch already on the device, after warm-up:
- zoo: the function a run's evaluation and `zoo speed` predict with (zoo.runtime.device_predict: the model
  jitted on JAX), traced with ``jax.profiler.trace``. Every kernel (on a GPU) or XLA operation (on a CPU)
  of the traced steps is named by the HLO operation it runs (the trace's ``hlo_op``) and put in a category
  by what that operation is in the compiled program (a cuDNN convolution, a fusion holding a
  concatenation, a transpose...).
- timm: the same architecture as vs_timm.py times it (AMP float16 on a GPU, channels-last, eval mode),
  traced with ``torch.profiler``; its kernels (on a GPU) or ATen operations (on a CPU) categorised by name.
Writes one CSV row per side for the total (device time per batch beside the wall time per batch: how busy
the device is), one per category and one per operation among each category's ``--top`` most expensive, each
row with the device, precision, batch, input size and versions. Prints the categories side by side.

A profiler adds some overhead of its own: the figures say where the time goes, not how fast either side
is (vs_timm.py says that).
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # zoo from this checkout, installed or not (the GPU machine has it as files)
sys.path.insert(0, str(BENCHMARKS))

from budget import Budget  # noqa: E402

COLUMNS = ["model", "side", "device", "precision", "image_size", "batch_size", "level", "name", "category",
           "ms_per_batch", "share", "calls_per_batch", "wall_ms_per_batch", "versions", "error"]
# The computations an HLO instruction runs: a fusion's, a reduction's, a loop's.
CALLED = r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)"
CATEGORIES = ["convolution", "matmul", "elementwise", "concatenate", "pooling", "reduction", "layout", "other"]
# Operations that move or name data without computing: a fusion made of these only (and elementwise
# conversions) is a layout change.
LAYOUT_OPCODES = {"copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "dynamic-slice", "pad",
                  "parameter", "constant", "tuple", "get-tuple-element", "convert", "copy-start", "copy-done"}
# Kernel (GPU) or ATen operation (CPU) names, matched in this order: timm's side, and zoo's kernels
# that the trace names by kernel only.
KERNEL_CATEGORIES = [
    ("concatenate", ("catarray", "aten::cat", "concat")),
    ("elementwise", ("batch_norm", "bn_fw", "bn_bw")),  # before convolution: cuDNN's are named cudnn::bn_...
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm", "implicit_convolve", "winograd",
                     "cudnn::", "mkldnn_convolution")),
    ("matmul", ("gemm", "xmma", "addmm", "matmul", "aten::mm", "aten::linear", "cutlass")),
    ("pooling", ("pool",)),
    ("reduction", ("reduce", "aten::mean", "aten::sum")),
    ("layout", ("copy", "memcpy", "memset", "nchw", "nhwc", "transpose", "contiguous", "aten::to", "permute")),
    ("elementwise", ("elementwise", "relu", "add", "mul", "clamp", "sigmoid", "hardswish", "vectorized",
                     "unrolled")),
]


# ----------------------------------------------------------------------------------------------- zoo (JAX)

def hlo_categories(hlo_text: str) -> dict[str, str]:
    """Category of each instruction of a compiled HLO module's entry computation (and of the computations it
    calls), by name: what the profiler's ``hlo_op`` of a kernel names."""
    computations: dict[str, list[tuple[str, str, str]]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$", line)
        if header:
            current = computations.setdefault(header.group(1), [])
            continue
        found = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][a-z0-9\-]*)\(", line)
        if found and current is not None:
            current.append((found.group(1), found.group(2), line))

    def own(opcode: str, line: str) -> set[str]:
        """An instruction's opcode, with a custom call's target beside it ("custom-call:__cudnn$conv...")."""
        target = re.search(r'custom_call_target="([^"]+)"', line) if opcode == "custom-call" else None
        return {opcode, f"custom-call:{target.group(1)}"} if target else {opcode}

    def opcodes(name: str, seen: set) -> set[str]:
        """Every opcode of computation ``name`` and of the computations its instructions call."""
        if name in seen:
            return set()
        seen.add(name)
        found = set()
        for _, opcode, line in computations.get(name, []):
            found |= own(opcode, line)
            for called in re.findall(CALLED, line):
                found |= opcodes(called, seen)
        return found

    return {name: categorised(own(opcode, line).union(*(opcodes(called, set()) for called in re.findall(CALLED, line))),
                              line)
            for body in computations.values() for name, opcode, line in body}


def categorised(opcodes: set[str], line: str) -> str:
    """The category of an HLO instruction that runs ``opcodes`` (its own and those of what it calls)."""
    targets = " ".join(op for op in opcodes if op.startswith("custom-call:")).lower()
    if "convolution" in opcodes or "conv" in targets or "__cudnn$fusion" in line:
        return "convolution"
    if "dot" in opcodes or any(word in targets for word in ("gemm", "matmul", "cublas")) or "triton_gemm" in line:
        return "matmul"
    if "concatenate" in opcodes:
        return "concatenate"
    if "reduce-window" in opcodes or "select-and-scatter" in opcodes:
        return "pooling"
    if "reduce" in opcodes:
        return "reduction"
    computing = opcodes - LAYOUT_OPCODES - {"fusion"}
    if not computing:
        return "layout" if opcodes & {"copy", "transpose", "copy-start", "slice", "pad", "dynamic-slice"} else "other"
    if computing <= {"custom-call"} or targets:
        return "other"
    return "elementwise"


def trace_events(folder: str) -> tuple[list[dict], dict[int, str], dict[tuple, str]]:
    """The complete events of the newest trace ``jax.profiler.trace`` wrote under ``folder``, with the
    trace's process names by id and thread names by (process, thread) id."""
    found = sorted(glob.glob(os.path.join(folder, "plugins", "profile", "*", "*.trace.json.gz")))
    if not found:
        raise RuntimeError(f"jax.profiler.trace wrote no *.trace.json.gz under {folder}")
    with gzip.open(found[-1]) as handle:
        events = json.load(handle)["traceEvents"]
    named = [event for event in events if event.get("ph") == "M"]
    processes = {event["pid"]: event["args"]["name"] for event in named if event.get("name") == "process_name"}
    threads = {(event["pid"], event["tid"]): event["args"]["name"] for event in named
               if event.get("name") == "thread_name"}
    return [event for event in events if event.get("ph") == "X"], processes, threads


def operation_times(events: list[dict], processes: dict, threads: dict, module: str) -> tuple[dict, dict, str]:
    """Microseconds and calls by operation of the traced program ``module``, and what was measured.

    On a GPU: the kernels and copies on the device's streams ("Stream #N" lines of the "/device:GPU:0"
    process), named by the HLO operation they ran (``hlo_op``) where the trace says it, else by the kernel's
    name; the device's other lines ("XLA Ops", "XLA Modules", "Steps", name scopes) are derived from the
    same kernels and are left out, unless no stream line was written ("XLA Ops" then). On a CPU: the host's
    events of XLA operations (those with an ``hlo_op``)."""
    def thread(event):
        return threads.get((event["pid"], event["tid"]), "")

    on_device = [event for event in events if "/device:" in processes.get(event["pid"], "")]
    streams = [event for event in on_device if thread(event).lower().startswith("stream")]
    chosen = streams or [event for event in on_device if thread(event) == "XLA Ops"]
    measured_on = "device kernels" if streams else "device XLA operations"
    if not chosen:
        chosen = [event for event in events if (event.get("args") or {}).get("hlo_op")]
        measured_on = "host XLA operations"
    if any((event.get("args") or {}).get("hlo_module") == module for event in chosen):  # other programs' out
        chosen = [event for event in chosen if (event.get("args") or {}).get("hlo_module") in (None, "", module)]
    micros, calls = defaultdict(float), defaultdict(int)
    for event in chosen:
        args = event.get("args") or {}
        name = args.get("hlo_op") or event["name"].split(" = ")[0].lstrip("%").strip()
        micros[name] += float(event.get("dur", 0.0))
        calls[name] += 1
    return micros, calls, measured_on


def operation_category(name: str, categories: dict[str, str]) -> str:
    """The category of a traced operation: its HLO instruction's (by name, or by the kernel name XLA derives
    from it, dots and dashes as underscores), else what its kernel's name says (a cuDNN or cuBLAS kernel)."""
    if name in categories:
        return categories[name]
    normal = re.sub(r"[.\-]", "_", name)
    by_kernel = {re.sub(r"[.\-]", "_", instruction): category for instruction, category in categories.items()}
    return by_kernel.get(normal) or kernel_category(name)


def profile_zoo(model_name: str, size: int, batch: int, precision: str, steps: int) -> dict:
    """zoo's inference of ``model_name`` on JAX, profiled: {operation: (category, ms per batch, calls per batch)},
    the wall ms per batch, device and versions."""
    import jax
    import keras
    import numpy as np

    from zoo import build_model
    from zoo.harness.timing import inference_speed
    from zoo.runtime import describe_device, device_predict, host_outputs, precision_policy

    policy = precision_policy(precision)
    keras.mixed_precision.set_global_policy(policy)
    model = build_model(model_name, "linear", 1000, (size, size, 3))
    predict = device_predict(model)
    images = keras.ops.convert_to_tensor(
        np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32"))
    wall = inference_speed(predict, (size, size, 3), batch, min_seconds=1.0, latency=False)["step_seconds"]
    compiled = predict.lowered(images).compile()  # the executable the calls run (JAX's cache: no new compilation)
    hlo = compiled.as_text()
    module = re.match(r"HloModule\s+([\w.\-]+)", hlo).group(1)
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            for _ in range(steps):
                outputs = predict(images)
            host_outputs(outputs)
        events, processes, threads = trace_events(folder)
    micros, calls, measured_on = operation_times(events, processes, threads, module)
    categories = hlo_categories(hlo)
    return {"operations": {name: (operation_category(name, categories), micros[name] / steps / 1000,
                                  calls[name] / steps) for name in micros},
            "wall_ms": wall * 1000, "device": describe_device(), "precision": policy, "measured_on": measured_on,
            "versions": f"keras {keras.__version__}, jax {jax.__version__}"}


# ------------------------------------------------------------------------------------------------- timm

def kernel_category(name: str) -> str:
    """The category a kernel's or an ATen operation's name says (KERNEL_CATEGORIES), else "other"."""
    lowered = name.lower()
    return next((category for category, words in KERNEL_CATEGORIES if any(word in lowered for word in words)),
                "other")


def profile_timm(model_name: str, size: int, batch: int, precision: str, steps: int) -> dict:
    """timm's ``model_name`` profiled as vs_timm.py times it: {kernel or ATen operation: (category, ms per
    batch, calls per batch)}, the wall ms per batch, device and versions."""
    from torch.profiler import ProfilerActivity, profile

    from vs_timm import TimmModel, _timed

    reference = TimmModel(model_name, size, batch, precision)
    reference.model.eval()
    cuda = reference.cuda
    wall = _timed(reference.infer, reference.synchronize, warmup=10, steps=max(steps, 10))
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as traced:
        for _ in range(steps):
            reference.infer()
        reference.synchronize()
    operations = {}
    for event in traced.key_averages():
        micros = (getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
                  if cuda else event.self_cpu_time_total)
        if micros and micros > 0 and not event.key.startswith("ProfilerStep"):
            operations[event.key] = (kernel_category(event.key), micros / steps / 1000, event.count / steps)
    return {"operations": operations, "wall_ms": wall * 1000, "device": reference.device_name(),
            "precision": reference.precision(), "measured_on": "CUDA kernels" if cuda else "CPU ATen operations",
            "versions": f"torch {reference.torch.__version__}, timm {reference.timm.__version__}"}


# ------------------------------------------------------------------------------------------------- rows

def side_rows(model: str, side: str, measured: dict, size: int, batch: int, top: int) -> list[dict]:
    """The CSV rows of one profiled side: its total, each category, each category's ``top`` operations."""
    base = {"model": model, "side": side, "device": measured.get("device", ""),
            "precision": measured.get("precision", ""), "image_size": size, "batch_size": batch,
            "versions": measured.get("versions", ""), "error": measured.get("error", "")}
    operations = measured.get("operations") or {}
    total = sum(ms for _, ms, _ in operations.values())
    rows = [{**base, "level": "total", "name": measured.get("measured_on", ""), "category": "",
             "ms_per_batch": total if operations else "", "share": 1.0 if operations else "",
             "calls_per_batch": sum(calls for _, _, calls in operations.values()) if operations else "",
             "wall_ms_per_batch": measured.get("wall_ms", "")}]
    by_category = defaultdict(lambda: [0.0, 0.0])
    for category, ms, calls in operations.values():
        by_category[category][0] += ms
        by_category[category][1] += calls
    for category in CATEGORIES:
        if category in by_category:
            ms, calls = by_category[category]
            rows.append({**base, "level": "category", "name": category, "category": category, "ms_per_batch": ms,
                         "share": ms / total if total else "", "calls_per_batch": calls})
    ranked = sorted(operations.items(), key=lambda item: (CATEGORIES.index(item[1][0]), -item[1][1]))
    shown = defaultdict(int)
    for name, (category, ms, calls) in ranked:
        shown[category] += 1
        if shown[category] > top:
            continue
        rows.append({**base, "level": "operation", "name": name[:160], "category": category, "ms_per_batch": ms,
                     "share": ms / total if total else "", "calls_per_batch": calls})
    return rows


def measured_in_child(side: str, args, budget: Budget) -> dict:
    """One side profiled in its own process (one backend, its own device memory) within ``budget``."""
    return budget.measured(
        lambda out: [sys.executable, __file__, args.model, "--size", str(args.size), "--batch", str(args.batch),
                     "--precision", args.precision, "--steps", str(args.steps), "--side", side, "--json", str(out)],
        f"{side}.json", lambda path: json.loads(path.read_text()), env={"KERAS_BACKEND": "jax"} if side == "zoo" else None)


def printed(rows: list[dict]) -> str:
    """The categories of both sides, side by side, as text."""
    figures = {(row["side"], "total" if row["level"] == "total" else row["name"]): row["ms_per_batch"]
               for row in rows if row["level"] in ("total", "category")}
    figures.update({(row["side"], "wall"): row["wall_ms_per_batch"] for row in rows if row["level"] == "total"})

    def cell(side: str, name: str) -> str:
        value = figures.get((side, name), "")
        return "-" if value in ("", None) else f"{float(value):.2f}"

    lines = [f"{'':14s} {'zoo (jax) ms':>14s} {'timm ms':>10s}"]
    for name in ["total", *CATEGORIES, "wall"]:
        if (cell("zoo", name), cell("timm", name)) != ("-", "-"):
            lines.append(f"{name:14s} {cell('zoo', name):>14s} {cell('timm', name):>10s}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", default="mixed")
    parser.add_argument("--steps", type=int, default=10, help="traced batches (default 10)")
    parser.add_argument("--top", type=int, default=5, help="operations listed per category (default 5)")
    parser.add_argument("--sides", nargs="+", default=["zoo", "timm"], choices=["zoo", "timm"])
    parser.add_argument("--budget", type=float, default=0, help="seconds for both sides (default: no limit)")
    parser.add_argument("--csv", help="write the rows here")
    parser.add_argument("--side", choices=["zoo", "timm"], help=argparse.SUPPRESS)  # one side, in a child process
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        profile = profile_zoo if args.side == "zoo" else profile_timm
        measured = profile(args.model, args.size, args.batch, args.precision, args.steps)
        Path(args.json).write_text(json.dumps(measured))
        return 0
    budget = Budget(args.budget)
    started = time.perf_counter()
    rows = []
    for side in args.sides:
        measured = measured_in_child(side, args, budget.share(1.0 / (len(args.sides) - args.sides.index(side))))
        rows += side_rows(args.model, side, measured, args.size, args.batch, args.top)
        if measured.get("error"):
            print(f"{side}: {measured['error']}", flush=True)
    print(f"{args.model}, {args.size} px, batch {args.batch}, {args.precision}; device time per batch by category "
          f"({time.perf_counter() - started:.0f} s)\n" + printed(rows))
    if args.csv:
        import pandas as pd

        from zoo.results import write_atomic

        write_atomic(args.csv, pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False))
        print(f"wrote {args.csv}")
    return 0 if rows and not any(row["error"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
