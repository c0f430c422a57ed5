"""Tiles along GPS tracks: a manifest CSV of the user's tracks, and the embedded
``synthetic_tracks`` (random walks over a synthetic terrain map).

Each row is one point of one track: ``path, label, track_id, position``. A point where
tracks cross appears in several rows (one per track) with the same tile; its ``point_id``
(the path) ties them together. Splits are carved by whole tracks. A manifest of ``path, label``
alone (Kaggle's labels.csv, an export from a labelling tool) is a list of independent images,
carved stratified like a folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.data.sources import DatasetInfo, ExampleArrays, Source, register_source
from zoo.data.synthetic import TERRAIN_CLASSES, TERRAIN_PROPORTIONS, _smooth_noise, _terrain_tile
from zoo.errors import DataError

MANIFEST_COLUMNS = ("path", "label")
TRACK_COLUMNS = ("track_id", "position")  # both or neither: without them the images are independent


def make_terrain_map(map_size, seed):
    """A map of terrain classes in irregular regions (class proportions like the terrain tiles)."""
    rng = np.random.default_rng(seed)
    regions = max(len(TERRAIN_CLASSES), map_size * map_size // 90)
    centres = rng.uniform(0, map_size, (regions, 2))
    yy, xx = np.mgrid[0:map_size, 0:map_size]
    distance = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    distance = distance + 6 * np.stack([_smooth_noise(rng, map_size, 2) for _ in range(regions)])
    # Every class gets a region; the rest follow the terrain tiles' proportions.
    extra = rng.choice(len(TERRAIN_CLASSES), size=max(0, regions - len(TERRAIN_CLASSES)), p=TERRAIN_PROPORTIONS)
    classes = rng.permutation(np.concatenate([np.arange(len(TERRAIN_CLASSES)), extra]))
    return classes[distance.argmin(axis=0)]


def random_walk(rng, map_size, length, keep_heading=0.85):
    """A vehicle's path over map cells: mostly straight, sometimes turning 45 degrees."""
    headings = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]
    heading = int(rng.integers(8))
    y, x = (int(v) for v in rng.integers(0, map_size, 2))
    cells = [(y, x)]
    for _ in range(length - 1):
        if rng.random() > keep_heading:
            heading = (heading + int(rng.choice([-1, 1]))) % 8
        dy, dx = headings[heading]
        if not (0 <= y + dy < map_size and 0 <= x + dx < map_size):
            heading = (heading + 4) % 8  # turn back at the map's edge
            dy, dx = headings[heading]
        y, x = y + dy, x + dx
        cells.append((y, x))
    return cells


def make_synthetic_tracks(num_tracks=30, map_size=28, image_size=32, seed=0, min_length=30, max_length=70):
    """(tiles per visited cell, rows) where rows hold point, label, track_id, position."""
    rng = np.random.default_rng(seed)
    terrain = make_terrain_map(map_size, seed)
    rows = []
    for track in range(num_tracks):
        for position, (y, x) in enumerate(random_walk(rng, map_size, int(rng.integers(min_length, max_length)))):
            rows.append((y * map_size + x, int(terrain[y, x]), track, position))
    cells = sorted({row[0] for row in rows})
    tile_of_cell = {cell: index for index, cell in enumerate(cells)}
    tiles = np.stack([_terrain_tile(rng, int(terrain.flat[cell]), image_size) for cell in cells])
    table = np.array([(tile_of_cell[cell], label, track, position) for cell, label, track, position in rows])
    return tiles, {"point": table[:, 0], "label": table[:, 1], "track_id": table[:, 2], "position": table[:, 3]}


class _TrackSource(Source):
    """Shared by the manifest and synthetic sources: rows, groups by track, track arrays."""

    rows: dict

    def labels(self, split):
        return self.rows["label"].astype(np.int64)

    def groups(self, split):
        return self.rows["track_id"]

    def tracks(self, split, indices=None) -> dict | None:
        if self.rows["track_id"] is None:
            return None
        chosen = slice(None) if indices is None else np.asarray(indices)
        return {"track_id": self.rows["track_id"][chosen], "position": self.rows["position"][chosen],
                "point_id": self.rows["point"][chosen]}


@register_source("synthetic_tracks")
class SyntheticTracksSource(_TrackSource):
    def __init__(self, card, **_):
        self.card = card
        self.tiles, self.rows = make_synthetic_tracks(card["num_tracks"], card["map_size"], card["image_size"],
                                                      card.get("seed", 0))
        self.info = DatasetInfo(name=card["name"], task="classification", class_names=list(card["class_names"]),
                                channels=3, image_shape=[card["image_size"]] * 2,
                                splits={"train": len(self.rows["label"])}, max_pixel_value=255.0)

    def example_arrays(self, split, indices=None, size=None):
        rows = np.arange(len(self.rows["label"])) if indices is None else np.asarray(indices)
        points, labels = self.rows["point"][rows], self.rows["label"][rows]
        return ExampleArrays(len(rows), lambda i: (self.tiles[points[i]].astype(np.float32), labels[i]),
                             self.info.channels)


