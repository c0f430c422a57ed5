"""Images decoded once: each split of a dataset is decoded, resized and stored as integers once per
(dataset content, image size, channels), under the output folder's cache, and every run, seed,
backbone, head and process of a suite reads the same rows.

Rows are uint8 (0-255) or, for sources of more than 8 bits, uint16 (0-65535), proportional to the
source's full scale (``max_pixel_value``): what follows (zoo.data.prepare) casts and scales them on
the device. A cache folder is written under a temporary name and renamed when complete, so a
reader never sees half of one; several writers race harmlessly (the first rename wins). A damaged
folder is rebuilt; a cache that does not fit on the disk, or a disk that fills while writing,
falls back to decoding each batch from the source (``input_cache: off``), said in one line.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.runspec import CACHE_MODES

# Bump when stored rows would differ for the same source (resize, rounding, layout).
DECODE_VERSION = 3  # 2: large JPEGs decoded at a reduced scale; 3: photos read upright (EXIF orientation)
DECODE_THREADS = 8
# The disk the cache lives on keeps at least this much free after the cache is written.
DISK_MARGIN_BYTES = 1 << 30


def storage_dtype(max_pixel_value: float):
    """uint16 for sources of more than 8 bits, else uint8."""
    return np.dtype(np.uint16) if float(max_pixel_value) > 255 else np.dtype(np.uint8)


def full_scale(dtype) -> float:
    """The stored value meaning the source's full scale."""
    return float(np.iinfo(np.dtype(dtype)).max)


def _bilinear_weights(in_size: int, out_size: int):
    """TensorFlow's ResizeBilinear source rows/columns and weights (half-pixel centres)."""
    scale = np.float32(in_size / out_size)
    position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(position)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(position).astype(np.int64), in_size - 1)
    return lower, upper, (position - floor).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """An (H, W, C) float32 image resized to (size, size) as ``tf.image.resize`` does by default
    (half-pixel centres, no antialiasing): zoo's one image resize."""
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
    """A (H, W) mask resized as ``tf.image.resize(..., method="nearest")`` does: zoo's one mask resize."""
    def source(in_size):
        scale = np.float32(in_size / size)
        position = np.floor((np.arange(size, dtype=np.float32) + np.float32(0.5)) * scale).astype(np.int64)
        return np.clip(position, 0, in_size - 1)

    if mask.shape[:2] == (size, size):
        return mask
    return mask[source(mask.shape[0])][:, source(mask.shape[1])]


def stored_image(image, size: int, max_pixel_value: float) -> np.ndarray:
    """One image in the source's units (H, W, C) as a stored row: resized to (size, size), scaled to
    the storage type's full range and rounded. Training, prediction and export all start here."""
    dtype = storage_dtype(max_pixel_value)
    top = full_scale(dtype)
    scaled = np.asarray(image, dtype=np.float32) * np.float32(top / float(max_pixel_value))
    return np.clip(np.rint(resize_bilinear(scaled, size)), 0, top).astype(dtype)


def stored_target(target, size: int, masks: bool):
    """A target as stored: a mask resized by nearest neighbour (uint8), or the class index."""
    if masks:
        return resize_nearest(np.asarray(target, dtype=np.uint8), size)
    return np.int64(target)


class DiskRows:
    """Rows of a .npy file read by offset (``os.pread``): a dataset larger than memory is read batch
    by batch without mapping it, so the process's resident memory stays at a few batches."""

    def __init__(self, path: Path):
        with open(path, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(stream)
            self.offset = stream.tell()
        if fortran:
            raise ValueError(f"{path}: Fortran order")
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.descriptor = os.open(path, os.O_RDONLY)
        if os.fstat(self.descriptor).st_size < self.offset + self.row_bytes * self.shape[0]:
            os.close(self.descriptor)
            raise ValueError(f"{path}: shorter than its header says")

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self):
        try:
            os.close(self.descriptor)
        except (AttributeError, OSError):
            pass

    def __getitem__(self, positions) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), *self.shape[1:]), dtype=self.dtype)
        view = out.reshape(len(positions), -1).view(np.uint8)
        for row, position in enumerate(positions):
            view[row] = np.frombuffer(os.pread(self.descriptor, self.row_bytes, self.offset + int(position)
                                               * self.row_bytes), dtype=np.uint8)
        return out

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.shape[0]


