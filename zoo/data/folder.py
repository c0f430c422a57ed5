"""The user's own image folders: layout detection, validation, and notes on what they hold.

Classification: ``root/<class>/*`` or ``root/<split>/<class>/*``. Segmentation:
``root/images/**`` + ``root/masks/**`` (or ``root/<split>/images`` ...), each mask at its image's place
(same subfolders and name, any image suffix).
Every file is decoded once while scanning (zoo.data.images reads it), so a corrupt or truncated file is
skipped and named up front instead of crashing an epoch; the scan is cached by file size and mtime.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from zoo.data.images import content_digest, is_image_file, not_an_image, probe_file, read_mask
from zoo.errors import DataError


SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}


def dataset_format(probes: dict[str, dict], max_pixel_value=None) -> tuple[int, float]:
    """The channels and the pixel maximum of a dataset of files (``probe_files``'s answers): those of
    most readable files; a ``max_pixel_value`` given by the dataset entry wins."""
    readable = [p for p in probes.values() if "error" not in p]
    if not readable:
        raise DataError("no readable image in the dataset; see `zoo data info PATH` for the reasons")
    channels = Counter(p["shape"][-1] for p in readable).most_common(1)[0][0]
    dtype = Counter(p["dtype"] for p in readable).most_common(1)[0][0]
    return channels, float(max_pixel_value or {"uint8": 255, "uint16": 65535}.get(dtype, 1.0))


# Full scales of 16-bit files that hold fewer bits, as sensors write them, with what writes them.
COMMON_FULL_SCALES = ((1023, "10-bit sensors"), (4095, "12-bit sensors"),
                      (10000, "Sentinel-2 and Landsat reflectance x 10,000"), (16383, "14-bit sensors"))


def range_note(probes: dict[str, dict], max_pixel_value=None) -> str | None:
    """A note for 16-bit files whose brightest pixel is far below 65,535 when the dataset entry gives no
    ``max_pixel_value``: scaled by 65,535 they reach the model dark (a 12-bit camera's or Sentinel-2's
    values use 6-25 % of the range). None when nothing is to be said or a file's maximum is not known."""
    readable = [p for p in probes.values() if "error" not in p]
    if max_pixel_value or not readable or any(p["dtype"] != "uint16" or p.get("max") is None for p in readable):
        return None
    brightest = max(p["max"] for p in readable)
    scale, what = next(((v, w) for v, w in COMMON_FULL_SCALES if brightest <= v), (None, None))
    if scale is None:
        return None
    return (f"16-bit images whose brightest pixel is {brightest:,} of 65,535 ({brightest / 65535:.0%}): scaled by "
            f"65,535 they reach the model dark. If {scale:,} is their full scale ({what}), add "
            f"`max_pixel_value: {scale}` to the dataset entry")


def refusal(probe: dict, channels: int) -> str | None:
    """Why a probed file is left out of a dataset of ``channels`` bands (None: it is kept). Grey
    photos among colour ones are kept: they are expanded to RGB when read (``read_example``)."""
    if "error" in probe:
        return f"unreadable: {probe['error']}"
    own = probe["shape"][-1]
    if own != channels and not (own == 1 and channels == 3):
        return f"has {own} channels, the dataset has {channels}"
    return None


def files_key(files: list[Path]) -> str:
    """An identity of a set of files from their paths, sizes and modification times (no reading)."""
    digest = hashlib.sha1()
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


SCAN_VERSION = 2  # 2: shapes as shown upright (EXIF orientation), a turned file's orientation, each file's digest


def probe_files(files: list[Path], cache_dir: Path | None, listing_key: str | None = None) -> dict[str, dict]:
    """Decode every file once (in threads) and report shape/dtype or the error. The cache is
    keyed by ``listing_key`` (see files_key; computed here when not given)."""
    cache_file = (Path(cache_dir) / f"scan-{SCAN_VERSION}-{listing_key or files_key(files)}.json"
                  if cache_dir else None)
    if cache_file and cache_file.is_file():
        return json.loads(cache_file.read_text())
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(zip((str(f) for f in files), pool.map(probe_file, files)))
    if cache_file:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(results))
        temporary.replace(cache_file)
    return results


