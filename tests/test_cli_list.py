import json
import subprocess
import sys

import pytest

from zoo.cli import main


def test_list_backbones_prints_one_per_line_name_first(capsys):
    assert main(["list", "backbones", "resnet*"]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["resnet50", "resnet101", "resnet152", "resnet50_v2", "resnet101_v2", "resnet152_v2"]


def test_list_backbones_long_shows_metadata(capsys):
    assert main(["list", "backbones", "vgg16", "--long"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["preprocessing"] == "caffe"
    assert entry["feature_layers_by_stride"]["32"] == "block5_pool"
    assert entry["imagenet_no_top_hash"] == "6d6bbae143d832006294945121d1f1fc"


def test_list_heads(capsys):
    assert main(["list", "heads"]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["linear", "mlp", "flatten", "distribution", "fcn", "unet", "fpn"]


def test_list_datasets_gives_each_card_s_class_count(capsys):
    from zoo.data import DATASETS

    assert main(["list", "datasets"]) == 0
    counts = {line.split("\t")[0]: int(line.split("\t")[3].split()[0]) for line in capsys.readouterr().out.splitlines()}
    assert list(counts) == DATASETS.list() and counts["stanford_dogs"] == 120  # its names come with the data
    assert all(count >= 2 for count in counts.values()), counts


def test_list_tasks_names_each_task_with_what_it_is_compared_by(capsys):
    assert main(["list", "tasks"]) == 0
    lines = {line.split("\t")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert list(lines) == ["classification", "segmentation", "distribution"]
    assert "compared by: accuracy, macro_f1" in lines["classification"] and "targets=masks" in lines["segmentation"]
    assert "losses: auto, crossentropy, focal" in lines["segmentation"]  # what train.loss may name for it
    assert lines["distribution"].endswith("losses: auto, crossentropy (no class_weights)")


def test_weights_fetch_offline_fails_cleanly(tmp_path, monkeypatch):
    monkeypatch.setattr("zoo.weights.download_weights", _refuse)
    assert main(["weights", "fetch", "vgg16", "--dest", str(tmp_path)]) == 1
    assert list(tmp_path.iterdir()) == []


def _refuse(weights, dest):
    raise OSError(f"network unreachable for {weights.url}")


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "list", "heads"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("linear")


@pytest.mark.parametrize("args, message", [
    (["predict", "RUN", "photo.jpg", "--top-k", "0"], "argument --top-k: must be at least 1, got 0"),
    (["predict", "RUN", "photos", "--output", "p.parquet", "--batch-size", "-4"],
     "argument --batch-size: must be at least 1, got -4"),
    (["report", "OUT", "--latency-budget", "-1"], "argument --latency-budget: must be above 0, got -1"),
    (["report", "OUT", "--size-budget", "abc"], "argument --size-budget: 'abc' is not a number"),
    (["report", "OUT", "--detailed-models", "-3"], "argument --detailed-models: must be at least 0, got -3"),
    (["report", "OUT", "--format", "pdf"], "unknown report format(s) ['pdf']; use md and/or html"),
    (["speed", "baseline_cnn", "--batch", "-1"], "argument --batch: must be at least 1, got -1"),
    (["run", "suite.yaml", "--gpus-per-run", "-1"], "argument --gpus-per-run: must be 0 or more, got -1"),
    (["run", "suite.yaml", "--max-retries", "-2"], "argument --max-retries: must be at least 0, got -2"),
    (["serve", "OUT", "--port", "70000"], "argument --port: a port is at most 65535, got 70000"),
])
def test_bad_numbers_and_formats_get_one_line_naming_the_option(args, message, capsys, tmp_path):
    """No traceback (zoo predict --top-k 0 raised an IndexError): one line, exit 2."""
    (tmp_path / "OUT").mkdir()
    (tmp_path / "OUT" / "results.csv").write_text("run_id,status\n")
    args = [str(tmp_path / a) if a == "OUT" else a for a in args]
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
