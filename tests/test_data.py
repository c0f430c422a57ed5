"""Datasets: tfds sources on mock data, the land-cover builder on files in the challenge layout,
folders with broken files, the embedded synthetic data, split carving and the pipeline."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import tifffile
from PIL import Image

from zoo.cli import main
from zoo.data import open_source
from zoo.data.pipeline import input_pipeline
from zoo.data.splits import plan_splits
from zoo.data.steps import PipelineOptions, class_weights_from_counts
from zoo.data.synthetic import make_synthetic_landcover, make_synthetic_terrain
from zoo.errors import DataError


def batches(source, split="train", indices=None, training=False, **options):
    import keras

    options = {"image_size": 32, "batch_size": 4, **options}
    pipeline = input_pipeline(source, split, indices, source.info, PipelineOptions(**options), training)
    numpy = lambda batch: tuple(keras.ops.convert_to_numpy(part) for part in batch)  # noqa: E731
    if training:
        return [numpy(batch) for batch in pipeline]
    # Evaluation batches: the split's own rows (the last batch's completion cut), without the row weights
    # that classification and class proportions get (segmentation keeps its pixel weights).
    parts = 3 if source.info.task == "segmentation" and options.get("target") != "proportions" else 2
    return [tuple(part[:rows] for part in numpy(batch)[:parts]) for batch, rows in pipeline.with_rows()]


# --- tensorflow-datasets sources ------------------------------------------------------

@pytest.mark.parametrize("name, channels", [("eurosat_rgb", 3), ("eurosat_ms", 13)])
def test_eurosat_on_mock_data(name, channels, tmp_path):
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        source = open_source({"name": name, "data_dir": str(tmp_path)})
        assert source.info.splits == {"train": 20} and source.info.num_classes == 10
        assert source.info.class_names[0] == "AnnualCrop"
        labels = source.labels("train")
        assert len(labels) == 20 and labels.max() < 10
        images, targets = batches(source, indices=[0, 3, 5])[0]
        assert images.shape == (3, 32, 32, channels) and targets.shape == (3,)


def _fake_dogs(builder, split, decoders=None, read_config=None, **kwargs):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (int(rng.integers(20, 50)), int(rng.integers(20, 50)), 3), dtype=np.uint8)
              for _ in range(12)]
    labels = np.arange(12) % 3
    def generate():
        for image, label in zip(images, labels):
            yield {"image": image, "label": label, "image/filename": "x.jpg"}
    return tf.data.Dataset.from_generator(generate, output_signature={
        "image": tf.TensorSpec([None, None, 3], tf.uint8), "label": tf.TensorSpec([], tf.int64),
        "image/filename": tf.TensorSpec([], tf.string)})


def test_stanford_dogs_on_mock_data_resizes_photos_of_any_size(tmp_path):
    # The default mock generator draws invalid bounding boxes for this builder, so examples come from here.
    with tfds.testing.mock_data(as_dataset_fn=_fake_dogs, policy=tfds.testing.MockPolicy.USE_CODE):
        source = open_source({"name": "stanford_dogs", "data_dir": str(tmp_path)})
        assert source.info.num_classes == 120
        assert source.info.splits == {"train": 12, "test": 12}
        plan = plan_splits({"train": 12, "test": 12}, {"val": 0.25}, 0, {"train": source.labels("train")})
        assert plan["test"] == ("test", None) and plan["val"][0] == "train" and len(plan["val"][1]) == 3
        images, _ = batches(source, indices=plan["val"][1], image_size=40)[0]
        assert images.shape == (3, 40, 40, 3)


def test_missing_tfds_data_says_what_to_do(tmp_path):
    with pytest.raises(DataError) as error:
        open_source({"name": "eurosat_rgb", "data_dir": str(tmp_path)})
    assert "zoo data prepare eurosat_rgb" in str(error.value) and "90 MiB" in str(error.value)


# --- land cover in the exact challenge layout -------------------------------------------

def write_challenge_files(root, train=5, test=2, bad_mask=False):
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        (root / split / "images").mkdir(parents=True)
        if split == "train":
            (root / split / "masks").mkdir()
        for index in range(count):
            sample_id = 10000 + index + (0 if split == "train" else 500)
            tifffile.imwrite(root / split / "images" / f"{sample_id}.tif",
                             rng.integers(1, 24356, (256, 256, 4), dtype=np.uint16))
            if split == "train":
                mask = rng.integers(0, 10, (256, 256), dtype=np.uint8)
                if bad_mask and index == 1:
                    mask[0, 0] = 12
                tifffile.imwrite(root / split / "masks" / f"{sample_id}.tif", mask)


def test_landcover_builder_reads_the_challenge_layout(tmp_path, capsys):
    raw, built = tmp_path / "raw", tmp_path / "tfds"
    write_challenge_files(raw)
    assert main(["data", "info", "landcover_ens", "--data-dir", str(raw), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"] == {"train": 5, "test": 2}

    assert main(["data", "prepare", "landcover_ens", "--data-dir", str(raw), "--tfds-dir", str(built)]) == 0
    source = open_source({"name": "landcover_ens", "data_dir": str(built)})
    assert source.info.splits == {"train": 5, "test": 2} and source.info.ignore_classes == [0, 1]
    example = next(ex for ex in source.as_dataset("train") if ex["sample_id"].numpy() == b"10000")
    np.testing.assert_array_equal(example["image"].numpy(), tifffile.imread(raw / "train" / "images" / "10000.tif"))
    np.testing.assert_array_equal(example["mask"].numpy(), tifffile.imread(raw / "train" / "masks" / "10000.tif"))
    assert bool(example["has_mask"]) and next(iter(source.as_dataset("test")))["has_mask"].numpy() == False  # noqa: E712
    images, masks, weights = batches(source, image_size=64)[0]
    assert images.shape == (4, 64, 64, 4) and masks.shape == (4, 64, 64)
    assert float(tf.reduce_max(tf.where(masks < 2, weights, 0.0))) == 0.0  # ignored classes weigh nothing


def test_landcover_builder_rejects_a_mask_value_outside_the_classes(tmp_path):
    raw = tmp_path / "raw"
    write_challenge_files(raw, bad_mask=True)
    with pytest.raises(Exception, match="10001.tif: mask value 12 outside classes"):
        main(["data", "prepare", "landcover_ens", "--data-dir", str(raw), "--tfds-dir", str(tmp_path / "tfds")])


# --- folders --------------------------------------------------------------------------

def make_classification_folder(root, per_class=6):
    rng = np.random.default_rng(1)
    for label, name in enumerate(["dune", "forest"]):
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            array = np.full((20 + index, 24, 3), 40 + 150 * label, np.uint8) + rng.integers(0, 20, (20 + index, 24, 3), dtype=np.uint8)
            suffix = [".png", ".jpg", ".bmp"][index % 3]
            Image.fromarray(array).save(folder / f"{index}{suffix}")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "dune" / "grey.gif")
    (root / "forest" / "notes.txt").write_text("not an image")
    (root / "forest" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = root / "dune" / "0.png"
    (root / "dune" / "truncated.jpg").write_bytes(
        (lambda buffer: buffer[: len(buffer) // 2])(_jpeg_bytes(np.zeros((64, 64, 3), np.uint8) + 128)))
    return good


def _jpeg_bytes(array):
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_data_info_on_a_path_that_is_not_there_says_so(tmp_path, capsys):
    """A mistyped folder is not an "unknown dataset" to look up in `zoo list datasets`."""
    assert main(["data", "info", str(tmp_path / "phtos")]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'phtos'}: no such folder or file" in error and "unknown dataset" not in error


def test_folder_skips_and_names_broken_files_and_trains_through_an_epoch(tmp_path, capsys):
    make_classification_folder(tmp_path / "photos")
    assert main(["data", "info", str(tmp_path / "photos"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["task"] == "classification" and info["class_names"] == ["dune", "forest"]
    assert info["channels"] == 3 and info["splits"] == {"train": 13}
    reasons = {item["path"].split("/")[-1]: item["reason"] for item in info["skipped"]}
    assert set(reasons) == {"notes.txt", "corrupt.png", "truncated.jpg"}
    assert "not an image" in reasons["notes.txt"] and "unreadable" in reasons["corrupt.png"]
    assert info["class_counts"] == {"train": [7, 6]}  # the grey GIF is dune's seventh
    # The embedded data counts its classes too (tensorflow-datasets' would mean reading every image).
    assert main(["data", "info", "synthetic_terrain"]) == 0
    assert "  train: water 270, forest 225, cropland 162, urban 108, sand 81, grassland 54\n" in capsys.readouterr().out

    source = open_source({"name": "photos", "source": "folder", "path": str(tmp_path / "photos")})
    seen = [int(images.shape[0]) for images, _ in batches(source, training=True, augment=True)]
    assert seen == [4, 4, 4, 4]  # 13 and 3 of them again: the grey GIF is expanded to RGB, nothing crashes mid-epoch


def test_a_file_saved_twice_is_never_trained_on_and_scored(tmp_path, capsys):
    """Scraped and hand-gathered folders hold the same photo twice ("x (1).jpg"): a random carving puts one
    copy in train and the other in test, and the test score counts an image the model trained on. Carving
    keeps each file's copies on one side (whatever the seed); a folder without copies is carved as before;
    zoo data info names copies, copies in two classes and copies across the folder's own splits."""
    import shutil

    from zoo.data.splits import plan_for_source

    rng = np.random.default_rng(0)
    for name in ("beagle", "corgi", "pug"):
        (tmp_path / "dogs" / name).mkdir(parents=True)
        for index in range(12):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "dogs" / name / f"{index}.png")
    plain = open_source({"name": "dogs", "path": str(tmp_path / "dogs")})
    assert plain.info.notes == [] and (plain.copies("train") == -1).all()
    unchanged = plan_for_source(plain, None, 3)
    raw = plan_splits({"train": 36}, None, 3, {"train": plain.labels("train")})
    assert all(np.array_equal(unchanged[k][1], raw[k][1]) for k in raw)
    for index in range(8):
        shutil.copy(tmp_path / "dogs" / "beagle" / f"{index}.png", tmp_path / "dogs" / "beagle" / f"{index} (1).png")
    shutil.copy(tmp_path / "dogs" / "pug" / "3.png", tmp_path / "dogs" / "corgi" / "from-pug.png")
    source = open_source({"name": "dogs", "path": str(tmp_path / "dogs")})
    copies, ids = source.copies("train"), source.example_ids("train")
    assert (copies >= 0).sum() == 18 and len(set(copies[copies >= 0])) == 9
    assert source.info.notes[0].startswith("9 image(s) are byte-for-byte copies of another (beagle/0 (1).png = "
                                           "beagle/0.png, ...; `zoo data info` lists them); the val and test "
                                           "split(s) carved from train keep")
    assert len(source.info.copies) == 9 and ["corgi/from-pug.png", "pug/3.png"] in source.info.copies
    assert main(["data", "info", str(tmp_path / "dogs")]) == 0
    listed = capsys.readouterr().out
    assert "copies:      9 file(s) byte-for-byte the same as another\n  beagle/0 (1).png = beagle/0.png\n" in listed
    assert "\n  corgi/from-pug.png = pug/3.png\n" in listed
    assert source.info.notes[1].startswith("1 image(s) are copied into two or more classes "
                                           "(corgi/from-pug.png = pug/3.png): at most one of their labels is right")
    split_apart = 0
    for seed in range(6):
        raw = plan_splits({"train": len(ids)}, None, seed, {"train": source.labels("train")})
        plan = plan_for_source(source, None, seed)
        for carving, moved in ((raw, False), (plan, True)):
            side = {int(i): name for name, (_, indices) in carving.items() for i in indices}
            assert sorted(side) == list(range(len(ids)))  # every example in exactly one split
            torn = sum(len({side[int(i)] for i in np.flatnonzero(copies == group)}) > 1 for group in range(9))
            if moved:
                assert torn == 0, seed
            else:
                split_apart += torn
    assert split_apart > 0  # the random carving alone would score trained-on copies

    for split, names in (("train", ("a", "b")), ("test", ("c",))):
        for name in ("beagle", "pug"):
            (tmp_path / "own" / split / name).mkdir(parents=True)
            for index in names:
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                    tmp_path / "own" / split / name / f"{index}.png")
    shutil.copy(tmp_path / "own" / "train" / "pug" / "a.png", tmp_path / "own" / "test" / "pug" / "a.png")
    own = open_source({"name": "own", "path": str(tmp_path / "own")})
    assert any(note.startswith("1 image(s) are in two of this folder's own splits (test/pug/a.png = train/pug/a.png)")
               for note in own.info.notes), own.info.notes


