"""The input pipeline run by tf.data: zoo.data.steps describes it, this module executes it (and, without
TensorFlow, :func:`input_pipeline` hands the same description to zoo.data.array_pipeline).

scale to 0-255 -> resize -> [cache] -> shuffle -> augment -> optional study preprocessing
-> the backbone's preprocessing -> batch -> prefetch. Augmentation runs on 0-255 values,
before the backbone's preprocessing, because Keras's contrast augmentation clips to that
range. Everything streams: memory does not grow with the dataset unless ``cache="memory"``.
"""
from __future__ import annotations

import numpy as np

from zoo.data.steps import EXTRA_PREPROCESSING, PipelineOptions, classification_augmenter, pipeline_steps


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


def input_pipeline(source, split, indices, info, options: PipelineOptions, training: bool):
    """Batches of ``split`` (rows ``indices``) for ``model.fit``: tf.data where TensorFlow is
    installed (every Keras backend accepts it), else zoo.data.array_pipeline's PyDataset."""
    from zoo.runtime import has_tensorflow

    if has_tensorflow():
        return build_pipeline(source.examples(split, indices), info, options, training)
    from zoo.data.array_pipeline import build_array_pipeline

    return build_array_pipeline(source.example_arrays(split, indices), info, options, training)


def build_pipeline(examples, info, options: PipelineOptions, training: bool):
    """Batches ready for ``model.fit`` from a source's tf.data (image, target) examples, following
    :func:`pipeline_steps`.

    Yields (images, labels) for classification, (images, masks, pixel_weights) for
    segmentation (ignored classes weigh 0), (images, proportions) for the distribution head.
    """
    import tensorflow as tf

    from zoo.preprocessing import preprocess

    autotune = tf.data.AUTOTUNE
    dataset = examples
    per_example = {}  # the steps after any batch augmentation, run in one map

    def finish(image, target):
        if "extra_preprocessing" in per_example:
            image = apply_extra_preprocessing(image, per_example["extra_preprocessing"]["steps"])
        image = preprocess(image, per_example["preprocess"]["mode"])
        targets = per_example["targets"]
        kind, num_classes = targets["kind"], targets["num_classes"]
        pixel_weights = tf.constant(targets["pixel_weights"], tf.float32)
        if kind == "proportions":
            counts = tf.math.bincount(tf.reshape(target, [-1]), minlength=num_classes, maxlength=num_classes,
                                      dtype=tf.float32)
            counts = counts * tf.cast(pixel_weights > 0, tf.float32)
            return image, counts / tf.maximum(tf.reduce_sum(counts), 1.0)
        if kind == "masks":
            return image, target, tf.gather(pixel_weights, target)
        if kind == "one_hot":
            return image, tf.one_hot(target, num_classes)
        return image, target

    for step, params in pipeline_steps(info, options, training):
        if step == "scale_resize":
            dataset = dataset.map(_tf_scale_resize(**params), num_parallel_calls=autotune)
        elif step == "cache":
            dataset = dataset.cache() if params["where"] == "memory" else dataset.cache(str(params["where"]))
        elif step == "shuffle":
            dataset = dataset.shuffle(params["buffer"], seed=params["seed"], reshuffle_each_iteration=True)
        elif step == "augment_pairs":
            seeds = tf.data.Dataset.random(seed=params["seed"]).batch(2)
            dataset = tf.data.Dataset.zip((dataset, seeds)).map(
                lambda example, seed: _segmentation_augment(example[0], example[1], seed),
                num_parallel_calls=autotune)
        elif step == "augment_batches":
            # Layer by layer: each Keras preprocessing layer switches to TensorFlow's ops inside tf.data,
            # while a Sequential of them would run the process's own backend (JAX, PyTorch) on graph tensors.
            layers = classification_augmenter(params["seed"]).layers

            def augment(images, labels):
                for layer in layers:
                    images = layer(images, training=True)
                return images, labels

            dataset = dataset.batch(params["batch_size"]).map(augment, num_parallel_calls=autotune).unbatch()
        elif step in ("extra_preprocessing", "preprocess", "targets"):
            per_example[step] = params
        elif step == "batch":
            dataset = dataset.map(finish, num_parallel_calls=autotune).batch(params["size"]).prefetch(autotune)
        else:
            raise ValueError(f"unknown pipeline step {step!r}")
    return dataset


def _tf_scale_resize(scale, size, channels, masks):
    import tensorflow as tf

    def scale_and_resize(image, target):
        image = tf.cast(image, tf.float32) * scale
        image = tf.image.resize(image, (size, size))
        if masks:
            target = tf.image.resize(tf.cast(target, tf.int32)[..., None], (size, size), method="nearest")[..., 0]
        else:
            target = tf.cast(target, tf.int32)
        image.set_shape([size, size, channels])
        return image, target

    return scale_and_resize


def class_counts(source, split, indices, num_classes) -> np.ndarray:
    """Examples (classification) or pixels (segmentation) per class in a split."""
    labels = source.labels(split)
    if labels is not None:
        chosen = labels if indices is None else labels[np.asarray(indices)]
        return np.bincount(chosen, minlength=num_classes)
    counts = np.zeros(num_classes, dtype=np.int64)
    for _, mask in numpy_examples(source, split, indices):
        counts += np.bincount(mask.reshape(-1).astype(np.int64), minlength=num_classes)[:num_classes]
    return counts


def numpy_examples(source, split, indices=None):
    """The (image, target) examples of a split as NumPy, without TensorFlow where the source allows."""
    from zoo.data.sources import Source

    if type(source).example_arrays is not Source.example_arrays:
        arrays = source.example_arrays(split, indices)
        return (arrays[i] for i in range(len(arrays)))
    return source.examples(split, indices).as_numpy_iterator()
