"""Input-pipeline throughput (images/s) for a dataset at a given size and batch, after the decoded
cache is built, and what building it cost.

    python benchmarks/pipeline_throughput.py synthetic_terrain --size 224 --batch 64 [--augment]
    python benchmarks/pipeline_throughput.py /path/to/folder --size 224 --batch 32
    python benchmarks/pipeline_throughput.py synthetic_terrain --model mobilenet_v2   # also the ratio

Three figures, each over ``--batches`` batches after warm-up:
- ``host``: what the host does per batch in the steady state (stored rows gathered by index, or for rows
  held on the device only their indices chosen; the augmentation drawn): the rate at which it can feed an
  accelerator;
- ``delivered``: whole batches as ``model.fit`` reads them on this backend (Keras's PyDataset reader
  and its worker threads; JAX's and PyTorch's tensors left where the preparation made them, as their
  trainers leave them), the on-device preparation (zoo.data.prepare) included and waited for, timed
  from a reader with nothing fetched ahead: on a CPU that preparation runs on the same cores as
  everything else;
- with ``--model``, the model's training images/s on one batch already on the device, through Keras's
  fit as ``zoo speed`` times it (zoo.harness.timing.training_speed), and the ratios input / training
  (>= 3: the input never starves training).
Rows go to ``--csv`` (appended) with device, backend, precision and whether TensorFlow is importable.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def rate(next_batch, count: int, size: int, warmup: int = 3) -> float:
    """Images/s of ``count`` calls of ``next_batch`` after ``warmup`` calls (tracing, thread pools)."""
    for _ in range(warmup):
        next_batch()
    start = time.perf_counter()
    for _ in range(count):
        next_batch()
    return count * size / (time.perf_counter() - start)


def fit_reader(batches):
    """The pipeline's batches as Keras's fit reads them on this process's backend (its worker threads
    fetch ahead): the JAX trainer's iterator keeps device arrays on the device and PyTorch's loader its
    tensors, where NumPy's iterator would copy every batch to the host, a copy no run makes."""
    import keras
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(batches, shuffle=False)
    iterators = {"jax": adapter.get_jax_iterator, "torch": adapter.get_torch_dataloader,
                 "tensorflow": adapter.get_tf_dataset}
    iterate = iterators.get(keras.backend.backend(), adapter.get_numpy_iterator)
    while True:
        yield from iterate()
        adapter.on_epoch_end()


def computed(batch):
    """``batch`` once its tensors are computed: JAX and PyTorch on a GPU queue the preparation and
    return at once, so a rate that does not wait would count only the queueing."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        jax.block_until_ready(batch)
    elif keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="dataset name or folder path")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--batches", type=int, default=30, help="batches timed after warm-up")
    parser.add_argument("--model", help="backbone to time training steps of (with the linear or fcn head)")
    parser.add_argument("--precision", choices=["float32", "mixed", "mixed_float16", "mixed_bfloat16"], default="float32",
                        help="the model's precision (mixed: float16 on GPUs, bfloat16 on CPUs)")
    parser.add_argument("--cache-dir", help="where the decoded cache goes (default: a temporary folder)")
    parser.add_argument("--csv", default="reports/pipeline_throughput.csv", help="rows appended here ('' for none)")
    args = parser.parse_args()

    import keras

    from zoo.data import open_source
    from zoo.data.pipeline import input_pipeline
    from zoo.data.steps import PipelineOptions
    from zoo.runtime import backend, backend_version, describe_device, has_tensorflow

    entry = ({"name": Path(args.dataset).name, "source": "folder", "path": args.dataset}
             if Path(args.dataset).exists() else args.dataset)
    source = open_source(entry)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="zoo-input-")
    options = PipelineOptions(image_size=args.size, batch_size=args.batch, augment=args.augment,
                              cache_root=cache_dir)
    if args.model:
        from zoo.backbones import BACKBONES

        options.preprocessing = BACKBONES.get(args.model).preprocessing
    device = describe_device()
    where = f"Keras {keras.__version__} on {backend()} {backend_version()}, TensorFlow importable: {has_tensorflow()}"
    print(f"device: {device}; model {args.precision}; {where}")
    start = time.perf_counter()
    batches = input_pipeline(source, "train", None, source.info, options, training=True)
    build_seconds = time.perf_counter() - start
    print(f"decoded cache ({batches.input_cache}): {source.info.splits['train']} images in {build_seconds:.1f} s "
          f"-> {cache_dir}; rows held on the device: {'yes' if batches.on_device else 'no'}")
    count = len(batches)
    calls = iter(range(10**9))

    def host():
        index = next(calls) % count
        batches.host_batch(batches.order[index * args.batch:(index + 1) * args.batch], 0, index)

    rates = {"host": rate(host, args.batches, args.batch)}
    computed(batches[0])  # the preparation compiled before the reader starts fetching ahead
    reader = fit_reader(batches)
    rates["delivered"] = rate(lambda: computed(next(reader)), args.batches, args.batch, warmup=0)
    for name, value in rates.items():
        print(f"pipeline {name:9} {source.info.name} {args.size}px batch {args.batch} augment={args.augment}: "
              f"{value:,.0f} images/s")
    model_rate = None
    if args.model:
        from zoo import build_model
        from zoo.harness.timing import training_speed
        from zoo.runtime import precision_policy

        keras.mixed_precision.set_global_policy(precision_policy(args.precision))
        head = "linear" if source.info.task == "classification" else "fcn"
        model = build_model(args.model, head, source.info.num_classes, (args.size, args.size, source.info.channels))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        images, targets = batches[0][:2]  # prepared, on the device
        model_rate = training_speed(model, images, targets)["images_per_second"]
        print(f"training  {args.model}/{head} {args.precision}: {model_rate:,.0f} images/s")
        for name, value in rates.items():
            print(f"ratio input/training, {name}: {value / model_rate:.1f}x (target >= 3)")
    if args.csv:
        path = Path(args.csv)
        fresh = not path.is_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", newline="") as stream:
            writer = csv.writer(stream)
            if fresh:
                writer.writerow(["date", "device", "backend", "tensorflow_importable", "precision", "dataset", "size",
                                 "batch", "augment", "cache_build_seconds", "host_images_per_second",
                                 "delivered_images_per_second", "model", "model_train_images_per_second",
                                 "rows_on_device"])
            writer.writerow([datetime.now(timezone.utc).strftime("%Y-%m-%d"), device,
                             f"{backend()} {backend_version()}", has_tensorflow(), args.precision, source.info.name,
                             args.size, args.batch, args.augment, round(build_seconds, 2), round(rates["host"]),
                             round(rates["delivered"]), args.model or "",
                             "" if model_rate is None else round(model_rate), batches.on_device])
    return 0


if __name__ == "__main__":
    sys.exit(main())
