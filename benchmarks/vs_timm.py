"""zoo against timm on one GPU: inference and training images/s of the same architectures.

    python benchmarks/vs_timm.py [--models mobilenet_v2 resnet50 densenet121 vgg16] [--size 224]
                                 [--batch 64] [--backends tensorflow jax torch] [--precision mixed]
                                 [--out reports/vs-timm.csv]

For each model, zoo's figures come from ``zoo speed`` (backbone + linear head, mixed precision
unless --precision float32, warm-up before timing; inference as a run's evaluation predicts, the next
batch queued before this one's outputs are copied out, training through Keras's fit as a run trains)
run once per installed Keras backend, each in its own process (a process has one backend); the best
backend's figure is compared. timm's come from the same measurement done the way timm's own
benchmark.py does it: the PyTorch model under AMP (float16 autocast) in channels-last memory format,
warm-up steps, then timed steps between CUDA synchronisations, SGD with momentum 0.9 for training (zoo
speed trains with the same), at the same batch size and input size. Prints zoo / timm per model;
targets: >= 1.0 for inference and >= 0.9 for training. Writes one CSV row per model with every
backend's figures, the device and the versions.

Runs as is on a machine with TensorFlow, JAX or PyTorch (only the backends installed are
measured; timm and torch are needed for the reference). On a CPU it measures CPU figures, which
say nothing about GPUs: the row's device says which. A CPU without bfloat16 instructions runs
"mixed" far slower than float32 on both sides; ``--precision float32`` compares zoo in float32
with timm without autocast (still channels-last), which is what such a machine would use.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # zoo from this checkout, installed or not

from budget import Budget  # noqa: E402
from zoo.results import write_atomic  # noqa: E402
# zoo's registry name -> timm's name of the same architecture.
TIMM_NAMES = {"mobilenet_v2": "mobilenetv2_100", "resnet50": "resnet50", "densenet121": "densenet121",
              "vgg16": "vgg16", "resnet101": "resnet101", "efficientnet_b0": "efficientnet_b0",
              "convnext_tiny": "convnext_tiny", "mobilenet_v3_large": "mobilenetv3_large_100"}
# Where the two models do different work per image, the row says so.
NOTES = {"vgg16": "timm's vgg16 keeps fc6/fc7 (as convolutions) before its classifier; zoo's puts the linear "
                  "head on average-pooled features: timm does more work per image"}
BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
COLUMNS = ["model", "timm_model", "image_size", "batch_size", "device", "zoo_precision", "timm_precision",
           "best_infer_backend", "zoo_infer_images_per_second", "timm_infer_images_per_second", "infer_ratio",
           "best_train_backend", "zoo_train_images_per_second", "timm_train_images_per_second", "train_ratio",
           "zoo_by_backend", "keras", "torch", "timm", "python", "note", "error"]


def zoo_speed(model: str, size: int, batch: int, backend: str, precision: str = "mixed",
              budget: Budget | None = None) -> dict:
    """``zoo speed`` on ``backend`` in a new process, within ``budget``; the CSV row it wrote."""
    def first_row(path: Path) -> dict:
        with open(path) as handle:
            return next(csv.DictReader(handle))

    return (budget or Budget(None)).measured(
        lambda out: [sys.executable, "-m", "zoo.cli", "speed", model, "--size", str(size), "--batch", str(batch),
                     "--precision", precision, "--backend", backend, "--out", str(out)], "speed.csv", first_row)


def _timed(step, synchronize, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return (time.perf_counter() - start) / steps


class TimmModel:
    """timm's ``model_name`` set up as timm's benchmark.py runs it: on the GPU where there is one, in
    channels-last memory format, ``infer()`` one batch of random ``size`` px images under AMP (``precision``
    "mixed": timm's default half type, float16 on GPUs, bfloat16 on CPUs; "mixed_float16",
    "mixed_bfloat16": that one; "float32": without autocast), cuDNN's autotuner on."""

    def __init__(self, model_name: str, size: int, batch: int, precision: str = "mixed"):
        import timm
        import torch

        self.torch, self.timm = torch, timm
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.amp_dtype = {"mixed_float16": torch.float16, "mixed_bfloat16": torch.bfloat16}.get(
            precision, torch.float16 if self.cuda else torch.bfloat16)
        self.amp = precision != "float32"
        self.synchronize = torch.cuda.synchronize if self.cuda else (lambda: None)
        torch.backends.cudnn.benchmark = True
        self.model = timm.create_model(TIMM_NAMES.get(model_name, model_name), pretrained=False, num_classes=1000)
        self.model = self.model.to(self.device).to(memory_format=torch.channels_last)
        self.images = torch.randn(batch, 3, size, size, device=self.device).contiguous(
            memory_format=torch.channels_last)

    def infer(self) -> None:
        with self.torch.no_grad(), self.torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            self.model(self.images)

    def device_name(self) -> str:
        return (self.torch.cuda.get_device_name(0) if self.cuda
                else f"CPU {platform.processor() or platform.machine()}")

    def precision(self) -> str:
        kind = f"amp {str(self.amp_dtype).split('.')[-1]}" if self.amp else "float32"
        return f"{kind}, channels-last"