def test_folder_with_split_subfolders_and_16_bit_multiband_tiff(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / "tiles" / split / label
            folder.mkdir(parents=True)
            for index in range(3):
                tifffile.imwrite(folder / f"{index}.tif", rng.integers(0, 65535, (16, 16, 5), dtype=np.uint16))
    source = open_source({"name": "tiles", "source": "folder", "path": str(tmp_path / "tiles")})
    assert source.info.splits == {"train": 6, "test": 6} and source.info.channels == 5
    assert source.info.max_pixel_value == 65535
    images, _ = batches(source)[0]
    assert images.shape == (4, 32, 32, 5) and 200 < float(tf.reduce_max(images)) <= 255.0  # 16-bit scaled to 0-255


def make_segmentation_folder(root, mask_shape=(16, 16), top_value=2):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(4):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / f"{index}.png")
        mask = np.zeros(mask_shape, np.uint8)
        mask[0, 0] = top_value if index == 2 else 0
        Image.fromarray(mask).save(root / "masks" / f"{index}.png")


@pytest.mark.parametrize("problem, kwargs, message", [
    ("size", {"mask_shape": (8, 16)}, "masks must match their images"),
    ("value", {"top_value": 7}, "mask value 7 is outside the 3 classes"),
])
def test_segmentation_folder_problems_fail_before_training_naming_the_file(tmp_path, problem, kwargs, message):
    make_segmentation_folder(tmp_path / "seg", **kwargs)
    with pytest.raises(DataError, match=message) as error:
        open_source({"name": "seg", "source": "folder", "path": str(tmp_path / "seg"),
                     "class_names": ["bare", "crop", "water"]})
    assert "masks/" in str(error.value)


