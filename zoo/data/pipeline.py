"""The input pipeline, one for every backend, with TensorFlow installed or not.

The host reads stored rows (zoo.data.decoded: decoded, resized and stored as integers once per
suite) by index, whole batches at once, in an order drawn from the run's seed and the epoch, and
draws the batch's augmentation from the same seed; one compiled function on the backend's device
(zoo.data.prepare) does the rest. The same seed gives the same batches on TensorFlow, JAX and
PyTorch. Batches come as a ``keras.utils.PyDataset``, assembled by worker threads (JAX and PyTorch
do not survive a fork).
"""
from __future__ import annotations

import itertools
import math
import os

import keras
import numpy as np

from zoo.data.steps import PipelineOptions


class ArrayBatches(keras.utils.PyDataset):
    """Batches of ``count`` rows made by ``make_batch(positions, epoch, index)``, every one of exactly
    ``batch_size`` rows: a compiled step (Keras's train, test and predict steps, the preparation) then
    sees one shape and compiles once, whatever the split's size.

    Training (``shuffle_seed`` given): a new permutation each epoch, drawn from the seed and the epoch;
    the epoch's last batch is completed with the epoch's first rows again (PyTorch's DistributedSampler
    convention), so every row is seen at least once an epoch and none is left out.
    Evaluation (rows in order): the last batch is completed by repeating its last row, and every batch
    ends with a weight per row, 0 for the repeats: Keras's weighted metrics and loss leave them out
    (see :func:`padding_loss_correction` for the loss's mean); :meth:`with_rows` says how many of a
    batch's rows are the split's, for loops that score or store them.
    Iterating it yields one epoch; ``repeat()`` yields epochs without end."""

    def __init__(self, count: int, batch_size: int, make_batch, shuffle_seed: int | None = None,
                 workers: int | None = None):
        from zoo.runtime import logical_cpus

        super().__init__(workers=workers or max(1, min(8, logical_cpus())), use_multiprocessing=False,
                         max_queue_size=8)
        self.count, self.batch_size, self.make_batch = count, batch_size, make_batch
        self.shuffle_seed, self.epoch = shuffle_seed, 0
        self.weighted = shuffle_seed is None
        self.is_endless = False
        self._last_order = None  # (epoch, order) of an endless input
        self.order = self._order()

    def _order(self, epoch: int | None = None) -> np.ndarray:
        if self.shuffle_seed is None:
            return np.arange(self.count)
        return np.random.default_rng([self.shuffle_seed, self.epoch if epoch is None else epoch]).permutation(self.count)

    def __len__(self) -> int:
        return math.ceil(self.count / self.batch_size)

    def endless(self):
        """This object, made to yield batches without end, as fit needs with ``steps_per_epoch`` (a cap on
        an epoch's steps: Keras stops training when a finite input runs out before steps x epochs): batch
        ``i`` is batch ``i % len`` of the split's epoch ``i // len``, in that epoch's order."""
        self.is_endless = True
        return self

    @property
    def num_batches(self):
        return None if self.is_endless else len(self)

    @property
    def padded_count(self) -> int:
        """Rows an epoch's batches hold, the completion of the last one included."""
        return len(self) * self.batch_size

    def rows(self, index: int) -> int:
        """How many of batch ``index``'s rows are the split's own (the others complete it)."""
        return min(self.batch_size, self.count - index * self.batch_size)

    def positions(self, index: int, order: np.ndarray | None = None) -> np.ndarray:
        """The rows of batch ``index`` of an epoch (``order``: its order, the current epoch's by default),
        the last batch completed as the class says."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        order = self.order if order is None else order
        start = index * self.batch_size
        chosen = order[start:start + self.batch_size]
        missing = self.batch_size - len(chosen)
        if missing:
            completion = (np.resize(order, missing) if self.shuffle_seed is not None
                          else np.full(missing, chosen[-1]))
            chosen = np.concatenate([chosen, completion])
        return chosen

    def __getitem__(self, index: int):
        epoch, order = self.epoch, self.order
        if self.is_endless:
            epoch, index = divmod(index, len(self))
            order = self._endless_order(epoch)
        return self._weighted(self.make_batch(self.positions(index, order), epoch, index), index)

    def _endless_order(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s order, drawn once (the worker threads ask for it batch after batch)."""
        known = self._last_order
        if known is None or known[0] != epoch:
            known = self._last_order = (epoch, self._order(epoch))
        return known[1]

    def _weighted(self, batch, index: int):
        if not self.weighted:
            return batch
        rows = self.rows(index)
        weights = (np.arange(self.batch_size) < rows).astype(np.float32)
        if len(batch) == 3:  # segmentation's pixel weights: the completion's pixels weigh nothing
            if rows == self.batch_size:
                return batch
            shape = (-1,) + (1,) * (len(batch[2].shape) - 1)
            return (batch[0], batch[1], keras.ops.multiply(batch[2], keras.ops.reshape(weights, shape)))
        return (*batch, weights)

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def with_rows(self):
        """(batch, rows) for each batch of an epoch: the batch as a compiled step takes it, and how many
        of its first rows are the split's (the rest complete the last batch and are to be cut away).
        Made ahead by the worker threads, as fit's reader makes them, so that the host's share of the next
        batches overlaps what the caller does with this one (prediction on the device)."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        indices = iter(range(len(self)))
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            ahead = deque((pool.submit(self.__getitem__, index), index)
                          for index in itertools.islice(indices, self.max_queue_size))
            while ahead:
                future, index = ahead.popleft()
                following = next(indices, None)
                if following is not None:
                    ahead.append((pool.submit(self.__getitem__, following), following))
                yield future.result(), self.rows(index)

    def on_epoch_end(self):
        if self.is_endless:  # the epoch follows from the batch index
            return
        self.epoch += 1
        self.order = self._order()

    def repeat(self):
        """Epochs without end, reshuffled between them."""
        while True:
            yield from self
            self.on_epoch_end()


def padding_loss_correction(validation):
    """A Keras callback that gives fit's ``val_loss`` its unpadded value. Keras averages each batch's
    loss over all its rows, zero-weighted ones included, and weighs the batch by its row count, so
    over ``validation`` (an ArrayBatches) it reports (sum of the split's losses) / padded_count; the
    split's mean is that times padded_count / count. Exact for zoo's losses, each a mean of per-row
    (or per-pixel) terms. Put it before every callback that reads ``val_loss``."""

    class PaddingLossCorrection(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is not None and "val_loss" in logs and validation.padded_count != validation.count:
                logs["val_loss"] = float(logs["val_loss"]) * validation.padded_count / validation.count

    return PaddingLossCorrection()


def preparation_for(info, options: PipelineOptions):
    """The on-device preparation (zoo.data.prepare.Preparation) a run's options ask for."""
    from zoo.data.prepare import Preparation

    segmentation = info.has_masks
    ignore = [c for c in info.ignore_classes if c < info.num_classes]
    weights = (options.class_weights if options.class_weights is not None
               else [0.0 if c in ignore else 1.0 for c in range(info.num_classes)])
    target = ("proportions" if options.target == "proportions" else "masks" if segmentation
              else "one_hot" if options.one_hot else "labels")
    return Preparation(max_pixel_value=float(info.max_pixel_value), study_steps=tuple(options.extra_preprocessing),
                       preprocessing=options.preprocessing, target=target, num_classes=int(info.num_classes),
                       pixel_weights=tuple(float(w) for w in weights))


def input_pipeline(source, split, indices, info, options: PipelineOptions, training: bool, log=print):
    """Batches of ``split`` (rows ``indices``, all when None) for ``model.fit``: shuffled and, with
    ``options.augment``, augmented where ``training``. Its ``input_cache`` says where the rows came
    from (built, reused, off)."""
    from zoo.data.decoded import decoded_in_memory, open_decoded
    from zoo.data.prepare import compiled, pair_augmentation, photo_augmentation

    if options.cache_root is None:
        decoded = decoded_in_memory(source, split, options.image_size)
    else:
        decoded = open_decoded(source, split, options.image_size, options.cache_root, options.cache,
                               options.memory_limit, log)
    rows = np.arange(len(decoded)) if indices is None else np.asarray(indices, dtype=np.int64)
    prepare = compiled(preparation_for(info, options))
    augment = options.augment and training
    pairs = augment and info.has_masks
    seed, size = int(options.seed), int(options.image_size)
    # Held on the accelerator when they fit: an epoch is then indexing there (segmentation's flips and
    # quarter turns, drawn and done on the host, need host rows).
    resident = None if pairs else device_rows(decoded)

    def host_batch(positions, epoch, index):
        """The host's share of a batch: stored rows gathered (for rows on the device: which rows), the
        augmentation drawn."""
        if resident is not None:
            return rows[positions].astype(np.int32), (
                photo_augmentation(np.random.default_rng([seed, epoch, index]), len(positions), size)
                if augment else None)
        images, targets = decoded.rows(rows[positions])
        augmentation = None
        if augment:
            rng = np.random.default_rng([seed, epoch, index])
            if pairs:
                images, targets = pair_augmentation(rng, images, targets)
            else:
                augmentation = photo_augmentation(rng, len(images), size)
        if targets.dtype == np.int64:
            targets = targets.astype(np.int32)  # JAX's default integers; class indices fit
        return images, targets, augmentation

    gather_and_prepare = None if resident is None else compiled(preparation_for(info, options), gathered=True)

    def make_batch(positions, epoch, index):
        if resident is not None:  # one compiled call: the rows gathered on the device and prepared there
            return gather_and_prepare(*resident, *host_batch(positions, epoch, index))
        return prepare(*host_batch(positions, epoch, index))

    batches = ArrayBatches(len(rows), options.batch_size, make_batch, shuffle_seed=seed if training else None)
    batches.input_cache = decoded.origin
    batches.on_device = resident is not None
    batches.host_batch = host_batch  # for benchmarks/pipeline_throughput.py: the host's share alone
    return batches


# Decoded rows go to the accelerator when they take at most this share of its memory (the model, its
# activations and the optimizer need the rest). ZOO_INPUT_ON_DEVICE=1 places them on any device, the CPU
# included (tests); 0 never.
DEVICE_SHARE = 0.25
_RESIDENT: dict = {}


def device_rows(decoded):
    """A decoded split's (images, targets) as tensors on the backend's device, placed once per process,
    when they are held in memory and fit DEVICE_SHARE of the accelerator's memory; else None."""
    from zoo.runtime import accelerator_memory_bytes

    if not isinstance(decoded.images, np.ndarray) or decoded.folder is None:
        return None
    forced = os.environ.get("ZOO_INPUT_ON_DEVICE")
    if forced == "0":
        return None
    if forced != "1":
        memory = accelerator_memory_bytes()
        if memory is None or decoded.nbytes > DEVICE_SHARE * memory:
            return None
    key = decoded.folder
    if key not in _RESIDENT:
        _RESIDENT.clear()  # one split on the device at a time: a worker's runs move on to other data
        targets = decoded.targets.astype(np.int32) if decoded.targets.dtype == np.int64 else decoded.targets
        _RESIDENT[key] = (keras.ops.convert_to_tensor(decoded.images), keras.ops.convert_to_tensor(targets))
    return _RESIDENT[key]


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
    if source.reads_by_position:
        arrays = source.example_arrays(split, indices)
        return (arrays[i] for i in range(len(arrays)))
    return source.examples(split, indices).as_numpy_iterator()
