"""``zoo predict ... --output FILE.parquet`` (or ``.csv``): local, from an S3-compatible store, and on Ray."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zoo.harness.runner import run_suite
from zoo.harness.suite import load_suite
from zoo.predict import mask_folder, predict_images, predict_to_file

TRAIN = {"image_size": 32, "batch_size": 16, "epochs": 1, "steps_per_epoch": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One finished classification run and one segmentation run."""
    out = tmp_path_factory.mktemp("runs")
    found = {}
    for dataset, head in (("synthetic_terrain", "linear"), ("synthetic_landcover", "fcn")):
        suite = load_suite({"name": head, "datasets": [dataset], "heads": [head], "train": TRAIN})
        assert run_suite(suite, out / head, executor="in-process", report=False, log=lambda *_: None) == 0
        found[head] = next((out / head / "runs").iterdir())
    return found


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Images of several sizes in nested folders, a hidden file, a text file and a broken JPEG."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(9):
        folder = root / ("nested/deeper" if index % 3 == 0 else "nested" if index % 3 == 1 else "")
        folder.mkdir(parents=True, exist_ok=True)
        size = (30 + 4 * index, 40)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"tile{index}.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    (root / "notes.txt").write_text("not an image, not an image suffix: not an input")
    (root / ".hidden.png").write_bytes(b"")
    return root


def test_a_folder_gives_one_row_per_image_equal_to_zoo_predict_on_each_file(runs, images, tmp_path):
    output = tmp_path / "predictions.parquet"
    summary = predict_to_file(runs["linear"], [images], output, batch_size=4, top_k=3)
    table = pd.read_parquet(output)
    assert list(table.columns) == ["path", "label", "probability", "top_k", "probabilities", "error"]
    assert summary["images"] == len(table) == 10 and summary["failed"] == 1
    # Loading and compiling are the first batch's: the rate after it leaves them out.
    assert 0 < summary["first_batch_seconds"] < summary["seconds"]
    assert summary["steady_images_per_second"] == pytest.approx(6 / (summary["seconds"] - summary["first_batch_seconds"]))
    broken = table[table["path"].str.endswith("broken.jpg")].iloc[0]
    assert "cannot be read as an image" in broken["error"] and pd.isna(broken["label"])
    good = table[table["error"].isna()]
    singles = predict_images(runs["linear"], good["path"].tolist(), top_k=3)
    for (_, row), single in zip(good.iterrows(), singles):
        assert len(row["top_k"]) == 3 and row["label"] == row["top_k"][0]["label"] == single["top"][0][0]
        # The same function as one file at a time; the batch only changes float32 rounding.
        assert [t["probability"] for t in row["top_k"]] == pytest.approx([p for _, p in single["top"]], abs=1e-6)
        # every class, in the run's order: the top-k are its largest
        assert list(row["probabilities"]) == json.loads((runs["linear"] / "dataset.json").read_text())["class_names"]
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert [row["probabilities"][t["label"]] for t in row["top_k"]] == [t["probability"] for t in row["top_k"]]
    assert not list(tmp_path.glob(".*"))  # no partial file left


def test_segmentation_writes_one_mask_per_image_at_its_own_size(runs, tmp_path):
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(1)
    channels = json.loads((runs["fcn"] / "dataset.json").read_text())["channels"]
    (tmp_path / "tiles").mkdir()
    for index in range(6):  # multispectral tiles of several sizes, as the land-cover data
        tifffile.imwrite(tmp_path / "tiles" / f"tile{index}.tif",
                         rng.integers(0, 255, (20 + 5 * index, 36, channels), dtype=np.uint8))
    output = tmp_path / "masks.parquet"
    predict_to_file(runs["fcn"], [tmp_path / "tiles"], output, batch_size=4)
    table = pd.read_parquet(output)
    assert len(table) == 6 and table["error"].isna().all(), table["error"].tolist()
    classes = len(json.loads((runs["fcn"] / "dataset.json").read_text())["class_names"])
    for row in table.itertuples():
        mask = np.asarray(Image.open(row.mask))
        assert Path(row.mask).parent == mask_folder(output)
        assert mask.shape == tifffile.imread(row.path).shape[:2] and mask.max() < classes
    assert len(list(mask_folder(output).iterdir())) == 6


def land_cover_test_tiles(run, folder: Path, count: int = 5) -> Path:
    """Tiles named as the land-cover challenge's test images (test/images/10000.tif, ...)."""
    import tifffile

    channels = json.loads((run / "dataset.json").read_text())["channels"]
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for index in range(count):
        tifffile.imwrite(folder / f"{10000 + index}.tif", rng.integers(0, 255, (32, 32, channels), dtype=np.uint8))
    return folder


