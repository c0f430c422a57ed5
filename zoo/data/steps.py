"""What a run's input pipeline is asked for: the options zoo.data.pipeline reads, and the balanced
class weights. Nothing here runs an image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TARGETS = ("labels", "masks", "proportions")


@dataclass
class PipelineOptions:
    image_size: int
    batch_size: int
    preprocessing: str = "model"          # the backbone's mode
    extra_preprocessing: list = field(default_factory=list)  # from zoo.data.prepare.EXTRA_PREPROCESSING
    augment: bool = False
    cache: str = "auto"                   # the decoded cache: auto | memory | disk | none (zoo.data.decoded)
    cache_root: str | None = None         # where decoded splits live; None: decoded into memory, not kept
    memory_limit: int | None = None       # bytes of decoded rows held in memory (auto), None: no limit
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
