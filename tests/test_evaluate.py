"""``zoo evaluate``: a finished run scored on a folder it never saw, by the run's own input path and scoring."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.cli import main
from zoo.errors import DataError
from zoo.harness.evaluate import evaluate_folder
from zoo.harness.runner import run_suite
from zoo.harness.suite import load_suite

COLOURS = {"beagle": (200, 60, 60), "collie": (60, 200, 60), "pug": (60, 60, 200)}


def photos(folder: Path, per_class: int, seed: int, classes=COLOURS) -> Path:
    rng = np.random.default_rng(seed)
    for name in classes:
        (folder / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.clip(rng.normal(COLOURS[name], 90, (20 + index % 5, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{index}.png")
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A study of two classifiers of one folder of photos, and a segmentation run of the land cover."""
    root = tmp_path_factory.mktemp("evaluate")
    train = {"image_size": 16, "batch_size": 8, "epochs": 2}
    suite = load_suite({"name": "shelter", "train": train, "heads": ["linear", "mlp"],
                        "datasets": [{"name": "shelter_a", "path": str(photos(root / "shelter_a", 24, 0))}]})
    assert run_suite(suite, root / "out", executor="in-process", report=False, log=lambda *_: None) == 0
    segmentation = load_suite({"name": "tiles", "datasets": ["synthetic_landcover"], "heads": ["fcn"],
                               "train": {**train, "epochs": 1}})
    assert run_suite(segmentation, root / "tiles", executor="in-process", report=False, log=lambda *_: None) == 0
    return root


def run_folder(out: Path, head: str) -> Path:
    return next(p for p in (out / "runs").iterdir() if f"-{head}-" in p.name)


def test_a_folder_of_the_runs_own_test_images_scores_as_its_test_split(study, tmp_path):
    run = run_folder(study / "out", "linear")
    recorded = json.loads((run / "metrics.json").read_text())
    test_files = [line for line in np.load(run / "predictions.npz")["example_ids"].astype(str)]
    for relative in test_files:  # class/file.png below the training folder
        (tmp_path / "again" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(study / "shelter_a" / relative, tmp_path / "again" / relative)
    result = evaluate_folder(run, tmp_path / "again")
    assert result["images"] == len(test_files) == recorded["test_examples"]
    for metric in ("accuracy", "macro_f1", "macro_precision", "macro_recall"):
        assert result[metric] == pytest.approx(recorded[metric], abs=1e-12), metric
    assert [row["support"] for row in result["per_class"]] == [row["support"] for row in recorded["per_class"]]


def test_a_folder_of_some_of_the_classes_is_scored_by_class_name(study, tmp_path, capsys):
    """Another shelter's photos of two of the three breeds: labels follow the model's class names, not the
    folder's own order (collie would be class 0 of a folder of collie and pug)."""
    from zoo.predict import predict_images

    run = run_folder(study / "out", "linear")
    other = photos(tmp_path / "shelter_b", 10, 7, classes=["collie", "pug"])
    result = evaluate_folder(run, other)
    files = sorted(other.rglob("*.png"))
    answers = predict_images(run, files, top_k=1)
    right = [answer["top"][0][0] == path.parent.name for answer, path in zip(answers, files)]
    assert result["images"] == 20 and result["accuracy"] == pytest.approx(np.mean(right), abs=1e-12)
    by_class = {row["class"]: row for row in result["per_class"]}
    assert by_class["collie"]["support"] == by_class["pug"]["support"] == 10 and by_class["beagle"]["support"] == 0
    assert result["accuracy_ci_low"] <= result["accuracy"] <= result["accuracy_ci_high"]
    assert main(["evaluate", str(run), str(other)]) == 0  # one model: its classes' figures as well
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(f"{run.name} (baseline_cnn/linear): accuracy {result['accuracy']:.4f} [")
    assert [line.split()[:2] for line in lines[3:]] == [["collie", "10"], ["pug", "10"]]  # the folder's classes


def test_a_class_the_model_does_not_know_is_refused_by_name(study, tmp_path):
    run = run_folder(study / "out", "linear")
    photos(tmp_path / "shelter_c", 4, 3, classes=["pug", "beagle"])
    (tmp_path / "shelter_c" / "beagle").rename(tmp_path / "shelter_c" / "Beagles")
    with pytest.raises(DataError, match=r"class folder\(s\) Beagles \(the model's beagle\?\) are not classes of the "
                                        r"model, which knows 3: beagle, collie, pug"):
        evaluate_folder(run, tmp_path / "shelter_c")


def test_a_segmentation_run_scores_tiles_of_its_own_layout(study, tmp_path):
    """The land-cover tiles of the run's test split, written out as a folder of images/ and masks/: the same
    mIoU, pixel accuracy and KL score as the run recorded."""
    from zoo.data import open_source

    run = run_folder(study / "tiles", "fcn")
    recorded = json.loads((run / "metrics.json").read_text())
    test = np.load(run / "split_indices.npz")["test"]
    source = open_source("synthetic_landcover")
    (tmp_path / "tiles" / "images").mkdir(parents=True)
    (tmp_path / "tiles" / "masks").mkdir()
    import tifffile

    arrays = source.example_arrays("train", test)
    for position in range(len(test)):
        image, mask = arrays[position]
        tifffile.imwrite(tmp_path / "tiles" / "images" / f"{position}.tif", np.asarray(image).astype(np.uint16))
        tifffile.imwrite(tmp_path / "tiles" / "masks" / f"{position}.tif", np.asarray(mask).astype(np.uint8))
    result = evaluate_folder(run, tmp_path / "tiles")
    assert result["images"] == recorded["test_examples"]
    for metric in ("miou", "pixel_accuracy", "kl_score"):
        assert result[metric] == pytest.approx(recorded[metric], abs=1e-9), metric


def test_a_study_is_ranked_on_the_folder_and_a_run_that_cannot_take_it_is_named(study, tmp_path, capsys):
    other = photos(tmp_path / "shelter_b", 6, 11)
    assert main(["evaluate", str(study / "out"), str(other)]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("shelter_a-")]
    assert len(lines) == 2 and all("accuracy " in line and "[" in line for line in lines)
    scores = [float(line.split("accuracy ")[1].split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True)  # best first
    assert f"{other}: 18 images" in text
    # A land-cover model cannot take photos of dogs: its row says why, and the command fails.
    assert main(["evaluate", str(run_folder(study / "tiles", "fcn")), str(other)]) == 2
    assert "holds classification data, but the run was trained for segmentation" in capsys.readouterr().err
