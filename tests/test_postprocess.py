import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoo.data import open_source
from zoo.postprocess import estimate_transitions, smooth_tracks

METHODS = ["window", "hmm"]


def confident(labels, classes=3, strength=0.8):
    probabilities = np.full((len(labels), classes), (1 - strength) / (classes - 1))
    probabilities[np.arange(len(labels)), labels] = strength
    return probabilities


@pytest.mark.parametrize("method", METHODS)
def test_an_isolated_wrong_point_is_corrected(method):
    predicted = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0])
    smoothed = smooth_tracks(confident(predicted), np.zeros(9), np.arange(9), method)
    assert smoothed.tolist() == [0] * 9


@pytest.mark.parametrize("method", METHODS)
def test_a_true_segment_longer_than_the_window_survives(method):
    truth = np.array([0] * 6 + [2] * 7 + [1] * 6)
    smoothed = smooth_tracks(confident(truth), np.zeros(len(truth)), np.arange(len(truth)), method, window=5)
    assert smoothed.tolist() == truth.tolist()


@pytest.mark.parametrize("method", METHODS)
def test_tracks_are_never_mixed_even_when_rows_interleave(method):
    # Track 7 is all class 2; track 3 is all class 0 except one point. Rows are interleaved and
    # positions overlap, so any mixing would pull track 3's odd point towards class 2.
    labels = np.array([2, 0, 2, 0, 2, 1, 2, 0, 2, 0])
    tracks = np.array([7, 3, 7, 3, 7, 3, 7, 3, 7, 3])
    positions = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    smoothed = smooth_tracks(confident(labels), tracks, positions, method)
    assert smoothed[tracks == 7].tolist() == [2] * 5
    assert smoothed[tracks == 3].tolist() == [0] * 5


@pytest.mark.parametrize("method", METHODS)
def test_a_crossing_point_gets_one_answer_for_both_tracks(method):
    # Track A runs through class 1; track B runs from class 2 into class 1 at the crossing.
    # The model is unsure at the crossing point (shared point id 99).
    rows_a = [1, 1, 1, 1, 1, 1, 1]
    rows_b = [2, 2, 2, 1, 1, 1, 1]
    probabilities = np.vstack([confident(np.array(rows_a)), confident(np.array(rows_b))])
    probabilities[3] = probabilities[10] = [0.1, 0.45, 0.45]
    tracks = np.array([0] * 7 + [1] * 7)
    positions = np.r_[np.arange(7), np.arange(7)]
    points = np.r_[np.arange(7), np.arange(10, 13), 99, np.arange(14, 17)]
    points[3] = 99
    smoothed = smooth_tracks(probabilities, tracks, positions, method, point_ids=points)
    assert smoothed[3] == smoothed[10] == 1


def simulated_probabilities(labels, accuracy, seed, classes=6):
    """A classifier that is right with probability `accuracy`, with independent errors."""
    rng = np.random.default_rng(seed)
    probabilities = 0.5 * rng.dirichlet(np.full(classes, 0.5), len(labels))
    right = rng.random(len(labels)) < accuracy
    guess = np.where(right, labels, (labels + rng.integers(1, classes, len(labels))) % classes)
    probabilities[np.arange(len(labels)), guess] += 0.5
    return probabilities


@pytest.mark.parametrize("method", METHODS)
def test_default_smoothing_never_lowers_accuracy_on_the_synthetic_tracks(method):
    rows = open_source("synthetic_tracks").rows
    labels = rows["label"]
    for accuracy in (0.5, 0.7, 0.9, 0.97):
        for seed in range(3):
            probabilities = simulated_probabilities(labels, accuracy, seed)
            before = np.mean(probabilities.argmax(axis=1) == labels)
            after = np.mean(smooth_tracks(probabilities, rows["track_id"], rows["position"], method,
                                          point_ids=rows["point"]) == labels)
            assert after >= before, (accuracy, seed, before, after)


def test_transitions_estimated_from_tracks_favour_staying():
    rows = open_source("synthetic_tracks").rows
    matrix = estimate_transitions(rows["label"], rows["track_id"], rows["position"], 6)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    assert (np.diag(matrix) > 0.5).all()


def test_synthetic_tracks_are_deterministic_and_cross(tmp_path):
    first, second = open_source("synthetic_tracks"), open_source("synthetic_tracks")
    for key in ("label", "track_id", "position", "point"):
        np.testing.assert_array_equal(first.rows[key], second.rows[key])
    shared = pd.DataFrame({"point": first.rows["point"], "track": first.rows["track_id"]})
    assert (shared.groupby("point")["track"].nunique() > 1).sum() > 10  # tracks cross one another


