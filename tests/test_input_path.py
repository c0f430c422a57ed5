"""The one input path (issue 32): images decoded once into the output folder's cache and shared,
every step after it in keras.ops, the same batches on every backend with TensorFlow installed or not."""
import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from zoo.data import decoded, open_source
from zoo.data.decoded import open_decoded, stored_image
from zoo.data.pipeline import input_pipeline
from zoo.data.prepare import Preparation, pair_augmentation
from zoo.data.steps import PipelineOptions

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def nothing_held():
    """Each test opens the cache as a new process would (a process keeps decoded rows in memory)."""
    decoded.forget_opened()
    yield
    decoded.forget_opened()


def input_only_predictor(image_size: int):
    """A Predictor with a run's input description and no model: what prepare() needs."""
    from zoo.predict import Predictor

    predictor = Predictor.__new__(Predictor)
    predictor.filesystem = None

    class Input:
        channels, max_pixel_value = 3, 255.0
    Input.image_size = image_size
    predictor.input = Input
    return predictor


def test_large_jpegs_decode_at_a_reduced_scale_the_same_way_for_training_and_prediction(tmp_path):
    """A photo far larger than the model's input is decoded by libjpeg at 1/2-1/8 scale (its short side kept
    at least twice the input's): the scan still reads every block (a truncated file is named), still records
    the file's own shape, and zoo predict makes the same row and answers at the file's own size."""
    from zoo.data.images import DRAFT_MARGIN, read_image

    y, x = np.mgrid[0:600, 0:800]
    smooth = np.stack([x * 255 // 800, y * 255 // 600, (x + y) * 255 // 1400], -1).astype(np.uint8)
    for name in ("dune", "forest"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(np.roll(smooth, 40 * index, axis=1)).save(tmp_path / "photos" / name / f"{index}.jpg",
                                                                      quality=95)
    whole = (tmp_path / "photos" / "dune" / "0.jpg").read_bytes()
    (tmp_path / "photos" / "dune" / "cut.jpg").write_bytes(whole[:len(whole) // 2])
    source = open_source({"name": "photos", "source": "folder", "path": str(tmp_path / "photos")})
    assert source.info.image_shape == [600, 800] and source.info.splits == {"train": 6}
    assert [s["path"].endswith("cut.jpg") and "truncated" in s["reason"] for s in source.info.skipped] == [True]
    path = source.scan.examples["train"][0][0]
    assert read_image(path, size=24).shape == (75, 100, 3)   # 1/8: 75 >= 2 x 24
    assert read_image(path, size=200).shape == (600, 800, 3)  # 1/2 would leave 300 < 2 x 200
    assert DRAFT_MARGIN == 2
    rows = open_decoded(source, "train", 24, tmp_path / "cache")
    full = stored_image(read_image(path).astype(np.float32), 24, 255.0)
    # The same picture: what the two decodes differ by is a fraction of a grey level on average.
    assert np.abs(rows.images[0].astype(int) - full.astype(int)).mean() < 2.0
    predictor = input_only_predictor(24)
    row, original = predictor.prepare(str(path))
    np.testing.assert_array_equal(row, rows.images[0])
    assert original == (600, 800)
    decoded.forget_opened()


def turned_copy(array: np.ndarray, path, orientation: int, **save):
    """``array`` saved with EXIF ``orientation``, as a phone saves a photo it shows turned."""
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), **save)


def test_phone_photos_are_read_upright_for_training_prediction_and_masks(tmp_path, monkeypatch):
    """A phone stores a portrait photo as landscape rows with an EXIF orientation; viewers, browsers, OpenCV
    and labelling tools show it upright, and so must the model see it in training and in zoo predict (it saw
    such photos lying on their side until 2026-11-30). Every orientation, in PNG, JPEG and WebP, at full and
    at libjpeg's reduced scale; browsers' .jfif and WebP files count as images; an iPhone's HEIC is named with
    what reads it where it cannot be read; a mask drawn on the stored pixels of a turned image is refused
    saying so."""
    from PIL import ImageOps

    from zoo.data import images
    from zoo.data.images import read_image, read_mask
    from zoo.predict import list_inputs

    monkeypatch.setattr(images, "heif_readable", lambda: False)  # a machine without zoo's heic extra

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        turned_copy(stored, tmp_path / f"o{orientation}.png", orientation)
        upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / f"o{orientation}.png")))
        assert upright.shape[:2] == ((20, 12) if orientation >= 5 else (12, 20))
        np.testing.assert_array_equal(read_image(tmp_path / f"o{orientation}.png"), upright)

    y, x = np.mgrid[0:600, 0:800]
    smooth = np.stack([x * 255 // 800, y * 255 // 600, (x + y) * 255 // 1400], -1).astype(np.uint8)
    for name in ("dune", "forest"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        turned_copy(smooth, tmp_path / "photos" / name / "portrait.jpg", 6, quality=95)
        turned_copy(smooth[::4, ::4], tmp_path / "photos" / name / "saved.jfif", 8, format="JPEG")
        Image.fromarray(smooth[::5, ::5]).save(tmp_path / "photos" / name / "web.webp")
    (tmp_path / "photos" / "dune" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    source = open_source({"name": "photos", "source": "folder", "path": str(tmp_path / "photos")})
    assert source.info.splits == {"train": 6}
    assert [s["reason"].split(",")[0] for s in source.info.skipped] == ["an iPhone (HEIC) photo"]
    assert "pip install -e '.[heic]'" in source.info.skipped[0]["reason"]
    assert any(note.startswith("4 of 6 images are stored turned") for note in source.info.notes)
    portrait = tmp_path / "photos" / "dune" / "portrait.jpg"
    assert read_image(portrait).shape == (800, 600, 3)
    assert read_image(portrait, size=24).shape == (100, 75, 3)  # libjpeg's 1/8 scale, then turned
    # The red channel grows left to right in the stored rows: upright (turned a quarter clockwise) it grows
    # top to bottom.
    full = read_image(portrait).astype(int)
    assert full[-1, :, 0].mean() - full[0, :, 0].mean() > 200 and abs(full[:, -1, 0].mean() - full[:, 0, 0].mean()) < 5
    rows = open_decoded(source, "train", 24, tmp_path / "cache")
    index = source.example_ids("train").index("dune/portrait.jpg")
    expected = stored_image(full.astype(np.float32), 24, 255.0)
    assert np.abs(rows.images[index].astype(int) - expected.astype(int)).mean() < 2.0
    predictor = input_only_predictor(24)
    row, original = predictor.prepare(str(portrait))
    np.testing.assert_array_equal(row, rows.images[index])
    assert original == (800, 600)  # a segmentation answer is made at the photo's upright size
    # zoo predict over a folder: the HEIC photo gets its error row, naming what reads it, not passed over.
    assert sorted(Path(p).name for p in list_inputs([tmp_path / "photos" / "dune"])) == [
        "IMG_0001.HEIC", "portrait.jpg", "saved.jfif", "web.webp"]
    with pytest.raises(ValueError, match="cannot be read as an image.*an iPhone \\(HEIC\\) photo.*pillow-heif"):
        predictor.prepare(str(tmp_path / "photos" / "dune" / "IMG_0001.HEIC"))
    decoded.forget_opened()

    for drawn_on, accepted in (("upright", True), ("stored", False)):
        root = tmp_path / f"seg-{drawn_on}"
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        for index in range(2):
            turned_copy(stored, root / "images" / f"{index}.jpg", 6)
            mask = np.zeros((20, 12) if drawn_on == "upright" else (12, 20), np.uint8)
            mask[:3] = 1  # the top rows as the labeller saw them
            Image.fromarray(mask).save(root / "masks" / f"{index}.png")
        entry = {"name": "seg", "source": "folder", "path": str(root), "class_names": ["bare", "crop"]}
        if accepted:
            assert open_source(entry).info.image_shape == [20, 12]
            assert read_mask(root / "masks" / "0.png").shape == (20, 12)
        else:
            with pytest.raises(Exception, match=r"stored turned \(EXIF orientation 6\).*drawn on the stored pixels"):
                open_source(entry)


def make_photos(root):
    """Photos of several sizes (so every row is resized), one grey among colour ones."""
    rng = np.random.default_rng(0)
    for name in ("dune", "forest"):
        (root / name).mkdir(parents=True)
        for index, shape in enumerate([(20, 27), (45, 31), (32, 32), (17, 50)]):
            Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(root / name / f"{index}.png")
    Image.fromarray(rng.integers(0, 255, (29, 23), dtype=np.uint8)).save(root / "dune" / "grey.png")
    return open_source({"name": "photos", "source": "folder", "path": str(root)})


def make_tiles(root):
    """16-bit, 5-band tiles with masks of their own size."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(6):
        tifffile.imwrite(root / "images" / f"{index}.tif", rng.integers(0, 65535, (19, 19, 5), dtype=np.uint16))
        Image.fromarray(rng.integers(0, 4, (19, 19), dtype=np.uint8)).save(root / "masks" / f"{index}.png")
    return open_source({"name": "tiles", "source": "folder", "path": str(root)})


def epoch(batches):
    import keras

    return [tuple(keras.ops.convert_to_numpy(part) for part in batch) for batch in batches]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for one, other in zip(first, second):
        assert len(one) == len(other)
        for a, b in zip(one, other):
            np.testing.assert_array_equal(a, b)


def test_each_split_is_decoded_once_and_every_later_run_reads_the_cache(tmp_path):
    source = make_photos(tmp_path / "photos")
    root = tmp_path / "cache"
    first = open_decoded(source, "train", 24, root)
    assert first.origin == "built" and first.images.dtype == np.uint8 and first.images.shape == (9, 24, 24, 3)
    folders = [p for p in root.iterdir()]
    assert len(folders) == 1 and sorted(p.name for p in folders[0].iterdir()) == ["images.npy", "meta.json",
                                                                                  "targets.npy"]
    decoded.forget_opened()  # another process
    again = open_decoded(source, "train", 24, root)
    assert again.origin == "reused"
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.targets, source.labels("train"))
    # Another size is another cache; the rows are the source's images resized and rounded, nothing else.
    other = open_decoded(source, "train", 16, root)
    assert other.origin == "built" and len(list(root.iterdir())) == 2
    image, _ = source.example_arrays("train")[3]
    np.testing.assert_array_equal(other.images[3], np.clip(np.rint(decoded.resize_bilinear(image, 16)), 0, 255))


def test_the_resize_is_tensorflow_s_and_sixteen_bit_sources_keep_sixteen_bits(tmp_path):
    tf = pytest.importorskip("tensorflow")
    source = make_tiles(tmp_path / "tiles")
    rows = open_decoded(source, "train", 24, tmp_path / "cache")
    assert rows.images.dtype == np.uint16 and rows.targets.shape == (6, 24, 24)
    image, mask = source.example_arrays("train")[2]
    expected = tf.image.resize(image * (65535.0 / source.info.max_pixel_value), (24, 24)).numpy()
    np.testing.assert_allclose(rows.images[2], np.rint(expected), atol=1)
    nearest = tf.image.resize(mask[..., None].astype(np.int32), (24, 24), method="nearest").numpy()[..., 0]
    np.testing.assert_array_equal(rows.targets[2], nearest)


def test_a_damaged_or_half_written_cache_is_rebuilt_with_the_same_rows(tmp_path):
    source = make_photos(tmp_path / "photos")
    root = tmp_path / "cache"
    good = open_decoded(source, "train", 24, root).images.copy()
    folder = next(root.iterdir())
    (root / f".{folder.name}.999-dead.tmp").mkdir()  # an interrupted writer's leftovers: never read
    for damage in ("truncate", "meta", "an earlier zoo's"):
        decoded.forget_opened()
        if damage == "truncate":
            with open(folder / "images.npy", "r+b") as stream:
                stream.truncate(200)
        elif damage == "meta":
            (folder / "meta.json").write_text("{not json")
        else:  # whole files of another decoding (its rounding or resize may differ): never read as this one's
            meta = json.loads((folder / "meta.json").read_text())
            (folder / "meta.json").write_text(json.dumps({**meta, "version": decoded.DECODE_VERSION - 1}))
        rebuilt = open_decoded(source, "train", 24, root)
        assert rebuilt.origin == "built", damage
        np.testing.assert_array_equal(rebuilt.images, good)


def test_concurrent_writers_leave_one_complete_cache(tmp_path):
    source = make_photos(tmp_path / "photos")
    root = tmp_path / "cache"
    results, errors = [], []

    def open_one():
        try:
            results.append(open_decoded(source, "train", 24, root, mode="disk"))
        except Exception as error:  # noqa: BLE001 - the test reports any
            errors.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 4
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == [next(root.iterdir()).name]
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    for result in results[1:]:
        np.testing.assert_array_equal(result.rows(np.arange(9))[0], results[0].rows(np.arange(9))[0])


def test_no_room_for_the_cache_streams_the_same_batches_with_one_line(tmp_path, monkeypatch):
    source = make_photos(tmp_path / "photos")
    options = dict(image_size=24, batch_size=4, augment=True, seed=5, extra_preprocessing=["equalize"],
                   preprocessing="torch")
    cached = epoch(input_pipeline(source, "train", [8, 1, 5, 2, 7, 0], source.info,
                                  PipelineOptions(**options, cache_root=str(tmp_path / "a")), training=True))
    lines = []
    monkeypatch.setattr(decoded, "_build", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    streamed = input_pipeline(source, "train", [8, 1, 5, 2, 7, 0], source.info,
                              PipelineOptions(**options, cache_root=str(tmp_path / "b")), training=True,
                              log=lines.append)
    assert streamed.input_cache == "off" and len(lines) == 1 and "No space left" in lines[0]
    assert_same_batches(epoch(streamed), cached)
    monkeypatch.undo()
    monkeypatch.setattr(decoded, "DISK_MARGIN_BYTES", 1 << 60)  # a cache larger than the free disk
    lines.clear()
    assert open_decoded(source, "train", 24, tmp_path / "c", log=lines.append).origin == "off"
    assert len(lines) == 1 and "GB free" in lines[0] and not list((tmp_path / "c").glob("*-train-*"))


def test_rows_over_the_memory_limit_are_read_from_disk_with_the_same_batches(tmp_path):
    source = make_tiles(tmp_path / "tiles")
    options = dict(image_size=24, batch_size=4, augment=True, seed=1, target="masks", preprocessing="tf")
    held = input_pipeline(source, "train", None, source.info,
                          PipelineOptions(**options, cache_root=str(tmp_path / "cache")), training=True)
    decoded.forget_opened()
    from_disk = open_decoded(source, "train", 24, tmp_path / "cache", memory_limit=0)
    assert isinstance(from_disk.images, decoded.DiskRows)
    read = input_pipeline(source, "train", None, source.info,
                          PipelineOptions(**options, cache_root=str(tmp_path / "cache"), memory_limit=0),
                          training=True)
    assert read.input_cache == "reused"
    assert_same_batches(epoch(read), epoch(held))


@pytest.mark.parametrize("target", ["labels", "masks"])
def test_rows_held_on_the_device_give_the_same_batches(tmp_path, monkeypatch, target):
    """Rows placed on the accelerator once (forced here onto the CPU device) are indexed there: the
    same batches as rows gathered on the host; segmentation's host-side augmentation keeps host rows."""
    from zoo.data import pipeline

    source = make_photos(tmp_path / "photos") if target == "labels" else make_tiles(tmp_path / "tiles")
    options = PipelineOptions(image_size=24, batch_size=4, augment=True, seed=2, target=target,
                              preprocessing="torch", cache_root=str(tmp_path / "cache"))
    monkeypatch.setenv("ZOO_INPUT_ON_DEVICE", "0")
    host = input_pipeline(source, "train", None, source.info, options, training=True)
    monkeypatch.setenv("ZOO_INPUT_ON_DEVICE", "1")
    pipeline._RESIDENT.clear()
    device = input_pipeline(source, "train", None, source.info, options, training=True)
    assert not host.on_device and device.on_device == (target == "labels")
    for _ in range(2):
        assert_same_batches(epoch(device), epoch(host))
        device.on_epoch_end()
        host.on_epoch_end()


def test_every_batch_is_full_so_a_compiled_step_sees_one_shape():
    """30 rows in batches of 8. Training: four batches of 8 an epoch, every row in them, the last batch
    completed with the epoch's first rows; a new order the next epoch. Evaluation: the rows in order,
    the last batch completed by repeating its last row, weighted 0 there and 1 elsewhere; with_rows
    says how many rows to keep."""
    from zoo.data.pipeline import ArrayBatches

    train = ArrayBatches(30, 8, lambda positions, epoch, index: (positions, positions), shuffle_seed=0)
    first = [batch[0] for batch in train]
    assert [len(b) for b in first] == [8, 8, 8, 8] and len(train) == 4 and train.padded_count == 32
    assert sorted(np.concatenate(first)[:30]) == list(range(30))
    np.testing.assert_array_equal(first[-1][6:], first[0][:2])
    train.on_epoch_end()
    assert not np.array_equal(np.concatenate([b[0] for b in train]), np.concatenate(first))

    evaluation = ArrayBatches(30, 8, lambda positions, epoch, index: (positions, positions))
    batches = list(evaluation.with_rows())
    assert [rows for _, rows in batches] == [8, 8, 8, 6]
    positions, _, weights = batches[-1][0]
    np.testing.assert_array_equal(positions, [24, 25, 26, 27, 28, 29, 29, 29])
    np.testing.assert_array_equal(weights, [1, 1, 1, 1, 1, 1, 0, 0])
    assert all(batch[2].tolist() == [1.0] * 8 for batch, _ in batches[:-1])

    pixels = ArrayBatches(3, 2, lambda positions, epoch, index: (positions, positions, np.ones((2, 4, 4), "float32")))
    _, _, pixel_weights = keras_numpy(pixels[1])
    assert pixel_weights[0].min() == 1 and pixel_weights[1].max() == 0  # the repeated tile's pixels weigh nothing

    small = ArrayBatches(3, 8, lambda positions, epoch, index: positions, shuffle_seed=1)
    assert len(small) == 1 and sorted(set(small[0])) == [0, 1, 2] and len(small[0]) == 8


def test_capped_epochs_read_endless_batches_in_each_epochs_own_order():
    """With steps_per_epoch fit reads batch i of an endless input: batch i % len of epoch i // len, the same
    rows and augmentation epoch as the finite input's epochs."""
    from zoo.data.pipeline import ArrayBatches

    def make(positions, epoch, index):
        return positions, np.full(len(positions), epoch)

    finite = ArrayBatches(10, 4, make, shuffle_seed=3)
    epochs = []
    for _ in range(3):
        epochs.append(list(finite))
        finite.on_epoch_end()
    endless = ArrayBatches(10, 4, make, shuffle_seed=3).endless()
    assert endless.num_batches is None
    for i in range(9):
        positions, epoch = endless[i]
        np.testing.assert_array_equal(positions, epochs[i // 3][i % 3][0])
        assert set(epoch) == {i // 3}


def keras_numpy(batch):
    import keras

    return tuple(keras.ops.convert_to_numpy(part) for part in batch)


def test_segmentation_augmentation_moves_image_and_mask_together():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 4, (32, 16, 16)).astype(np.uint8)
    images = np.repeat(masks[..., None], 3, axis=-1)
    moved_images, moved_masks = pair_augmentation(np.random.default_rng(3), images, masks)
    np.testing.assert_array_equal(moved_images[..., 0], moved_masks)
    assert sum(not np.array_equal(a, b) for a, b in zip(moved_masks, masks)) >= 16
    again = pair_augmentation(np.random.default_rng(3), images, masks)
    np.testing.assert_array_equal(again[1], moved_masks)


def test_photo_augmentation_changes_images_and_follows_the_seed():
    source = open_source("synthetic_terrain")
    options = PipelineOptions(image_size=32, batch_size=8, seed=0)
    plain = epoch(input_pipeline(source, "train", list(range(16)), source.info, options, training=True))
    augmented = PipelineOptions(image_size=32, batch_size=8, seed=0, augment=True)
    pipeline = input_pipeline(source, "train", list(range(16)), source.info, augmented, training=True)
    first = epoch(pipeline)
    second = epoch(input_pipeline(source, "train", list(range(16)), source.info, augmented, training=True))
    assert_same_batches(first, second)
    np.testing.assert_array_equal(first[0][1], plain[0][1])  # same order: augmentation draws apart
    assert 0.0 <= first[0][0].min() and first[0][0].max() <= 255.0
    # Each image is the stored one resampled through its drawn rotation, zoom and flip (mirrored at the
    # borders), then its contrast scaled about its mean: computed here with Keras's own affine_transform.
    import keras

    rows, _, drawn = pipeline.host_batch(pipeline.order[:8], 0, 0)
    moved = keras.ops.convert_to_numpy(keras.ops.image.affine_transform(
        rows.astype(np.float32), drawn[:, :8], interpolation="bilinear", fill_mode="reflect"))
    mean = moved.mean(axis=(1, 2), keepdims=True)
    expected = np.clip((moved - mean) * drawn[:, 8].reshape(-1, 1, 1, 1) + mean, 0, 255)
    np.testing.assert_allclose(first[0][0], expected, atol=0.05)
    assert np.abs(drawn[:, 8] - 1).max() <= 0.1 and not np.allclose(first[0][0], plain[0][0], atol=1)


def textbook_equalisation(channel: np.ndarray) -> np.ndarray:
    """Histogram equalisation by its definition (Gonzalez & Woods): a pixel of value v goes to
    (cdf(v) - cdf_min) / (N - cdf_min) * 255, cdf(v) counted here by sorting, not by a histogram."""
    values = np.clip(channel.astype(np.int64), 0, 255).ravel()
    ordered = np.sort(values)
    at_most = np.searchsorted(ordered, values, side="right")
    cdf_min = np.searchsorted(ordered, ordered[0], side="right")
    return ((at_most - cdf_min) / max(values.size - cdf_min, 1) * 255.0).reshape(channel.shape)


def test_equalize_and_whiten_follow_their_definitions(rng):
    """The study's `equalize` and `whiten` on low-contrast images, against independent computations."""
    import keras

    images = rng.normal(100, 12, (2, 24, 20, 3)).clip(0, 255).round().astype(np.uint8)
    images[0, 0, 0, 1] = 0  # one channel with a dark outlier: its minimum bin is a single pixel
    equalised = keras.ops.convert_to_numpy(Preparation(study_steps=("equalize",)).images(images))
    for index in range(2):
        expected = np.stack([textbook_equalisation(images[index, ..., c]) for c in range(3)], axis=-1)
        np.testing.assert_allclose(equalised[index], expected, atol=1e-3)
    whitened = keras.ops.convert_to_numpy(Preparation(study_steps=("whiten",)).images(images)).astype(np.float64)
    plain = images.astype(np.float64)
    expected = (plain - plain.mean(axis=(1, 2), keepdims=True)) / plain.std(axis=(1, 2), keepdims=True) * 64 + 127.5
    np.testing.assert_allclose(whitened, expected, atol=1e-2)
    grey = keras.ops.convert_to_numpy(Preparation(study_steps=("grayscale",)).images(images))
    np.testing.assert_allclose(grey[..., 0], images[..., :3].astype(np.float32) @ [0.2989, 0.5870, 0.1140],
                               rtol=1e-5)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])


BATCHES_SCRIPT = """
import json, sys
import numpy as np
import keras
from zoo.data import open_source
from zoo.data.pipeline import input_pipeline
from zoo.data.steps import PipelineOptions

folder = sys.argv[1]
out = {}
cases = {
    "photos": ({"name": "photos", "source": "folder", "path": folder + "/photos"},
               dict(augment=True, extra_preprocessing=["equalize"], preprocessing="caffe", one_hot=True)),
    "tiles": ({"name": "tiles", "source": "folder", "path": folder + "/tiles"},
              dict(augment=True, target="masks", class_weights=[0.0, 1.0, 2.0, 0.5], preprocessing="tf")),
}
for name, (entry, options) in cases.items():
    source = open_source(entry)
    batches = input_pipeline(source, "train", None, source.info,
                             PipelineOptions(image_size=24, batch_size=4, seed=7, cache_root=folder + "/cache",
                                             **options), training=True)
    for epoch in range(2):
        for index, batch in enumerate(batches):
            for part, value in enumerate(batch):
                out[f"{name}-{epoch}-{index}-{part}"] = keras.ops.convert_to_numpy(value)
        batches.on_epoch_end()
np.savez(f"{folder}/batches-{sys.argv[2]}.npz", **out)
"""


def batches_in_a_process(folder: Path, backend: str, tensorflow: bool, label: str, on_device: bool = False) -> dict:
    from tests.test_backends import NO_TENSORFLOW

    (folder / "script.py").write_text(BATCHES_SCRIPT)
    paths = [str(ROOT)]
    if not tensorflow:
        blocker = folder / "blocker"
        blocker.mkdir(exist_ok=True)
        (blocker / "sitecustomize.py").write_text(NO_TENSORFLOW)
        paths.insert(0, str(blocker))
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(paths),
           "ZOO_INPUT_ON_DEVICE": "1" if on_device else "0"}
    done = subprocess.run([sys.executable, str(folder / "script.py"), str(folder), label], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(folder / f"batches-{label}.npz") as saved:
        return dict(saved)


@pytest.mark.slow
def test_the_same_batches_with_and_without_tensorflow_and_on_every_backend(tmp_path):
    """Shuffle order and every augmentation draw follow from the seed alone: on JAX the batches with
    TensorFlow importable and without it are identical (images, order, augmentation, targets); on
    TensorFlow and PyTorch they are the same batches, within each backend's float rounding. Rows held
    on the device (as on a GPU: gathered and prepared there in one compiled call) give each backend's
    batches exactly."""
    import importlib.util

    make_photos(tmp_path / "photos")
    make_tiles(tmp_path / "tiles")
    with_tf = batches_in_a_process(tmp_path, "jax", True, "jax-tf")
    without_tf = batches_in_a_process(tmp_path, "jax", False, "jax-no-tf")
    assert with_tf.keys() == without_tf.keys() and len(with_tf) >= 20
    for key in with_tf:
        np.testing.assert_array_equal(with_tf[key], without_tf[key], err_msg=key)
    others = ["tensorflow"] + (["torch"] if importlib.util.find_spec("torch") else [])
    hosts = {"jax": with_tf, **{backend: batches_in_a_process(tmp_path, backend, True, backend) for backend in others}}
    for backend in ["jax"] + others[1:]:
        held = batches_in_a_process(tmp_path, backend, True, f"{backend}-held", on_device=True)
        assert held.keys() == hosts[backend].keys()
        for key in held:
            np.testing.assert_array_equal(held[key], hosts[backend][key], err_msg=f"{backend} on the device: {key}")
    for backend in others:
        other = hosts[backend]
        for key in with_tf:
            if with_tf[key].dtype.kind in "iu" or key.endswith("-1") and key.startswith("photos"):
                np.testing.assert_array_equal(other[key], with_tf[key], err_msg=f"{backend} {key}")
            else:
                # The interpolation of a rotated image differs in the last bits between backends;
                # a pixel of a reflected border may differ more.
                close = np.isclose(other[key], with_tf[key], atol=0.05)
                assert close.mean() > 0.98, (backend, key, close.mean())


@pytest.mark.slow
def test_a_suite_gives_the_same_metrics_with_and_without_tensorflow(tmp_path):
    """The same augmented suite on JAX, TensorFlow importable or not: the same results."""
    import pandas as pd

    from tests.test_backends import NO_TENSORFLOW

    make_photos(tmp_path / "photos")
    suite = {"name": "same", "backbones": ["baseline_cnn"], "heads": ["linear"], "weights": "none",
             "datasets": [{"name": "photos", "source": "folder", "path": str(tmp_path / "photos")}],
             "seeds": [0, 1],
             "train": {"image_size": 24, "batch_size": 4, "epochs": 2, "augment": True, "backend": "jax"}}
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_TENSORFLOW)
    tables = {}
    for label, paths in (("tf", [str(ROOT)]), ("no-tf", [str(blocker), str(ROOT)])):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(paths)}
        done = subprocess.run([sys.executable, "-m", "zoo.cli", "run", str(tmp_path / "suite.json"), "--out",
                               str(tmp_path / label), "--no-report"], capture_output=True, text=True, env=env,
                              timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        tables[label] = pd.read_csv(tmp_path / label / "results.csv").sort_values("run_id")
    for table in tables.values():
        assert (table["status"] == "ok").all(), table["error"].tolist()
        assert list(table["input_cache"]) == ["built", "reused"]  # the second seed decodes nothing
    for column in ("accuracy", "macro_f1", "val_loss", "log_loss"):
        if column in tables["tf"]:
            np.testing.assert_array_equal(tables["tf"][column].to_numpy(), tables["no-tf"][column].to_numpy(),
                                          err_msg=column)


def test_a_prediction_prepares_a_file_as_the_cache_does(tmp_path):
    """zoo predict's rows are the decoded cache's rows, and its model input the pipeline's."""
    import keras

    from zoo.predict import Predictor

    source = make_photos(tmp_path / "photos")
    rows = open_decoded(source, "train", 24, tmp_path / "cache")
    path, _ = source.scan.examples["train"][4]
    predictor = Predictor.__new__(Predictor)
    predictor.filesystem = None

    class Input:
        image_size, channels, max_pixel_value = 24, 3, 255.0
        study_steps, backbone_preprocessing = ("whiten",), "torch"
    predictor.input = Input
    row, original = predictor.prepare(str(path))
    np.testing.assert_array_equal(row, rows.images[4])
    pipeline = input_pipeline(source, "train", [4], source.info,
                              PipelineOptions(image_size=24, batch_size=1, extra_preprocessing=["whiten"],
                                              preprocessing="torch", cache_root=str(tmp_path / "cache")), False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(predictor.model_inputs(row[None])),
                               keras.ops.convert_to_numpy(pipeline[0][0]), rtol=1e-6, atol=1e-5)
    assert stored_image(np.zeros((5, 7, 3), np.float32), 24, 255.0).shape == (24, 24, 3)


def test_an_iphone_s_heic_photos_are_read_upright_with_zoo_heic(tmp_path):
    """With the pillow-heif plug-in (zoo's heic extra, in .[dev]) an iPhone's HEIC photos are images like any other:
    libheif turns a portrait photo upright as it decodes and resets its EXIF orientation, so zoo does not turn
    it a second time; zoo predict reads it the same way."""
    pytest.importorskip("pillow_heif", reason="zoo's heic extra is not installed (it is in .[dev])")
    from zoo.data.images import heif_readable, read_image

    assert heif_readable()
    y, x = np.mgrid[0:60, 0:80]
    smooth = np.stack([x * 255 // 80, y * 255 // 60, np.full_like(x, 90)], -1).astype(np.uint8)
    for name in ("dune", "forest"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for index in range(3):
            turned_copy(np.roll(smooth, 5 * index, axis=0), tmp_path / "photos" / name / f"IMG_{index}.HEIC", 6,
                        format="HEIF", quality=95)
    source = open_source({"name": "photos", "source": "folder", "path": str(tmp_path / "photos")})
    assert source.info.splits == {"train": 6} and source.info.skipped == []
    assert source.info.image_shape == [80, 60]  # upright: the stored 60 x 80 turned a quarter
    portrait = read_image(tmp_path / "photos" / "dune" / "IMG_0.HEIC").astype(int)
    assert portrait.shape == (80, 60, 3)
    # The red channel grows left to right in the stored rows: upright, top to bottom (turned once, not twice).
    assert portrait[-1, :, 0].mean() - portrait[0, :, 0].mean() > 200
    rows = open_decoded(source, "train", 16, tmp_path / "cache")
    row, original = input_only_predictor(16).prepare(str(tmp_path / "photos" / "dune" / "IMG_0.HEIC"))
    np.testing.assert_array_equal(row, rows.images[source.example_ids("train").index("dune/IMG_0.HEIC")])
    assert original == (80, 60)
    decoded.forget_opened()
