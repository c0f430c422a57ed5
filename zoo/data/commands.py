"""`zoo data info` and `zoo data prepare`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zoo.data.cards import DATASETS, cited_results
from zoo.data.sources import open_source, source_of_path
from zoo.errors import DataError


def dataset_info(name_or_path: str, data_dir: str | None = None) -> dict:
    """The info of a registered dataset or of a folder, as a plain dict."""
    path = Path(name_or_path).expanduser()
    if name_or_path not in DATASETS and path.exists():
        source = source_of_path(name_or_path)
        entry = {"name": path.stem if source == "tracks" else path.name, "source": source, "path": name_or_path}
        return with_class_counts(open_source(entry))
    if name_or_path not in DATASETS and (any(sep in name_or_path for sep in ("/", "\\")) or name_or_path[:1] in "~."):
        raise DataError(f"{name_or_path}: no such folder or file; give a folder of images, a track manifest CSV, or "
                        f"a dataset name (zoo list datasets)")
    card = DATASETS.get(name_or_path)
    if card["source"] == "landcover_ens" and data_dir:
        # --data-dir is the unzipped challenge folder: read it directly, nothing to build.
        from zoo.data.landcover_ens import check_challenge_layout

        return card_info(card, check_challenge_layout(Path(data_dir).expanduser()))
    try:
        return {**with_class_counts(open_source(card["name"], data_dir=data_dir)), **card_facts(card)}
    except DataError as error:
        if card["source"] not in ("tfds", "landcover_ens"):
            raise
        # Not downloaded or built yet: what the card says, to decide before a download of hundreds of MB.
        return {**card_info(card, card.get("splits") or {}), "prepared": False, "notes": [f"from its card: {error}"]}


def card_info(card: dict, splits: dict) -> dict:
    """A dataset's info as its card gives it (the data itself not opened), with ``splits``' sizes."""
    names = list(card.get("class_names") or [])  # a tensorflow-datasets card may leave them to the data
    return {"name": card["name"], "task": card["task"], "num_classes": len(names) or card.get("num_classes", 0),
            "class_names": names, "channels": card["channels"], "image_shape": card.get("native_size"),
            "splits": splits, "skipped": [], "ignore_classes": card.get("ignore_classes", []),
            "max_pixel_value": card["max_pixel_value"], "labelled_splits": card.get("labelled_splits", ["train"]),
            **card_facts(card)}


def card_facts(card: dict) -> dict:
    """What a dataset card adds to the data's own description: its title, licence, citation and the published
    results it cites (those with a value)."""
    return {"title": card.get("title"), "license": card.get("license"), "citation": " ".join(str(card.get("citation")).split()),
            "reference_results": cited_results(card)}


def with_class_counts(source) -> dict:
    """A source's info as a dict, with each split's images per class where labels are at hand without reading
    the images (the user's folders and track manifests, the embedded synthetic data; not tensorflow-datasets)."""
    info = source.info.to_dict()
    if info["task"] == "classification" and info.get("class_counts") is None and source.reads_by_position:
        labels = {split: source.labels(split) for split in info["splits"]}
        info["class_counts"] = {split: np.bincount(found, minlength=info["num_classes"]).tolist()
                                for split, found in labels.items() if found is not None}
    return info


def format_info(info: dict) -> str:
    names = info["class_names"]
    ignored = [str(names[i]) for i in info.get("ignore_classes") or [] if i < len(names)]
    lines = [f"name:        {info['name']}", f"task:        {info['task']}",
             f"classes:     {info['num_classes']} ({', '.join(map(str, info['class_names'][:12]))}"
             f"{', ...' if info['num_classes'] > 12 else ''})" if info["class_names"] else
             f"classes:     {info['num_classes']} (named when the data is prepared)",
             *([f"ignored:     {', '.join(ignored)} (left out of the loss and the scores)"] if ignored else []),
             f"channels:    {info['channels']}",
             f"image shape: {info['image_shape'] or 'varies'}",
             "splits:      " + ", ".join(f"{k} {v}" + ("" if k in info.get("labelled_splits", info["splits"]) else
                                                      " (unlabelled: not scored, zoo predict answers it)")
                                       for k, v in info["splits"].items()),
             *[f"  {split}: {images_per_class(names, counts)}" for split, counts in (info.get("class_counts") or {}).items()],
             f"skipped:     {len(info['skipped'])} file(s)"]
    lines += [f"  {item['path']}: {item['reason']}" for item in info["skipped"]]
    copies = info.get("copies") or []
    if copies:
        lines.append(f"copies:      {sum(len(group) - 1 for group in copies)} file(s) byte-for-byte the same as another")
        lines += [f"  {' = '.join(group)}" for group in copies]
    lines += [f"note: {note}" for note in info.get("notes") or []]
    if info.get("license"):
        lines.append(f"licence:     {info['license']}")
    lines += [f"published:   {row.get('source')}, {row.get('model') or 'model not named'}: {row['metric']} {row['value']}"
              for row in info.get("reference_results") or []]
    return "\n".join(lines)


def images_per_class(names, counts, shown: int = 12) -> str:
    """Each class with its image count; of many classes, the fewest and the most (where imbalance shows)."""
    pairs = [f"{name} {count}" for name, count in zip(names, counts)]
    if len(pairs) <= shown:
        return ", ".join(pairs)
    order = np.argsort(counts, kind="stable")
    return (f"fewest {', '.join(pairs[i] for i in order[:shown // 2])}; most "
            f"{', '.join(pairs[i] for i in order[::-1][:shown // 2])}")


def cmd_data_info(args) -> int:
    info = dataset_info(args.name, args.data_dir)
    print(json.dumps(info) if args.json else format_info(info))
    return 0


def prepare_dataset(name: str, data_dir: str | None = None, tfds_dir: str | None = None):
    """Download and/or build a registered dataset; returns the builder (None when embedded).
    For landcover_ens ``data_dir`` is the unzipped challenge folder and ``tfds_dir`` where to build."""
    card = DATASETS.get(name)
    if card["source"] == "synthetic":
        return None
    if card["source"] == "folder":
        raise DataError(f"{name} is a folder dataset; point a suite's `path:` at it instead")
    import tensorflow_datasets as tfds

    if card["source"] == "landcover_ens":
        if not data_dir:
            raise DataError("landcover_ens needs --data-dir DIR, the unzipped challenge folder holding "
                            "train/ and test/ (manual download from https://challengedata.ens.fr)")
        from zoo.data.landcover_ens import LandcoverEns, check_challenge_layout

        check_challenge_layout(Path(data_dir).expanduser())
        builder = LandcoverEns(data_dir=tfds_dir)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(Path(data_dir).expanduser())))
    else:
        builder = tfds.builder(card["tfds_name"], data_dir=data_dir)
        builder.download_and_prepare()
    return builder