@dataclass
class DecodedSplit:
    """One source split's rows: ``images`` (N, S, S, C) uint8/uint16 and ``targets`` (N,) class indices
    or (N, S, S) uint8 masks, as arrays in memory or read from the disk cache (zoo.data.decoded.DiskRows),
    or decoded on demand (``origin`` "off"). ``origin``: built (by this process), reused, off."""

    images: object
    targets: object
    origin: str
    folder: Path | None = None
    stream: "StreamedRows | None" = None

    def __len__(self) -> int:
        return len(self.stream) if self.stream is not None else len(self.targets)

    def rows(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """The stored images and targets at ``positions`` (whole batches, in the order asked)."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.stream is not None:
            images, targets = zip(*self.stream[positions])
            return np.stack(images), np.stack(targets)
        return self.images[positions], self.targets[positions]

    @property
    def nbytes(self) -> int:
        return 0 if self.stream is not None else int(self.images.nbytes) + int(self.targets.nbytes)


class StreamedRows:
    """Rows decoded from the source for each request (``input_cache: off``): the same values as
    the cache's, at the cost of decoding every epoch."""

    def __init__(self, arrays, size: int, max_pixel_value: float, masks: bool, threads: int = DECODE_THREADS):
        self.arrays, self.size, self.max_pixel_value, self.masks = arrays, size, max_pixel_value, masks
        self.pool = ThreadPoolExecutor(threads)  # kept: a batch is requested every step of every epoch

    def __len__(self) -> int:
        return len(self.arrays)

    def row(self, position: int):
        image, target = self.arrays[int(position)]
        return (stored_image(image, self.size, self.max_pixel_value),
                stored_target(target, self.size, self.masks))

    def __getitem__(self, positions):
        return list(self.pool.map(self.row, np.asarray(positions, dtype=np.int64)))


def cache_key(source, split: str, size: int) -> str:
    """What a split's decoded rows depend on: the source's content, the size, channels, scale, task."""
    info = source.info
    identity = [info.name, source.content_id(split), int(size), int(info.channels), float(info.max_pixel_value),
                info.task, DECODE_VERSION]
    return hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:16]


def _folder(cache_root: Path, source, split: str, size: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in source.info.name)
    return Path(cache_root) / f"{safe}-{split}-{int(size)}px-{cache_key(source, split, size)}"


def _expected(source, split: str, size: int) -> dict:
    info = source.info
    count = int(info.splits[split])
    masks = info.has_masks
    return {"count": count, "images_shape": [count, int(size), int(size), int(info.channels)],
            "images_dtype": storage_dtype(info.max_pixel_value).name,
            "targets_shape": [count, int(size), int(size)] if masks else [count],
            "targets_dtype": "uint8" if masks else "int64", "version": DECODE_VERSION}


def _read_complete(folder: Path, expected: dict):
    """The cache folder's (images, targets) as DiskRows when it is whole and what ``expected`` says,
    else None (absent, or damaged: the caller rebuilds it)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if {k: meta.get(k) for k in expected} != expected:
            return None
        images, targets = DiskRows(folder / "images.npy"), DiskRows(folder / "targets.npy")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (list(images.shape) != expected["images_shape"] or images.dtype.name != expected["images_dtype"]
            or list(targets.shape) != expected["targets_shape"] or targets.dtype.name != expected["targets_dtype"]):
        return None
    return images, targets


def _decoded_examples(source, split: str, size: int):
    """(position, image, target) of every example of ``split`` in order, for rows of ``size`` px: decoded
    in threads from the source's example arrays, or read through tf.data for tensorflow-datasets sources."""
    if source.reads_by_position:
        arrays = source.example_arrays(split, size=size)
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            for start in range(0, len(arrays), 256):
                chunk = range(start, min(start + 256, len(arrays)))
                yield from zip(chunk, *zip(*pool.map(lambda i: arrays[i], chunk)))
        return
    for position, (image, target) in enumerate(source.examples(split).as_numpy_iterator()):
        yield position, image, target


def _fill(source, split: str, size: int, images, targets, expected: dict) -> None:
    """Decode every example of ``split`` into the arrays ``images`` and ``targets`` (in memory or mapped)."""
    info = source.info
    masks = info.has_masks
    written = 0
    for position, image, target in _decoded_examples(source, split, size):
        if image.shape[-1] != info.channels:  # a grey photo among colour ones (tfds too)
            image = np.repeat(image, info.channels, axis=-1)
        images[position] = stored_image(image, size, info.max_pixel_value)
        targets[position] = stored_target(target, size, masks)
        written += 1
    if written != expected["count"]:
        raise ValueError(f"the source gave {written} examples of {split!r} where it lists {expected['count']}")


def _build(source, split: str, size: int, folder: Path, expected: dict) -> None:
    """Decode the split into a temporary folder and rename it to ``folder`` when complete."""
    work = folder.parent / f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    work.mkdir(parents=True)
    try:
        images = np.lib.format.open_memmap(work / "images.npy", mode="w+", dtype=expected["images_dtype"],
                                           shape=tuple(expected["images_shape"]))
        targets = np.lib.format.open_memmap(work / "targets.npy", mode="w+", dtype=expected["targets_dtype"],
                                            shape=tuple(expected["targets_shape"]))
        _fill(source, split, size, images, targets, expected)
        images.flush()
        targets.flush()
        del images, targets
        (work / "meta.json").write_text(json.dumps({**expected, "dataset": source.info.name, "split": split,
                                                    "size": int(size)}))
        try:
            os.rename(work, folder)
        except OSError:
            if _read_complete(folder, expected) is None:  # not another writer's complete copy
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def decode_needed(source, split: str, size: int, cache_root) -> bool:
    """Whether ``split`` at ``size`` px has no whole decoded folder under ``cache_root`` yet (the next run
    reading it decodes it)."""
    return _read_complete(_folder(cache_root, source, split, size), _expected(source, split, size)) is None


