"""The input pipeline's one description, which both executors follow: tf.data (zoo.data.pipeline) and
NumPy batches without TensorFlow (zoo.data.array_pipeline). Nothing here runs an image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EXTRA_PREPROCESSING = ("grayscale", "equalize", "whiten")
TARGETS = ("labels", "masks", "proportions")


@dataclass
class PipelineOptions:
    image_size: int
    batch_size: int
    preprocessing: str = "model"          # the backbone's mode
    extra_preprocessing: list = field(default_factory=list)  # from EXTRA_PREPROCESSING
    augment: bool = False
    cache: str | None = None              # None | "memory" | a file path prefix
    shuffle_buffer: int = 2048
    seed: int = 0
    target: str = "labels"                # labels | masks | proportions
    class_weights: list | None = None     # per class; segmentation gets per-pixel sample weights
    one_hot: bool = False                 # classification labels as one-hot (for the focal loss)


def class_weights_from_counts(counts, ignore_classes=()) -> list[float]:
    """'Balanced' weights n_samples / (n_classes * count) (scikit-learn's rule); 0 for ignored classes."""
    counts = np.asarray(counts, dtype=np.float64)
    used = np.array([c > 0 and i not in ignore_classes for i, c in enumerate(counts)])
    weights = np.zeros_like(counts)
    weights[used] = counts[used].sum() / (used.sum() * counts[used])
    return weights.tolist()


def classification_augmenter(seed):
    """The photo augmentation (rotation, zoom, contrast, flip) as Keras preprocessing layers, shared
    by both executors of the pipeline."""
    import keras

    return keras.Sequential([
        keras.layers.RandomRotation(20 / 360, fill_mode="reflect", seed=seed),
        keras.layers.RandomZoom(0.15, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomContrast(0.1, seed=seed + 2),
        keras.layers.RandomFlip("horizontal", seed=seed + 3),
    ], name="augmentation")


def pipeline_steps(info, options: PipelineOptions, training: bool) -> list[tuple[str, dict]]:
    """The input pipeline as ordered (step, parameters): the one description both executors
    follow, tf.data (:func:`build_pipeline`) and NumPy batches without TensorFlow
    (zoo.data.array_pipeline). Steps: scale_resize, cache, shuffle, augment_pairs (segmentation:
    image and mask together), augment_batches (Keras preprocessing layers on a batch),
    extra_preprocessing, preprocess (the backbone's own), targets, batch."""
    segmentation = info.task == "segmentation"
    num_classes = info.num_classes
    ignore = [c for c in info.ignore_classes if c < num_classes]
    steps = [("scale_resize", {"scale": 255.0 / float(info.max_pixel_value), "size": options.image_size,
                               "channels": info.channels, "masks": segmentation})]
    if options.cache:
        steps.append(("cache", {"where": options.cache}))
    if training:
        steps.append(("shuffle", {"buffer": options.shuffle_buffer, "seed": options.seed}))
        if options.augment and segmentation:
            steps.append(("augment_pairs", {"seed": options.seed}))
        elif options.augment:
            steps.append(("augment_batches", {"seed": options.seed, "batch_size": options.batch_size}))
    if options.extra_preprocessing:
        steps.append(("extra_preprocessing", {"steps": list(options.extra_preprocessing)}))
    steps.append(("preprocess", {"mode": options.preprocessing}))
    kind = ("proportions" if options.target == "proportions" else "masks" if segmentation
            else "one_hot" if options.one_hot else "labels")
    weights = (options.class_weights if options.class_weights is not None
               else [0.0 if c in ignore else 1.0 for c in range(num_classes)])
    steps.append(("targets", {"kind": kind, "num_classes": num_classes, "pixel_weights": list(weights)}))
    steps.append(("batch", {"size": options.batch_size}))
    return steps
