"""The Preligens / ENS Challenge Data 2021 land-cover set as a tensorflow-datasets builder.

Manual download: the challenge's files cannot be fetched anonymously. Building reads
``train/images/<id>.tif`` (256x256x4 uint16), ``train/masks/<id>.tif`` (256x256 uint8) and
``test/images/<id>.tif`` (no masks) from the manual folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from zoo.data.synthetic import LANDCOVER_CLASSES

TILE_SHAPE = (256, 256, 4)
IGNORED_CLASSES = (0, 1)  # no_data, clouds
MAX_PIXEL_VALUE = 24356


def check_challenge_layout(root: Path) -> dict:
    """Counts of tiles per split; raises FileNotFoundError naming what is missing."""
    root = Path(root)
    needed = [root / "train" / "images", root / "train" / "masks"]
    missing = [str(p) for p in needed if not p.is_dir()]
    if missing:
        raise FileNotFoundError(
            f"land-cover challenge files not found: missing {', '.join(missing)}. "
            f"{LandcoverEns.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")
    counts = {"train": len(list((root / "train" / "images").glob("*.tif")))}
    if (root / "test" / "images").is_dir():
        counts["test"] = len(list((root / "test" / "images").glob("*.tif")))
    return counts


class LandcoverEns(tfds.core.GeneratorBasedBuilder):
    """Sentinel-2 land-cover tiles (R, G, B, NIR) with 10-class masks; test split has no masks."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: train with masks, test without (all-zero masks, has_mask=False)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Register at https://challengedata.ens.fr (challenge "Land cover predictive modeling from
    satellite images", Preligens, 2021), download the dataset archive and unzip it so that
    DIR/train/images/<id>.tif, DIR/train/masks/<id>.tif and DIR/test/images/<id>.tif exist.
    Then run `zoo data prepare landcover_ens --data-dir DIR`.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=TILE_SHAPE, dtype=np.uint16),
                "mask": tfds.features.Tensor(shape=TILE_SHAPE[:2], dtype=np.uint8),
                "has_mask": np.bool_,
                "sample_id": tfds.features.Text(),
            }),
            supervised_keys=("image", "mask"),
            homepage="https://challengedata.ens.fr/challenges/48",
        )

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        counts = check_challenge_layout(root)
        splits = {"train": self._generate_examples(root / "train")}
        if "test" in counts:
            splits["test"] = self._generate_examples(root / "test")
        return splits

    def _generate_examples(self, folder: Path):
        import tifffile

        masks = folder / "masks"
        for image_path in sorted((folder / "images").glob("*.tif")):
            image = tifffile.imread(image_path)
            if image.shape != TILE_SHAPE:
                raise ValueError(f"{image_path}: expected a {TILE_SHAPE} tile, got {image.shape}")
            mask_path = masks / image_path.name
            has_mask = masks.is_dir()
            if has_mask:
                if not mask_path.is_file():
                    raise FileNotFoundError(f"{mask_path}: mask missing for {image_path.name}")
                mask = tifffile.imread(mask_path)
                if mask.shape != TILE_SHAPE[:2]:
                    raise ValueError(f"{mask_path}: mask shape {mask.shape} differs from the image's {TILE_SHAPE[:2]}")
                if mask.max() >= len(LANDCOVER_CLASSES):
                    raise ValueError(f"{mask_path}: mask value {mask.max()} outside classes 0-{len(LANDCOVER_CLASSES) - 1}")
            else:
                mask = np.zeros(TILE_SHAPE[:2], np.uint8)
            yield image_path.stem, {"image": image.astype(np.uint16), "mask": mask.astype(np.uint8),
                                    "has_mask": has_mask, "sample_id": image_path.stem}
