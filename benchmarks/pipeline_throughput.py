"""Input-pipeline throughput (images/s) for a dataset at a given size and batch.

    python benchmarks/pipeline_throughput.py synthetic_terrain --size 64 --batch 64 [--augment]
    python benchmarks/pipeline_throughput.py /path/to/folder --size 224 --batch 32
    python benchmarks/pipeline_throughput.py synthetic_terrain --model baseline_cnn   # also the ratio

Both executors of the one pipeline description are timed: tf.data (where TensorFlow is
installed) and the PyDataset of NumPy batches used without it (through Keras's own reader, as
fit reads it). With --model it also times the model's training steps on one fixed batch, on
this process's Keras backend (KERAS_BACKEND), and prints the ratio pipeline / model per path:
>= 3 means the input never starves training.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def time_batches(batches, count: int) -> float:
    """Images/s of ``count`` batches from an endless iterator, after three warm-up batches."""
    iterator = iter(batches)
    first = next(iterator)
    for _ in range(2):  # warm-up: tracing, thread pools
        next(iterator)
    size = len(first[0])
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return count * size / (time.perf_counter() - start)


def endless_array_batches(batches):
    """The array pipeline's batches as Keras's fit reads them: its worker threads fetch ahead."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(batches, shuffle=False)
    while True:
        yield from adapter.get_numpy_iterator()
        adapter.on_epoch_end()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="dataset name or folder path")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--batches", type=int, default=30, help="batches timed after warm-up")
    parser.add_argument("--model", help="backbone to time training steps of (with the linear or fcn head)")
    parser.add_argument("--path", choices=["both", "tf.data", "arrays"], default="both",
                        help="which executor of the pipeline: tf.data, the PyDataset used without TensorFlow, or both "
                             "(tf.data only where TensorFlow is installed)")
    args = parser.parse_args()

    import keras
    import numpy as np

    from zoo.data import open_source
    from zoo.data.pipeline import build_pipeline
    from zoo.data.steps import PipelineOptions
    from zoo.runtime import backend, backend_version, describe_device, has_tensorflow

    entry = ({"name": Path(args.dataset).name, "source": "folder", "path": args.dataset}
             if Path(args.dataset).exists() else args.dataset)
    source = open_source(entry)
    options = PipelineOptions(image_size=args.size, batch_size=args.batch, augment=args.augment, cache=None)
    if args.model:
        from zoo.backbones import BACKBONES

        options.preprocessing = BACKBONES.get(args.model).preprocessing
    paths = ["tf.data", "arrays"] if args.path == "both" else [args.path]
    if "tf.data" in paths and not has_tensorflow():
        print("tf.data: TensorFlow is not installed here; timing the array pipeline only")
        paths.remove("tf.data")
    print(f"device: {describe_device()}; float32; Keras {keras.__version__} on {backend()} {backend_version()}")
    rates = {}
    for path in paths:
        if path == "tf.data":
            batches = build_pipeline(source.examples("train"), source.info, options, training=True).repeat()
        else:
            from zoo.data.array_pipeline import build_array_pipeline

            batches = endless_array_batches(build_array_pipeline(source.example_arrays("train"), source.info,
                                                                 options, training=True))
        rates[path] = time_batches(batches, args.batches)
        print(f"pipeline  {path:8} {source.info.name} {args.size}px batch {args.batch} augment={args.augment}: "
              f"{rates[path]:,.0f} images/s")
    if args.model:
        from zoo import build_model
        from zoo.data.array_pipeline import build_array_pipeline

        head = "linear" if source.info.task == "classification" else "fcn"
        model = build_model(args.model, head, source.info.num_classes, (args.size, args.size, source.info.channels))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        fixed = build_array_pipeline(source.example_arrays("train"), source.info, options, training=True)[0]
        images, targets = np.asarray(fixed[0]), np.asarray(fixed[1])  # the model alone: no input cost
        for _ in range(3):
            model.train_on_batch(images, targets)
        start = time.perf_counter()
        for _ in range(args.batches):
            model.train_on_batch(images, targets)
        model_rate = args.batches * len(images) / (time.perf_counter() - start)
        print(f"training  {args.model}/{head} float32: {model_rate:,.0f} images/s")
        for path, rate in rates.items():
            print(f"ratio pipeline/training, {path}: {rate / model_rate:.1f}x (target >= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
