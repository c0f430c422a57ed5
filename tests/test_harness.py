"""The harness end to end on the embedded data: runs, results store, resume, failures, CLI."""
import io
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zoo.cli import main
from zoo.errors import ConfigError
from zoo.harness.runner import run_suite
from zoo.harness.suite import expand_suite, load_suite
from zoo.results import RESULT_COLUMNS

HERE = Path(__file__).parent
TINY = {"name": "tiny", "datasets": ["synthetic_terrain", "synthetic_landcover"], "backbones": ["baseline_cnn"],
        "heads": ["linear", "fcn", "distribution"],
        "train": {"image_size": 32, "batch_size": 32, "epochs": 2, "steps_per_epoch": 6}}


TINY_WARNINGS = []


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory):
    import warnings

    out = tmp_path_factory.mktemp("tiny")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_suite(load_suite(TINY), out, executor="in-process", report=False, log=lambda *_: None) == 0
    TINY_WARNINGS.extend(str(w.message) for w in caught)
    return out


def test_every_capped_epoch_trains_its_steps(tiny_out):
    """train.steps_per_epoch 6 over 2 epochs where the land-cover split has 7 batches: Keras stops an epoch
    whose finite input runs out ("ran out of data"), so the capped fit reads endless batches."""
    assert not [w for w in TINY_WARNINGS if "ran out of data" in w]


def test_results_table_has_one_documented_row_per_run(tiny_out):
    frame = pd.read_csv(tiny_out / "results.csv")
    assert list(frame.columns) == list(RESULT_COLUMNS)
    assert len(frame) == 3 and set(frame["status"]) == {"ok"}
    assert set(frame["task"]) == {"classification", "segmentation", "distribution"}
    assert frame["device"].str.startswith("CPU").all() and set(frame["precision"]) == {"float32"}
    for column in ("train_seconds", "first_epoch_seconds", "epoch_seconds", "images_per_second", "latency_ms",
                   "params", "model_megabytes"):
        assert (frame[column] > 0).all(), column
    classification = frame[frame["task"] == "classification"].iloc[0]
    assert np.isnan(classification["miou"]) and classification["accuracy"] > 0
    assert not np.isnan(frame[frame["task"] == "segmentation"].iloc[0]["miou"])


def test_a_runs_whole_time_is_recorded_and_every_second_of_it_has_its_stage(tiny_out):
    """results.csv's run_seconds is what a run cost, not only its epochs; metrics.json's stage_seconds says
    where it went (on a GPU: how much of a short run is building, scoring, measuring and saving)."""
    frame = pd.read_csv(tiny_out / "results.csv")
    for _, row in frame.iterrows():
        stages = json.loads((tiny_out / "runs" / row["run_id"] / "metrics.json").read_text())["stage_seconds"]
        assert list(stages) == ["start", "data", "build", "train", "evaluate", "speed", "save"], row["run_id"]
        assert all(seconds >= 0 for seconds in stages.values()) and stages["train"] >= row["train_seconds"]
        assert sum(stages.values()) <= row["run_seconds"] <= sum(stages.values()) + 1.0, (row["run_seconds"], stages)


def test_run_folder_holds_everything_a_report_needs(tiny_out):
    frame = pd.read_csv(tiny_out / "results.csv")
    for _, row in frame.iterrows():
        run_dir = tiny_out / "runs" / row["run_id"]
        for name in ("run.json", "environment.json", "history.csv", "metrics.json", "predictions.npz",
                     "model.keras", "split.json", "dataset.json", "result.json"):
            assert (run_dir / name).is_file(), (row["run_id"], name)
        # TensorBoard: the training and validation curves, one point per epoch.
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        epochs = len(pd.read_csv(run_dir / "history.csv"))
        for side in ("train", "validation"):
            curves = EventAccumulator(str(run_dir / "tensorboard" / side)).Reload()
            assert len(curves.Tensors("epoch_loss")) == epochs, (row["run_id"], side)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        environment = json.loads((run_dir / "environment.json").read_text())
        assert environment["tensorflow"] and environment["device"] == row["device"]
        predictions = np.load(run_dir / "predictions.npz")
        assert {"y_true", "y_pred"} <= set(predictions.files)
        if row["task"] == "classification":
            assert metrics["accuracy"] == pytest.approx(row["accuracy"])
            assert predictions["probabilities"].shape == (len(predictions["y_true"]), 6)
            assert metrics["accuracy"] == pytest.approx(np.mean(predictions["y_true"] == predictions["y_pred"]))
            assert len(metrics["per_class"]) == 6 and "proportion" in metrics["per_class"][0]
        if row["task"] == "segmentation":
            assert metrics["miou"] == pytest.approx(row["miou"]) and "no_data" not in metrics["class_names"]


