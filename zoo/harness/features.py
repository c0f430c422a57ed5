"""Feature cache for frozen backbones.

A frozen backbone (BatchNorm in inference mode, no augmentation) maps each image to the
same features every epoch, so they are computed once per image of the dataset (keyed by the
dataset's content, backbone, weights, input size, preprocessing and precision, not by how a
run carves its validation and test sets) and every run takes its train, validation and test
rows by index: a sweep over seeds, split seeds, heads, learning rates or losses costs one
forward pass of the data. The cache stores each example's plain target (label, mask or class
proportions); what a run's loss needs on top (one-hot labels, class-weighted pixels) is
applied per run. A cache folder is written under a temporary name and renamed when complete,
so a killed run never leaves half of one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

FEATURE_CACHE_VERSION = 2
IN_MEMORY_BYTES = 1 << 30  # larger caches are read from memory-mapped files batch by batch


def cache_key(spec, content: dict, head_spec, precision: str) -> str:
    """The cache folder's name: everything that changes any image's features (``spec``: the run's
    zoo.runspec.RunSpec). ``content`` maps each source split to an identity of its images
    (zoo.data.sources.Source.content_id); ``head_spec`` (a zoo.heads.HeadSpec) decides which of the
    backbone's outputs are features."""
    from zoo.backbones import BACKBONES
    from zoo.data.decoded import DECODE_VERSION
    from zoo.factory import takes_pooled
    from zoo.weights import weights_identity

    dataset = {k: v for k, v in spec.dataset.items() if k != "split"}  # carving is per run
    identity = {
        "version": FEATURE_CACHE_VERSION, "dataset": dataset, "content": content, "backbone": spec.backbone,
        "decode_version": DECODE_VERSION,  # features of rows decoded another way are other features
        "backbone_options": spec.backbone_options, "image_size": spec.train.image_size,
        "weights": weights_identity(spec.weights), "preprocessing": spec.train.preprocessing,
        "pyramid": head_spec.needs_pyramid, "pooled": takes_pooled(BACKBONES.get(spec.backbone), head_spec),
        "precision": precision,
        # A frozen backbone without pretrained weights keeps its random initialisation, which
        # follows the run's seed: its features are that seed's alone.
        "random_init_seed": spec.seed if spec.weights == "none" else None,
    }
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compute_features(extractor, pipelines: dict, folder: Path) -> None:
    """Write extractor outputs and the plain target of every example of each source split, in
    index order, as .npy files, atomically as a folder."""
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    import keras

    from zoo.runtime import device_predict, predictions_ahead

    extract = device_predict(extractor)
    for split, dataset in pipelines.items():
        outputs, targets = [], []
        # Full batches, one shape; the last one's completion cut away. The next batch is queued on the
        # device while this one's features are copied out.
        for (batch, rows), values in predictions_ahead(extract, dataset.with_rows(), images_of=lambda item: item[0][0]):
            values = values if isinstance(values, (list, tuple)) else [values]
            outputs.append([np.asarray(v[:rows], dtype=np.float32) for v in values])
            targets.append(keras.ops.convert_to_numpy(batch[1])[:rows])
        for index in range(len(outputs[0])):
            np.save(partial / f"{split}-feature{index}.npy", np.concatenate([o[index] for o in outputs]))
        np.save(partial / f"{split}-target0.npy", np.concatenate(targets))
    (partial / "complete").write_text("ok")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)


def feature_dataset(folder: Path, split: str, batch_size: int, shuffle_seed: int | None, indices=None,
                    finish=None):
    """Batches of (features, target) from the cache (a zoo.data.pipeline.ArrayBatches, on every
    backend): the rows ``indices`` of source split ``split`` (all when None) in that order, shuffled
    as the image pipeline shuffles when ``shuffle_seed`` is given, so the head sees the batches the
    full model would; ``finish(target)`` returns the batch's (target, ...) as the run's loss wants
    them; every batch full, as ArrayBatches makes them. In memory up to
    IN_MEMORY_BYTES, else read from memory-mapped files batch by batch."""
    from zoo.data.pipeline import ArrayBatches

    features = [np.load(p, mmap_mode="r") for p in sorted(folder.glob(f"{split}-feature*.npy"))]
    targets = [np.load(p, mmap_mode="r") for p in sorted(folder.glob(f"{split}-target*.npy"))]
    rows = np.arange(len(targets[0])) if indices is None else np.asarray(indices, dtype=np.int64)
    finish = finish or (lambda *target: target)
    in_memory = sum(a.nbytes for a in features + targets) * len(rows) / max(1, len(targets[0])) <= IN_MEMORY_BYTES
    arrays = [np.asarray(a[rows]) for a in features + targets] if in_memory else None

    def make_batch(positions, epoch, index):
        if arrays is not None:
            chosen = [a[positions] for a in arrays]
        else:  # memory-mapped rows
            chosen = [np.asarray(a[rows[positions]]) for a in features + targets]
        inputs = tuple(chosen[:len(features)])
        return (inputs if len(inputs) > 1 else inputs[0], *finish(*chosen[len(features):]))

    return ArrayBatches(len(rows), batch_size, make_batch, shuffle_seed=shuffle_seed, workers=1)


