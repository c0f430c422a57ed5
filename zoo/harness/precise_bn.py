"""Precise BatchNorm: population statistics instead of stale moving averages.

Keras keeps BatchNorm's inference statistics as an exponential moving average (momentum
0.99; 0.999 in Keras's MobileNets) tuned for ImageNet's million steps. After a few hundred
steps the averages still hold mostly their initial values, and the model that is evaluated
is not the model that trained: a MobileNetV2 that reaches 84 % scores 9 %. The established
remedy ("precise BN": detectron2's ``PreciseBN`` hook, fvcore's ``update_bn_stats``, PyTorch's
``swa_utils.update_bn``; Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm") recomputes each
layer's mean and variance over a number of training batches with the weights fixed.

Here every trained BatchNorm layer runs with momentum 0 for one forward pass per batch, so
its moving statistics become exactly that batch's moments; the batch moments are pooled in
float64 into the population mean and (biased, as Keras's) variance of the layer's inputs over
all the batches. In training mode a BatchNorm layer normalises with its batch's moments, so
no layer's inputs depend on another layer's moving statistics and one pass serves all layers.
Only Keras ops and variables are touched: it runs on every backend and under mixed precision.
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np

from zoo.layers import walk_layers

DEFAULT_BATCHES = 200
# Before each validation during training the recalibration sees about this many images (never
# more than an epoch's): population statistics over a thousand images are close to those over
# all, a forward pass costs about a third of a training step, and so on real datasets (hundreds of
# steps per epoch) validation sees current statistics for about 3 % of the epoch's time. Smaller
# samples (64, 512 images) were tried on the quickstart: their noise moved best-epoch choices.
VALIDATION_IMAGES = 1024


def trained_batchnorm_layers(model) -> list:
    """The BatchNormalization layers of ``model`` that train (and so use batch statistics in
    training mode); those kept in inference mode by ``frozen`` or ``top:N`` are left out."""
    import keras

    return [layer for layer in walk_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable and not layer.renorm]


def forward_in_training_mode(model):
    """``model(images, training=True)``, compiled where the backend allows; trace it again after a
    change of trainable flags (BatchNorm reads them when traced)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda images: model(images, training=True), reduce_retracing=True)
    if keras.backend.backend() == "jax":
        return _jitted_training_forward(model)
    return lambda images: model(images, training=True)


def _jitted_training_forward(model):
    """On JAX: the training-mode call jitted as a pure function of the variables (Keras's
    stateless_call), its updated BatchNorm statistics assigned back; op by op, eager JAX takes
    seconds for what this does in milliseconds."""
    import jax
    import keras

    from zoo.runtime import lowered_on_variables, variable_values

    @jax.jit
    def updated_state(trainable, non_trainable, images):
        _, non_trainable = model.stateless_call(trainable, non_trainable, images, training=True)
        return non_trainable

    def forward(images):
        # The pipeline's batches are already on the device (zoo.data.prepare): kept there, not copied out.
        images = keras.tree.map_structure(keras.ops.convert_to_tensor,
                                          list(images) if isinstance(images, tuple) else images)
        values = updated_state(*variable_values(model), images)
        for variable, value in zip(model.non_trainable_variables, values):
            variable.assign(value)

    def lowered(images):
        """The program for batches like ``images`` (shape-and-type stand-ins), to compile ahead: traced as
        :func:`recalibrate_batchnorm` calls it, with every trained BatchNorm's momentum 0 (a Python number
        the trace keeps; the first trace is the one every later call runs)."""
        with population_momenta(trained_batchnorm_layers(model)):
            return lowered_on_variables(updated_state, model, images)

    forward.lowered = lowered
    return forward


@contextlib.contextmanager
def population_momenta(layers):
    """BatchNorm ``layers`` with momentum 0 inside (a training-mode call then sets the moving statistics
    to its batch's own), their momenta restored after."""
    momenta = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        yield
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


def _inputs_of(batch):
    """The model input of one batch: the first element of a (inputs, targets[, weights]) tuple."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def recalibrate_batchnorm(model, batches, max_batches: int = DEFAULT_BATCHES, forward=None) -> int:
    """Set every trained BatchNorm layer's moving mean and variance of ``model`` to the
    population statistics of its inputs over up to ``max_batches`` batches of ``batches``
    (an iterable of input batches or of (inputs, targets, ...) tuples; batches smaller than the
    first, an epoch's short last one, are skipped); returns the number of batches used (0 when
    the model has no trained BatchNorm layer). Weights and every other variable are unchanged."""
    import keras

    layers = trained_batchnorm_layers(model)
    if not layers or max_batches <= 0:
        return 0
    forward = forward or forward_in_training_mode(model)
    totals = [None] * len(layers)  # per layer: [examples, sum of batch means, sum of batch E[x^2]]
    used = 0
    with population_momenta(layers):
        full_size = None
        for batch in batches:
            if used >= max_batches:
                break
            images = _inputs_of(batch)
            first = images[0] if isinstance(images, (tuple, list)) else images
            count = int(first.shape[0])
            full_size = full_size or count
            if count != full_size:
                continue  # an epoch's short last batch: skipping it spares a second trace of the model
            forward(images)
            for index, layer in enumerate(layers):
                mean = keras.ops.convert_to_numpy(layer.moving_mean).astype(np.float64)
                variance = keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64)
                if totals[index] is None:
                    totals[index] = [0, np.zeros_like(mean), np.zeros_like(mean)]
                # Every batch element has the same spatial size in one layer, so batch sizes weigh it.
                totals[index][0] += count
                totals[index][1] += count * mean
                totals[index][2] += count * (variance + mean ** 2)
            used += 1
        if used:
            for layer, (count, mean_sum, square_sum) in zip(layers, totals):
                mean = mean_sum / count
                layer.moving_mean.assign(mean.astype("float32"))
                layer.moving_variance.assign(np.maximum(square_sum / count - mean ** 2, 0.0).astype("float32"))
    return used


def validation_batches(steps_per_epoch: int, batch_size: int, max_batches: int) -> int:
    """Batches recalibrated before each validation during training (see VALIDATION_IMAGES)."""
    return max(1, min(max_batches, steps_per_epoch, math.ceil(VALIDATION_IMAGES / batch_size)))


def precise_bn_callback(make_batches, max_batches: int, forward=None):
    """A Keras callback that recalibrates the fitted model's trained BatchNorm layers before every
    validation inside ``fit`` (Keras calls ``on_test_begin`` there), so best-epoch selection,
    early stopping and learning-rate schedules judge the statistics the model would be evaluated
    with, not the stale moving averages. ``make_batches()`` returns an endless iterable of batches;
    ``forward`` is the model's compiled training-mode call (made here when not given)."""
    import keras

    class PreciseBatchNorm(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = 0.0
            self._forward = forward
            self._batches = None

        def on_test_begin(self, logs=None):
            start = time.perf_counter()
            if self._forward is None:
                self._forward = forward_in_training_mode(self.model)
            if self._batches is None:
                self._batches = iter(make_batches())
            # One endless stream, so successive validations see different training batches.
            recalibrate_batchnorm(self.model, self._batches, max_batches, self._forward)
            self.seconds += time.perf_counter() - start

    return PreciseBatchNorm()