def test_tracks_suite_reports_accuracy_before_and_after_smoothing(tmp_path):
    from zoo.harness.runner import run_suite
    from zoo.harness.suite import load_suite
    from zoo.report import write_report

    suite = load_suite({"name": "tracks-test", "datasets": ["synthetic_tracks"], "heads": ["linear"],
                        "train": {"image_size": 32, "epochs": 2, "batchnorm_momentum": 0.9},
                        "postprocess": {"method": "hmm", "transitions": "estimate"}})
    assert run_suite(suite, tmp_path / "out", executor="in-process", report=False, log=lambda *_: None) == 0
    row = pd.read_csv(tmp_path / "out" / "results.csv").iloc[0]
    assert 0 < row["accuracy"] <= 1 and 0 < row["accuracy_smoothed"] <= 1
    run_dir = tmp_path / "out" / "runs" / row["run_id"]
    predictions = np.load(run_dir / "predictions.npz")
    assert np.mean(predictions["y_pred_smoothed"] == predictions["y_true"]) == pytest.approx(row["accuracy_smoothed"])
    split = pd.read_json(run_dir / "split.json", typ="series")
    assert split["sizes"]["test"] > 0
    text = write_report(tmp_path / "out", formats=("md",), report_dir=tmp_path / "report")[0].read_text()
    assert "accuracy after smoothing along tracks" in text and "recall after smoothing" in text
    assert f"{row['accuracy_smoothed']:.4f}" in text


def test_postprocess_needs_a_dataset_with_tracks():
    from zoo.errors import ConfigError
    from zoo.harness.suite import expand_suite, load_suite

    with pytest.raises(ConfigError, match="has none; use synthetic_tracks"):
        expand_suite(load_suite({"name": "x", "datasets": ["synthetic_terrain"], "postprocess": {"method": "hmm"}}))
    with pytest.raises(ConfigError, match="postprocess.window must be an odd"):
        load_suite({"name": "x", "datasets": ["synthetic_tracks"], "postprocess": {"method": "window", "window": 4}})


def write_track_manifest(root, tracks=12, points=10, seed=0):
    """Tiles of three colours along tracks, as PNG files listed in a manifest CSV; one tile is
    16-bit and one grey, and the manifest also lists a missing tile and a broken one."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "tiles").mkdir(parents=True)
    colours = np.array([(200, 60, 60), (60, 200, 60), (60, 60, 200)])
    rows = []
    for track in range(tracks):
        label = int(rng.integers(3))
        for position in range(points):
            if rng.random() < 0.2:
                label = int(rng.integers(3))
            name = f"tiles/t{track}_{position}.png"
            pixels = (rng.normal(0, 25, (24, 24, 3)) + colours[label]).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name)
            rows.append((name, ["sand", "mud", "grass"][label], f"trip{track}", position))
    eight_bit = np.asarray(Image.open(root / "tiles/t0_0.png"))
    Image.fromarray(eight_bit[..., 0].astype(np.uint16) * 257).save(root / "tiles/deep.png")  # 16-bit grey
    rows.append(("tiles/deep.png", rows[0][1], "trip0", 10))
    rows += [("tiles/missing.png", "mud", "trip1", 10), ("tiles/broken.png", "mud", "trip2", 10)]
    (root / "tiles/broken.png").write_bytes(b"\x89PNG not really")
    pd.DataFrame(rows, columns=["path", "label", "track_id", "position"]).to_csv(root / "tracks.csv", index=False)
    return root / "tracks.csv"


def test_a_suite_trains_and_smooths_along_the_tracks_of_a_manifest(tmp_path):
    """`source: tracks` with a manifest CSV, as the README documents: the suite runs, its test
    predictions are smoothed, unreadable and missing tiles are skipped and named, a 16-bit grey
    tile is read on the dataset's scale, and every prediction is named by its tile and track point."""
    from zoo.harness.runner import run_suite
    from zoo.harness.suite import load_suite

    manifest = write_track_manifest(tmp_path / "trips")
    entry = {"name": "trips", "source": "tracks", "path": str(manifest), "split": {"val": 0.2, "test": 0.3}}
    source = open_source(entry)
    assert source.info.task == "classification" and source.info.class_names == ["grass", "mud", "sand"]
    assert {Path(s["path"]).name: s["reason"].split(":")[0] for s in source.info.skipped} == {
        "missing.png": "listed in the manifest but not found", "broken.png": "unreadable"}
    ids = source.example_ids("train")
    deep, twin = ids.index("tiles/deep.png@trip0:10"), ids.index("tiles/t0_0.png@trip0:0")
    arrays = source.example_arrays("train")
    assert arrays[deep][0].shape == (24, 24, 3)
    np.testing.assert_allclose(arrays[deep][0][..., 0], arrays[twin][0][..., 0], atol=0.01)

    suite = load_suite({"name": "trips-test", "datasets": [entry], "heads": ["linear"],
                        "train": {"image_size": 24, "batch_size": 16, "epochs": 2},
                        "postprocess": {"method": "hmm", "transitions": "estimate"}})
    assert run_suite(suite, tmp_path / "out", executor="in-process", report=False, log=lambda *_: None) == 0
    row = pd.read_csv(tmp_path / "out" / "results.csv").iloc[0]
    assert row["status"] == "ok" and 0 < row["accuracy_smoothed"] <= 1
    predictions = np.load(tmp_path / "out" / "runs" / row["run_id"] / "predictions.npz")
    assert len(set(predictions["example_ids"])) == len(predictions["y_true"]) > 0
    # Whole tracks go to one side of the carved splits.
    from zoo.data.splits import plan_for_source

    plan = plan_for_source(source, entry["split"], seed=0)
    tracks = {name: set(source.tracks(*plan[name])["track_id"]) for name in ("train", "val", "test")}
    assert not (tracks["train"] & tracks["test"]) and not (tracks["train"] & tracks["val"])
    assert {name.split("@")[1].split(":")[0] for name in predictions["example_ids"]} == tracks["test"]


