"""Losses zoo needs beyond Keras's own.

``PixelCrossentropy``: sparse categorical cross-entropy of per-pixel class probabilities,
written with keras.ops. Keras 3.15's PyTorch implementation of SparseCategoricalCrossentropy
moves the class axis before PyTorch's nll_loss, and the gradient it sends back makes PyTorch's
bilinear up-sampling backward fail ("grad_input must be contiguous"), so every segmentation head
failed to train on PyTorch. The same quantity gathered along the last axis trains. Registered, so
models saved with it load anywhere.
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
        probabilities = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
        probabilities = ops.clip(probabilities, keras.backend.epsilon(), 1.0 - keras.backend.epsilon())
        classes = ops.expand_dims(ops.cast(y_true, "int32"), axis=-1)
        return -ops.log(ops.squeeze(ops.take_along_axis(probabilities, classes, axis=-1), axis=-1))
