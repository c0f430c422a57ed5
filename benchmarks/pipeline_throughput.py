"""Input-pipeline throughput (images/s) for a dataset at a given size and batch.

    python benchmarks/pipeline_throughput.py synthetic_terrain --size 64 --batch 64 [--augment]
    python benchmarks/pipeline_throughput.py /path/to/folder --size 224 --batch 32
    python benchmarks/pipeline_throughput.py synthetic_terrain --model baseline_cnn   # also the ratio

With --model it also times the model's training steps on the same batches and prints the
ratio pipeline / model: >= 3 means the input never starves training.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="dataset name or folder path")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--batches", type=int, default=30, help="batches timed after warm-up")
    parser.add_argument("--model", help="backbone to time training steps of (with the linear or fcn head)")
    args = parser.parse_args()

    import tensorflow as tf

    from zoo.data import open_source
    from zoo.data.pipeline import PipelineOptions, build_pipeline
    from zoo.runtime import describe_device

    entry = ({"name": Path(args.dataset).name, "source": "folder", "path": args.dataset}
             if Path(args.dataset).exists() else args.dataset)
    source = open_source(entry)
    options = PipelineOptions(image_size=args.size, batch_size=args.batch, augment=args.augment, cache=None)
    pipeline = build_pipeline(source.examples("train"), source.info, options, training=True).repeat()
    iterator = iter(pipeline)
    for _ in range(3):  # warm-up: tracing, thread pools
        next(iterator)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(iterator)
    pipeline_rate = args.batches * args.batch / (time.perf_counter() - start)
    print(f"device: {describe_device()}; float32; tensorflow {tf.__version__}")
    print(f"pipeline  {source.info.name} {args.size}px batch {args.batch} augment={args.augment}: "
          f"{pipeline_rate:,.0f} images/s")
    if args.model:
        from zoo import build_model
        from zoo.backbones import BACKBONES

        head = "linear" if source.info.task == "classification" else "fcn"
        model = build_model(args.model, head, source.info.num_classes, (args.size, args.size, source.info.channels))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        options.preprocessing = BACKBONES.get(args.model).preprocessing
        fixed = next(iter(build_pipeline(source.examples("train"), source.info, options, training=True)))
        constant = tf.data.Dataset.from_tensors(fixed).repeat()  # the model alone, no input cost
        model.fit(constant, steps_per_epoch=3, epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(constant, steps_per_epoch=args.batches, epochs=1, verbose=0)
        model_rate = args.batches * args.batch / (time.perf_counter() - start)
        print(f"training  {args.model}/{head} float32: {model_rate:,.0f} images/s")
        print(f"ratio pipeline/training: {pipeline_rate / model_rate:.1f}x (target >= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
