"""Dataset sources: each yields (image, target) examples per split in the data's own units.

Images come out as float32 (H, W, C) in native units (``info.max_pixel_value`` is full
scale); targets are int32 class indices (classification) or uint8 (H, W) masks.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from zoo.data.cards import DATASETS
from zoo.errors import ConfigError, DataError, check_keys
from zoo.registry import Registry


@dataclass
class DatasetInfo:
    """What `zoo data info` shows and what the harness needs to build models."""

    name: str
    task: str
    class_names: list
    channels: int
    image_shape: list | None
    splits: dict  # the source's own splits -> example count (before any carving)
    skipped: list = field(default_factory=list)
    ignore_classes: list = field(default_factory=list)
    max_pixel_value: float = 255.0
    labelled_splits: list = field(default_factory=lambda: ["train"])
    notes: list = field(default_factory=list)  # what the user may want to set, said before training
    headline_metric: str | None = None  # what the dataset's models are ranked by, where its entry or card chooses
    class_counts: dict | None = None  # a classification folder's images per class, per split
    copies: list = field(default_factory=list)  # a folder's files byte-for-byte the same, group by group

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_masks(self) -> bool:
        """Each example's target is a mask, one class per pixel (a segmentation dataset, which distribution
        heads also train on), not one class per image."""
        return self.task != "classification"

    def to_dict(self) -> dict:
        return {**asdict(self), "num_classes": self.num_classes}


@dataclass
class ExampleArrays:
    """A split's examples by position: ``arrays[i]`` is (image float32 (H, W, C) in the source's
    units, target: a class index, or a uint8 (H, W) mask when ``masks``)."""

    count: int
    load: object          # position -> (image, target)
    channels: int
    masks: bool = False

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, position: int):
        if not 0 <= position < self.count:
            raise IndexError(position)
        return self.load(position)


class Source:
    """Base class. Subclasses set ``self.info`` and implement ``labels`` and ``example_arrays``;
    sources read through tensorflow-datasets implement ``examples`` (a tf.data.Dataset) instead,
    which zoo.data.decoded reads once into the decoded cache."""

    info: DatasetInfo

    def labels(self, split: str) -> np.ndarray | None:
        """Class index per example (classification), for stratified carving; None otherwise."""
        return None

    def groups(self, split: str) -> np.ndarray | None:
        """A group per example that splits must not cut (e.g. a track); None if independent."""
        return None

    def folder_groups(self, split: str) -> np.ndarray | None:
        """Per example, the subfolder it lies in (``split.group_by: folder``): tiles of one region or scene, photos
        of one animal, kept on one side of the carving. None where the source has no folders of images."""
        return None

    def copies(self, split: str) -> np.ndarray | None:
        """Per example, a number shared by the examples whose files are byte-for-byte the same (-1: none
        other is); carving keeps them in one split. None where the source has no files to compare."""
        return None

    def tracks(self, split: str, indices=None) -> dict | None:
        """track_id, position and point_id per example, for sources whose points lie on tracks."""
        return None

    @property
    def reads_by_position(self) -> bool:
        """Whether the source has example arrays (random access without TensorFlow); sources read
        through tensorflow-datasets stream their examples in order instead."""
        return type(self).example_arrays is not Source.example_arrays

    def example_arrays(self, split: str, indices=None, size: int | None = None) -> "ExampleArrays":
        """Random access to the (image, target) examples of ``split`` (restricted to ``indices``) as
        NumPy arrays: what zoo.data.decoded decodes into the cache. ``size``: the side the images will be
        stored at, which sources of files may decode large JPEGs closer to (zoo.data.images.decode_image).
        Sources read through tensorflow-datasets have none."""
        raise DataError(f"dataset {self.info.name!r} is read through tensorflow-datasets, which needs TensorFlow: "
                        f"pip install tensorflow tensorflow-datasets (the embedded synthetic datasets and your own "
                        f"folders need neither)")

    def content_id(self, split: str) -> str:
        """An identity of the images of ``split``: caches of per-image results (features) are
        keyed by it. The dataset's configuration pins the data here; sources whose files can
        change under the same configuration (the user's folders) add their listing."""
        return f"{split}:{self.info.splits[split]}"

    def signature(self, split: str, by_size: bool = False) -> str:
        """What ``split`` holds: its examples' ids, (classification) labels and, for sources of files, the
        files' contents (hashed where the source hashed them, ``N:c...``; else their sizes), hashed. A run
        records it, so that a user's folder changed since (images added, removed, moved between classes,
        edited in place) is told apart from the one the run saw; where the folder lives and the files' dates
        do not enter it (a copied study and its data keep their signatures). ``by_size``: the files' sizes
        even where contents are known, to compare with a signature an earlier zoo recorded."""
        import hashlib

        labels = self.labels(split)
        ids = self.example_ids(split)
        files = self.example_files(split)
        digests = None if by_size or files is None else self.file_digests(files)
        if digests is not None:
            contents, marker = digests, "c"
        else:
            contents, marker = None if files is None else [os.path.getsize(f) if os.path.isfile(f) else -1
                                                           for f in files], ""
        digest = hashlib.sha1(json.dumps([ids, None if labels is None else labels.tolist(), contents]).encode())
        return f"{len(ids)}:{marker}{digest.hexdigest()[:16]}"

    def file_digests(self, files: list[str]) -> list[str] | None:
        """Each of ``files``' bytes hashed, where the source hashed them as it opened (None: it did not)."""
        return None

    def example_files(self, split: str) -> list[str] | None:
        """The files ``split``'s examples are read from (images, then masks), where the source reads files."""
        return None

    def example_ids(self, split: str, indices=None) -> list[str]:
        """A stable name per example, in ``examples`` order: predictions of two runs are aligned by
        these, not by position. ``split/index`` here; the user's files by their path."""
        indices = range(self.info.splits[split]) if indices is None else indices
        return [f"{split}/{int(i)}" for i in indices]


def select(dataset, indices, size):
    """Keep the examples at ``indices`` of a streamed dataset (nothing is held in memory)."""
    import tensorflow as tf

    if indices is None:
        return dataset
    keep = np.zeros(size, dtype=bool)
    keep[np.asarray(indices)] = True
    keep = tf.constant(keep)
    return dataset.enumerate().filter(lambda index, example: keep[index]).map(lambda index, example: example)


def ignored_class_indices(card: dict, class_names: list) -> list[int]:
    """The entry's ``ignore_classes`` (land cover's no_data and clouds: left out of the loss and the
    metrics) as class indices; each may be given by its index or its name. An unknown name or an
    index outside the classes is refused, never silently ignoring nothing."""
    given = card.get("ignore_classes") or []  # a list: a suite's entry is checked (_check_entry_values)
    names = [str(n) for n in class_names]
    if not names:  # a tensorflow-datasets dataset not prepared yet: its class names come with it
        return sorted({int(v) for v in given if isinstance(v, int)})
    indices = []
    for value in given:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
            indices.append(value)
        elif isinstance(value, str) and value in names:
            indices.append(names.index(value))
        else:
            raise ConfigError(f"dataset {card.get('name')!r}: ignore_classes names {value!r}, which is not one of "
                              f"its classes ({', '.join(names)}) nor an index 0-{len(names) - 1}")
    return sorted(set(indices))


SOURCES: Registry[type] = Registry("source")


def register_source(kind):
    def decorate(cls):
        SOURCES.register(kind, cls)
        return cls
    return decorate


# --- tensorflow-datasets ----------------------------------------------------------------

WORDNET_PREFIX = re.compile(r"^n\d{8}-")


@register_source("tfds")
class TfdsSource(Source):
    """A tensorflow-datasets builder named by the card's ``tfds_name``."""

    def __init__(self, card: dict, data_dir=None, **_):
        import tensorflow_datasets as tfds

        self.card = card
        self.image_key, self.label_key = card.get("image_key", "image"), card.get("label_key", "label")
        # Labels read once per split: pre-flight's carvings, its warnings and a worker's runs all carve by them.
        self._targets_by_split: dict[str, np.ndarray] = {}
        self.builder = self.make_builder(card, data_dir)
        features = self.builder.info.features
        names = list(features[self.label_key].names) if hasattr(features[self.label_key], "names") else []
        if not names or names == [str(i) for i in range(len(names))]:
            names = card.get("class_names") or names  # names exist only once the data is prepared
        names = [WORDNET_PREFIX.sub("", n) for n in names]
        self.info = DatasetInfo(
            name=card["name"], task=card["task"], class_names=names,
            channels=int(card["channels"]), image_shape=card.get("native_size"),
            splits={}, ignore_classes=ignored_class_indices(card, names),
            max_pixel_value=float(card.get("max_pixel_value", 255)),
            labelled_splits=list(card.get("labelled_splits", card.get("splits", {"train": 0}).keys())))
        self.info.splits = {split: self.count(split) for split in card.get("splits", {"train": 0})}
        self._tfds = tfds

    def make_builder(self, card, data_dir):
        import tensorflow_datasets as tfds

        return tfds.builder(card["tfds_name"], data_dir=data_dir)

    def missing_data_message(self) -> str:
        return (f"dataset {self.card['name']!r} is not prepared in {self.builder.data_dir}. "
                f"{self.card.get('download', '').strip()} "
                f"Run `zoo data prepare {self.card['name']}` (add --data-dir DIR to choose where it goes).")

    def as_dataset(self, split, **kwargs):
        try:
            return self.builder.as_dataset(split=split, **kwargs)
        except AssertionError as error:
            if "could not find data" in str(error):
                raise DataError(self.missing_data_message()) from None
            raise

    def count(self, split) -> int:
        known = self.builder.info.splits
        if split in known and known[split].num_examples:
            return int(known[split].num_examples)
        return len(self._read_targets(split))

    def _read_targets(self, split) -> np.ndarray:
        if split not in self._targets_by_split:
            import tensorflow_datasets as tfds

            dataset = self.as_dataset(split, decoders={self.image_key: tfds.decode.SkipDecoding()})
            targets = dataset.map(lambda example: example[self.label_key]).batch(4096)
            self._targets_by_split[split] = np.concatenate(
                [batch.numpy().reshape(len(batch), -1)[:, 0] for batch in targets] or [np.zeros(0)])
        return self._targets_by_split[split]

    def labels(self, split):
        if self.info.has_masks:
            return None
        return self._read_targets(split).astype(np.int64)

    def examples(self, split, indices=None):
        import tensorflow as tf

        dataset = self.as_dataset(split)
        dataset = select(dataset, indices, self.info.splits.get(split) or self.count(split))
        image_key, label_key = self.image_key, self.label_key
        return dataset.map(lambda ex: (tf.cast(ex[image_key], tf.float32), ex[label_key]),
                           num_parallel_calls=tf.data.AUTOTUNE)


@register_source("landcover_ens")
class LandcoverSource(TfdsSource):
    """The land-cover challenge via zoo's own manual-download builder."""

    def __init__(self, card, data_dir=None, manual_dir=None, **_):
        self.manual_dir = manual_dir
        super().__init__(card, data_dir=data_dir)

    def make_builder(self, card, data_dir):
        from zoo.data.landcover_ens import LandcoverEns

        return LandcoverEns(data_dir=data_dir)

    def _read_targets(self, split):
        return np.zeros(sum(1 for _ in self.as_dataset(split).map(lambda ex: ex["has_mask"])))

    def missing_data_message(self) -> str:
        # Here --data-dir is where the download is, not where the built dataset goes (that is --tfds-dir).
        return (f"dataset {self.card['name']!r} is not built in {self.builder.data_dir}. "
                f"{self.card.get('download', '').strip()} Then run `zoo data prepare {self.card['name']} --data-dir DIR` "
                f"(DIR: the unzipped download holding train/ and test/; --tfds-dir chooses where the built dataset goes).")


# --- embedded synthetic data ------------------------------------------------------------

@register_source("synthetic")
class SyntheticSource(Source):
    """Generated in memory from the card's ``generator``, ``num_examples``, ``image_size``, ``seed``."""

    def __init__(self, card, cache_dir=None, **_):
        self.card = card
        self.cache_path = self._cache_path(card, cache_dir)
        self.images, self.targets = self._generate(card, self.cache_path)
        self.info = DatasetInfo(
            name=card["name"], task=card["task"], class_names=list(card["class_names"]),
            channels=int(self.images.shape[-1]), image_shape=list(self.images.shape[1:3]),
            splits={"train": len(self.images)}, ignore_classes=ignored_class_indices(card, card["class_names"]),
            max_pixel_value=float(card.get("max_pixel_value", 255)))

    @staticmethod
    def _cache_path(card, cache_dir) -> Path | None:
        import hashlib
        import json

        from zoo.data import synthetic

        if cache_dir is None:
            return None
        key = hashlib.sha1(json.dumps([card["generator"], card["num_examples"], card["image_size"],
                                       card.get("seed", 0), synthetic.GENERATOR_VERSION]).encode()).hexdigest()[:16]
        return Path(cache_dir) / "synthetic" / f"{card['generator']}-{key}.npz"

    @staticmethod
    def _generate(card, path):
        from zoo.data import synthetic

        if path is not None:
            try:
                with np.load(path) as cached:
                    return cached["images"], cached["targets"]
            except (OSError, ValueError, KeyError):
                pass
        return getattr(synthetic, card["generator"])(card["num_examples"], card["image_size"], card.get("seed", 0))

    def save_cache(self) -> None:
        """Keep the generated arrays under the suite's cache folder for the runs' processes
        (generating takes about a second per thousand tiles). Called once a suite starts: a
        plan or a refused suite writes nothing."""
        if self.cache_path is None or self.cache_path.is_file():
            return
        import io

        from zoo.results import write_atomic

        buffer = io.BytesIO()
        np.savez(buffer, images=self.images, targets=self.targets)
        try:
            write_atomic(self.cache_path, buffer.getvalue())
        except OSError:
            pass  # only a cache: the runs generate the data again

    def labels(self, split):
        return None if self.info.has_masks else self.targets

    def example_arrays(self, split, indices=None, size=None):
        rows = np.arange(len(self.images)) if indices is None else np.asarray(indices)
        return ExampleArrays(len(rows), lambda i: (self.images[rows[i]].astype(np.float32), self.targets[rows[i]]),
                             self.info.channels, masks=self.info.has_masks)


# --- the user's folders -----------------------------------------------------------------

@register_source("folder")
class FolderSource(Source):
    """Images in a folder tree; see zoo.data.folder for the layouts."""

    def __init__(self, card, cache_dir=None, **_):
        from zoo.data.folder import FolderScan

        if not card.get("path"):
            raise ConfigError(f"dataset {card.get('name')!r}: source 'folder' needs `path: /folder/of/images`")
        self.scan = FolderScan(card["path"], cache_dir=cache_dir, class_names=card.get("class_names"),
                               max_pixel_value=card.get("max_pixel_value"), void_value=card.get("void_value"),
                               headline_metric=card.get("headline_metric"), model_classes=card.get("model_classes"))
        void = [] if self.scan.void_index is None else [self.scan.void_index]
        self.info = DatasetInfo(
            name=card.get("name") or Path(card["path"]).name, task=self.scan.task,
            class_names=self.scan.class_names, channels=self.scan.channels, image_shape=self.scan.image_shape,
            splits={split: len(items) for split, items in self.scan.examples.items()},
            skipped=self.scan.skipped, ignore_classes=sorted(set(ignored_class_indices(card, self.scan.class_names) + void)),
            max_pixel_value=self.scan.max_pixel_value, labelled_splits=list(self.scan.examples), notes=self.scan.notes,
            class_counts=self.scan.class_counts, copies=self.scan.copy_groups)

    def labels(self, split):
        if self.info.has_masks:
            return None
        return np.array([label for _, label in self.scan.examples[split]], dtype=np.int64)

    def copies(self, split):
        return self.scan.copies[split]

    def folder_groups(self, split):
        # Below the class folder (classification) or images/ (segmentation): an image directly there is its own
        # group, one in a subfolder shares the subfolder's.
        classification = not self.info.has_masks
        groups = []
        for path, _ in self.scan.examples[split]:
            place = Path(path).relative_to(self.scan.split_folders[split])
            folder = place.parent.parts[0 if classification else 1:]  # segmentation: below images/
            groups.append("/".join(folder) if len(folder) > classification else str(place))
        return np.asarray(groups)

    def file_digests(self, files):
        return [self.scan.digests[f] for f in files]

    def content_id(self, split):
        void = "" if self.scan.void_value is None else f":void={self.scan.void_value}"  # masks are read remapped
        return f"{split}:{self.info.splits[split]}:{self.scan.listing_key}{void}"

    def example_ids(self, split, indices=None):
        items = self.scan.examples[split]
        items = items if indices is None else [items[i] for i in indices]
        return [str(Path(path).relative_to(self.scan.root)) for path, _ in items]

    def example_files(self, split):
        items = self.scan.examples[split]
        masks = [str(target) for _, target in items] if self.info.has_masks else []
        return [str(path) for path, _ in items] + masks

    def example_arrays(self, split, indices=None, size=None):
        from zoo.data.images import read_example, read_mask

        items = self.scan.examples[split]
        if indices is not None:
            items = [items[i] for i in indices]
        channels, maximum = self.info.channels, self.info.max_pixel_value
        masks = self.info.has_masks
        void_value, void_index = self.scan.void_value, self.scan.void_index

        def load(position):
            path, target = items[position]
            if masks:
                target = read_mask(str(target))
                target = (target if void_value is None else np.where(target == void_value, void_index, target))
                target = target.astype(np.uint8)
            else:
                target = np.int64(target)
            return read_example(path, channels, maximum, size), target

        return ExampleArrays(len(items), load, channels, masks=masks)


# Sources a suite opens from the entry's own `path:`, without a dataset card, and their task
# (None: read from the folder's layout).
PATH_SOURCES = {"folder": None, "tracks": "classification"}
# What a suite's dataset entry may say besides its card's own keys (which it may override).
DATASET_ENTRY_KEYS = ("name", "source", "path", "task", "class_names", "split", "max_pixel_value", "ignore_classes",
                      "void_value", "data_dir", "manual_dir", "headline_metric")


def source_of_path(path: str) -> str:
    """The source a bare `path:` names: a CSV file is a track manifest, anything else a folder of images."""
    return "tracks" if str(path).lower().endswith(".csv") else "folder"


def _check_entry_values(entry: dict) -> None:
    """The kinds of value a dataset entry's keys take, each wrong one named with an example."""
    where = f"dataset {entry['name']!r}"
    if "path" in entry and not isinstance(entry["path"], str):
        raise ConfigError(f"{where}: path must be a folder or file path, got {entry['path']!r}")
    if "split" in entry:
        from zoo.data.splits import check_split_setting

        check_split_setting(entry["split"], f"{where}: split")
    maximum = entry.get("max_pixel_value")
    if maximum is not None and (isinstance(maximum, bool) or not isinstance(maximum, (int, float)) or maximum <= 0):
        raise ConfigError(f"{where}: max_pixel_value must be a number above 0 (e.g. 4095 for 12-bit data), "
                          f"got {maximum!r}")
    for key in ("class_names", "ignore_classes"):
        if key in entry and not isinstance(entry[key], (list, tuple)):
            raise ConfigError(f"{where}: {key} must be a list, e.g. [water, forest], got {entry[key]!r}")
    names = [str(name) for name in entry.get("class_names") or ()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # two classes of one name: one row of each table, one column of each prediction file
        raise ConfigError(f"{where}: class_names lists {', '.join(map(repr, repeated))} more than once; each class "
                          f"needs a name of its own (e.g. water_deep, water_shallow)")
    if "void_value" in entry:
        void = entry["void_value"]
        if isinstance(void, bool) or not isinstance(void, int) or not 0 <= void <= 65535:
            raise ConfigError(f"{where}: void_value must be the mask value of pixels of no class, a whole number "
                              f"such as 255, got {void!r}")
        if entry.get("source") != "folder":
            raise ConfigError(f"{where}: void_value is for the masks of your own folder (`source: folder`); "
                              f"remove it")


def resolve_dataset_config(entry: dict) -> dict:
    """A suite's dataset entry merged over the card of the same name (the entry wins); an entry
    key that neither zoo nor the card knows is refused, naming the closest known one."""
    if not isinstance(entry, dict) or not entry.get("name"):
        raise ConfigError("each dataset needs at least `name:` (a card such as eurosat_rgb, or your own name "
                          "with `path:` to your folder)")
    card = DATASETS.get(entry["name"]) if entry["name"] in DATASETS else None
    check_keys(entry, list(DATASET_ENTRY_KEYS) + [k for k in card or {} if k not in DATASET_ENTRY_KEYS],
               f"dataset {entry['name']!r}")
    if card is None and "source" not in entry and isinstance(entry.get("path"), str):
        # `zoo data info PATH` reads a path without being told its source; a suite entry does the same.
        entry = {**entry, "source": source_of_path(entry["path"])}
    _check_entry_values(entry)
    if card is None and "source" in entry and entry["source"] not in PATH_SOURCES:
        raise ConfigError(f"dataset {entry['name']!r}: source {entry['source']!r} reads no data of your own without "
                          f"a dataset card; use `source: folder` (a folder of images) or `source: tracks` (a track "
                          f"manifest CSV), or leave `source:` out and give `path:`")
    if card is None and entry.get("source") not in PATH_SOURCES:
        raise ConfigError(f"{DATASETS.unknown_message(entry['name'])} For your own images give `path:` (a folder, "
                          f"or a track manifest CSV).")
    # The data decides the task (a folder's layout is checked where the suite expands): a `task:` that
    # contradicts it would only fail later, inside a run, with the wrong heads.
    fixed = card["task"] if card is not None else PATH_SOURCES[entry["source"]]
    if fixed is not None and entry.get("task", fixed) != fixed:
        what = f"dataset card {entry['name']!r}" if card is not None else f"`source: {entry['source']}`"
        raise ConfigError(f"dataset {entry['name']!r}: task {entry['task']!r}, but {what} is {fixed}; "
                          f"remove task: from the entry")
    if card is not None:
        return {**card, **entry}
    return {"task": fixed, **entry}


def open_source(entry: dict, cache_dir=None, data_dir=None, manual_dir=None) -> Source:
    """Open the dataset described by a suite entry or card name."""
    config = resolve_dataset_config({"name": entry} if isinstance(entry, str) else entry)
    source_class = SOURCES.get(config["source"])
    source = source_class(config, cache_dir=cache_dir, data_dir=config.get("data_dir", data_dir),
                          manual_dir=config.get("manual_dir", manual_dir))
    if config.get("headline_metric") is not None:
        source.info.headline_metric = checked_headline_metric(config, source.info.task)
    if source.info.ignore_classes and source.info.task == "classification":
        # Scored as any other class, and with class weights given no weight in training: never what was meant.
        ignored = ", ".join(str(source.info.class_names[i]) if i < len(source.info.class_names) else str(i)
                            for i in source.info.ignore_classes)
        raise ConfigError(f"dataset {config['name']!r}: ignore_classes ({ignored}) leaves a class's pixels out of a "
                          f"segmentation's loss and metrics, but each image of this classification dataset is one "
                          f"class and is scored as such: remove ignore_classes (to leave a class out of your own "
                          f"folder, move its class folder out of it)")
    return source


def checked_headline_metric(config: dict, task: str) -> str:
    """A dataset entry's (or card's) ``headline_metric``, refused with the choices where runs of ``task``
    cannot be ranked and compared by it (zoo compare and the report's intervals need its per-example form)."""
    from zoo.tasks import TASKS

    metric, choices = config["headline_metric"], TASKS.get(task).comparable_metrics
    if metric not in choices:
        hint = " (macro_f1 weighs every class the same: for imbalanced classes)" if task == "classification" else ""
        raise ConfigError(f"dataset {config['name']!r}: headline_metric {metric!r} cannot rank {task} runs; choose "
                          f"one of {', '.join(choices)}{hint}")
    return metric