def test_rerun_skips_finished_runs_and_force_redoes_them(tiny_out):
    before = pd.read_csv(tiny_out / "results.csv")
    messages = []
    suite = load_suite(TINY)
    assert run_suite(suite, tiny_out, executor="in-process", report=False, log=messages.append) == 0
    assert "3 already finished, 0 to run" in messages[0]
    pd.testing.assert_frame_equal(before, pd.read_csv(tiny_out / "results.csv"))
    only = "*linear*"
    linear = next(p for p in (tiny_out / "runs").iterdir() if "linear" in p.name)
    (linear / "stale-marker").write_text("left by the first run")
    assert run_suite(suite, tiny_out, only=only, force=True, executor="in-process", report=False, log=messages.append) == 0
    assert any("0 already finished, 1 to run" in m for m in messages)
    after = pd.read_csv(tiny_out / "results.csv")
    assert len(after) == 3
    redone = after["run_id"].str.contains("linear")
    # Trained again: a new folder in place of the old one, finished later; the others untouched.
    assert not (linear / "stale-marker").exists()
    assert (after[redone]["finished_at"].values > before[redone]["finished_at"].values).all()
    assert (after[~redone]["finished_at"].values == before[~redone]["finished_at"].values).all()
    # Same suite, same seed, on a CPU: the same metrics.
    assert after[redone]["accuracy"].iloc[0] == before[redone]["accuracy"].iloc[0]
    assert after[redone]["macro_f1"].iloc[0] == before[redone]["macro_f1"].iloc[0]