@register_source("tracks")
class TrackManifestSource(_TrackSource):
    """A CSV manifest (path, label, and track_id, position for tiles along tracks) beside a folder of tiles;
    each path is relative to the manifest's folder or absolute. Tiles are read as a folder dataset's images are:
    unreadable ones and those of other band counts skipped and named, grey ones expanded to RGB,
    8- and 16-bit files each scaled by their own depth."""

    def __init__(self, card, cache_dir=None, **_):
        import hashlib

        import pandas as pd

        from zoo.data.folder import dataset_format, files_key, probe_files, range_note, refusal, relative_to_here

        manifest = Path(card.get("path", "")).expanduser()
        if not manifest.is_file():
            raise DataError(f"dataset {card.get('name')!r}: `path` must be a manifest CSV with columns "
                            f"{', '.join(MANIFEST_COLUMNS)} (and {', '.join(TRACK_COLUMNS)} for tiles along tracks); "
                            f"{manifest} does not exist{relative_to_here(manifest)}")
        table = pd.read_csv(manifest)
        missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
        on_tracks = [c for c in TRACK_COLUMNS if c in table.columns]
        if missing:
            raise DataError(f"{manifest}: missing column(s) {', '.join(missing)}; expected {', '.join(MANIFEST_COLUMNS)} "
                            f"(and {', '.join(TRACK_COLUMNS)} for tiles along tracks); it has {', '.join(table.columns)}")
        if len(on_tracks) == 1:
            raise DataError(f"{manifest}: column {on_tracks[0]} without {(set(TRACK_COLUMNS) - set(on_tracks)).pop()}: tiles "
                            f"along tracks need both (each point's track and its order along it); independent images "
                            f"need neither")
        if on_tracks and not pd.api.types.is_numeric_dtype(table["position"]):
            raise DataError(f"{manifest}: column position must hold numbers (a point's order along its track)")
        table["file"] = [str((manifest.parent / p).resolve()) for p in table["path"]]
        missing_files = sorted({f for f in table["file"] if not Path(f).is_file()})
        self.skipped = [{"path": f, "reason": "listed in the manifest but not found"} for f in missing_files]
        files = sorted({Path(f) for f in table["file"]} - {Path(f) for f in missing_files})
        probes = probe_files(files, cache_dir)
        channels, maximum = dataset_format(probes, card.get("max_pixel_value"))
        refused = {f: refusal(p, channels) for f, p in probes.items()}
        self.skipped += [{"path": f, "reason": reason} for f, reason in refused.items() if reason]
        table = table[table["file"].isin([f for f, reason in refused.items() if not reason])].reset_index(drop=True)
        class_names = list(card.get("class_names") or sorted(table["label"].astype(str).unique()))
        unknown = sorted(set(table["label"].astype(str)) - set(class_names))
        if unknown:
            raise DataError(f"{manifest}: label(s) {unknown} are not among class_names {class_names}")
        self.files = sorted(table["file"].unique())
        self.digests = {f: probes[f]["digest"] for f in self.files}  # each tile's bytes, hashed at the scan
        point = {f: i for i, f in enumerate(self.files)}
        self.rows = {"point": table["file"].map(point).to_numpy(),
                     "label": table["label"].astype(str).map({n: i for i, n in enumerate(class_names)}).to_numpy(),
                     "track_id": np.asarray(table["track_id"].astype(str), dtype=str) if on_tracks else None,
                     "position": table["position"].to_numpy() if on_tracks else None}
        self.names = ([f"{path}@{track}:{position}" for path, track, position
                       in zip(table["path"].astype(str), self.rows["track_id"], self.rows["position"])]
                      if on_tracks else list(table["path"].astype(str)))
        # The manifest's bytes and the tiles' names, sizes and modification times: caches of
        # decoded tiles and features are rebuilt when either changes.
        self.listing = hashlib.sha1(manifest.read_bytes()).hexdigest() + files_key([Path(f) for f in self.files])
        self.info = DatasetInfo(name=card.get("name") or manifest.stem, task="classification",
                                class_names=class_names, channels=channels, image_shape=None,
                                splits={"train": len(table)}, skipped=self.skipped, max_pixel_value=maximum,
                                notes=[n for n in [range_note(probes, card.get("max_pixel_value"))] if n])

    def content_id(self, split):
        return f"{split}:{self.info.splits[split]}:{self.listing}"

    def example_files(self, split):
        return [self.files[point] for point in self.rows["point"]]

    def file_digests(self, files):
        return [self.digests[f] for f in files]

    def example_ids(self, split, indices=None):
        return list(self.names) if indices is None else [self.names[i] for i in indices]

    def example_arrays(self, split, indices=None, size=None):
        from zoo.data.images import read_example

        rows = np.arange(len(self.rows["label"])) if indices is None else np.asarray(indices)
        points, labels = self.rows["point"][rows], self.rows["label"][rows]
        channels, maximum = self.info.channels, self.info.max_pixel_value
        return ExampleArrays(len(rows), lambda i: (read_example(self.files[points[i]], channels, maximum, size), labels[i]),
                             channels)
