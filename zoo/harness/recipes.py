"""Keras recipes a run is made of, and the workarounds it needs: the optimizer, the compile mode, the
callbacks, and what one run must clear or keep for the next in the same process (the loss is the task's:
zoo.tasks)."""
from __future__ import annotations

import math
from pathlib import Path

from zoo.errors import RunFailed

# Training steps per call of a head on cached features (see zoo.harness.stages).
FEATURE_STEPS_PER_EXECUTION = 32


def make_optimizer(name: str, learning_rate):
    import keras

    makers = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "rmsprop": keras.optimizers.RMSprop,
              "nadam": keras.optimizers.Nadam,
              "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.9)}
    return makers[name](learning_rate=learning_rate)


def jit_compile(xla: bool):
    """Keras's ``jit_compile`` for ``train.xla``: XLA when asked; otherwise TensorFlow's graph
    without XLA, and each other backend's own default ("auto": JAX jits every step, as every JAX
    user expects; a JAX step without jit runs op by op, several times slower)."""
    from zoo.runtime import backend

    if xla:
        return True
    return False if backend() == "tensorflow" else "auto"


def compiled_with_xla(model, asked: bool) -> bool:
    """Whether Keras compiles ``model``'s train step with XLA. Asked for (``train.xla``) but refused by
    Keras (a layer that does not support it), the run stops here, naming the layers, rather than
    train in another mode than its row would say."""
    used = model.jit_compile  # what Keras resolved: "auto" is XLA on JAX, eager on PyTorch
    if asked and not used:
        refusing = sorted({f"{layer.name} ({type(layer).__name__})" for layer in model._flatten_layers()
                           if not getattr(layer, "supports_jit", True)})
        raise RunFailed(f"train.xla: true, but Keras cannot XLA-compile this model: "
                        f"{', '.join(refusing) or 'its backend refused'} do(es) not support XLA; "
                        f"set train.xla: false for it")
    return bool(used)


def best_weights_callback():
    """Keeps the weights of the epoch with the lowest validation loss, in memory (as EarlyStopping's
    restore_best_weights does): a copy per improving epoch costs far less than writing a file."""
    import keras

    class BestWeights(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best, self.weights = math.inf, None

        def on_epoch_end(self, epoch, logs=None):
            loss = (logs or {}).get("val_loss")
            if loss is not None and loss < self.best:
                self.best, self.weights = loss, self.model.get_weights()

    return BestWeights()


def learning_rate_log():
    """A callback that puts the optimizer's learning rate at each epoch's end into that epoch's logs
    (history.csv's ``learning_rate``), before a plateau schedule lowers it for the next epoch."""
    import keras

    class LearningRateLog(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    return LearningRateLog()


def named_epoch_lines(run_id: str, epochs: int):
    """A callback printing one line per epoch that names its run (``RUN: epoch 2/6 - 3s - loss: ...``), for
    a pool's workers (``zoo run --workers N``): Keras's own lines from several runs at once would interleave
    without saying whose they are."""
    import time

    import keras

    class NamedEpochLines(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            figures = " - ".join(f"{name}: {float(value):.4f}" for name, value in (logs or {}).items())
            print(f"{run_id}: epoch {epoch + 1}/{epochs} - {time.perf_counter() - self.started:.0f}s - {figures}",
                  flush=True)

    return NamedEpochLines()


def epoch_tensorboard(log_dir: Path):
    """Keras's TensorBoard callback writing per epoch only (its default ``update_freq``), without
    its per-batch hooks: at epoch frequency they write nothing yet cost about 1 ms a batch, as much
    as a small head's training step on cached features."""
    import keras

    class EpochTensorBoard(keras.callbacks.TensorBoard):
        def on_train_batch_begin(self, batch, logs=None):
            self._global_train_batch += 1

        def on_train_batch_end(self, batch, logs=None):
            pass

    return EpochTensorBoard(str(log_dir), write_graph=False, profile_batch=0)


def tensorboard_callbacks(log_dir: Path) -> list:
    """The epoch TensorBoard callback where TensorFlow is installed (Keras writes its logs
    through tf.summary); none without it."""
    from zoo.runtime import has_tensorflow

    return [epoch_tensorboard(log_dir)] if has_tensorflow() else []


def keep_keras_saving_skipsets() -> None:
    """Keras 3 (3.15) caches the attribute sets its saver skips under one key and looks them up under
    another (``saving_attr_skipset_`` / ``saving_attr_skiplist_``), so every layer saved builds a
    throw-away Layer to list its attributes: about 0.3 s per save of a MobileNetV2. Store the sets
    under the key Keras reads (clear_session forgets them); the sets are Keras's own."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.saving import saving_lib
    except ImportError:
        return
    for obj_type in ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss"):
        key = f"saving_attr_skiplist_{obj_type}"
        if global_state.get_global_attribute(key) is None:
            global_state.set_global_attribute(key, saving_lib.get_attr_skipset(obj_type))


def reset_keras_state() -> None:
    """What one run may leave behind for the next in the same process: layer-name counters,
    the global dtype policy, traced functions. Cleared so a run's result does not depend on
    whether it ran first or fifth in its worker."""
    import keras

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