def test_a_manifest_of_path_and_label_alone_is_a_list_of_independent_images(tmp_path):
    """Kaggle's labels.csv or a labelling tool's export lists images and labels, no tracks: such a manifest is
    a dataset of independent images, carved stratified (not by track), each named by its path. It was refused
    for lacking track_id and position. Track smoothing on it is refused before any run; a manifest with one of
    the track columns only is refused naming the other."""
    from zoo.data.splits import plan_for_source
    from zoo.errors import DataError
    from zoo.harness.preflight import check_readiness
    from zoo.harness.suite import expand_suite, load_suite

    manifest = write_track_manifest(tmp_path / "trips")
    table = pd.read_csv(manifest)
    table[["path", "label"]].to_csv(tmp_path / "trips" / "labels.csv", index=False)
    entry = {"name": "labels", "path": str(tmp_path / "trips" / "labels.csv")}
    source = open_source(entry)
    assert source.info.splits == {"train": len(table) - 2} and source.groups("train") is None
    assert source.tracks("train") is None and source.example_ids("train")[:2] == ["tiles/t0_0.png", "tiles/t0_1.png"]
    labels = source.labels("train")
    plan = plan_for_source(source, {"val": 0.2, "test": 0.2}, seed=0)
    for name in ("train", "test"):  # stratified: each class keeps its share on both sides
        share = np.bincount(labels[plan[name][1]], minlength=3) / len(plan[name][1])
        np.testing.assert_allclose(share, np.bincount(labels, minlength=3) / len(labels), atol=0.08)
    runs = expand_suite(load_suite({"name": "x", "datasets": [{**entry, "source": "tracks"}],
                                    "postprocess": {"method": "hmm"}}))
    _, problems = check_readiness(runs, cache_dir=tmp_path / "cache")
    assert [p.message for p in problems] == ["postprocess smooths predictions along tracks, but its manifest has no "
                                             "track_id and position columns"]
    table[["path", "label", "track_id"]].to_csv(tmp_path / "trips" / "half.csv", index=False)
    with pytest.raises(DataError, match="column track_id without position: tiles along tracks need both"):
        open_source({"name": "half", "path": str(tmp_path / "trips" / "half.csv")})


def test_a_changed_manifest_is_other_content_for_the_caches(tmp_path):
    manifest = write_track_manifest(tmp_path / "trips")
    entry = {"name": "trips", "source": "tracks", "path": str(manifest)}
    before = open_source(entry).content_id("train")
    table = pd.read_csv(manifest)
    table.loc[0, "label"] = "grass" if table.loc[0, "label"] != "grass" else "mud"
    table.to_csv(manifest, index=False)
    assert open_source(entry).content_id("train") != before
    # A tile edited in place to the same byte size: a run's record of its data (the signature) tells it apart.
    signature = open_source(entry).signature("train")
    tile = manifest.parent / table.loc[3, "path"]
    edited = bytearray(tile.read_bytes())
    replacement = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(replacement, format="PNG")
    tile.write_bytes(replacement.getvalue().ljust(len(edited), b"\0"))  # bytes after a PNG's end are not read
    assert len(tile.read_bytes()) == len(edited)
    assert signature.split(":")[1].startswith("c") and open_source(entry).signature("train") != signature
