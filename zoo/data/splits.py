"""Carving validation and test splits, seeded and stratified, where the data has none."""
from __future__ import annotations

import numpy as np

from zoo.errors import ConfigError

DEFAULT_FRACTIONS = {"val": 0.15, "test": 0.15}


def _split(indices, fraction, labels, seed, groups=None):
    from sklearn.model_selection import GroupShuffleSplit, train_test_split  # here: suites check splits without it

    if groups is not None:
        # Whole groups (tracks) go to one side, so smoothing along a track sees all of it.
        keep, carved = next(GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
                            .split(indices, groups=groups[indices]))
        return indices[keep], indices[carved]
    stratify = labels[indices] if labels is not None else None
    try:
        return train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:
        # A class too small to stratify (tiny data): fall back to a plain seeded split.
        return train_test_split(indices, test_size=fraction, random_state=seed)


def check_split_setting(split, where: str = "split") -> None:
    """A ``split:`` setting (a dataset entry's or ``train.split``) as the suite gives it, refused with what to
    write before any run starts: a mapping of ``val`` and ``test`` fractions of the source's training split,
    each above 0 and below 1, and ``group_by``."""
    if split is None:
        return
    if not isinstance(split, dict):
        raise ConfigError(f"{where} must be a mapping such as {{val: 0.15, test: 0.15}}, got {split!r}")
    unknown = sorted(set(split) - set(DEFAULT_FRACTIONS) - {"group_by"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: val, test, group_by")
    for key in DEFAULT_FRACTIONS:
        value = split.get(key, DEFAULT_FRACTIONS[key])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"{where}.{key} must be a fraction between 0 and 1, got {value!r}: a run needs "
                              f"{'validation images (its best epoch, early stopping)' if key == 'val' else 'test images'}"
                              f"; for few of them use a small fraction such as 0.05")


def plan_splits(labelled_splits: dict[str, int], fractions: dict | None, seed: int,
                labels: dict[str, np.ndarray | None], groups: np.ndarray | None = None
                ) -> dict[str, tuple[str, np.ndarray | None]]:
    """Map train/val/test to (source split, indices or None for all of it).

    ``labelled_splits``: the source's splits that have targets, with their sizes.
    ``fractions``: {"val": f, "test": f}, used only for the splits the source lacks.
    ``groups``: for the train split, a group per example (a track) that carving keeps whole.
    """
    check_split_setting(fractions)
    fractions = {**DEFAULT_FRACTIONS, **{k: v for k, v in (fractions or {}).items() if k != "group_by"}}
    if "train" not in labelled_splits:
        raise ConfigError(f"the data has no 'train' split (it has {sorted(labelled_splits)})")
    carved = [name for name in ("test", "val") if name not in labelled_splits]
    if sum(float(fractions[name]) for name in carved) >= 1:
        raise ConfigError(f"split: {' and '.join(carved)} would take {sum(fractions[n] for n in carved):g} of the images "
                          f"together, leaving none to train on; give fractions that add up to less than 1, such as "
                          f"{{val: 0.15, test: 0.15}}")
    plan: dict[str, tuple[str, np.ndarray | None]] = {}
    pool = np.arange(labelled_splits["train"])
    train_labels = labels.get("train")
    for name in ("test", "val"):
        if name in labelled_splits:
            plan[name] = (name, None)
            continue
        # Fractions are of the whole source split, so val 0.15 / test 0.15 leaves train 0.70.
        fraction = float(fractions[name]) * labelled_splits["train"] / len(pool)
        pool, carved = _split(pool, fraction, train_labels, seed, groups)
        plan[name] = ("train", np.sort(carved))
    plan["train"] = ("train", None if len(pool) == labelled_splits["train"] else np.sort(pool))
    for name, (_, indices) in plan.items():
        if indices is not None and len(indices) == 0:
            raise ConfigError(f"the {name} split came out empty; the data is too small for split fractions {fractions}")
    return {name: plan[name] for name in ("train", "val", "test")}


def plan_for_source(source, fractions: dict | None, seed: int) -> dict[str, tuple[str, np.ndarray | None]]:
    """plan_splits for an opened source: its labelled splits, stratified by its labels, tracks kept whole."""
    info = source.info
    labelled = {s: n for s, n in info.splits.items() if s in info.labelled_splits}
    groups = source.groups("train")
    group_by = (fractions or {}).get("group_by")
    if group_by is not None:
        if group_by != "folder":
            raise ConfigError(f"split.group_by: {group_by!r} is not known; use folder (each subfolder's images kept "
                              f"on one side of the carving)")
        groups = source.folder_groups("train") if "train" in labelled else None
        if groups is None:
            raise ConfigError(f"split.group_by: folder keeps each subfolder's images together, but dataset "
                              f"{info.name!r} is no folder of images; remove group_by")
        if len(np.unique(groups)) == len(groups):
            raise ConfigError(f"split.group_by: folder, but no image of dataset {info.name!r} lies in a subfolder "
                              f"(of a class folder, or of images/): there is nothing to keep together; put each "
                              f"region's or scene's images in a subfolder, or remove group_by")
    plan = plan_splits(labelled, fractions, seed, {"train": source.labels("train") if "train" in labelled else None},
                       groups=groups)
    copies = source.copies("train") if "train" in labelled else None
    return plan if copies is None else keep_copies_together(plan, copies)


def keep_copies_together(plan: dict, copies: np.ndarray) -> dict:
    """``plan`` with every copy of a file (examples of one ``copies`` number, see Source.copies) moved into the
    split carved for its first copy: a photo saved twice would otherwise be trained on and scored. Splits that
    are not carved from train are left as they are; without copies the plan is unchanged."""
    carved = {name: indices for name, (split, indices) in plan.items() if split == "train" and indices is not None}
    if len(carved) < 2 or not (copies >= 0).any():
        return plan
    home = np.full(len(copies), "", dtype=object)
    for name, indices in carved.items():
        home[indices] = name
    first: dict[int, str] = {}
    for index in np.flatnonzero(copies >= 0):
        home[index] = first.setdefault(int(copies[index]), home[index])
    moved = {name: ("train", np.flatnonzero(home == name)) for name in carved}
    for name, (_, indices) in moved.items():
        if len(indices) == 0:
            raise ConfigError(f"the {name} split came out empty once each file's copies were kept together: "
                              f"the data holds too few distinct images for its splits")
    return {name: moved.get(name, plan[name]) for name in plan}


def classes_missing_from_splits(source, plan) -> dict[str, list[str]]:
    """Classification: for validation and test, the class names with no example there."""
    missing = {}
    for name in ("val", "test"):
        split, indices = plan[name]
        labels = source.labels(split)
        if labels is None:
            return {}
        chosen = labels if indices is None else labels[indices]
        counts = np.bincount(chosen, minlength=source.info.num_classes)
        missing[name] = [source.info.class_names[c] for c in np.flatnonzero(counts == 0)]
    return missing
