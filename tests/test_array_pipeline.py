"""The input pipeline without TensorFlow (zoo.data.array_pipeline) against tf.data: the same
description, the same tensors with augmentation off; its own shuffling and augmentation."""
import numpy as np
import pytest
import tifffile
from PIL import Image

from zoo.data import open_source
from zoo.data.array_pipeline import build_array_pipeline
from zoo.data.pipeline import build_pipeline
from zoo.data.steps import PipelineOptions


def make_photos(root):
    """Photos of several sizes (so both paths resize), one grey among colour ones."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(["dune", "forest"]):
        (root / name).mkdir(parents=True)
        for index, shape in enumerate([(20, 27), (45, 31), (32, 32), (17, 50)]):
            Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(root / name / f"{index}.png")
    Image.fromarray(rng.integers(0, 255, (29, 23), dtype=np.uint8)).save(root / "dune" / "grey.png")


def make_tiles(root):
    """16-bit, 5-band tiles with masks of their own size (resized by nearest neighbour)."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(5):
        tifffile.imwrite(root / "images" / f"{index}.tif", rng.integers(0, 65535, (19, 19, 5), dtype=np.uint16))
        Image.fromarray(rng.integers(0, 4, (19, 19), dtype=np.uint8)).save(root / "masks" / f"{index}.png")


CASES = {
    "photos, equalised and whitened, caffe, one-hot": (
        "photos", dict(extra_preprocessing=["equalize", "whiten"], preprocessing="caffe", one_hot=True)),
    "photos, grey, torch, cached in memory": (
        "photos", dict(extra_preprocessing=["grayscale"], preprocessing="torch", cache="memory")),
    "16-bit tiles, masks, class weights": (
        "tiles", dict(preprocessing="tf", target="masks", class_weights=[0.0, 1.0, 2.0, 0.5])),
    "synthetic land cover, class proportions": (
        "synthetic_landcover", dict(preprocessing="torch", target="proportions")),
}


@pytest.mark.parametrize("case", CASES)
def test_both_input_paths_give_the_same_batches(case, tmp_path):
    """With augmentation off, tf.data and the array pipeline feed the model the same tensors
    (within float32 rounding): images, labels, masks, pixel weights and proportions."""
    name, options = CASES[case]
    if name == "photos":
        make_photos(tmp_path / "photos")
        source = open_source({"name": "photos", "source": "folder", "path": str(tmp_path / "photos")})
    elif name == "tiles":
        make_tiles(tmp_path / "tiles")
        source = open_source({"name": "tiles", "source": "folder", "path": str(tmp_path / "tiles")})
    else:
        source = open_source({"name": name, "num_examples": 12})
    indices = list(range(source.info.splits["train"]))[::-1]  # a carving's rows, not the files' order
    options = PipelineOptions(image_size=24, batch_size=4, **options)
    reference = list(build_pipeline(source.examples("train", indices), source.info, options, training=False))
    arrays = build_array_pipeline(source.example_arrays("train", indices), source.info, options, training=False)
    assert len(arrays) == len(reference)
    for expected, batch in zip(reference, arrays):
        assert len(batch) == len(expected)
        for want, got in zip(expected, batch):
            want = np.asarray(want)
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_array_pipeline_shuffles_per_epoch_and_augments_image_and_mask_together():
    source = open_source({"name": "synthetic_landcover", "num_examples": 16})
    options = PipelineOptions(image_size=source.info.image_shape[0], batch_size=16, augment=True, seed=3, target="masks", preprocessing="model")
    batches = build_array_pipeline(source.example_arrays("train"), source.info, options, training=True)
    first = batches[0]
    again = build_array_pipeline(source.example_arrays("train"), source.info, options, training=True)[0]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)  # the seed decides order and augmentation
    batches.on_epoch_end()
    assert not np.array_equal(batches[0][1], first[1])  # a new epoch, a new order
    images, masks, _ = first
    plain = np.stack([source.example_arrays("train")[i][1] for i in range(16)])
    # Each augmented mask is a flip or quarter turn of one of the tiles' masks, and its image moved with it.
    for image, mask in zip(images, masks):
        matches = [index for index in range(16) for turned in _moves(plain[index]) if np.array_equal(turned, mask)]
        assert matches
        tile = source.example_arrays("train")[matches[0]][0] * (255.0 / source.info.max_pixel_value)
        assert any(np.allclose(moved, image, rtol=1e-5) for moved in _moves(tile))
    moved = sum(not any(np.array_equal(mask, m) for m in plain) for mask in masks)
    assert moved >= 4


def _moves(array):
    for flipped in (array, array[:, ::-1], array[::-1], array[::-1, ::-1]):
        for turns in range(4):
            yield np.rot90(flipped, turns)


def test_array_pipeline_augments_photos_with_keras_layers():
    source = open_source({"name": "synthetic_terrain", "num_examples": 8})
    options = PipelineOptions(image_size=32, batch_size=8, augment=True, seed=0, preprocessing="model")
    plain = build_array_pipeline(source.example_arrays("train"), source.info,
                                 PipelineOptions(image_size=32, batch_size=8, seed=0, preprocessing="model"),
                                 training=True)[0]
    augmented = build_array_pipeline(source.example_arrays("train"), source.info, options, training=True)[0]
    np.testing.assert_array_equal(augmented[1], plain[1])  # same order, labels untouched
    assert augmented[0].shape == plain[0].shape and augmented[0].dtype == np.float32
    assert not np.allclose(augmented[0], plain[0])
    assert 0.0 <= augmented[0].min() and augmented[0].max() <= 255.0
