"""Everything an image goes through after the decoded cache, written once in ``keras.ops`` and run as
one compiled function on the backend's device (the GPU where there is one): cast and scale to 0-255,
the photo augmentation, the study's preprocessing (grayscale, equalize, whiten), the backbone's own
preprocessing, and the targets the run's loss wants (labels, one-hot, masks with pixel weights,
class proportions).

Augmentation parameters are drawn on the host with NumPy from the run's seed, the epoch and the
batch (zoo.data.pipeline), so the same batch gets the same rotation, zoom, contrast and flip on
TensorFlow, JAX and PyTorch, with TensorFlow installed or not; here they are only applied.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zoo.data.decoded import full_scale, storage_dtype

EXTRA_PREPROCESSING = ("grayscale", "equalize", "whiten")
TARGET_KINDS = ("labels", "one_hot", "masks", "proportions")
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's
# The photo augmentation's ranges: rotation up to 20 degrees, zoom up to 15 %, contrast up to 10 %,
# and a horizontal flip half of the time (keras.layers.RandomRotation(20/360), RandomZoom(0.15),
# RandomContrast(0.1), RandomFlip("horizontal")).
ROTATION_DEGREES, ZOOM, CONTRAST = 20.0, 0.15, 0.1


@dataclass(frozen=True)
class Preparation:
    """What a run does to its stored rows, on the device: one compiled function per distinct value."""

    max_pixel_value: float = 255.0
    study_steps: tuple = ()
    preprocessing: str = "model"          # the backbone's mode (zoo.preprocessing.preprocess)
    target: str = "labels"                # TARGET_KINDS
    num_classes: int = 0
    pixel_weights: tuple = ()             # masks and proportions: per class (0: ignored)

    @property
    def scale(self) -> float:
        """Stored value to 0-255."""
        return 255.0 / full_scale(storage_dtype(self.max_pixel_value))

    def images(self, stored, augmentation=None):
        """Stored rows (N, S, S, C) to the model's input: float32, augmented when ``augmentation``
        (N, 9) is given, the study's steps, the backbone's preprocessing."""
        import keras

        from zoo.preprocessing import preprocess

        ops = keras.ops
        images = ops.cast(stored, "float32") * self.scale
        if augmentation is not None:
            images = transform_reflected(images, augmentation)
            mean = ops.mean(images, axis=(1, 2), keepdims=True)
            factor = ops.reshape(augmentation[:, 8], (-1, 1, 1, 1))
            images = ops.clip((images - mean) * factor + mean, 0.0, 255.0)
        for step in self.study_steps:
            images = study_step(images, step)
        return preprocess(images, self.preprocessing)

    def targets(self, raw) -> tuple:
        """Stored targets (class indices, or uint8 masks) to what the run's loss wants."""
        import keras

        ops = keras.ops
        if self.target == "labels":
            return (ops.cast(raw, "int32"),)
        if self.target == "one_hot":
            return (ops.one_hot(ops.cast(raw, "int32"), self.num_classes),)
        masks = ops.cast(raw, "int32")
        weights = ops.convert_to_tensor(np.asarray(self.pixel_weights, dtype=np.float32))
        if self.target == "masks":
            return masks, ops.take(weights, masks)
        counts = ops.sum(ops.one_hot(masks, self.num_classes), axis=(1, 2)) * ops.cast(weights > 0, "float32")
        return (counts / ops.maximum(ops.sum(counts, axis=-1, keepdims=True), 1.0),)

    def batch(self, stored, raw, augmentation=None) -> tuple:
        """(images, *targets) of one batch."""
        return (self.images(stored, augmentation), *self.targets(raw))

    def gathered(self, all_stored, all_raw, chosen, augmentation=None) -> tuple:
        """(images, *targets) of the rows ``chosen`` of a split held on the device: the gather and the
        preparation in one compiled call, one launch a batch."""
        import keras

        take = keras.ops.take
        return self.batch(take(all_stored, chosen, axis=0), take(all_raw, chosen, axis=0), augmentation)


