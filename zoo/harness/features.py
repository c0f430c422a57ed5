"""Feature cache for frozen backbones.

A frozen backbone (BatchNorm in inference mode, no augmentation) maps each image to the
same features every epoch, so they are computed once per (dataset split, backbone, input
size, weights, preprocessing) and the head trains on them: a sweep over heads, learning
rates or seeds costs one forward pass of the data instead of one per epoch per run.
The cache key covers every input that changes the features; a cache folder is written
under a temporary name and renamed when complete, so a killed run never leaves half of one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

FEATURE_CACHE_VERSION = 1
IN_MEMORY_BYTES = 1 << 30  # larger caches are read from memory-mapped files batch by batch


def applies(spec: dict) -> bool:
    """Whether a run's backbone features are the same every epoch."""
    train = spec["train"]
    return spec["trainable"] == "frozen" and not spec.get("finetune") and not train["augment"]


def wanted(spec: dict) -> bool:
    mode = spec["train"]["cache_features"]
    return mode is True or (mode == "auto" and applies(spec))


def _weights_identity(weights: str) -> str:
    if weights in ("none", "imagenet"):
        return weights
    stat = Path(weights).stat()
    return f"{Path(weights).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def cache_key(spec: dict, plan: dict, head_needs_pyramid: bool, precision: str) -> str:
    train = spec["train"]
    identity = {
        "version": FEATURE_CACHE_VERSION, "dataset": spec["dataset"], "backbone": spec["backbone"],
        "backbone_options": spec["backbone_options"], "image_size": train["image_size"],
        "weights": _weights_identity(spec["weights"]), "preprocessing": train["preprocessing"],
        "pyramid": head_needs_pyramid, "precision": precision,
        "splits": {name: [split, hashlib.sha1(np.asarray(indices if indices is not None else []).tobytes()).hexdigest()]
                   for name, (split, indices) in plan.items()},
    }
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compute_features(extractor, pipelines: dict, folder: Path) -> None:
    """Write extractor outputs and targets of every split as .npy files, atomically as a folder."""
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    import tensorflow as tf

    extract = tf.function(lambda images: extractor(images, training=False), reduce_retracing=True)
    for split, dataset in pipelines.items():
        outputs, extras = [], []
        for batch in dataset:
            values = extract(batch[0])
            values = values if isinstance(values, (list, tuple)) else [values]
            outputs.append([np.asarray(v, dtype=np.float32) for v in values])
            extras.append([np.asarray(t) for t in batch[1:]])
        for index in range(len(outputs[0])):
            np.save(partial / f"{split}-feature{index}.npy", np.concatenate([o[index] for o in outputs]))
        for index in range(len(extras[0])):
            np.save(partial / f"{split}-target{index}.npy", np.concatenate([e[index] for e in extras]))
    (partial / "complete").write_text("ok")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)


def feature_dataset(folder: Path, split: str, batch_size: int, shuffle_seed: int | None, shuffle_buffer: int = 2048):
    """tf.data of ((features...), target[, sample weights]) from the cache: in memory up to
    IN_MEMORY_BYTES, else read batch by batch from memory-mapped files."""
    import tensorflow as tf

    features = [np.load(p, mmap_mode="r") for p in sorted(folder.glob(f"{split}-feature*.npy"))]
    targets = [np.load(p, mmap_mode="r") for p in sorted(folder.glob(f"{split}-target*.npy"))]
    if sum(a.nbytes for a in features + targets) <= IN_MEMORY_BYTES:
        # Small enough: serve from memory, with the image pipeline's shuffle, so the head sees
        # the batches the full model would.
        arrays = tuple(np.asarray(a) for a in features)
        inputs = arrays if len(arrays) > 1 else arrays[0]
        dataset = tf.data.Dataset.from_tensor_slices((inputs, *[np.asarray(t) for t in targets]))
        if shuffle_seed is not None:
            dataset = dataset.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def take(indices):
        indices = np.sort(indices)
        return tuple(np.ascontiguousarray(a[indices]) for a in features + targets)

    signature = [tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)) for a in features + targets]
    dataset = tf.data.Dataset.range(len(targets[0]))
    if shuffle_seed is not None:
        # The image pipeline's seed and buffer: the head sees the batches the full model would.
        dataset = dataset.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)

    def load(indices):
        arrays = tf.numpy_function(take, [indices], [s.dtype for s in signature])
        for array, spec in zip(arrays, signature):
            array.set_shape(spec.shape)
        inputs = tuple(arrays[:len(features)])
        return (inputs if len(inputs) > 1 else inputs[0], *arrays[len(features):])

    return dataset.batch(batch_size).map(load).prefetch(tf.data.AUTOTUNE)


def build_head_model(model, head_spec, backbone_spec, num_classes, input_shape):
    """A model from the backbone's feature outputs to the head's output, with the same layer names."""
    import keras

    outputs = model.get_layer("backbone").outputs
    inputs = [keras.Input(shape=tuple(o.shape[1:]), name=f"feature{i}") for i, o in enumerate(outputs)]
    # The factory orders the extractor's outputs as [last, *taps by increasing stride].
    strides = sorted(backbone_spec.feature_layers_by_stride) if head_spec.needs_pyramid else []
    features = {"last": inputs[0], "by_stride": dict(zip(strides, inputs[1:]))}
    head_output = head_spec.build(features, num_classes, input_shape)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], head_output, name="head_on_features")


def copy_head_weights(source, target) -> None:
    """Copy head layers' weights between the full model and the head model (matched by name)."""
    names = {layer.name for layer in target.layers}
    for layer in source.layers:
        if layer.weights and layer.name in names:
            target.get_layer(layer.name).set_weights(layer.get_weights())


def prepare(run, head_spec, backbone_spec) -> dict:
    """Compute (or reuse) the features of ``run``; returns the head model and feature datasets."""
    cache_root = run.dir.parent.parent / "cache" / "features"
    key = cache_key(run.spec, run.plan, head_spec.needs_pyramid, run.precision)
    folder = cache_root / key
    start = time.perf_counter()
    reused = (folder / "complete").is_file()
    if not reused:
        extractor = run.model.get_layer("backbone")
        # In index order (no shuffling): the feature dataset shuffles like the image pipeline.
        compute_features(extractor, {name: run.make_pipeline(name, False) for name in ("train", "val")}, folder)
    seconds = 0.0 if reused else time.perf_counter() - start
    head_model = build_head_model(run.model, head_spec, backbone_spec, run.info.num_classes,
                                  (run.train["image_size"], run.train["image_size"], run.info.channels))
    copy_head_weights(run.model, head_model)  # start from the full model's initial head
    return {"key": key, "folder": folder, "reused": reused, "seconds": seconds, "head_model": head_model,
            "train": feature_dataset(folder, "train", run.global_batch, run.spec["seed"]),
            "val": feature_dataset(folder, "val", run.global_batch, None)}
