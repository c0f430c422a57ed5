"""The user's own image folders: layout detection, validation and decoding.

Classification: ``root/<class>/*`` or ``root/<split>/<class>/*``. Segmentation:
``root/images/*`` + ``root/masks/*`` (or ``root/<split>/images`` ...) with matching stems.
Every file is decoded once while scanning, so a corrupt or truncated file is skipped and
named up front instead of crashing an epoch; the scan is cached by file size and mtime.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from zoo.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}


def read_image(path) -> np.ndarray:
    """An image file as an (H, W, C) array in its own dtype (uint8, uint16 or float)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        array = tifffile.imread(path)
        if array.ndim == 3 and array.shape[0] < min(array.shape[1:]) and array.shape[0] <= 16:
            array = np.moveaxis(array, 0, -1)  # planar (bands, H, W) files
    else:
        from PIL import Image

        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "P", "CMYK", "YCbCr", "1"):
                image = image.convert("RGB" if image.mode != "LA" else "L")
            array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"unexpected array shape {array.shape}")
    return array


def read_mask(path) -> np.ndarray:
    mask = read_image(path)
    if mask.shape[-1] != 1:
        raise ValueError(f"a mask must have one band of class indices, got {mask.shape[-1]}")
    return mask[..., 0]


def _probe(path: Path) -> dict:
    try:
        array = read_image(path)
        return {"shape": list(array.shape), "dtype": str(array.dtype)}
    except Exception as error:  # PIL, tifffile and OS errors all mean "unreadable"
        return {"error": f"{type(error).__name__}: {error}".splitlines()[0][:200]}


def _listing_key(files: list[Path]) -> str:
    digest = hashlib.sha1()
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def probe_files(files: list[Path], cache_dir: Path | None) -> dict[str, dict]:
    """Decode every file once (in threads) and report shape/dtype or the error."""
    cache_file = Path(cache_dir) / f"scan-{_listing_key(files)}.json" if cache_dir else None
    if cache_file and cache_file.is_file():
        return json.loads(cache_file.read_text())
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(zip((str(f) for f in files), pool.map(_probe, files)))
    if cache_file:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(results))
        temporary.replace(cache_file)
    return results


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def detect_layout(root: Path) -> tuple[str, dict[str, Path]]:
    """(task, {split: folder}) for a dataset folder; a folder without split subfolders is one split."""
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; set `path` to a folder of images")
    subfolders = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if subfolders and all(name in SPLIT_ALIASES for name in subfolders):
        splits = {SPLIT_ALIASES[name]: path for name, path in subfolders.items()}
    else:
        splits = {"train": root}
    first = next(iter(splits.values()))
    task = "segmentation" if (first / "images").is_dir() and (first / "masks").is_dir() else "classification"
    return task, splits


class FolderScan:
    """The result of scanning a folder dataset: valid examples per split, and skipped files."""

    def __init__(self, root, cache_dir=None, class_names=None, max_pixel_value=None):
        self.root = Path(root).expanduser()
        self.task, split_folders = detect_layout(self.root)
        self.skipped: list[dict] = []
        self.examples: dict[str, list] = {}  # split -> [(image path, label or mask path)]
        candidates = {}
        for split, folder in split_folders.items():
            candidates[split] = (self._classification_candidates(folder) if self.task == "classification"
                                 else self._segmentation_candidates(folder))
        files = sorted({Path(p) for items in candidates.values() for item in items for p in item[:1]})
        probes = probe_files(files, cache_dir)
        masks = sorted({Path(item[1]) for items in candidates.values() for item in items}) \
            if self.task == "segmentation" else []
        self.listing_key = _listing_key(files + masks)  # names, sizes and modification times of every file
        self.channels, dtype = self._dominant_format(probes)
        self.max_pixel_value = float(max_pixel_value or {"uint8": 255, "uint16": 65535}.get(dtype, 1.0))
        for split, items in candidates.items():
            self.examples[split] = [item for item in items if self._accept(item[0], probes[str(item[0])])]
        if self.task == "classification":
            self.class_names = sorted({label for items in candidates.values() for _, label in items})
            self.examples = {split: [(path, self.class_names.index(label)) for path, label in items]
                             for split, items in self.examples.items()}
        else:
            self.class_names = list(class_names) if class_names else None
            self._check_masks(probes)
        self._check_sizes()

    def _classification_candidates(self, folder: Path) -> list:
        items = []
        for class_folder in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for path in _image_files(class_folder):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    items.append((path, class_folder.name))
                else:
                    self.skipped.append({"path": str(path), "reason": f"not an image file ({path.suffix or 'no suffix'})"})
        return items

    def _segmentation_candidates(self, folder: Path) -> list:
        masks = {p.stem: p for p in _image_files(folder / "masks")}
        items = []
        for path in _image_files(folder / "images"):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                self.skipped.append({"path": str(path), "reason": f"not an image file ({path.suffix or 'no suffix'})"})
            elif path.stem not in masks:
                raise DataError(f"{path} has no mask: expected {folder / 'masks' / path.stem}.<png|tif>; "
                                f"add the mask or remove the image")
            else:
                items.append((path, masks[path.stem]))
        return items

    @staticmethod
    def _dominant_format(probes) -> tuple[int, str]:
        readable = [p for p in probes.values() if "error" not in p]
        if not readable:
            raise DataError("no readable image in the dataset folder; see `zoo data info PATH` for the reasons")
        channels = Counter(p["shape"][-1] for p in readable).most_common(1)[0][0]
        dtype = Counter(p["dtype"] for p in readable).most_common(1)[0][0]
        return channels, dtype

    def _accept(self, path: Path, probe: dict) -> bool:
        if "error" in probe:
            self.skipped.append({"path": str(path), "reason": f"unreadable: {probe['error']}"})
            return False
        channels = probe["shape"][-1]
        # Grey photos among colour ones are expanded to RGB when read; other mismatches are skipped.
        if channels != self.channels and not (channels == 1 and self.channels == 3):
            self.skipped.append({"path": str(path),
                                 "reason": f"has {channels} channels, the dataset has {self.channels}"})
            return False
        return True

    def _check_masks(self, probes):
        highest = 0
        for items in self.examples.values():
            for image_path, mask_path in items:
                mask = read_mask(mask_path)
                image_shape = probes[str(image_path)]["shape"][:2]
                if list(mask.shape) != list(image_shape):
                    raise DataError(f"{mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image "
                                    f"{image_path.name} is {image_shape[0]}x{image_shape[1]}; masks must match "
                                    f"their images pixel for pixel")
                top = int(mask.max())
                if self.class_names and top >= len(self.class_names):
                    raise DataError(f"{mask_path}: mask value {top} is outside the {len(self.class_names)} classes "
                                    f"({', '.join(self.class_names)}); fix the mask or extend class_names")
                highest = max(highest, top)
        if not self.class_names:
            self.class_names = [f"class_{index}" for index in range(highest + 1)]

    def _check_sizes(self):
        if self.task == "classification" and len(self.class_names) < 2:
            raise DataError(f"{self.root} holds a single class ({', '.join(self.class_names) or 'none'}); "
                            f"classification needs one sub-folder per class, at least two")
        for split, items in self.examples.items():
            if not items:
                raise DataError(f"split {split!r} of {self.root} has no usable image; "
                                f"add images or remove the empty split folder")