def study_step(images, step: str):
    """One step of the dog-breed study's optional preprocessing on a 0-255 batch (N, H, W, C)."""
    import keras

    ops = keras.ops
    channels = int(images.shape[-1])
    if step == "grayscale":
        if channels >= 3:
            weights = ops.convert_to_tensor(np.asarray(GREY_WEIGHTS, dtype=np.float32))
            grey = ops.sum(images[..., :3] * weights, axis=-1, keepdims=True)
        else:
            grey = images[..., :1]
        return ops.repeat(grey, channels, axis=-1)  # keep the channel count the model expects
    if step == "equalize":
        return equalize_histogram(images)
    if step == "whiten":
        # Per-image standardisation, re-expressed around 127.5 with spread 64 so the backbone's own
        # preprocessing still sees the range it expects.
        mean = ops.mean(images, axis=(1, 2), keepdims=True)
        variance = ops.mean(ops.square(images - mean), axis=(1, 2), keepdims=True)
        return (images - mean) / ops.sqrt(variance + 1e-6) * 64.0 + 127.5
    raise ValueError(f"unknown preprocessing step {step!r}; expected one of {EXTRA_PREPROCESSING}")


def _reflect(index, size: int):
    """Integer pixel positions folded into [0, size) as a mirror does (d c b a | a b c d | d c b a)."""
    import keras

    period = 2 * size
    index = keras.ops.mod(index, period)
    return keras.ops.where(index >= size, period - 1 - index, index)


def transform_reflected(images, transforms):
    """Each image (N, H, W, C) resampled bilinearly through its affine transform (the first six of
    ``transforms``' columns, output pixel to input pixel, as keras.ops.image.affine_transform reads
    them), positions outside the image mirrored back in. Four gathers on the flattened batch: on a
    CPU several times faster than Keras's JAX and PyTorch affine_transform, and one definition on
    every backend. TensorFlow has a kernel for this very resampling (the same values within float
    rounding), several times faster than gathers there: it is used on that backend."""
    import keras

    ops = keras.ops
    if keras.backend.backend() == "tensorflow":
        return ops.image.affine_transform(images, transforms[:, :8], interpolation="bilinear", fill_mode="reflect")
    height, width, channels = (int(d) for d in images.shape[1:])
    count = ops.shape(images)[0]
    rows, columns = ops.meshgrid(ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"),
                                 indexing="ij")
    coefficient = [ops.reshape(transforms[:, k], (-1, 1, 1)) for k in range(6)]
    x = coefficient[0] * columns + coefficient[1] * rows + coefficient[2]
    y = coefficient[3] * columns + coefficient[4] * rows + coefficient[5]
    left, top = ops.floor(x), ops.floor(y)
    x_weight, y_weight = ops.reshape(x - left, (-1, 1)), ops.reshape(y - top, (-1, 1))
    left, top = ops.cast(left, "int32"), ops.cast(top, "int32")
    pixels = ops.reshape(images, (-1, channels))
    first = ops.reshape(ops.arange(count, dtype="int32") * (height * width), (-1, 1, 1))

    def at(row, column):
        return ops.take(pixels, ops.reshape(first + _reflect(row, height) * width + _reflect(column, width), (-1,)),
                        axis=0)

    upper = at(top, left) * (1.0 - x_weight) + at(top, left + 1) * x_weight
    lower = at(top + 1, left) * (1.0 - x_weight) + at(top + 1, left + 1) * x_weight
    return ops.reshape(upper * (1.0 - y_weight) + lower * y_weight, (-1, height, width, channels))


def equalize_histogram(images):
    """Per-image, per-channel histogram equalisation of a 0-255 batch (N, H, W, C): a pixel of value v
    goes to (cdf(v) - cdf_min) / (pixels - cdf_min) * 255."""
    import keras

    ops = keras.ops
    height, width, channels = (int(d) for d in images.shape[1:])
    count = ops.shape(images)[0]  # static on JAX and PyTorch, a tensor in a TensorFlow trace
    values = ops.clip(ops.cast(images, "int32"), 0, 255)
    values = ops.reshape(ops.transpose(values, (0, 3, 1, 2)), (count * channels, height * width))
    offsets = ops.reshape(ops.arange(count * channels, dtype="int32") * 256, (-1, 1))
    histogram = ops.segment_sum(ops.ones((count * channels * height * width,), "float32"),
                                ops.reshape(values + offsets, (-1,)), num_segments=count * channels * 256)
    cdf = ops.cumsum(ops.reshape(histogram, (count * channels, 256)), axis=-1)
    cdf_min = ops.min(ops.where(cdf > 0, cdf, float(height * width)), axis=-1, keepdims=True)
    lookup = ops.clip((cdf - cdf_min) / ops.maximum(cdf[:, -1:] - cdf_min, 1.0) * 255.0, 0.0, 255.0)
    equalised = ops.take_along_axis(lookup, values, axis=-1)
    return ops.transpose(ops.reshape(equalised, (count, channels, height, width)), (0, 2, 3, 1))