def test_a_csv_is_a_land_cover_challenge_submission_of_each_tiles_class_proportions(runs, tmp_path):
    tiles = land_cover_test_tiles(runs["fcn"], tmp_path / "test" / "images")
    predict_to_file(runs["fcn"], [tiles], tmp_path / "submission.csv", batch_size=2)
    predict_to_file(runs["fcn"], [tiles], tmp_path / "same.parquet", batch_size=2)
    # Read as the challenge's scorer reads a submission: index sample_id, a column per class.
    submission = pd.read_csv(tmp_path / "submission.csv", index_col=0)
    class_names = json.loads((runs["fcn"] / "dataset.json").read_text())["class_names"]
    assert submission.index.name == "sample_id" and list(submission.index) == list(range(10000, 10005))
    assert list(submission.columns) == class_names
    assert np.allclose(submission.sum(axis=1), 1.0, atol=1e-5)
    rows = pd.read_parquet(tmp_path / "same.parquet")
    expected = np.array([[row[name] for name in class_names] for row in rows["probabilities"]])
    assert np.array_equal(submission.to_numpy(), expected)  # written in full (repr), not rounded
    assert not list(tmp_path.glob(".*"))


def test_a_csv_leaves_out_unreadable_files_names_them_and_fails(runs, images, tmp_path, capsys):
    from zoo.cli import main

    output = tmp_path / "predictions.csv"
    assert main(["predict", str(runs["linear"]), str(images), "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert "1 of 10 input(s) could not be read and have no row in" in error
    assert "broken.jpg: " in error and "cannot be read as an image" in error
    table = pd.read_csv(output, index_col=0)
    assert len(table) == 9 and "broken" not in table.index


def test_a_csv_refuses_two_images_of_one_name_before_predicting(runs, images, tmp_path):
    from zoo.errors import ConfigError

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "tile1.png").write_bytes((images / "nested" / "tile1.png").read_bytes())
    with pytest.raises(ConfigError, match="would both be row 'tile1'.*write a .parquet file"):
        predict_to_file(runs["linear"], [images, tmp_path / "other"], tmp_path / "p.csv")
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob(".*"))
    with pytest.raises(ConfigError, match="give a .parquet file .* or a .csv"):
        predict_to_file(runs["linear"], [images], tmp_path / "p.json")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """A local S3-compatible server (moto's), on 127.0.0.1, stopped by process id."""
    pytest.importorskip("moto", reason="the object-store tests need moto[server] (in .[dev])")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield endpoint
    server.terminate()
    server.wait(30)


@pytest.fixture
def aws(s3_server, monkeypatch):
    for name, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "zoo", "AWS_SECRET_ACCESS_KEY": "zoo",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    return s3_server


def test_an_object_store_prefix_predicts_like_the_same_files_on_disk(runs, images, aws, tmp_path):
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="tiles")
    for path in sorted(images.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), "tiles", f"survey/{path.relative_to(images).as_posix()}")
    predict_to_file(runs["linear"], ["s3://tiles/survey/"], tmp_path / "s3.parquet")
    predict_to_file(runs["linear"], [images], tmp_path / "local.parquet")
    remote, local = pd.read_parquet(tmp_path / "s3.parquet"), pd.read_parquet(tmp_path / "local.parquet")
    assert remote["path"].tolist() == [p.replace(str(images), "s3://tiles/survey") for p in local["path"]]
    assert remote["label"].tolist() == local["label"].tolist()
    assert remote["probability"].fillna(-1).tolist() == pytest.approx(local["probability"].fillna(-1).tolist(),
                                                                      abs=1e-6)
    assert remote["error"].notna().sum() == 1


@pytest.mark.xdist_group("ray")
def test_ray_data_gives_the_local_rows(ray_cluster, runs, images, tmp_path):
    local = tmp_path / "local.parquet"
    predict_to_file(runs["linear"], [images], local, batch_size=4)
    on_ray = tmp_path / "ray.parquet"
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "predict", str(runs["linear"]), str(images),
                             "--output", str(on_ray), "--executor", "ray", "--address", ray_cluster.address,
                             "--batch-size", "4"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 of 10 input(s) could not be read" in result.stderr
    expected, got = pd.read_parquet(local), pd.read_parquet(on_ray)
    assert got["path"].tolist() == expected["path"].tolist()
    assert got["label"].tolist() == expected["label"].tolist()
    assert got["error"].tolist() == expected["error"].tolist()
    assert [row and list(row) for row in got["probabilities"]] == [row and list(row) for row in expected["probabilities"]]
    assert got["probability"].fillna(-1).tolist() == pytest.approx(expected["probability"].fillna(-1).tolist(),
                                                                   abs=1e-6)