def relative_to_here(path: Path) -> str:
    """For a relative path that was not found: where it was looked for. Paths in a suite are read from the
    folder zoo runs in (as Keras's, PyTorch Lightning's and MMSegmentation's configs are), not the suite's."""
    return "" if Path(path).is_absolute() else f" (relative paths are read from the current folder: {Path(path).resolve()})"


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def detect_layout(root: Path) -> tuple[str, dict[str, Path]]:
    """(task, {split: folder}) for a dataset folder; a folder without split subfolders is one split."""
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist{relative_to_here(root)}; set `path` to a folder of images")
    subfolders = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if subfolders and all(name in SPLIT_ALIASES for name in subfolders):
        splits = {SPLIT_ALIASES[name]: path for name, path in subfolders.items()}
    else:
        splits = {"train": root}
    first = splits.get("train", next(iter(splits.values())))  # test/ may hold unlabelled images only
    task = "segmentation" if (first / "images").is_dir() and (first / "masks").is_dir() else "classification"
    return task, splits


def _turned_hint(probe: dict, mask_shape) -> str:
    """For a mask that matches its image's stored pixels, not the upright photo zoo reads."""
    if probe.get("orientation", 1) < 5 or list(mask_shape) != probe["shape"][1::-1]:
        return ""
    return (f". The image is stored turned (EXIF orientation {probe['orientation']}) and zoo reads it upright, as "
            f"viewers and labelling tools show it; this mask was drawn on the stored pixels. Save the image upright "
            f"(Pillow's ImageOps.exif_transpose, or `exiftran -ai`) or turn the mask the same way")


# The ratio of the largest class's images to the smallest's from which a folder's imbalance is noted.
IMBALANCE_NOTED = 5