def timm_speed(model_name: str, size: int, batch: int, precision: str = "mixed", warmup: int = 10,
               steps: int = 40) -> dict:
    """Inference and training images/s of timm's model, as timm's benchmark.py measures them
    (:class:`TimmModel`; training: SGD with momentum 0.9, loss scaling where the half type is float16)."""
    reference = TimmModel(model_name, size, batch, precision)
    torch, model = reference.torch, reference.model
    model.eval()
    infer_seconds = _timed(reference.infer, reference.synchronize, warmup, steps)
    model.train()
    labels = torch.randint(0, 1000, (batch,), device=reference.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(reference.device.type, enabled=reference.amp and reference.amp_dtype == torch.float16)
    loss_function = torch.nn.CrossEntropyLoss()

    def train():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(reference.device.type, dtype=reference.amp_dtype, enabled=reference.amp):
            loss = loss_function(model(reference.images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    train_seconds = _timed(train, reference.synchronize, warmup, steps)
    figures = {"device": reference.device_name(), "precision": reference.precision(),
               "infer": batch / infer_seconds, "train": batch / train_seconds,
               "torch": torch.__version__, "timm": reference.timm.__version__}
    cuda = reference.cuda
    del model, optimizer, labels, train, reference
    if cuda:  # hand PyTorch's cached blocks back: the zoo process measured next (JAX takes 75 % of the GPU) needs them
        torch.cuda.empty_cache()
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50", "densenet121", "vgg16"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--backends", nargs="+", default=list(BACKEND_MODULES), choices=list(BACKEND_MODULES))
    parser.add_argument("--precision", choices=["mixed", "mixed_float16", "mixed_bfloat16", "float32"],
                        default="mixed", help="mixed: zoo's mixed precision against timm under AMP (GPUs: float16); "
                                              "mixed_bfloat16 / mixed_float16: that half type on both; float32 on both")
    parser.add_argument("--out", help="write the rows as CSV (e.g. reports/vs-timm-h100.csv), after every model")
    parser.add_argument("--budget", type=float, default=0, metavar="SECONDS",
                        help="stop measuring when this many seconds are spent (a zoo process still running is "
                             "stopped); the models not measured are rows saying so (0: no limit)")
    args = parser.parse_args(argv)
    budget = Budget(args.budget)
    backends = [b for b in args.backends if importlib.util.find_spec(BACKEND_MODULES[b])]
    has_timm = importlib.util.find_spec("timm") is not None and importlib.util.find_spec("torch") is not None
    print(f"Keras backends measured: {', '.join(backends) or 'none'}; timm reference: "
          f"{'yes' if has_timm else 'no (pip install timm torch)'}", flush=True)
    from importlib.metadata import version

    rows = []
    for model in args.models:
        row = {"model": model, "timm_model": TIMM_NAMES.get(model, ""), "image_size": args.size,
               "batch_size": args.batch, "keras": version("keras"), "python": platform.python_version(),
               "note": NOTES.get(model, ""), "error": ""}
        figures = {b: zoo_speed(model, args.size, args.batch, b, args.precision, budget) for b in backends}
        good = {b: f for b, f in figures.items() if not f.get("error")}
        row["zoo_by_backend"] = "; ".join(
            f"{b} {f.get('backend_version', '')}: {float(f['infer_images_per_second']):.1f}/"
            f"{float(f['train_images_per_second']):.1f} img/s "
            f"(batch {f['batch_size']})" if b in good else f"{b}: {f['error']}" for b, f in figures.items())
        if good:
            infer_backend = max(good, key=lambda b: float(good[b]["infer_images_per_second"]))
            train_backend = max(good, key=lambda b: float(good[b]["train_images_per_second"]))
            row.update(best_infer_backend=infer_backend, best_train_backend=train_backend,
                       zoo_infer_images_per_second=float(good[infer_backend]["infer_images_per_second"]),
                       zoo_train_images_per_second=float(good[train_backend]["train_images_per_second"]),
                       zoo_precision=good[infer_backend]["precision"], device=good[infer_backend]["device"])
        if has_timm and model in TIMM_NAMES and budget.spent():
            row["error"] = f"timm: not measured: the time budget ({budget.seconds:.0f} s) was spent"
        elif has_timm and model in TIMM_NAMES:
            try:
                reference = timm_speed(TIMM_NAMES[model], args.size, args.batch, args.precision)
                row.update(timm_infer_images_per_second=reference["infer"],
                           timm_train_images_per_second=reference["train"], timm_precision=reference["precision"],
                           torch=reference["torch"], timm=reference["timm"])
                row.setdefault("device", reference["device"])
            except Exception as error:  # one model failing must not stop the table
                row["error"] = f"timm: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        for kind in ("infer", "train"):
            zoo, timm = row.get(f"zoo_{kind}_images_per_second"), row.get(f"timm_{kind}_images_per_second")
            row[f"{kind}_ratio"] = zoo / timm if zoo and timm else None
        rows.append(row)
        ratio = lambda value: f"{value:.2f}x" if value else "-"  # noqa: E731
        print(f"{model:14s} {row.get('device', '?')}: infer zoo {row.get('zoo_infer_images_per_second') or 0:8.1f} "
              f"({row.get('best_infer_backend', '-')}) / timm {row.get('timm_infer_images_per_second') or 0:8.1f} = "
              f"{ratio(row['infer_ratio'])} (target 1.0x); train zoo {row.get('zoo_train_images_per_second') or 0:8.1f} "
              f"({row.get('best_train_backend', '-')}) / timm {row.get('timm_train_images_per_second') or 0:8.1f} = "
              f"{ratio(row['train_ratio'])} (target 0.9x)  [{row['zoo_by_backend']}]", flush=True)
        if args.out:  # after every model: a command cut short keeps the rows it measured
            write_rows(rows, Path(args.out))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def write_rows(rows: list[dict], path: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({key: row.get(key) for key in COLUMNS} for row in rows)
    write_atomic(path, text.getvalue())


if __name__ == "__main__":
    sys.exit(main())