def test_a_class_folder_s_subfolders_belong_to_it_and_stray_files_are_named(tmp_path):
    """As Keras's image_dataset_from_directory and torchvision's ImageFolder read them: a class's images
    in subfolders (by year, by camera) are that class's; a file beside the class folders, and a hidden
    subfolder, are skipped and named, never silently dropped."""
    make_classification_folder(tmp_path / "photos")
    before = open_source({"name": "photos", "source": "folder", "path": str(tmp_path / "photos")}).info
    for year in ("2024", "2025"):
        (tmp_path / "photos" / "forest" / year).mkdir()
        Image.fromarray(np.full((20, 24, 3), 190, np.uint8)).save(tmp_path / "photos" / "forest" / year / "a.png")
    (tmp_path / "photos" / "forest" / ".thumbnails").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "photos" / "forest" / ".thumbnails" / "t.png")
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "photos" / "stray.png")
    source = open_source({"name": "photos", "source": "folder", "path": str(tmp_path / "photos")})
    assert source.info.class_names == ["dune", "forest"]
    assert source.info.splits["train"] == before.splits["train"] + 2
    assert {"forest/2024/a.png", "forest/2025/a.png"} <= set(source.example_ids("train"))
    reasons = {Path(s["path"]).name: s["reason"] for s in source.info.skipped}
    assert reasons["stray.png"].startswith("not in a class folder") and reasons[".thumbnails"].startswith("hidden")