class FolderScan:
    """The result of scanning a folder dataset: valid examples per split, and skipped files."""

    def __init__(self, root, cache_dir=None, class_names=None, max_pixel_value=None, void_value=None,
                 headline_metric=None, model_classes=None):
        """``model_classes``: a trained model's classes, for a folder of class folders to score it on
        (zoo evaluate): its folders must be among them, and its labels are their indices there."""
        self.root = Path(root).expanduser()
        self.task, split_folders = detect_layout(self.root)
        self.split_folders = split_folders
        if void_value is not None and self.task != "segmentation":
            raise DataError(f"{self.root}: void_value marks the pixels of no class in segmentation masks, but this "
                            f"folder holds class folders (classification); remove void_value from the dataset entry")
        # The mask value of pixels of no class (Pascal VOC's and Cityscapes' 255); it becomes the class
        # ``void_index``, appended to the classes and ignored in the loss and the metrics.
        self.void_value, self.void_index = void_value, None
        self.skipped: list[dict] = []
        self.notes: list[str] = []  # what the user may want to know or set, said before training
        self.digests: dict[str, str] = {}  # file path -> content_digest, images and masks
        self.class_counts: dict[str, list] | None = None  # classification: split -> images per class
        self.class_folders: set[str] = set()  # classification: every class folder's name, empty ones too
        self.copy_groups: list[list[str]] = []  # the files byte-for-byte the same as another, group by group
        self.examples: dict[str, list] = {}  # split -> [(image path, label or mask path)]
        candidates = {}
        for split, folder in split_folders.items():
            if split != "train" and self._note_unlabelled(split, folder):
                continue
            candidates[split] = (self._classification_candidates(folder) if self.task == "classification"
                                 else self._segmentation_candidates(folder))
        files = sorted({Path(p) for items in candidates.values() for item in items for p in item[:1]})
        images_key = files_key(files)
        probes = probe_files(files, cache_dir, images_key)
        masks = sorted({Path(item[1]) for items in candidates.values() for item in items}) \
            if self.task == "segmentation" else []
        # Names, sizes and modification times of every file, masks included.
        self.listing_key = images_key + (files_key(masks) if masks else "")
        self.channels, self.max_pixel_value = dataset_format(probes, max_pixel_value)
        self.notes[:0] = [note for note in [range_note(probes, max_pixel_value)] if note]
        for split, items in candidates.items():
            self.examples[split] = [item for item in items if self._accept(item[0], probes[str(item[0])])]
        kept = [probes[str(item[0])] for items in self.examples.values() for item in items]
        turned = sum(1 for probe in kept if probe.get("orientation", 1) != 1)
        if turned:
            self.notes.append(f"{turned} of {len(kept)} images are stored turned (EXIF orientation, as phones save "
                              f"portrait photos) and are read upright, as viewers show them (Keras's "
                              f"image_dataset_from_directory reads them as stored)")
        shapes = {tuple(probe["shape"][:2]) for probe in kept}
        self.image_shape = list(shapes.pop()) if len(shapes) == 1 else None  # None: the sizes vary
        if self.task == "classification":
            self.class_names = sorted({label for items in candidates.values() for _, label in items})
            self._note_idle_class_folders()
            if model_classes is not None:
                self.class_names = self._as_model_classes(list(model_classes))
            elif class_names and list(class_names) != self.class_names:
                raise DataError(f"{self.root}: class_names {list(class_names)} are not the class folders "
                                f"{self.class_names}: a folder of class folders names its classes by them (sorted); "
                                f"remove class_names from the dataset entry or rename the folders")
            self.examples = {split: [(path, self.class_names.index(label)) for path, label in items]
                             for split, items in self.examples.items()}
            self.class_counts = {split: np.bincount([label for _, label in items],
                                                    minlength=len(self.class_names)).tolist()
                                 for split, items in self.examples.items()}
            self._note_untrained_classes()
            if headline_metric in (None, "accuracy"):
                self._note_imbalance()
        else:
            self.class_names = list(class_names) if class_names else None
            self._check_masks(probes)
        self._check_sizes()
        self.copies = self._find_copies(probes)
        # Each file's bytes, hashed (images from the scan, masks as they were checked): what a run records
        # of its data, so that an image or mask edited in place, to any size, is told apart.
        self.digests.update({str(item[0]): probes[str(item[0])]["digest"]
                             for items in self.examples.values() for item in items})

    def _as_model_classes(self, model_classes: list) -> list:
        """The model's classes, once every class folder here is one of them (a folder may hold a few)."""
        import difflib

        unknown = [name for name in self.class_names if name not in model_classes]
        if unknown:
            named = []
            for name in unknown:
                close = difflib.get_close_matches(name, model_classes, n=1, cutoff=0.6) or \
                    [c for c in model_classes if c.casefold() == name.casefold()]
                named.append(f"{name} (the model's {close[0]}?)" if close else name)
            shown = ", ".join(model_classes[:12]) + (", ..." if len(model_classes) > 12 else "")
            raise DataError(f"{self.root}: class folder(s) {', '.join(named)} are not classes of the model, which "
                            f"knows {len(model_classes)}: {shown}. Rename those folders to the model's class names, "
                            f"or move them out: a model cannot be scored on a class it never learnt")
        return model_classes

    def _note_unlabelled(self, split: str, folder: Path) -> bool:
        """Whether ``folder`` (a split other than train) holds images without labels, as Kaggle's test/ folders
        do: images and no class folders, or images/ and no masks/. Such a split is left out (validation and
        test are then carved from train) with a note, instead of every image being refused as out of place."""
        if self.task == "classification":
            labelled = any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())
            images = [p for p in _image_files(folder) if is_image_file(p)]
            what = "class folders"
        else:
            labelled = (folder / "masks").is_dir() or not (folder / "images").is_dir()
            images = [p for p in self._files_below(folder / "images") if is_image_file(p)] if not labelled else []
            what = "masks"
        if labelled or not images:
            return False
        self.notes.append(f"{folder.name}/ holds {len(images)} images without {what}: unlabelled, so they are left "
                          f"out of training and scoring ({split} is carved from train instead); `zoo predict "
                          f"OUT/runs/<run_id> {folder}` answers them")
        return True

    def _classification_candidates(self, folder: Path) -> list:
        """Each class folder's images, its subfolders' included (as Keras's image_dataset_from_directory
        and torchvision's ImageFolder read them); files beside the class folders belong to no class."""
        items = []
        for hidden in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(".")):
            self.skipped.append({"path": str(hidden), "reason": "hidden folder (its name starts with a dot): not "
                                 "a class, its files are ignored; rename it to use them"})
        for stray in _image_files(folder):
            self.skipped.append({"path": str(stray), "reason": "not in a class folder: the classes are the "
                                 "subfolders' names; move it into one"})
        for class_folder in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            self.class_folders.add(class_folder.name)
            for path in self._files_below(class_folder):
                if is_image_file(path):
                    items.append((path, class_folder.name))
                else:
                    self.skipped.append({"path": str(path), "reason": not_an_image(path)})
        return items

    def _files_below(self, folder: Path) -> list[Path]:
        """The files under ``folder`` at any depth, sorted by path; hidden files and folders left out,
        a hidden folder named among the skipped."""
        found = []
        for current, folders, files in os.walk(folder, followlinks=True):
            for name in sorted(f for f in folders if f.startswith(".")):
                self.skipped.append({"path": str(Path(current) / name), "reason": "hidden folder (its name starts "
                                     "with a dot): its files are ignored; rename it to use them"})
            folders[:] = [f for f in folders if not f.startswith(".")]
            found += [Path(current) / name for name in files if not name.startswith(".")]
        return sorted(found)

    def _segmentation_candidates(self, folder: Path) -> list:
        """Each image under ``images/`` (subfolders included) with the mask at the same place under
        ``masks/``: ``images/a/x.jpg`` pairs with ``masks/a/x.png``. A mask without its image is
        skipped and named; an image without its mask stops the scan (a mask left out by mistake
        would otherwise shrink the dataset unseen)."""
        images_folder, masks_folder = folder / "images", folder / "masks"

        def place(path: Path, below: Path) -> Path:
            return path.relative_to(below).with_suffix("")

        masks = {}
        for path in self._files_below(masks_folder):
            if not is_image_file(path):
                self.skipped.append({"path": str(path), "reason": not_an_image(path)})
            else:
                masks[place(path, masks_folder)] = path
        items, paired = [], set()
        for path in self._files_below(images_folder):
            key = place(path, images_folder)
            if not is_image_file(path):
                self.skipped.append({"path": str(path), "reason": not_an_image(path)})
            elif key not in masks:
                raise DataError(f"{path} has no mask: expected {masks_folder / key}.<png|tif>; "
                                f"add the mask or remove the image")
            else:
                items.append((path, masks[key]))
                paired.add(key)
        for key in sorted(set(masks) - paired):
            self.skipped.append({"path": str(masks[key]), "reason": f"a mask without an image: expected "
                                 f"{images_folder / key}.<png|jpg|tif>; add the image or remove the mask"})
        return items

    def _note_idle_class_folders(self):
        """Notes on class folders without a usable image: one with no image file is no class (an iPhone's HEIC
        photos only, a folder not filled yet); one whose every image was skipped stays a class never trained."""
        empty = sorted(self.class_folders - set(self.class_names))
        if empty:
            self.notes.append(f"class folder(s) {', '.join(empty)} hold no image file: they are no class; add "
                              f"images (see the skipped files) or remove them")
        used = {label for items in self.examples.values() for _, label in items}
        unreadable = [name for name in self.class_names if name not in used]
        if unreadable:
            self.notes.append(f"class(es) {', '.join(unreadable)} have no readable image (every file skipped): the "
                              f"model has the class but never learns it; fix the files or remove the folder")

    def _note_untrained_classes(self):
        """A note on classes with images in the folder's own validation or test split but none in train: the
        model cannot learn them, yet they are scored. Most often a class folder named otherwise in one split
        (`Pug` in test, `pug` in train), which the note points at."""
        import difflib

        train = self.class_counts.get("train")
        if train is None:
            return
        elsewhere = [index for index, name in enumerate(self.class_names) if train[index] == 0
                     and any(counts[index] for split, counts in self.class_counts.items() if split != "train")]
        if not elsewhere:
            return
        trained = {name.casefold(): name for index, name in enumerate(self.class_names) if train[index]}
        named = []
        for index in elsewhere:
            name = self.class_names[index]
            close = difflib.get_close_matches(name.casefold(), list(trained), n=1, cutoff=0.8)
            named.append(f"{name} (train has {trained[close[0]]}: the same class named otherwise?)" if close else name)
        splits = sorted({split for split, counts in self.class_counts.items() if split != "train"
                         and any(counts[index] for index in elsewhere)})
        self.notes.append(f"class(es) {', '.join(named)} have images in {' and '.join(splits)} but none in train: the "
                          f"model cannot learn them, yet they are scored; rename the folder or add training images")

    def _note_imbalance(self):
        """A note where the largest class has IMBALANCE_NOTED times the images of the smallest: accuracy then
        mostly measures the large classes (a shelter's rare breeds, a rare terrain), and the ranking the user
        wants is likely by F1 averaged over classes."""
        totals = np.sum([counts for counts in self.class_counts.values()], axis=0).tolist()
        smallest, largest = int(np.argmin(totals)), int(np.argmax(totals))
        if totals[smallest] == 0 or totals[largest] < IMBALANCE_NOTED * totals[smallest]:
            return
        self.notes.append(f"classes range from {totals[smallest]} image{'s' * (totals[smallest] != 1)} "
                          f"({self.class_names[smallest]}) to "
                          f"{totals[largest]} ({self.class_names[largest]}), "
                          f"{totals[largest] / totals[smallest]:.0f}:1: accuracy mostly measures the large classes; "
                          f"`headline_metric: macro_f1` in the dataset entry ranks models by F1 averaged over "
                          f"classes, and `train: {{class_weights: true}}` weighs the loss by class")

    def _find_copies(self, probes) -> dict[str, np.ndarray]:
        """Each split's copy group per example (-1: no other example has its bytes), and notes on the copies:
        a file downloaded twice lands in two splits of a random carving (the test then scores images the model
        trained on, which is why carving keeps a file's copies together), or in two classes (one label is
        wrong)."""
        groups: dict[str, list] = {}
        for split, items in self.examples.items():
            for index, (path, _) in enumerate(items):
                groups.setdefault(probes[str(path)].get("digest"), []).append((split, index))
        groups = [members for digest, members in groups.items() if digest and len(members) > 1]
        copies = {split: np.full(len(items), -1, dtype=np.int64) for split, items in self.examples.items()}
        for number, members in enumerate(groups):
            for split, index in members:
                copies[split][index] = number
        if not groups:
            return copies

        def name(split, index):
            return str(Path(self.examples[split][index][0]).relative_to(self.root))

        def example(members):
            return " = ".join(name(*member) for member in members[:2]) + (" = ..." if len(members) > 2 else "")

        self.copy_groups = [[name(*member) for member in members] for members in groups]

        extra = sum(len(members) - 1 for members in groups)
        note = f"{extra} image(s) are byte-for-byte copies of another ({example(groups[0])}"
        note += ", ...; `zoo data info` lists them)" if len(groups) > 1 else ")"
        carved = [split for split in ("val", "test") if split not in self.examples]
        if carved and any(sum(split == "train" for split, _ in members) > 1 for members in groups):
            note += (f"; the {' and '.join(carved)} split(s) carved from train keep each file's copies on one side, so "
                     f"that no image the model trained on is scored")
        self.notes.append(note)
        crossing = [members for members in groups if len({split for split, _ in members}) > 1]
        if crossing:
            self.notes.append(f"{len(crossing)} image(s) are in two of this folder's own splits ({example(crossing[0])}): "
                              f"one split scores images the other trains or validates on; delete one of the copies")
        if self.task == "classification":
            torn = [members for members in groups if len({self.examples[s][i][1] for s, i in members}) > 1]
            if torn:
                self.notes.append(f"{len(torn)} image(s) are copied into two or more classes ({example(torn[0])}): "
                                  f"at most one of their labels is right; delete the wrong copies")
        return copies

    def _accept(self, path: Path, probe: dict) -> bool:
        reason = refusal(probe, self.channels)
        if reason:
            self.skipped.append({"path": str(path), "reason": reason})
        return not reason

    def _check_masks(self, probes):
        seen = set()
        for items in self.examples.values():
            for image_path, mask_path in items:
                mask = read_mask(mask_path)
                self.digests[str(mask_path)] = content_digest(mask_path)
                image_shape = probes[str(image_path)]["shape"][:2]
                if list(mask.shape) != list(image_shape):
                    raise DataError(f"{mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image "
                                    f"{image_path.name} is {image_shape[0]}x{image_shape[1]}; masks must match "
                                    f"their images pixel for pixel"
                                    + _turned_hint(probes[str(image_path)], mask.shape))
                values = {int(v) for v in np.unique(mask)} - {self.void_value}
                top = max(values, default=0)
                if self.class_names and top >= len(self.class_names):
                    raise DataError(f"{mask_path}: mask value {top} is outside the {len(self.class_names)} classes "
                                    f"({', '.join(self.class_names)}); fix the mask or extend class_names"
                                    + self._void_hint(top))
                seen |= values
        if not self.class_names:
            highest = max(seen, default=0)
            below = max(seen - {highest}, default=-1)
            if highest in (255, 65535) and highest - below > 1:  # the type's top value, far above the rest
                raise DataError(f"{self.root}: the masks hold {highest} but no value between {below + 1} and "
                                f"{highest - 1}, so zoo would count {highest + 1} classes; name them with class_names"
                                + self._void_hint(highest))
            if highest > 254:
                raise DataError(f"{self.root}: mask values reach {highest}; zoo's masks hold at most 255 classes "
                                f"(values 0-254)")
            self.class_names = [f"class_{index}" for index in range(highest + 1)]
        if self.void_value is not None:
            self.void_index = len(self.class_names)
            self.class_names = list(self.class_names) + ["void" if "void" not in self.class_names else
                                                         f"void_{self.void_value}"]

    def _void_hint(self, value: int) -> str:
        if self.void_value is not None or value not in (255, 65535):
            return ""
        return (f"; or, if {value} marks pixels of no class (as Pascal VOC's object boundaries), add "
                f"`void_value: {value}` to the dataset entry: those pixels then count in no loss and no metric")

    def _check_sizes(self):
        if self.task == "classification" and len(self.class_names) < 2:
            raise DataError(f"{self.root} holds a single class ({', '.join(self.class_names) or 'none'}); "
                            f"classification needs one sub-folder per class, at least two")
        for split, items in self.examples.items():
            if not items:
                raise DataError(f"split {split!r} of {self.root} has no usable image; "
                                f"add images or remove the empty split folder")