def build_head_model(model, head_spec, backbone_spec, num_classes, input_shape):
    """A model from the backbone's feature outputs to the head's output, with the same layer names."""
    import keras

    from zoo.factory import head_features

    outputs = model.get_layer("backbone").outputs
    inputs = [keras.Input(shape=tuple(o.shape[1:]), name=f"feature{i}") for i, o in enumerate(outputs)]
    head_output = head_spec.build(head_features(backbone_spec, head_spec, inputs), num_classes, input_shape)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], head_output, name="head_on_features")


def copy_head_weights(source, target) -> None:
    """Copy head layers' weights between the full model and the head model (matched by name)."""
    names = {layer.name for layer in target.layers}
    for layer in source.layers:
        if layer.weights and layer.name in names:
            target.get_layer(layer.name).set_weights(layer.get_weights())


def target_finisher(data):
    """What a run's loss needs from a batch of plain cached targets (``data``: the run's
    zoo.harness.stages.RunData): the image pipeline's own target building (zoo.data.prepare), so
    one-hot labels and pixel weights are made in one place; class proportions are cached as they
    are used."""
    from zoo.data.pipeline import preparation_for
    from zoo.data.steps import PipelineOptions
    from zoo.tasks import TASKS

    if TASKS.get(data.task).target == "proportions":
        return lambda proportions: (proportions,)
    return preparation_for(data.info, PipelineOptions(**data.options)).targets


def prepare(spec, data, model, head_spec, backbone_spec, precision: str, global_batch: int,
            cache_root: Path) -> dict:
    """Compute (or reuse, under ``cache_root``) the per-image features of the source splits a run draws
    from (``spec``: its zoo.runspec.RunSpec, ``data``: its zoo.harness.stages.RunData, ``model``: its
    full model); returns the head model and the run's train, validation and test feature datasets."""
    from zoo.data.pipeline import input_pipeline
    from zoo.data.steps import PipelineOptions

    source_splits = sorted({split for split, _ in data.plan.values()})
    content = {split: data.source.content_id(split) for split in source_splits}
    key = cache_key(spec, content, head_spec, precision)
    folder = Path(cache_root) / key
    start = time.perf_counter()
    reused = (folder / "complete").is_file()
    if not reused:
        extractor = model.get_layer("backbone")
        # Every image of each split in index order, unaugmented, with plain targets.
        options = PipelineOptions(**{**data.options, "class_weights": None, "one_hot": False}, augment=False,
                                  cache=data.cache, cache_root=data.cache_root, memory_limit=data.memory_limit)
        pipelines = {split: input_pipeline(data.source, split, None, data.info, options, training=False)
                     for split in source_splits}
        data.input_cache.extend(batches.input_cache for batches in pipelines.values())
        compute_features(extractor, pipelines, folder)
    seconds = 0.0 if reused else time.perf_counter() - start
    head_model = build_head_model(model, head_spec, backbone_spec, data.info.num_classes,
                                  spec.input(data.info).shape)
    copy_head_weights(model, head_model)  # start from the full model's initial head
    finish = target_finisher(data)

    def dataset(name, shuffle_seed):
        split, indices = data.plan[name]
        return feature_dataset(folder, split, global_batch, shuffle_seed, indices, finish)

    return {"key": key, "folder": folder, "reused": reused, "seconds": seconds, "head_model": head_model,
            "dataset": dataset, "train": dataset("train", spec.seed), "val": dataset("val", None),
            "test": dataset("test", None)}
