"""The backbones' own input preprocessing, defined for any number of channels.

Images enter as float32 in the 0-255 range (zoo scales 16-bit and float sources to it).
For 3 channels each mode equals ``keras.applications.<family>.preprocess_input``. Extra
channels (NIR, Sentinel-2 bands) and single-channel images get the mode's scaling with
the *average* of the RGB statistics, so they land in the same range as the RGB bands the
pretrained first convolution was trained on.
"""
from __future__ import annotations

import numpy as np

IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
# OpenAI CLIP's image statistics (its preprocessor's image_mean / image_std).
CLIP_MEAN_RGB = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD_RGB = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def _per_channel(rgb_values: np.ndarray, channels: int) -> np.ndarray:
    """RGB statistics for the first three channels, their average for any others."""
    values = np.full(channels, rgb_values.mean(), dtype=np.float32)
    if channels >= 3:
        values[:3] = rgb_values
    return values


def preprocess(images, mode: str):
    """Apply preprocessing ``mode`` (caffe | tf | torch | clip | model) to a batch or single image.

    Works on NumPy arrays and on any Keras backend's tensors (zoo.data.prepare runs it on the device).
    """
    channels = int(images.shape[-1])
    if mode == "model":
        return images
    if mode == "tf":
        return images / 127.5 - 1.0
    if mode in ("torch", "clip"):
        mean = _per_channel(IMAGENET_MEAN_RGB if mode == "torch" else CLIP_MEAN_RGB, channels)
        std = _per_channel(IMAGENET_STD_RGB if mode == "torch" else CLIP_STD_RGB, channels)
        return (images / 255.0 - _constant(images, mean)) / _constant(images, std)
    if mode == "caffe":
        if channels >= 3:
            # Caffe models were trained on BGR: swap the first three channels.
            order = [2, 1, 0] + list(range(3, channels))
            images = _gather_channels(images, order)
            mean = np.concatenate([CAFFE_MEAN_BGR, np.full(channels - 3, CAFFE_MEAN_BGR.mean(), np.float32)])
        else:
            mean = np.full(channels, CAFFE_MEAN_BGR.mean(), dtype=np.float32)
        return images - _constant(images, mean)
    raise ValueError(f"unknown preprocessing mode {mode!r}; expected caffe, tf, torch, clip or model")


def _constant(images, values: np.ndarray):
    """``values`` as an operand of ``images``: NumPy for NumPy, else the backend's tensor."""
    if isinstance(images, np.ndarray):
        return values
    import keras

    return keras.ops.convert_to_tensor(values)


def _gather_channels(images, order):
    if isinstance(images, np.ndarray):
        return images[..., order]
    import keras

    return keras.ops.take(images, np.asarray(order, dtype=np.int32), axis=-1)