def decode_seconds_per_example(source, split: str, size: int, sample: int = 16) -> float:
    """Wall seconds per example to decode, resize and store ``split`` at ``size`` px as the cache's build
    does (DECODE_THREADS threads), measured on its first ``sample`` examples."""
    import time

    info = source.info
    count = min(sample, int(info.splits[split]))
    if count == 0:
        return 0.0
    start = time.perf_counter()
    examples = (source.example_arrays(split, size=size) if source.reads_by_position
                else list(source.examples(split).take(count).as_numpy_iterator()))
    rows = StreamedRows(examples, size, info.max_pixel_value, info.has_masks)
    rows[np.arange(count)]
    rows.pool.shutdown()
    return (time.perf_counter() - start) / count


def decoded_in_memory(source, split: str, size: int) -> DecodedSplit:
    """A split decoded into memory and not kept (no cache folder: a script's or a test's pipeline)."""
    expected = _expected(source, split, size)
    images = np.empty(expected["images_shape"], dtype=expected["images_dtype"])
    targets = np.empty(expected["targets_shape"], dtype=expected["targets_dtype"])
    _fill(source, split, size, images, targets, expected)
    return DecodedSplit(images, targets, "built")


_OPENED: dict = {}   # folder -> DecodedSplit held in memory, for the process's later runs
_LOCK = threading.Lock()


def open_decoded(source, split: str, size: int, cache_root, mode: str = "auto", memory_limit: int | None = None,
                 log=print) -> DecodedSplit:
    """The decoded rows of ``split`` at ``size``: from the cache under ``cache_root`` (built on first
    use), held in memory when ``mode`` is memory, or auto and they fit ``memory_limit`` bytes (None:
    no limit); read from the disk cache batch by batch otherwise; decoded per batch when ``mode`` is
    none or the cache cannot be written (``log`` says why, once)."""
    if mode not in CACHE_MODES:
        raise ValueError(f"unknown input cache mode {mode!r}; expected one of {CACHE_MODES}")
    info = source.info
    streams = source.reads_by_position  # else (tensorflow-datasets) only the cache gives random access
    folder = _folder(cache_root, source, split, size)
    with _LOCK:
        if folder in _OPENED and mode in ("auto", "memory"):
            held = _OPENED[folder]
            return DecodedSplit(held.images, held.targets, "reused", folder)
    expected = _expected(source, split, size)
    if mode == "none" and streams:
        return _streamed(source, split, size)
    origin = "reused"
    complete = _read_complete(folder, expected)
    if complete is None:
        needed = sum(int(np.prod(expected[f"{key}_shape"], dtype=np.int64)) * np.dtype(expected[f"{key}_dtype"]).itemsize
                     for key in ("images", "targets"))
        Path(cache_root).mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache_root).free
        if needed + DISK_MARGIN_BYTES > free and streams:
            log(f"input cache: {info.name} {split} at {size} px needs {needed / 1e9:.1f} GB and {cache_root} has "
                f"{free / 1e9:.1f} GB free; decoding each batch from the source instead (input_cache: off)")
            return _streamed(source, split, size)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)  # damaged or from an interrupted writer
        try:
            _build(source, split, size, folder, expected)
        except OSError as error:
            if not streams:
                raise
            log(f"input cache: could not write {folder} ({error.strerror or error}); decoding each batch from the "
                f"source instead (input_cache: off)")
            return _streamed(source, split, size)
        complete = _read_complete(folder, expected)
        if complete is None:
            raise OSError(f"the input cache {folder} was written but cannot be read back")
        origin = "built"
    images, targets = complete
    if mode == "memory" or (mode == "auto" and (memory_limit is None or images.nbytes + targets.nbytes
                                                <= memory_limit)):
        held = DecodedSplit(np.load(folder / "images.npy"), np.load(folder / "targets.npy"), origin, folder)
        with _LOCK:
            # Hold what the limit allows, the newest first: a worker's later runs mostly reuse the last dataset.
            while _OPENED and memory_limit is not None and held.nbytes + sum(
                    h.nbytes for h in _OPENED.values()) > memory_limit:
                _OPENED.pop(next(iter(_OPENED)))
            _OPENED[folder] = held
        return held
    return DecodedSplit(images, targets, origin, folder)


def _streamed(source, split: str, size: int) -> DecodedSplit:
    info = source.info
    rows = StreamedRows(source.example_arrays(split, size=size), size, info.max_pixel_value,
                        info.has_masks)
    return DecodedSplit(None, None, "off", stream=rows)


def forget_opened() -> None:
    """Drop the rows this process holds in memory (tests; a worker between unrelated suites)."""
    with _LOCK:
        _OPENED.clear()
