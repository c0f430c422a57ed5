"""The input pipeline without TensorFlow: zoo.data.steps's description executed on NumPy arrays
and served as a ``keras.utils.PyDataset``, which every Keras backend trains from.

Each step here is the NumPy counterpart of the tf.data step of the same name: the resize is
TensorFlow's bilinear (half-pixel centres, no antialiasing) and its nearest-neighbour for
masks, so both paths give the same tensors when augmentation is off; augmentation uses the
same Keras preprocessing layers (classification) or the same flips and quarter turns
(segmentation). Batches are assembled by worker threads (decoding with Pillow and tifffile
and NumPy's arithmetic release the GIL), not processes: JAX and PyTorch do not survive a fork.
"""
from __future__ import annotations

import math
import threading

import keras
import numpy as np

from zoo.data.steps import EXTRA_PREPROCESSING, PipelineOptions, classification_augmenter, pipeline_steps
from zoo.preprocessing import preprocess

GREY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # tf.image.rgb_to_grayscale's


def _bilinear_weights(in_size: int, out_size: int):
    """TensorFlow's ResizeBilinear source rows/columns and weights (half-pixel centres)."""
    scale = np.float32(in_size / out_size)
    position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(position)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(position).astype(np.int64), in_size - 1)
    return lower, upper, (position - floor).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """An (H, W, C) float32 image resized to (size, size) as ``tf.image.resize`` does by default."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    top, bottom, y_lerp = _bilinear_weights(height, size)
    left, right, x_lerp = _bilinear_weights(width, size)
    x_lerp = x_lerp[None, :, None]
    upper_rows, lower_rows = image[top], image[bottom]
    top_values = upper_rows[:, left] + (upper_rows[:, right] - upper_rows[:, left]) * x_lerp
    bottom_values = lower_rows[:, left] + (lower_rows[:, right] - lower_rows[:, left]) * x_lerp
    return (top_values + (bottom_values - top_values) * y_lerp[:, None, None]).astype(np.float32)


def resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """A (H, W) mask resized as ``tf.image.resize(..., method="nearest")`` does."""
    def source(in_size):
        scale = np.float32(in_size / size)
        position = np.floor((np.arange(size, dtype=np.float32) + np.float32(0.5)) * scale).astype(np.int64)
        return np.clip(position, 0, in_size - 1)

    if mask.shape[:2] == (size, size):
        return mask
    return mask[source(mask.shape[0])][:, source(mask.shape[1])]


def equalize_histogram(image: np.ndarray) -> np.ndarray:
    """zoo.data.pipeline.equalize_histogram on a NumPy image."""
    channels = []
    for channel in np.moveaxis(image, -1, 0):
        values = np.clip(channel.astype(np.int32), 0, 255)
        cdf = np.cumsum(np.bincount(values.ravel(), minlength=256).astype(np.float32), dtype=np.float32)
        cdf_min = cdf[cdf > 0].min()
        lookup = (cdf - cdf_min) / np.float32(max(cdf[-1] - cdf_min, 1.0)) * np.float32(255.0)
        channels.append(np.clip(lookup, 0, 255)[values])
    return np.stack(channels, axis=-1).astype(np.float32)


def apply_extra_preprocessing(image: np.ndarray, steps) -> np.ndarray:
    """zoo.data.pipeline.apply_extra_preprocessing on one NumPy 0-255 image."""
    for step in steps:
        if step == "grayscale":
            grey = image[..., :3] @ GREY_WEIGHTS if image.shape[-1] >= 3 else image[..., 0]
            image = np.repeat(grey[..., None], image.shape[-1], axis=-1).astype(np.float32)
        elif step == "equalize":
            image = equalize_histogram(image)
        elif step == "whiten":
            mean = image.mean(axis=(0, 1), keepdims=True, dtype=np.float32)
            variance = np.square(image - mean).mean(axis=(0, 1), keepdims=True, dtype=np.float32)
            image = (image - mean) / np.sqrt(variance + np.float32(1e-6)) * np.float32(64.0) + np.float32(127.5)
        else:
            raise ValueError(f"unknown preprocessing step {step!r}; expected one of {EXTRA_PREPROCESSING}")
    return image.astype(np.float32, copy=False)


def make_targets(target, kind: str, num_classes: int, pixel_weights) -> tuple:
    """What a run's loss wants from one example's plain target (see zoo.data.pipeline's targets step)."""
    weights = np.asarray(pixel_weights, dtype=np.float32)
    if kind == "proportions":
        counts = np.bincount(np.asarray(target).reshape(-1).astype(np.int64), minlength=num_classes)[:num_classes]
        counts = counts.astype(np.float32) * (weights > 0)
        return (counts / max(float(counts.sum()), 1.0),)
    if kind == "masks":
        target = np.asarray(target, dtype=np.int32)
        return target, weights[target]
    if kind == "one_hot":
        return (np.eye(num_classes, dtype=np.float32)[int(target)],)
    return (np.int32(target),)


def augment_pair(image, mask, rng: np.random.Generator):
    """Random flips and quarter turns, the same for image and mask (zoo.data.pipeline's)."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    turns = int(rng.integers(4))
    return np.ascontiguousarray(np.rot90(image, turns)), np.ascontiguousarray(np.rot90(mask, turns))


class ArrayBatches(keras.utils.PyDataset):
    """Batches of ``count`` rows made by ``make_batch(positions, epoch)``, in order or, with
    ``shuffle_seed``, in a new permutation each epoch drawn from the seed and the epoch.
    Iterating it yields one epoch; ``repeat()`` yields epochs without end."""

    def __init__(self, count: int, batch_size: int, make_batch, shuffle_seed: int | None = None,
                 workers: int | None = None):
        from zoo.runtime import logical_cpus

        super().__init__(workers=workers or max(1, min(8, logical_cpus())), use_multiprocessing=False,
                         max_queue_size=8)
        self.count, self.batch_size, self.make_batch = count, batch_size, make_batch
        self.shuffle_seed, self.epoch = shuffle_seed, 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if self.shuffle_seed is None:
            return np.arange(self.count)
        return np.random.default_rng([self.shuffle_seed, self.epoch]).permutation(self.count)

    def __len__(self) -> int:
        return math.ceil(self.count / self.batch_size)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.make_batch(self.order[index * self.batch_size:(index + 1) * self.batch_size], self.epoch)

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._order()

    def repeat(self):
        """Epochs without end (as tf.data's ``repeat()``), reshuffled between them."""
        while True:
            yield from self
            self.on_epoch_end()


def build_array_pipeline(arrays, info, options: PipelineOptions, training: bool) -> ArrayBatches:
    """zoo.data.pipeline.build_pipeline's batches from a source's example arrays (see
    zoo.data.sources.ExampleArrays), without TensorFlow. A ``cache`` option keeps the scaled and
    resized examples in memory (a cache file prefix too: reading the files again is what such a
    cache saves, and memory is what the tf.data path would have used on the way)."""
    steps = dict(pipeline_steps(info, options, training))
    resize = steps["scale_resize"]
    scale, size = np.float32(resize["scale"]), resize["size"]
    cache = {} if "cache" in steps else None
    lock = threading.Lock()
    augmenter = classification_augmenter(steps["augment_batches"]["seed"]) if "augment_batches" in steps else None
    pair_seed = steps["augment_pairs"]["seed"] if "augment_pairs" in steps else None
    extra = steps.get("extra_preprocessing", {}).get("steps", [])
    mode, targets = steps["preprocess"]["mode"], steps["targets"]

    def example(position):
        if cache is not None and position in cache:
            return cache[position]
        image, target = arrays[int(position)]
        image = resize_bilinear(np.asarray(image, dtype=np.float32) * scale, size)
        target = resize_nearest(np.asarray(target, dtype=np.int32), size) if resize["masks"] else np.int32(target)
        if cache is not None:
            cache[position] = (image, target)
        return image, target

    def make_batch(positions, epoch):
        pairs = [example(p) for p in positions]
        if pair_seed is not None:
            pairs = [augment_pair(image, mask, np.random.default_rng([pair_seed, epoch, int(p)]))
                     for (image, mask), p in zip(pairs, positions)]
        images = np.stack([image for image, _ in pairs])
        if augmenter is not None:
            with lock:  # the layers' seed generators advance one batch at a time
                images = keras.ops.convert_to_numpy(augmenter(images, training=True)).astype(np.float32)
        columns = None
        for image, (_, target) in zip(images, pairs):
            if extra:
                image = apply_extra_preprocessing(image, extra)
            parts = (np.asarray(preprocess(image, mode), dtype=np.float32),
                     *make_targets(target, targets["kind"], targets["num_classes"], targets["pixel_weights"]))
            columns = [[] for _ in parts] if columns is None else columns
            for column, part in zip(columns, parts):
                column.append(part)
        return tuple(np.stack(column) for column in columns)

    return ArrayBatches(len(arrays), steps["batch"]["size"], make_batch,
                        shuffle_seed=steps["shuffle"]["seed"] if "shuffle" in steps else None)