def cmd_data_prepare(args) -> int:
    builder = prepare_dataset(args.name, args.data_dir, args.tfds_dir)
    if builder is None:
        print(f"{args.name} is embedded (generated on the fly); nothing to prepare")
    else:
        print(f"{args.name} prepared in {builder.data_dir}")
    return 0


def add_data_commands(commands) -> None:
    from zoo.arguments import help_of

    data = commands.add_parser("data", help="inspect and prepare datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="COMMAND")
    data.set_defaults(func=help_of(data))
    info = data_commands.add_parser("info", help="task, classes, channels, split sizes, skipped files")
    info.add_argument("name", help="a dataset name (zoo list datasets), a folder of images or a track manifest CSV")
    info.add_argument("--data-dir", help="tensorflow-datasets folder; for landcover_ens the folder holding train/ and test/")
    info.add_argument("--json", action="store_true", help="one JSON object")
    info.set_defaults(func=cmd_data_info)
    prepare = data_commands.add_parser("prepare", help="download and/or build a dataset")
    prepare.add_argument("name")
    prepare.add_argument("--data-dir", help="tensorflow-datasets folder; for landcover_ens the unzipped challenge folder")
    prepare.add_argument("--tfds-dir", help="landcover_ens only: where to write the built dataset "
                                            "(default: tensorflow-datasets' own folder)")
    prepare.set_defaults(func=cmd_data_prepare)
