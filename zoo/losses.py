"""The loss and the metric zoo needs beyond Keras's own.

``PixelCrossentropy``: sparse categorical cross-entropy of per-pixel class probabilities,
written with keras.ops. Keras 3.15's PyTorch implementation of SparseCategoricalCrossentropy
moves the class axis before PyTorch's nll_loss, and the gradient it sends back makes PyTorch's
bilinear up-sampling backward fail ("grad_input must be contiguous"), so every segmentation head
failed to train on PyTorch. The same quantity gathered along the last axis trains.

``PixelFocalCrossentropy``: the focal loss of the same per-pixel probabilities (``train.loss: focal`` on a
segmentation head), the class-imbalance loss segmentation_models offers: Keras's focal loss takes one-hot
targets, and one-hot masks would cost the whole (H, W, classes) array per batch.

``RowAccuracy``: classification accuracy that leaves out the rows completing an evaluation's last
batch (weight 0, zoo.data.pipeline.ArrayBatches) and counts every other row once.

All registered, so models saved with them load anywhere.
"""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="zoo")
class PixelCrossentropy(keras.losses.Loss):
    """-log p(true class) per pixel, from probabilities (normalised and clipped as Keras does)."""

    def __init__(self, name="pixel_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return -ops.log(_true_class_probability(y_true, y_pred))


def _true_class_probability(y_true, y_pred):
    """Each pixel's probability of its true class, normalised and clipped as Keras's cross-entropies do."""
    probabilities = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
    probabilities = ops.clip(probabilities, keras.backend.epsilon(), 1.0 - keras.backend.epsilon())
    classes = ops.expand_dims(ops.cast(y_true, "int32"), axis=-1)
    return ops.squeeze(ops.take_along_axis(probabilities, classes, axis=-1), axis=-1)


@keras.saving.register_keras_serializable(package="zoo")
class PixelFocalCrossentropy(keras.losses.Loss):
    """-alpha (1 - p)^gamma log p of each pixel's true class, as Keras's CategoricalFocalCrossentropy computes it
    (same defaults, alpha 0.25 and gamma 2, as for classification) on one-hot masks, from integer masks."""

    def __init__(self, alpha=0.25, gamma=2.0, name="pixel_focal_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha, self.gamma = float(alpha), float(gamma)

    def call(self, y_true, y_pred):
        true_class = _true_class_probability(y_true, y_pred)
        return -self.alpha * ops.power(1.0 - true_class, self.gamma) * ops.log(true_class)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="zoo")
class RowAccuracy(keras.metrics.MeanMetricWrapper):
    """Accuracy over the rows whose sample weight is above 0, each counted once. Keras's "accuracy"
    among ``metrics`` ignores weights (the zero-weight rows that complete a validation batch would
    count); among ``weighted_metrics`` it would weigh training rows by their class weights. Named
    "accuracy", so history keeps its columns. ``one_hot``: labels come one-hot (the focal loss)."""

    def __init__(self, name="accuracy", dtype=None, one_hot=False):
        accuracy = keras.metrics.categorical_accuracy if one_hot else keras.metrics.sparse_categorical_accuracy
        super().__init__(accuracy, name=name, dtype=dtype)
        self.one_hot = one_hot

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            sample_weight = ops.cast(ops.greater(sample_weight, 0), self.dtype)
        return super().update_state(y_true, y_pred, sample_weight=sample_weight)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "one_hot": self.one_hot}