def test_class_folders_without_a_usable_image_are_named(tmp_path, monkeypatch):
    """A class folder of iPhone (HEIC) photos only on a machine without zoo's heic extra, or one not filled yet,
    made no class without a word (its files, if any, among the skipped); one whose every image is unreadable is
    a class the model never learns."""
    from zoo.data import images

    monkeypatch.setattr(images, "heif_readable", lambda: False)
    make_classification_folder(tmp_path / "photos")
    for name in ("pug", "shiba", "corgi"):
        (tmp_path / "photos" / name).mkdir()
    (tmp_path / "photos" / "pug" / "IMG_1.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (tmp_path / "photos" / "corgi" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    info = open_source({"name": "photos", "path": str(tmp_path / "photos")}).info
    assert info.class_names == ["corgi", "dune", "forest"] and info.class_counts["train"][0] == 0
    assert "class folder(s) pug, shiba hold no image file: they are no class" in info.notes[0]
    assert info.notes[1].startswith("class(es) corgi have no readable image (every file skipped)")


def test_a_class_the_test_split_has_and_train_has_not_is_named(tmp_path):
    """`test/Pug` beside `train/pug` made two classes: the model never learns "Pug", yet the test scores it.
    zoo data info (and zoo plan and run) say so, pointing at the class train has under another spelling."""
    rng = np.random.default_rng(0)
    for split, classes in (("train", ("beagle", "pug")), ("test", ("beagle", "Pug", "shiba"))):
        for name in classes:
            (tmp_path / "dogs" / split / name).mkdir(parents=True)
            for index in range(4):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                    tmp_path / "dogs" / split / name / f"{index}.png")
    info = open_source({"name": "dogs", "path": str(tmp_path / "dogs")}).info
    assert info.class_names == ["Pug", "beagle", "pug", "shiba"]
    assert info.class_counts == {"test": [4, 4, 0, 4], "train": [0, 4, 4, 0]}
    assert [note for note in info.notes if note.startswith("class(es)")] == [
        "class(es) Pug (train has pug: the same class named otherwise?), shiba have images in test but none in "
        "train: the model cannot learn them, yet they are scored; rename the folder or add training images"]


def test_a_kaggle_style_unlabelled_test_folder_is_left_out_and_test_is_carved_from_train(tmp_path):
    """Kaggle's layout: train/<class>/ beside a test/ of images without class folders (or test/images/ without
    masks/). It was refused with "split 'test' has no usable image; add images or remove the empty split
    folder", every test image first named as out of place. The unlabelled split is left out with a note saying
    so and how to answer it, and validation and test are carved from train."""
    from zoo.data.splits import plan_for_source

    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "kaggle" / "train" / name).mkdir(parents=True)
        for index in range(10):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                tmp_path / "kaggle" / "train" / name / f"{index}.jpg")
    (tmp_path / "kaggle" / "test").mkdir()
    for index in range(7):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "kaggle" / "test" / f"{index}.jpg")
    source = open_source({"name": "kaggle", "path": str(tmp_path / "kaggle")})
    assert source.info.splits == {"train": 20} and source.info.skipped == []
    assert source.info.notes == [f"test/ holds 7 images without class folders: unlabelled, so they are left out of "
                                 f"training and scoring (test is carved from train instead); `zoo predict "
                                 f"OUT/runs/<run_id> {tmp_path / 'kaggle' / 'test'}` answers them"]
    plan = plan_for_source(source, None, 0)
    assert {name: split for name, (split, _) in plan.items()} == {"train": "train", "val": "train", "test": "train"}

    root = tmp_path / "tiles"
    for part in ("train/images", "train/masks", "test/images"):
        (root / part).mkdir(parents=True)
    for index in range(6):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "train" / "images" / f"{index}.png")
        Image.fromarray(rng.integers(0, 2, (8, 8), dtype=np.uint8)).save(root / "train" / "masks" / f"{index}.png")
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "test" / "images" / f"{index}.png")
    tiles = open_source({"name": "tiles", "path": str(root)}).info
    assert tiles.task == "segmentation" and tiles.splits == {"train": 6}
    assert tiles.notes[0].startswith("test/ holds 6 images without masks: unlabelled")


