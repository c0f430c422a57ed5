import json
import subprocess
import sys

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


def test_weights_fetch_offline_fails_cleanly(tmp_path, monkeypatch):
    monkeypatch.setattr("zoo.weights.download_weights", _refuse)
    assert main(["weights", "fetch", "vgg16", "--dest", str(tmp_path)]) == 1
    assert list(tmp_path.iterdir()) == []


def _refuse(weights, dest):
    raise OSError(f"network unreachable for {weights.url}")


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "list", "heads"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("linear")