def test_predict_prints_top_classes(tiny_out, tmp_path, capsys):
    from PIL import Image

    from zoo.data.synthetic import TERRAIN_CLASSES, make_synthetic_terrain

    images, labels = make_synthetic_terrain(6, 64, seed=5)
    Image.fromarray(images[0]).save(tmp_path / "tile.png")
    run_dir = next((tiny_out / "runs").glob("synthetic_terrain-*"))
    assert main(["predict", str(run_dir), str(tmp_path / "tile.png"), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("tile.png") and len(lines) == 4
    assert all(line.split()[-1] in TERRAIN_CLASSES for line in lines[1:])


def test_predict_on_a_suite_folder_lists_its_runs_best_first(tiny_out, tmp_path, capsys):
    """`zoo predict runs/SUITE photo.jpg`: the answer is the runs to choose from, not 'no model.keras'."""
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "tile.png")
    assert main(["predict", str(tiny_out), str(tmp_path / "tile.png")]) == 2
    error = capsys.readouterr().err
    assert f"{tiny_out} is a suite's output folder; give the folder of one of its runs" in error
    frame = pd.read_csv(tiny_out / "results.csv")
    listed = re.findall(r"^  (\S+)  \((\S+): (\S+) ([0-9.]+)\)$", error, flags=re.M)
    assert {run for run, *_ in listed} == {str(tiny_out / "runs" / run) for run in frame["run_id"]}
    land = [(metric, float(value)) for _, dataset, metric, value in listed if dataset == "synthetic_landcover"]
    # fcn and distribution heads on one dataset: ranked by the KL score, the lowest (best) first
    assert [metric for metric, _ in land] == ["kl_score"] * 2 and land[0][1] <= land[1][1]


@pytest.mark.parametrize("change, message", [
    ({"trian": {}}, "unknown key 'trian' (did you mean 'train'?)"),
    ({"train": {"epochs": 0}}, "train.epochs must be a positive whole number"),
    ({"train": {"optimizer": "adagrad"}}, "use one of adam, adamw, sgd, rmsprop, nadam"),
    ({"backbones": ["resnt50"]}, "Did you mean resnet50"),
    ({"backbones": ["unet"], "heads": ["fpn"], "datasets": ["synthetic_landcover"]}, "Heads that fit unet"),
    ({"heads": ["unet"], "datasets": ["synthetic_terrain"]}, "heads for classification: linear, mlp, flatten"),
    ({"trainable": "top"}, "top:N"),
    ({"weights": "/no/such/file.h5"}, "neither none, imagenet nor an existing weights file"),
    ({"datasets": ["eurosat_rbg"]}, "Did you mean eurosat_rgb"),
    # A dataset entry's misspelt key is refused, not ignored (the classes would silently be class_0...).
    ({"datasets": [{"name": "tiles", "source": "folder", "path": ".", "classes": ["water", "field"]}]},
     "dataset 'tiles': unknown key 'classes' (did you mean 'class_names'?)"),
    ({"datasets": [{"name": "synthetic_terrain", "splt": {"val": 0.1}}]},
     "dataset 'synthetic_terrain': unknown key 'splt' (did you mean 'split'?)"),
    ({"datasets": [{"name": "trips", "source": "track", "path": "t.csv"}]},
     "or `source: tracks` (a track manifest CSV)"),
    ({"datasets": [{"name": "my_tiles"}]}, "For your own images give `path:` (a folder, or a track manifest CSV)"),
    ({"datasets": [{"name": "tiles", "source": "folder", "path": ".", "max_pixel_value": "abc"}]},
     "dataset 'tiles': max_pixel_value must be a number above 0"),
    ({"datasets": [{"name": "tiles", "source": "folder", "path": ".", "class_names": ["water", "field", "water"]}]},
     "dataset 'tiles': class_names lists 'water' more than once; each class needs a name of its own"),
    ({"datasets": [{"name": "tiles", "source": "folder", "path": ".", "split": 0.2}]},
     "dataset 'tiles': split must be a mapping such as {val: 0.15, test: 0.15}"),
    # A split no run can use is refused with the suite, not by each run at its start.
    ({"datasets": [{"name": "synthetic_terrain", "split": {"val": 0}}]},
     "dataset 'synthetic_terrain': split.val must be a fraction between 0 and 1, got 0: a run needs validation"),
    ({"train": {**TINY["train"], "split": {"test": 1.5}}}, "train.split.test must be a fraction between 0 and 1"),
    ({"train": {**TINY["train"], "split": {"tset": 0.2}}}, "train.split: unknown key(s) ['tset']"),
    ({"train": {**TINY["train"], "steps_per_epoch": -1}}, "train.steps_per_epoch caps each epoch's batches"),
    ({"train": {**TINY["train"], "augment": "false"}}, "train.augment must be true or false, got 'false'"),
    ({"train": {**TINY["train"], "early_stopping": True}}, "train.early_stopping is a patience in epochs"),
    ({"finetune": {"epochs": 0}}, "finetune.epochs must be a positive whole number, got 0"),
    ({"seeds": [0, 1, 1]}, "the suite lists run synthetic_terrain-baseline_cnn-linear-s1"),
    ({"backbones": []}, "the suite makes no run: backbones names nothing"),
    ({"train": {**TINY["train"], "learning_rate": []}}, "the suite makes no run: train.learning_rate names nothing"),
    ({"datasets": ["synthetic_terrain", {"name": "synthetic_terrain", "split": {"val": 0.3}}]},
     "datasets: synthetic_terrain listed more than once; a folder given twice with other settings needs another"),
    ({"train": {**TINY["train"], "learning_rate": [0.01, 0.01]}}, "a value repeated in seeds, datasets, split_seed"),
    ({"finetune": {"learning_rate": "fast"}}, "finetune.learning_rate must be a positive number"),
    # Backbone options the builder does not take fail here, not in every run's builder.
    ({"backbones": ["unet"], "heads": ["fcn"], "datasets": ["synthetic_landcover"], "backbone_options": {"dept": 2}},
     "backbone_options for unet: unknown key 'dept' (did you mean 'depth'?)"),
    ({"backbones": ["baseline_cnn", "mobilenet_v2"], "backbone_options": {"filters": [8, 8, 8, 8]}},
     "for mobilenet_v2, which takes none; to give options to one backbone of the suite use overrides"),
    ({"backbones": ["dinov2_small"], "backbone_options": {"pool": "max"}},
     "backbone_options.pool for dinov2_small must be one of cls, mean; got 'max'"),
    # The focal loss is for labels: a distribution head's proportions would be trained with KL regardless.
    ({"train": {**TINY["train"], "loss": "focal"}},
     "loss 'focal' does not train the distribution head (distribution: auto, crossentropy)"),
    ({"train": {**TINY["train"], "class_weights": True}},
     "class_weights would change nothing for the distribution head"),
])
def test_bad_suite_fails_before_training_naming_the_key(change, message):
    with pytest.raises(ConfigError) as error:
        expand_suite(load_suite({**TINY, **change}))
    assert message in str(error.value)


def test_an_output_folder_of_another_suite_is_refused_before_anything_is_written(tiny_out, tmp_path):
    """results.csv and the report index the suite in OUT/suite.yaml: running another suite into the folder dropped
    the first suite's runs from both (their folders kept, unseen)."""
    out = tmp_path / "study"
    shutil.copytree(tiny_out, out)
    before = (out / "results.csv").read_text()
    other = load_suite({**TINY, "name": "other", "datasets": ["synthetic_terrain"], "heads": ["linear"]})
    with pytest.raises(ConfigError, match="holds suite 'tiny' .* Give --out another folder"):
        run_suite(other, out, executor="in-process", report=False, log=lambda *_: None)
    assert (out / "results.csv").read_text() == before and "name: tiny" in (out / "suite.yaml").read_text()


def test_numbers_written_with_an_exponent_are_numbers_in_a_suite_file_and_in_set(tmp_path):
    """PyYAML (YAML 1.1) reads `learning_rate: 1e-3` as a string, and the suite was refused as "not a number";
    the way most people write a learning rate works in a suite file, in `finetune:` and in `--set`."""
    path = tmp_path / "rates.yaml"
    path.write_text("name: rates\ndatasets: [synthetic_terrain]\nbackbones: [baseline_cnn]\nheads: [linear]\n"
                    "train: {image_size: 32, learning_rate: 1e-3}\nfinetune: {learning_rate: 1E-5}\n")
    (run,) = expand_suite(load_suite(path))
    assert run.train.learning_rate == 0.001 and run.finetune["learning_rate"] == 1e-5
    (run,) = expand_suite(load_suite(path, ["train.learning_rate=2e-4"]))
    assert run.train.learning_rate == 0.0002


@pytest.mark.parametrize("folder", ["dog photos", "tiles"])
def test_a_folder_given_as_the_suite_is_answered_with_a_suite_that_runs_it(tmp_path, monkeypatch, folder):
    """`zoo run my_photos/` is what a newcomer types first: the answer is a suite file that works as written."""
    import yaml

    from tests.test_data import make_classification_folder

    monkeypatch.chdir(tmp_path)
    make_classification_folder(tmp_path / folder)
    with pytest.raises(ConfigError, match=f"{folder} is a folder, not a suite file") as error:
        load_suite(folder)
    message = str(error.value)
    suggested = message.split(".yaml:\n", 1)[1].split("\nthen:", 1)[0]
    runs = expand_suite(load_suite(yaml.safe_load(suggested)))
    assert {run.backbone for run in runs} == {"baseline_cnn", "mobilenet_v3_small"}
    assert {run.dataset["path"] for run in runs} == {folder}


def test_run_ids_never_begin_like_an_option_or_a_hidden_folder():
    """A dataset named in other letters only (柴犬) gave ids beginning with "-": `--only -baseline...` and
    `zoo predict` took them for options."""
    from zoo.harness.suite import make_run_id

    ids = {name: make_run_id(name, "baseline_cnn", "linear", 0, {}, {"dataset": name})
           for name in ("柴犬", "犬 photos", ".hidden", "eurosat_rgb")}
    assert ids["柴犬"].startswith("dataset-baseline_cnn-linear-s0-")
    assert ids["犬 photos"].startswith("photos-") and ids[".hidden"].startswith("hidden-")
    assert ids["eurosat_rgb"].startswith("eurosat_rgb-baseline_cnn-linear-s0-")  # ASCII names keep their ids
    assert len(set(ids.values())) == 4


def test_sweeps_and_overrides_expand_into_distinct_runs():
    suite = load_suite({**TINY, "heads": ["linear"], "datasets": ["synthetic_terrain"],
                        "train": {"optimizer": ["adam", "sgd"], "learning_rate": [0.01, 0.001]}},
                       overrides=["seeds=[0, 1]", "train.epochs=1"])
    runs = expand_suite(suite)
    assert len(runs) == 8 and len({r.run_id for r in runs}) == 8
    assert all(r.train.epochs == 1 for r in runs)
    assert {r.swept["optimizer"] for r in runs} == {"adam", "sgd"}
    assert [r.run_id for r in expand_suite(suite)] == [r.run_id for r in runs]  # stable ids


def zoo_command(*args):
    return [sys.executable, "-m", "zoo.cli", *args]


def test_failing_runs_are_recorded_and_the_suite_goes_on(tmp_path):
    suite = tmp_path / "faults.yaml"
    suite.write_text(json.dumps({
        "name": "faults", "datasets": ["synthetic_terrain"], "heads": ["linear"],
        "backbones": ["crash_backbone", "baseline_cnn", "nan_backbone"], "plugins": [str(HERE / "plugin_faults.py")],
        "train": {"image_size": 32, "epochs": 1, "steps_per_epoch": 3}}))
    out = tmp_path / "out"
    result = subprocess.run(zoo_command("run", str(suite), "--out", str(out), "--no-report"),
                            capture_output=True, text=True)
    assert result.returncode == 1, result.stderr[-2000:]
    frame = pd.read_csv(out / "results.csv").set_index("backbone")
    assert frame.loc["baseline_cnn", "status"] == "ok"
    assert frame.loc["crash_backbone", "status"] == "failed"
    assert "killed by SIGKILL" in frame.loc["crash_backbone", "error"]
    assert "NaN" in frame.loc["nan_backbone", "error"]
    assert frame.loc["nan_backbone", "run_seconds"] > 0  # a failed run's time until it failed, for the ETA
    assert "2 of 3 runs failed" in result.stdout


def test_killed_suite_resumes_to_exactly_one_row_per_run(tmp_path):
    suite = tmp_path / "resume.yaml"
    suite.write_text(json.dumps({"name": "resume", "datasets": ["synthetic_terrain"], "heads": ["linear", "mlp"],
                                 "train": {"image_size": 32, "epochs": 1, "steps_per_epoch": 3}}))
    out = tmp_path / "out"
    process = subprocess.Popen(zoo_command("run", str(suite), "--out", str(out), "--no-report"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "runs").glob(".*.partial/history.csv")):
        time.sleep(0.2)  # wait until a run is mid-training
    training = list((out / "runs").glob(".*.partial/history.csv"))
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert training, "the suite was not killed in the middle of a run's training"
    assert training[0].parent.exists()  # the interrupted run's folder is left half-made, as a crash leaves it
    if (out / "results.csv").exists():
        assert pd.read_csv(out / "results.csv")["status"].eq("ok").all()  # never a half-written table
    result = subprocess.run(zoo_command("run", str(suite), "--out", str(out), "--no-report"), capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "to run" in result.stdout and ", 0 to run" not in result.stdout  # the killed run was run again
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 2 and frame["run_id"].is_unique and set(frame["status"]) == {"ok"}
    assert not list((out / "runs").glob(".*"))


def test_predict_matches_the_runs_own_test_predictions_with_study_preprocessing(tmp_path):
    from PIL import Image

    from zoo.data import DATASETS
    from zoo.data.synthetic import make_synthetic_terrain
    from zoo.predict import predict_images

    suite = load_suite({**TINY, "datasets": ["synthetic_terrain"], "heads": ["linear"],
                        "train": {**TINY["train"], "preprocessing": "equalize", "epochs": 1}})
    assert run_suite(suite, tmp_path / "out", executor="in-process", report=False, log=lambda *_: None) == 0
    run_dir = next((tmp_path / "out" / "runs").iterdir())
    card = DATASETS.get("synthetic_terrain")
    images, _ = make_synthetic_terrain(card["num_examples"], card["image_size"], card["seed"])
    first_test = int(np.load(run_dir / "split_indices.npz")["test"][0])
    Image.fromarray(images[first_test]).save(tmp_path / "tile.png")
    answer = predict_images(run_dir, [tmp_path / "tile.png"], top_k=6)[0]
    recorded = np.load(run_dir / "predictions.npz")["probabilities"][0]
    names = json.loads((run_dir / "dataset.json").read_text())["class_names"]
    for name, probability in answer["top"]:
        assert probability == pytest.approx(recorded[names.index(name)], abs=1e-4)


def test_frozen_backbone_without_pretrained_weights_is_warned_about(tmp_path):
    messages = []
    suite = load_suite({**TINY, "datasets": ["synthetic_terrain"], "heads": ["linear"], "trainable": "frozen",
                        "train": {**TINY["train"], "image_size": 16, "epochs": 1, "steps_per_epoch": 1}})
    assert run_suite(suite, tmp_path / "out", executor="in-process", report=False, log=messages.append) == 0
    warning = next(m for m in messages if m.startswith("warning:"))
    assert "baseline_cnn" in warning and "weights: none" in warning


def test_a_resumed_suite_gives_an_eta_from_its_first_run(tmp_path):
    """A suite resumed after some runs finished (an interrupted `zoo run`, runs added) estimates the rest from
    them at once, instead of "ETA: after the first run"."""
    from zoo.harness.runner import finished_run_seconds

    suite = load_suite({**TINY, "datasets": ["synthetic_terrain"], "heads": ["linear", "mlp"]})
    assert run_suite(suite, tmp_path, only="*-linear-*", executor="in-process", report=False, log=lambda *_: None) == 0
    [finished] = pd.read_csv(tmp_path / "results.csv").to_dict("records")
    run_id = finished["run_id"]
    assert finished_run_seconds(tmp_path / "runs", [run_id]) == {run_id: finished["run_seconds"]}
    messages = []
    assert run_suite(suite, tmp_path, executor="in-process", report=False, log=messages.append) == 0
    started = next(m for m in messages if m.startswith("[1/1]"))
    assert "after the first run" not in started and re.search(r"\(ETA \d+m\d\ds\)", started), started
    # It ends with the time the user waited: the runs', and the whole suite's.
    assert re.fullmatch(r"tiny: 1 run\(s\) in \dm\d\ds; \dm\d\ds in all \(checks, worker start included\)",
                        messages[-1]), messages[-1]


def test_the_eta_follows_the_recorded_plan_scaled_by_how_the_finished_runs_compared_with_it():
    """Runs of one suite differ tenfold in cost: with zoo plan --record's estimates the ETA sums the remaining
    runs' own, scaled by the finished runs' actual/estimated; without them, the finished runs' mean."""
    from zoo.harness.runner import _eta

    planned = {"small": 10.0, "large": 100.0, "larger": 200.0}
    assert _eta({}, ["small", "large", "larger"], 1, planned) == "ETA 5m10s, from zoo plan's estimates"
    eta = _eta({"small": 20.0}, ["large", "larger"], 1, planned)
    assert eta == "ETA 10m00s, from zoo plan's estimates x 2.00, as the finished runs went"
    assert _eta({"small": 20.0}, ["large", "larger"], 2, planned).startswith("ETA 5m00s")
    # A remaining run the plan does not know: the mean of the finished ones, as without a plan.
    assert _eta({"small": 20.0}, ["large", "unplanned"], 1, planned) == "ETA 0m40s"
    assert _eta({}, ["unplanned"], 1, planned) == "ETA: after the first run"


def test_finished_runs_on_a_folder_changed_since_are_named_not_taken_for_todays_images(tmp_path):
    """A user adds photos to the folder and runs the same suite again: every run is finished, yet it saw
    other images. zoo run and zoo plan say so with the command that retrains them; a card's data and an
    unchanged folder say nothing."""
    from PIL import Image

    from zoo.harness.runner import plan_suite

    rng = np.random.default_rng(0)

    def photo(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)

    for label in ("dune", "forest"):
        for index in range(12):
            photo(tmp_path / "photos" / label / f"{index}.png")
    suite = load_suite({"name": "photos", "backbones": ["baseline_cnn"], "heads": ["linear"],
                        "datasets": [{"name": "photos", "source": "folder", "path": str(tmp_path / "photos")},
                                     "synthetic_terrain"],
                        "train": {"image_size": 32, "batch_size": 8, "epochs": 1, "steps_per_epoch": 2}})
    out = tmp_path / "out"
    assert run_suite(suite, out, executor="in-process", report=False, log=lambda *_: None) == 0

    def warnings(force=False):
        lines = []
        run_suite(suite, out, executor="in-process", report=False, log=lines.append, force=force)
        plan_suite(suite, out, log=lines.append, suite_path="photos.yaml")
        return [line for line in lines if line.startswith("warning: dataset")]

    assert warnings() == []
    # Runs recorded by an earlier zoo (the files' sizes hashed, not their contents): an unchanged folder
    # says nothing, a changed one is named as before.
    from zoo.data import open_source

    source = open_source({"name": "photos", "source": "folder", "path": str(tmp_path / "photos")})
    for recorded_file in out.glob("runs/photos-*/dataset.json"):
        recorded = json.loads(recorded_file.read_text())
        assert all(":c" in signature for signature in recorded["signatures"].values())
        recorded["signatures"] = {split: source.signature(split, by_size=True) for split in recorded["signatures"]}
        recorded_file.write_text(json.dumps(recorded))
    assert warnings() == []
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(tmp_path / "photos" / "dune" / "7.png")
    assert "other images, as many" in warnings()[0]  # another size: an earlier zoo's signature tells it too
    for index in (12, 13):
        photo(tmp_path / "photos" / "forest" / f"{index}.png")
    found = warnings()
    assert len(found) == 2 and all("dataset photos: 1 finished run(s) saw other images" in line
                                   and "train 24 -> 26 images" in line for line in found), found
    assert f"`zoo run photos.yaml --out {out} --force --only 'photos-*'`" in found[1]
    # As many images, one moved to the other class: other images all the same.
    (tmp_path / "photos" / "forest" / "12.png").unlink()
    (tmp_path / "photos" / "forest" / "13.png").rename(tmp_path / "photos" / "dune" / "13.png")
    (tmp_path / "photos" / "dune" / "0.png").unlink()
    assert "train 24 -> 24 images" not in warnings()[0] and "other images, as many" in warnings()[0]
    # An image edited in place (its size changes): other images too.
    run_suite(suite, out, only="photos-*", force=True, executor="in-process", report=False, log=lambda *_: None)
    assert warnings() == []
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "photos" / "dune" / "5.png")
    assert "other images, as many" in warnings()[0]
    # Edited in place to exactly the same byte size (an uncompressed TIFF or BMP tile corrected, a PNG
    # re-saved): the file's content is what counts, not its size.
    run_suite(suite, out, only="photos-*", force=True, executor="in-process", report=False, log=lambda *_: None)
    assert warnings() == []
    edited = tmp_path / "photos" / "dune" / "6.png"
    size = edited.stat().st_size
    replacement = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(replacement, format="PNG")
    edited.write_bytes(replacement.getvalue().ljust(size, b"\0"))  # bytes after a PNG's end are not read
    assert edited.stat().st_size == size and np.asarray(Image.open(edited)).max() == 90
    assert "other images, as many" in warnings()[0]
    # Trained again on today's images: nothing to say.
    run_suite(suite, out, only="photos-*", force=True, executor="in-process", report=False, log=lambda *_: None)
    assert warnings() == []


def test_finished_runs_carved_otherwise_than_today_are_named(tmp_path):
    """A folder holding a photo twice: a run finished by an earlier zoo carved the copies apart (its test set
    held an image it trained on); today's carving keeps them on one side. The images are the same, so only the
    recorded split tells: zoo run and zoo plan name such runs with the command that retrains them."""
    import shutil

    from PIL import Image

    from zoo.data import open_source
    from zoo.data.splits import plan_splits
    from zoo.harness.runner import plan_suite

    rng = np.random.default_rng(0)
    for label in ("dune", "forest"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for index in range(12):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "photos" / label / f"{index}.png")
    for index in range(6):
        shutil.copy(tmp_path / "photos" / "dune" / f"{index}.png", tmp_path / "photos" / "dune" / f"{index} (1).png")
    entry = {"name": "photos", "source": "folder", "path": str(tmp_path / "photos")}
    suite = load_suite({"name": "photos", "backbones": ["baseline_cnn"], "heads": ["linear"], "datasets": [entry],
                        "train": {"image_size": 16, "batch_size": 8, "epochs": 1, "steps_per_epoch": 1}})
    out = tmp_path / "out"
    assert run_suite(suite, out, executor="in-process", report=False, log=lambda *_: None) == 0

    def warnings():
        lines = []
        run_suite(suite, out, executor="in-process", report=False, log=lines.append)
        plan_suite(suite, out, log=lines.append, suite_path="photos.yaml")
        return [line for line in lines if line.startswith("warning: dataset")]

    assert warnings() == []
    # What an earlier zoo recorded: the plain stratified carving, which splits some copies apart.
    source = open_source(entry)
    earlier = plan_splits({"train": 30}, None, 0, {"train": source.labels("train")})
    copies = source.copies("train")
    side = {int(i): name for name, (_, indices) in earlier.items() for i in indices}
    assert any(len({side[int(i)] for i in np.flatnonzero(copies == group)}) > 1 for group in range(6))
    run_dir = next((out / "runs").iterdir())
    np.savez_compressed(run_dir / "split_indices.npz", **{name: indices for name, (_, indices) in earlier.items()})
    found = warnings()
    assert len(found) == 2 and all("dataset photos: 1 finished run(s) carved validation and test otherwise than "
                                   "zoo does now" in line for line in found), found
    assert f"`zoo run photos.yaml --out {out} --force --only 'photos-*'`" in found[1]


def test_zoo_run_ends_with_each_dataset_s_recommendation(tmp_path, monkeypatch):
    """The suite's answer where the user is looking: the report's recommendation, per dataset, in the terminal."""
    monkeypatch.chdir(tmp_path)
    suite = load_suite({"name": "answer", "datasets": ["synthetic_terrain"], "backbones": ["baseline_cnn"],
                        "heads": ["linear"], "train": {"image_size": 32, "batch_size": 16, "epochs": 1,
                                                       "steps_per_epoch": 2}})
    lines = []
    assert run_suite(suite, tmp_path / "out", executor="in-process", report=True, log=lines.append) == 0
    text = "\n".join(lines)
    row = pd.read_csv(tmp_path / "out" / "results.csv").iloc[0]
    assert f"synthetic_terrain:\n  Best accuracy: baseline_cnn/linear with {row['accuracy']:.4f}" in text, text
    assert text.index("Best accuracy") < text.index("report: reports/answer/report.md")
    assert "**" not in text