def photo_augmentation(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """``count`` draws of the photo augmentation for (size, size) images, as (count, 9) float32: the
    projective transform (rotation, zoom and horizontal flip about the centre, mapping output to input
    pixels as keras.ops.image.affine_transform reads it) and the contrast factor."""
    angle = rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES, count) * (math.pi / 180.0)
    zoom = 1.0 + rng.uniform(-ZOOM, ZOOM, count)
    contrast = 1.0 + rng.uniform(-CONTRAST, CONTRAST, count)
    flip = np.where(rng.random(count) < 0.5, -1.0, 1.0)
    cos, sin = np.cos(angle), np.sin(angle)
    centre = (size - 1) / 2.0
    a0, a1 = cos * zoom * flip, -sin * zoom
    b0, b1 = sin * zoom * flip, cos * zoom
    a2 = centre - (a0 + a1) * centre
    b2 = centre - (b0 + b1) * centre
    zeros = np.zeros(count)
    return np.stack([a0, a1, a2, b0, b1, b2, zeros, zeros, contrast], axis=1).astype(np.float32)


def pair_augmentation(rng: np.random.Generator, images: np.ndarray, masks: np.ndarray):
    """Random horizontal and vertical flips and quarter turns, the same for each image and its mask
    (exact for masks): on the host, on stored integer rows, a few grouped array moves per batch."""
    count = len(images)
    flips_lr, flips_ud = rng.random(count) < 0.5, rng.random(count) < 0.5
    turns = rng.integers(0, 4, count)
    images, masks = images.copy(), masks.copy()
    for lr in (False, True):
        for ud in (False, True):
            for turn in range(4):
                chosen = np.flatnonzero((flips_lr == lr) & (flips_ud == ud) & (turns == turn))
                if not len(chosen):
                    continue
                moved_images, moved_masks = images[chosen], masks[chosen]
                if lr:
                    moved_images, moved_masks = moved_images[:, :, ::-1], moved_masks[:, :, ::-1]
                if ud:
                    moved_images, moved_masks = moved_images[:, ::-1], moved_masks[:, ::-1]
                images[chosen] = np.rot90(moved_images, turn, axes=(1, 2))
                masks[chosen] = np.rot90(moved_masks, turn, axes=(1, 2))
    return images, masks


_COMPILED: dict = {}


def compiled(preparation: Preparation, gathered: bool = False):
    """``preparation.batch`` (``gathered``: ``preparation.gathered``) compiled for the process's backend
    (jax.jit, tf.function; PyTorch runs it eagerly on its device), one per distinct preparation."""
    key = (preparation, gathered)
    if key in _COMPILED:
        return _COMPILED[key]
    from zoo.runtime import backend

    function = preparation.gathered if gathered else preparation.batch
    name = backend()
    if name == "jax":
        import jax

        function = jax.jit(function)
    elif name == "tensorflow":
        function = _traced_once(function)
    _COMPILED[key] = function
    return function



def _traced_once(function):
    """tf.function of ``function`` whose first call per input shape runs alone: the pipeline's worker
    threads would otherwise each trace it at once."""
    import threading

    import tensorflow as tf

    traced, seen, lock = tf.function(function, reduce_retracing=True), set(), threading.Lock()
    # TensorFlow counts traces per Python function across instances: every run's Preparation shares
    # Preparation.batch, so a worker's tenth run would be "retracing" though each traces once.
    traced._omit_frequent_tracing_warning = True

    def call(*arguments):
        key = tuple(None if argument is None else tuple(argument.shape) for argument in arguments)
        if key in seen:
            return traced(*arguments)
        with lock:
            result = traced(*arguments)
            seen.add(key)
        return result

    return call
