"""`zoo speed`: inference and training throughput of backbones on synthetic input.

In the manner of timm's benchmark.py: warm-up steps before timing, the batch halved and
retried on out-of-memory, and every row carries its conditions (device, precision, XLA,
batch and input size, parameters, versions).
"""
from __future__ import annotations

import os
import platform

import numpy as np

from zoo.runtime import PRECISIONS

SPEED_COLUMNS = ["backbone", "head", "device", "backend", "backend_version", "precision", "xla", "batch_size",
                 "image_size", "params", "infer_images_per_second", "infer_step_ms", "train_images_per_second",
                 "train_step_ms", "keras", "python", "error"]
OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "ResourceExhausted", "out of memory", "OutOfMemory")


def out_of_memory(error: BaseException) -> bool:
    """An accelerator's out-of-memory error on any backend (TensorFlow's ResourceExhaustedError,
    JAX's XlaRuntimeError RESOURCE_EXHAUSTED, PyTorch's OutOfMemoryError)."""
    text = f"{type(error).__name__}: {error}"
    return any(marker.lower() in text.lower() for marker in OUT_OF_MEMORY)


def measure(backbone: str, image_size: int, batch_size: int, precision: str = "float32", xla: bool = False,
            num_classes: int = 1000, warmup: int = 3, min_seconds: float = 2.0, training: bool = True) -> dict:
    """One row of speed figures for ``backbone`` with the linear head, on this process's Keras
    backend (JAX compiles every step: its rows say xla True), measured the way a run computes:
    inference as a run's evaluation predicts (zoo.harness.timing.inference_speed: the next batch
    queued before this one's outputs are copied out), training as a run's fit trains
    (zoo.harness.timing.training_speed), both on a batch already on the device, after warm-up.
    ``training`` False leaves the training figures empty (and the train step uncompiled)."""
    import keras

    from zoo import build_model
    from zoo.harness.timing import inference_speed, training_speed
    from zoo.runtime import backend, backend_version, describe_device, device_predict, precision_policy

    policy = precision_policy(precision)
    keras.mixed_precision.set_global_policy(policy)
    xla = True if backend() == "jax" else xla
    row = {"backbone": backbone, "head": "linear", "device": describe_device(), "backend": backend(),
           "backend_version": backend_version(), "precision": policy, "xla": xla, "image_size": image_size,
           "keras": keras.__version__, "python": platform.python_version(), "error": ""}
    try:
        while True:
            try:
                keras.backend.clear_session()
                model = build_model(backbone, "linear", num_classes, (image_size, image_size, 3))
                # SGD with momentum, as timm's benchmark trains and as vs_timm's reference does: the same
                # optimizer work on both sides of the ratio.
                model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                              loss="sparse_categorical_crossentropy",
                              jit_compile=xla)
                rng = np.random.default_rng(0)
                images = keras.ops.convert_to_tensor(
                    rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32"))
                labels = keras.ops.convert_to_tensor(rng.integers(0, num_classes, batch_size).astype("int32"))
                infer = inference_speed(device_predict(model), (image_size, image_size, 3), batch_size, min_seconds,
                                        warmup, latency=False)["step_seconds"]
                train = training_speed(model, images, labels, min_seconds, warmup)["step_seconds"] if training else None
                break
            except Exception as error:
                if batch_size == 1 or not out_of_memory(error):
                    raise
                batch_size //= 2  # out of memory: halve and retry, as timm does
        row.update(batch_size=batch_size, params=model.count_params(),
                   infer_images_per_second=batch_size / infer, infer_step_ms=infer * 1000,
                   train_images_per_second=batch_size / train if train else None,
                   train_step_ms=train * 1000 if train else None)
    except Exception as error:  # one backbone failing must not stop the table
        row.update(batch_size=batch_size, error=f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return row


def cmd_speed(args) -> int:
    if args.backend and os.environ.get("KERAS_BACKEND") != args.backend:
        # A process has one Keras backend, chosen before Keras is imported: measure in a new one.
        import subprocess
        import sys

        from zoo.runtime import backend_environment

        command = [sys.executable, "-m", "zoo.cli", "speed", *speed_arguments(args)]
        return subprocess.run(command, env=backend_environment(args.backend)).returncode
    import pandas as pd

    from zoo.backbones import BACKBONES
    from zoo.results import write_atomic

    names = BACKBONES.expand(args.patterns or ["*"])
    rows = []
    for name in names:
        row = measure(name, args.size, args.batch, args.precision, args.xla)
        rows.append(row)
        if row["error"]:
            print(f"{name:20s} failed: {row['error']}")
        else:
            print(f"{name:20s} infer {row['infer_images_per_second']:9.1f} img/s ({row['infer_step_ms']:8.1f} ms/step)  "
                  f"train {row['train_images_per_second']:8.1f} img/s ({row['train_step_ms']:8.1f} ms/step)  "
                  f"batch {row['batch_size']}  {row['precision']}  {row['device']}", flush=True)
    if args.out:
        write_atomic(args.out, pd.DataFrame(rows, columns=SPEED_COLUMNS).to_csv(index=False))
        print(f"wrote {args.out}")
    return 1 if any(r["error"] for r in rows) else 0


def speed_arguments(args) -> list[str]:
    """The ``zoo speed`` arguments of ``args``, for the same command in another process."""
    argv = [*args.patterns, "--size", str(args.size), "--batch", str(args.batch), "--precision", args.precision,
            "--backend", args.backend]
    if args.xla:
        argv.append("--xla")
    if args.out:
        argv += ["--out", str(args.out)]
    return argv


def add_speed_command(commands) -> None:
    from zoo.arguments import whole_number

    speed = commands.add_parser("speed", help="inference and training images/s of backbones on synthetic input")
    speed.add_argument("patterns", nargs="*", help="backbone names or globs (default: all)")
    speed.add_argument("--size", type=whole_number(1), default=224, help="input side in pixels (default 224)")
    speed.add_argument("--batch", type=whole_number(1), default=64, help="images per step (default 64)")
    speed.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="mixed: float16 on GPUs, bfloat16 on CPUs; or the half type named")
    speed.add_argument("--xla", action="store_true", help="XLA-compile the steps (JAX always compiles)")
    speed.add_argument("--backend", choices=["tensorflow", "jax", "torch"],
                       help="the Keras backend to measure on (default: KERAS_BACKEND, else Keras's configured one)")
    speed.add_argument("-o", "--out", help="write the table as CSV")
    speed.set_defaults(func=cmd_speed)