def test_segmentation_images_in_subfolders_pair_with_the_mask_at_the_same_place(tmp_path):
    """Tiles kept in subfolders (by region, by date) were silently left out before; each pairs with the mask
    at the same relative place, whatever its suffix, even where two regions reuse a tile's name. A mask
    without its image is skipped and named; an image without its mask stops the scan, naming both."""
    make_segmentation_folder(tmp_path / "seg")
    for region, value in (("north", 1), ("south", 2)):
        (tmp_path / "seg" / "images" / region).mkdir()
        (tmp_path / "seg" / "masks" / region).mkdir()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "seg" / "images" / region / "0.jpg")
        Image.fromarray(np.full((16, 16), value, np.uint8)).save(tmp_path / "seg" / "masks" / region / "0.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "seg" / "masks" / "north" / "orphan.png")
    entry = {"name": "seg", "source": "folder", "path": str(tmp_path / "seg")}
    source = open_source(entry)
    assert source.info.task == "segmentation" and source.info.splits == {"train": 6}
    ids = source.example_ids("train")
    assert {"images/north/0.jpg", "images/south/0.jpg"} <= set(ids)
    arrays = source.example_arrays("train")
    for region, value in (("north", 1), ("south", 2)):
        assert (arrays[ids.index(f"images/{region}/0.jpg")][1] == value).all()
    assert source.info.class_names == ["class_0", "class_1", "class_2"]
    reasons = {Path(s["path"]).name: s["reason"] for s in source.info.skipped}
    assert reasons["orphan.png"].startswith("a mask without an image")
    (tmp_path / "seg" / "masks" / "south" / "0.png").unlink()
    with pytest.raises(DataError, match=r"images/south/0.jpg has no mask: expected .*masks/south/0"):
        open_source(entry)


def make_voc_folder(root, count=6):
    """Pascal VOC's mask format: palette PNGs holding class indices 0-2, object boundaries 255."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(3)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"{index}.jpg")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 1 + index % 2
        mask[4, 4:12] = 255
        palette = Image.fromarray(mask, mode="L").convert("P")
        palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
        palette.save(root / "masks" / f"{index}.png")


def test_palette_masks_and_a_void_value_read_as_pascal_voc_means_them(tmp_path):
    """A palette mask's pixels are its indices (not the colours it shows; this crashed the scan); 255 as
    VOC's "no class" is refused with the fix unless the entry names it, and then those pixels are a class
    of their own, ignored in the loss and the metrics, never a 256th trained class."""
    from zoo.errors import ConfigError

    make_voc_folder(tmp_path / "voc")
    entry = {"name": "voc", "source": "folder", "path": str(tmp_path / "voc")}
    with pytest.raises(DataError, match=r"masks hold 255 but no value between 3 and 254.*`void_value: 255`"):
        open_source(entry)
    with pytest.raises(DataError, match=r"mask value 255 is outside the 3 classes.*`void_value: 255`"):
        open_source({**entry, "class_names": ["background", "cat", "dog"]})
    named = open_source({**entry, "class_names": ["background", "cat", "dog"], "void_value": 255})
    assert named.info.class_names == ["background", "cat", "dog", "void"] and named.info.ignore_classes == [3]
    from zoo.data.commands import format_info

    assert "ignored:     void (left out of the loss and the scores)" in format_info(named.info.to_dict())
    source = open_source({**entry, "void_value": 255})
    assert source.info.class_names == ["class_0", "class_1", "class_2", "void"] and source.info.ignore_classes == [3]
    _, mask = source.example_arrays("train")[1]
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 2, 3} and (mask[4, 4:12] == 3).all()
    # The decoded cache holds remapped masks: the same files read without the void value are other content.
    every_value_a_class = open_source({**entry, "class_names": [f"c{i}" for i in range(256)]})
    assert every_value_a_class.info.ignore_classes == [] and every_value_a_class.info.num_classes == 256
    assert source.content_id("train") != every_value_a_class.content_id("train")
    with pytest.raises(ConfigError, match="void_value must be the mask value"):
        open_source({**entry, "void_value": "255"})
    with pytest.raises(ConfigError, match="void_value is for the masks of your own folder"):
        open_source({"name": "synthetic_landcover", "void_value": 255})
    with pytest.raises(DataError, match="void_value marks the pixels of no class in segmentation masks, but this "
                                        "folder holds class folders"):
        open_source({"name": "p", "source": "folder", "path": str(make_photo_folder(tmp_path / "p")), "void_value": 255})
    # A colour-coded mask (RGB, one colour per class) is refused by name, not read as three bands.
    Image.fromarray(np.stack([np.asarray(Image.open(tmp_path / "voc" / "masks" / "0.png").convert("RGB"))[..., c]
                              for c in range(3)], -1)).save(tmp_path / "voc" / "masks" / "0.png")
    with pytest.raises(DataError, match=r"0.png: a mask must have one band of class indices .* colour-coded"):
        open_source({**entry, "void_value": 255})


def test_a_mask_reads_as_its_class_indices_whatever_image_mode_holds_them(tmp_path):
    from zoo.data.images import read_mask

    indices = np.zeros((6, 8), np.uint8)
    indices[2:4, 3:6] = 1
    Image.fromarray(indices.astype(bool)).save(tmp_path / "bilevel.png")                     # mode "1"
    Image.fromarray(np.repeat(indices[..., None] * 2, 3, -1)).save(tmp_path / "grey_as_rgb.png")
    Image.fromarray(np.stack([indices * 2, np.full_like(indices, 255)], -1), mode="LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "bilevel.png").mode == "1"
    np.testing.assert_array_equal(read_mask(tmp_path / "bilevel.png"), indices)
    np.testing.assert_array_equal(read_mask(tmp_path / "grey_as_rgb.png"), indices * 2)
    np.testing.assert_array_equal(read_mask(tmp_path / "la.png"), indices * 2)


def test_a_missing_dataset_path_says_where_a_relative_one_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"dataset folder photos does not exist \\(relative paths are read from the "
                                        f"current folder: {re.escape(str(tmp_path / 'photos'))}\\)"):
        open_source({"name": "photos", "source": "folder", "path": "photos"})
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path / 'photos'))} does not exist; set `path`"):
        open_source({"name": "photos", "source": "folder", "path": str(tmp_path / "photos")})
    with pytest.raises(DataError, match=f"trips.csv does not exist \\(relative paths .*{re.escape(str(tmp_path))}"):
        open_source({"name": "trips", "source": "tracks", "path": "trips.csv"})


def test_sixteen_bit_images_far_below_full_scale_get_a_note_naming_the_likely_one(tmp_path):
    """Sentinel-2 reflectance (0-10,000) or a 12-bit camera in 16-bit files, scaled by 65,535, reaches the model
    dark: zoo data info and zoo run / zoo plan say which max_pixel_value fits, and nothing once it is given."""
    rng = np.random.default_rng(0)
    for label in ("crop", "water"):
        (tmp_path / "tiles" / label).mkdir(parents=True)
        for index in range(4):
            tifffile.imwrite(tmp_path / "tiles" / label / f"{index}.tif",
                             rng.integers(0, 3800 + 50 * index, (16, 16, 4), dtype=np.uint16))
    entry = {"name": "tiles", "source": "folder", "path": str(tmp_path / "tiles")}
    notes = open_source(entry).info.notes
    assert len(notes) == 1 and "brightest pixel is 3,9" in notes[0] and "`max_pixel_value: 4095`" in notes[0], notes
    assert open_source({**entry, "max_pixel_value": 4095}).info.notes == []
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "data", "info", str(tmp_path / "tiles")],
                            capture_output=True, text=True)
    assert "note: 16-bit images whose brightest pixel" in result.stdout, result.stdout + result.stderr
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({"name": "tiles", "backbones": ["baseline_cnn"], "heads": ["linear"],
                                 "datasets": [entry], "train": {"image_size": 32}}))
    plan = subprocess.run([sys.executable, "-m", "zoo.cli", "plan", str(suite), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert "note: dataset tiles: 16-bit images whose brightest" in plan.stdout, plan.stdout + plan.stderr
    # Full-range 16-bit data and 8-bit photos: nothing to say.
    for offset, label in enumerate(("crop", "water")):  # two files, not one copied into both classes
        tifffile.imwrite(tmp_path / "tiles" / label / "bright.tif", np.full((16, 16, 4), 60000 + offset, np.uint16))
    assert open_source(entry).info.notes == []
    assert open_source({"name": "photos", "source": "folder", "path": str(make_photo_folder(tmp_path / "p"))}).info.notes == []


def make_photo_folder(root):
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * index + (label == "b"), np.uint8)).save(root / label / f"{index}.png")
    return root


def test_ignored_classes_are_given_by_name_or_index_and_an_unknown_one_is_refused(tmp_path):
    from zoo.errors import ConfigError
    from zoo.harness.preflight import check_readiness
    from zoo.harness.suite import expand_suite, load_suite

    assert open_source("synthetic_landcover").info.ignore_classes == [0, 1]  # the card's indices
    by_name = open_source({"name": "synthetic_landcover", "ignore_classes": ["clouds", "no_data"]})
    assert by_name.info.ignore_classes == [0, 1]
    # A name that is not a class ignored nothing before: now the suite cannot start, and says why.
    runs = expand_suite(load_suite({"name": "x", "heads": ["fcn"], "train": {"image_size": 32},
                                    "datasets": [{"name": "synthetic_landcover", "ignore_classes": ["cloud"]}]}))
    _, problems = check_readiness(runs, cache_dir=tmp_path)
    assert len(problems) == 1 and "ignore_classes names 'cloud', which is not one of its classes" in problems[0].message
    with pytest.raises(ConfigError, match="nor an index 0-9"):
        open_source({"name": "synthetic_landcover", "ignore_classes": [10]})


def test_ignored_classes_on_a_classification_dataset_stop_the_suite_before_it_starts(tmp_path):
    """An image of a classification dataset is one class: ignoring a class would still score its images (and,
    with class weights, train on them with no weight), so the suite is refused with what to do instead."""
    from zoo.harness.preflight import check_readiness
    from zoo.harness.suite import expand_suite, load_suite

    classes = open_source("synthetic_terrain").info.class_names
    runs = expand_suite(load_suite({"name": "x", "heads": ["linear"], "train": {"image_size": 32},
                                    "datasets": [{"name": "synthetic_terrain", "ignore_classes": [classes[1]]}]}))
    _, problems = check_readiness(runs, cache_dir=tmp_path)
    assert len(problems) == 1, [problem.message for problem in problems]
    assert f"ignore_classes ({classes[1]})" in problems[0].message
    assert "remove ignore_classes" in problems[0].message


def test_class_names_that_are_not_the_class_folders_are_refused(tmp_path):
    make_classification_folder(tmp_path / "photos")
    entry = {"name": "photos", "source": "folder", "path": str(tmp_path / "photos")}
    assert open_source({**entry, "class_names": ["dune", "forest"]}).info.class_names == ["dune", "forest"]
    with pytest.raises(DataError, match=r"class_names \['forest', 'dune'\] are not the class folders"):
        open_source({**entry, "class_names": ["forest", "dune"]})


def test_a_task_the_folder_layout_contradicts_is_refused(tmp_path):
    from zoo.errors import ConfigError
    from zoo.harness.suite import expand_suite, load_suite

    make_segmentation_folder(tmp_path / "seg")
    entry = {"name": "seg", "source": "folder", "path": str(tmp_path / "seg")}
    suite = {"name": "x", "heads": ["linear", "fcn"], "datasets": [{**entry, "task": "classification"}]}
    with pytest.raises(ConfigError, match="task 'classification', but its folder's layout is segmentation"):
        expand_suite(load_suite(suite))
    runs = expand_suite(load_suite({**suite, "heads": ["fcn"], "datasets": [{**entry, "task": "segmentation"}]}))
    assert [run.head for run in runs] == ["fcn"]
    # A card's task and a track manifest's (classification) are fixed the same way.
    for other, fixed in (({"name": "eurosat_rgb"}, "dataset card 'eurosat_rgb' is classification"),
                         ({"name": "patrol", "source": "tracks", "path": str(tmp_path / "t.csv")},
                          "`source: tracks` is classification")):
        with pytest.raises(ConfigError, match=f"task 'segmentation', but {re.escape(fixed)}"):
            expand_suite(load_suite({**suite, "heads": ["fcn"], "datasets": [{**other, "task": "segmentation"}]}))


def test_an_entry_with_only_a_path_reads_a_folder_or_a_track_manifest(tmp_path):
    # As `zoo data info PATH` does: a suite entry need not say `source:` for a path of its own.
    from zoo.harness.suite import expand_suite, load_suite

    make_segmentation_folder(tmp_path / "seg")
    runs = expand_suite(load_suite({"name": "x", "heads": ["fcn"], "backbones": ["baseline_cnn"],
                                    "datasets": [{"name": "seg", "path": str(tmp_path / "seg")}]}))
    assert [(run.dataset["source"], run.head) for run in runs] == [("folder", "fcn")]  # its layout: segmentation
    assert open_source({"name": "seg", "path": str(tmp_path / "seg")}).info.task == "segmentation"
    with pytest.raises(DataError, match="t.csv does not exist"):  # a .csv path is opened as a track manifest
        open_source({"name": "patrol", "path": str(tmp_path / "t.csv")})


def test_single_class_and_empty_split_are_rejected(tmp_path):
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "one" / "only" / "a.png")
    with pytest.raises(DataError, match="single class"):
        open_source({"name": "one", "source": "folder", "path": str(tmp_path / "one")})
    make_classification_folder(tmp_path / "split" / "train")
    (tmp_path / "split" / "test" / "dune").mkdir(parents=True)
    with pytest.raises(DataError, match="split 'test'.*no usable image"):
        open_source({"name": "split", "source": "folder", "path": str(tmp_path / "split")})


# --- synthetic data, splits, pipeline --------------------------------------------------

def test_synthetic_data_is_deterministic_from_its_seed():
    a, b = make_synthetic_terrain(60, 32, seed=3), make_synthetic_terrain(60, 32, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], make_synthetic_terrain(60, 32, seed=4)[0])
    images, masks = make_synthetic_landcover(5, 32, seed=1)
    assert images.dtype == np.uint16 and images.shape == (5, 32, 32, 4) and masks.max() < 10


def test_synthetic_terrain_is_learnable_far_above_chance():
    import keras

    from zoo import build_model

    keras.utils.set_random_seed(0)
    source = open_source("synthetic_terrain")
    plan = plan_splits(source.info.splits, {"val": 0.15, "test": 0.15}, 0, {"train": source.labels("train")})
    options = dict(image_size=32, batch_size=32)
    train = input_pipeline(source, "train", plan["train"][1], source.info, PipelineOptions(**options), training=True)
    test = input_pipeline(source, "train", plan["test"][1], source.info, PipelineOptions(**options), False)
    model = build_model("baseline_cnn", "linear", source.info.num_classes, (32, 32, 3))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, epochs=5, verbose=0)
    accuracy = model.evaluate(test, verbose=0)[1]
    majority = np.bincount(source.labels("train")).max() / len(source.labels("train"))
    assert accuracy > 0.8 > majority + 0.4


def test_split_carving_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(4), [400, 300, 200, 100])
    plan = plan_splits({"train": 1000}, {"val": 0.15, "test": 0.15}, 7, {"train": labels})
    sizes = {name: len(indices) for name, (_, indices) in plan.items()}
    assert sizes == {"train": 700, "val": 150, "test": 150}
    assert not set(plan["val"][1]) & set(plan["test"][1]) and not set(plan["train"][1]) & set(plan["test"][1])
    np.testing.assert_array_equal(np.bincount(labels[plan["test"][1]]), [60, 45, 30, 15])
    again = plan_splits({"train": 1000}, {"val": 0.15, "test": 0.15}, 7, {"train": labels})
    np.testing.assert_array_equal(plan["test"][1], again["test"][1])


def test_proportion_targets_and_balanced_class_weights():
    source = open_source("synthetic_landcover")
    images, proportions = batches(source, indices=list(range(6)), target="proportions")[0]
    np.testing.assert_allclose(proportions.sum(axis=1), 1.0, rtol=1e-5)
    assert float(proportions[:, :2].max()) == 0.0  # no_data and clouds dropped
    weights = class_weights_from_counts([0, 10, 30, 10], ignore_classes=[1])
    assert weights == [0.0, 0.0, pytest.approx(40 / 60), pytest.approx(2.0)]


@pytest.mark.parametrize("steps", [["grayscale"], ["equalize"], ["whiten"]])
def test_study_preprocessing_keeps_shape(steps):
    source = open_source("synthetic_terrain")
    images, _ = batches(source, indices=list(range(4)), extra_preprocessing=steps)[0]
    assert images.shape == (4, 32, 32, 3)
    if steps == ["grayscale"]:
        np.testing.assert_allclose(images[..., 0], images[..., 2])




def test_split_group_by_folder_keeps_each_subfolder_on_one_side(tmp_path):
    """Tiles cut from one scene look alike: a random carving puts neighbours in train and test and the score is
    optimistic (torchgeo splits by region for this). `split: {group_by: folder}` keeps each subfolder's images
    (images/<region>/ in a segmentation folder, <class>/<animal>/ in a classification one) on one side; images
    directly in images/ or a class folder stay single. A dataset with nothing to group is refused, saying why."""
    from zoo.data.splits import plan_for_source
    from zoo.errors import ConfigError

    rng = np.random.default_rng(0)
    root = tmp_path / "tiles"
    for region in range(10):
        (root / "images" / f"r{region}").mkdir(parents=True)
        (root / "masks" / f"r{region}").mkdir(parents=True)
        for index in range(4):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "images" / f"r{region}" / f"{index}.png")
            Image.fromarray(rng.integers(0, 2, (8, 8), dtype=np.uint8)).save(root / "masks" / f"r{region}" / f"{index}.png")
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "images" / "loose.png")
    Image.fromarray(rng.integers(0, 2, (8, 8), dtype=np.uint8)).save(root / "masks" / "loose.png")
    entry = {"name": "tiles", "path": str(root), "split": {"val": 0.2, "test": 0.2, "group_by": "folder"}}
    source = open_source(entry)
    groups = source.folder_groups("train")
    assert sorted(set(groups)) == ["images/loose.png"] + [f"r{region}" for region in range(10)]
    torn = 0
    for seed in range(4):
        plan = plan_for_source(source, entry["split"], seed)
        side = {int(i): name for name, (_, indices) in plan.items() for i in indices}
        assert sorted(side) == list(range(41))
        assert all(len({side[i] for i in np.flatnonzero(groups == g)}) == 1 for g in set(groups))
        plain = plan_for_source(source, {"val": 0.2, "test": 0.2}, seed)
        side = {int(i): name for name, (_, indices) in plain.items() for i in indices}
        torn += sum(len({side[i] for i in np.flatnonzero(groups == g)}) > 1 for g in set(groups))
    assert torn > 0  # without group_by, regions are cut across train and test

    for place in ("beagle/rex/1.png", "beagle/rex/2.png", "beagle/3.png", "pug/4.png", "pug/bo/5.png"):
        (tmp_path / "dogs" / place).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "dogs" / place)
    dogs = open_source({"name": "dogs", "path": str(tmp_path / "dogs")})
    assert list(dogs.folder_groups("train")) == ["beagle/3.png", "beagle/rex", "beagle/rex", "pug/4.png", "pug/bo"]
    make_classification_folder(tmp_path / "photos")
    with pytest.raises(ConfigError, match="no image of dataset 'photos' lies in a subfolder"):
        plan_for_source(open_source({"name": "photos", "path": str(tmp_path / "photos")}), {"group_by": "folder"}, 0)
    with pytest.raises(ConfigError, match="is no folder of images"):
        plan_for_source(open_source("synthetic_terrain"), {"group_by": "folder"}, 0)
    with pytest.raises(ConfigError, match="'region' is not known; use folder"):
        plan_for_source(source, {"group_by": "region"}, 0)


def test_data_info_of_a_dataset_not_prepared_shows_its_card_and_how_to_prepare_it(tmp_path):
    """Deciding whether to download 778 MiB: `zoo data info stanford_dogs` before `zoo data prepare` tells what the
    card knows (task, classes, splits, licence, published results) and how to prepare it, instead of an error."""
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "zoo.cli", "data", "info", "stanford_dogs"], capture_output=True,
                            text=True, env={**os.environ, "TFDS_DATA_DIR": str(tmp_path), "ZOO_OFFLINE": "1"},
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert "classes:     120 (named when the data is prepared)" in text and "splits:      train 12000, test 8580" in text
    assert "Run `zoo data prepare stanford_dogs`" in text and "licence:     Images from ImageNet" in text
    assert "published:   dog-breed study, VGG16 transfer: accuracy 0.8" in text
    # The land cover is a manual download: --data-dir names where it is, not where the built dataset goes.
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "data", "info", "landcover_ens"], capture_output=True,
                            text=True, env={**os.environ, "TFDS_DATA_DIR": str(tmp_path), "ZOO_OFFLINE": "1"},
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "run `zoo data prepare landcover_ens --data-dir DIR` (DIR: the unzipped download" in result.stdout
    assert "published:   land-cover study, challenge benchmark: kl_score 0.0593" in result.stdout
    # Its test tiles come without masks: runs carve theirs from train, and the listing says so.
    assert "splits:      train 18491, test 5043 (unlabelled: not scored, zoo predict answers it)" in result.stdout
