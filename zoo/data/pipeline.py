"""The tf.data input pipeline.

scale to 0-255 -> resize -> [cache] -> shuffle -> augment -> optional study preprocessing
-> the backbone's preprocessing -> batch -> prefetch. Augmentation runs on 0-255 values,
before the backbone's preprocessing, because Keras's contrast augmentation clips to that
range. Everything streams: memory does not grow with the dataset unless ``cache="memory"``.
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


def equalize_histogram(image):
    """Per-channel histogram equalisation of a 0-255 float image."""
    import tensorflow as tf

    def one_channel(channel):
        values = tf.clip_by_value(tf.cast(channel, tf.int32), 0, 255)
        histogram = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256, dtype=tf.float32)
        cdf = tf.cumsum(histogram)
        cdf_min = tf.reduce_min(tf.boolean_mask(cdf, cdf > 0))
        lookup = (cdf - cdf_min) / tf.maximum(cdf[-1] - cdf_min, 1.0) * 255.0
        return tf.gather(tf.clip_by_value(lookup, 0, 255), values)

    channels = tf.unstack(image, axis=-1)
    return tf.stack([one_channel(c) for c in channels], axis=-1)


def preprocessing_steps(setting) -> list[str]:
    """The steps of a ``train.preprocessing`` setting such as ``"equalize+whiten"`` (none: [])."""
    return [step for step in str(setting).split("+") if step and step != "none"]


def apply_extra_preprocessing(image, steps):
    """The dog-breed study's optional preprocessing, on one 0-255 image (H, W, C)."""
    import tensorflow as tf

    for step in steps:
        if step == "grayscale":
            grey = tf.image.rgb_to_grayscale(image[..., :3]) if image.shape[-1] >= 3 else image[..., :1]
            image = tf.repeat(grey, image.shape[-1], axis=-1)  # keep the channel count the model expects
        elif step == "equalize":
            image = equalize_histogram(image)
        elif step == "whiten":
            # Per-image standardisation, re-expressed around 127.5 with spread 64 so the
            # backbone's own preprocessing still sees the range it expects.
            mean, variance = tf.nn.moments(image, axes=[0, 1], keepdims=True)
            image = (image - mean) / tf.sqrt(variance + 1e-6) * 64.0 + 127.5
        else:
            raise ValueError(f"unknown preprocessing step {step!r}; expected one of {EXTRA_PREPROCESSING}")
    return image


def _classification_augmenter(seed):
    import keras

    return keras.Sequential([
        keras.layers.RandomRotation(20 / 360, fill_mode="reflect", seed=seed),
        keras.layers.RandomZoom(0.15, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomContrast(0.1, seed=seed + 2),
        keras.layers.RandomFlip("horizontal", seed=seed + 3),
    ], name="augmentation")


def _segmentation_augment(image, mask, seed_pair):
    """Flips and 90-degree rotations, applied identically to image and mask (exact for masks)."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed_pair, 3)
    flip_lr = tf.random.stateless_uniform([], seeds[0]) < 0.5
    flip_ud = tf.random.stateless_uniform([], seeds[1]) < 0.5
    turns = tf.random.stateless_uniform([], seeds[2], maxval=4, dtype=tf.int32)
    mask = mask[..., None]
    image = tf.where(flip_lr, tf.image.flip_left_right(image), image)
    mask = tf.where(flip_lr, tf.image.flip_left_right(mask), mask)
    image = tf.where(flip_ud, tf.image.flip_up_down(image), image)
    mask = tf.where(flip_ud, tf.image.flip_up_down(mask), mask)
    return tf.image.rot90(image, turns), tf.image.rot90(mask, turns)[..., 0]


def build_pipeline(examples, info, options: PipelineOptions, training: bool):
    """Batches ready for ``model.fit`` from a source's (image, target) examples.

    Yields (images, labels) for classification, (images, masks, pixel_weights) for
    segmentation (ignored classes weigh 0), (images, proportions) for the distribution head.
    """
    import tensorflow as tf

    from zoo.preprocessing import preprocess

    autotune = tf.data.AUTOTUNE
    size = options.image_size
    scale = 255.0 / float(info.max_pixel_value)
    segmentation = info.task == "segmentation"
    num_classes = info.num_classes
    ignore = [c for c in info.ignore_classes if c < num_classes]

    def scale_and_resize(image, target):
        image = tf.cast(image, tf.float32) * scale
        image = tf.image.resize(image, (size, size))
        if segmentation:
            target = tf.image.resize(tf.cast(target, tf.int32)[..., None], (size, size), method="nearest")[..., 0]
        else:
            target = tf.cast(target, tf.int32)
        image.set_shape([size, size, info.channels])
        return image, target

    dataset = examples.map(scale_and_resize, num_parallel_calls=autotune)
    if options.cache == "memory":
        dataset = dataset.cache()
    elif options.cache:
        dataset = dataset.cache(str(options.cache))
    if training:
        dataset = dataset.shuffle(options.shuffle_buffer, seed=options.seed, reshuffle_each_iteration=True)
        if options.augment and segmentation:
            seeds = tf.data.Dataset.random(seed=options.seed).batch(2)
            dataset = tf.data.Dataset.zip((dataset, seeds)).map(
                lambda example, seed: _segmentation_augment(example[0], example[1], seed),
                num_parallel_calls=autotune)

    steps = list(options.extra_preprocessing)
    mode = options.preprocessing
    pixel_weights = tf.constant(options.class_weights if options.class_weights is not None
                                else [0.0 if c in ignore else 1.0 for c in range(num_classes)], tf.float32)

    def finish(image, target):
        if steps:
            image = apply_extra_preprocessing(image, steps)
        image = preprocess(image, mode)
        if options.target == "proportions":
            counts = tf.math.bincount(tf.reshape(target, [-1]), minlength=num_classes, maxlength=num_classes,
                                      dtype=tf.float32)
            counts = counts * tf.cast(pixel_weights > 0, tf.float32)
            return image, counts / tf.maximum(tf.reduce_sum(counts), 1.0)
        if segmentation:
            return image, target, tf.gather(pixel_weights, target)
        if options.one_hot:
            return image, tf.one_hot(target, num_classes)
        return image, target

    augmenter = _classification_augmenter(options.seed) if (training and options.augment and not segmentation) else None
    if augmenter is not None:
        dataset = dataset.batch(options.batch_size).map(
            lambda images, labels: (augmenter(images, training=True), labels), num_parallel_calls=autotune).unbatch()
    dataset = dataset.map(finish, num_parallel_calls=autotune)
    return dataset.batch(options.batch_size).prefetch(autotune)


def class_counts(source, split, indices, num_classes) -> np.ndarray:
    """Examples (classification) or pixels (segmentation) per class in a split."""
    labels = source.labels(split)
    if labels is not None:
        chosen = labels if indices is None else labels[np.asarray(indices)]
        return np.bincount(chosen, minlength=num_classes)
    counts = np.zeros(num_classes, dtype=np.int64)
    for _, mask in source.examples(split, indices).as_numpy_iterator():
        counts += np.bincount(mask.reshape(-1).astype(np.int64), minlength=num_classes)[:num_classes]
    return counts
