"""keras-hub presets on a machine without internet: found on disk -> trains; absent -> refused before any
run with the fix; damaged -> named with the file. The network is blocked in these tests (no name
resolution), as on a machine without internet, and ZOO_OFFLINE is left unset so the short probe is what
tells."""
import shutil
import socket

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("keras_hub", reason="the keras-hub backbones need the hub extra: pip install -e '.[hub]'")

from zoo import build_model  # noqa: E402
from zoo.backbones import BACKBONES  # noqa: E402
from zoo.backbones.hub import build_hub_model  # noqa: E402
from zoo.cli import main  # noqa: E402
from zoo.errors import ConfigError, WeightsUnavailableError  # noqa: E402
from zoo.factory import check_input_shape  # noqa: E402
from zoo.harness.suite import expand_suite, load_suite  # noqa: E402

HUB = [name for name, spec in BACKBONES.items() if spec.hub is not None]
DEIT = BACKBONES.get("deit_tiny")
ONE_BLOCK = {"num_layers": 1}


@pytest.fixture
def no_network(monkeypatch):
    """Name resolution fails, as on a machine without internet; the list records every host asked for."""
    import zoo.weights

    asked = []

    def refuse(host, *args, **kwargs):
        asked.append(host[0] if isinstance(host, tuple) else host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(address))
    monkeypatch.setattr(zoo.weights, "_REACHABLE", {})
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    return asked


@pytest.fixture(scope="module")
def small_deit_preset(tmp_path_factory):
    """A one-block deit_tiny saved as keras-hub saves a preset (config.json, model.weights.h5)."""
    folder = tmp_path_factory.mktemp("preset") / DEIT.hub.preset
    build_hub_model(DEIT.hub, (224, 224, 3), **ONE_BLOCK).save_to_preset(str(folder))
    return folder


@pytest.fixture
def weights_dir(tmp_path, monkeypatch, small_deit_preset):
    """ZOO_WEIGHTS_DIR holding a copy of the small preset, to damage at will."""
    shutil.copytree(small_deit_preset, tmp_path / "weights" / DEIT.hub.preset)
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(tmp_path / "weights"))
    return tmp_path / "weights" / DEIT.hub.preset


def suite(**changes):
    return load_suite({"name": "offline", "datasets": ["synthetic_terrain"], "backbones": ["deit_tiny"],
                       "heads": ["linear"], "weights": "pretrained", "trainable": "frozen",
                       "backbone_options": ONE_BLOCK,
                       "train": {"image_size": 32, "batch_size": 16, "epochs": 1, "steps_per_epoch": 2}, **changes})


def write_suite(tmp_path, backbone="dinov2_small", options=None, size=56):
    import yaml

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "offline", "datasets": ["synthetic_terrain"], "backbones": [backbone],
                                    "heads": ["linear"], "weights": "pretrained", "trainable": "frozen",
                                    "backbone_options": options or {},
                                    "train": {"image_size": size, "epochs": 1, "steps_per_epoch": 2}}))
    return path


def test_build_model_without_the_preset_says_how_to_fix_it_and_no_network_error_escapes(no_network, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(tmp_path / "empty"))
    with pytest.raises(WeightsUnavailableError) as error:
        build_model("dinov2_small", "linear", num_classes=3, input_shape=(56, 56, 3), weights="imagenet")
    message = str(error.value)
    assert "keras-hub preset 'dinov2_small' (about 90 MB: 22.6 M parameters" in message
    assert "api.kaggle.com cannot be reached" in message and "api.kaggle.com" in no_network  # probed, once
    assert "zoo weights fetch 'dinov2_small' --dest DIR" in message and "ZOO_WEIGHTS_DIR=DIR" in message
    assert str(tmp_path / "empty" / "dinov2_small") in message  # where it looked


def test_a_download_that_fails_inside_keras_hub_becomes_the_same_error(no_network, tmp_path, monkeypatch):
    """The probe passes (a proxy, a flaky link) but keras-hub's own download fails: the user gets zoo's
    error with the fix, not a requests traceback."""
    import zoo.weights

    monkeypatch.setattr(zoo.weights, "reachable", lambda url, timeout=3.0: True)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    with pytest.raises(WeightsUnavailableError) as error:
        build_model("deit_tiny", "linear", num_classes=3, input_shape=(32, 32, 3), weights="pretrained",
                    backbone_options=ONE_BLOCK)
    message = str(error.value)
    assert "keras-hub preset 'deit_tiny_distilled_patch16_224_imagenet'" in message
    assert "it cannot be downloaded: " in message and "zoo weights fetch 'deit_tiny'" in message
    assert error.value.__cause__ is None and error.value.__suppress_context__


@pytest.mark.parametrize("offline", [False, True], ids=["no-network", "ZOO_OFFLINE"])
def test_a_suite_whose_preset_is_missing_is_refused_before_any_run(no_network, tmp_path, monkeypatch, capsys,
                                                                    offline):
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(tmp_path / "empty"))
    if offline:
        monkeypatch.setenv("ZOO_OFFLINE", "1")
    out = tmp_path / "out"
    assert main(["run", str(write_suite(tmp_path)), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "weights dinov2_small: keras-hub preset dinov2_small (about 90 MB: 22.6 M parameters) is neither in" \
           in error
    assert ("downloading is off (ZOO_OFFLINE is set)" if offline else "api.kaggle.com cannot be reached") in error
    assert "fix: zoo weights fetch 'dinov2_small' --dest DIR on a connected machine, then export ZOO_WEIGHTS_DIR=DIR" \
           in error
    assert "Traceback" not in error and "ConnectionError" not in error and not out.exists()
    assert main(["plan", str(write_suite(tmp_path, "deit_tiny", ONE_BLOCK, 32)), "--out", str(out)]) == 2
    row = next(line for line in capsys.readouterr().out.splitlines() if "deit_tiny-linear" in line)
    assert " pending " in row and " NO " in row


def test_a_preset_in_the_weights_folder_trains_without_network(no_network, weights_dir, tmp_path):
    from zoo.harness.runner import run_suite

    assert run_suite(suite(), tmp_path / "out", executor="in-process", report=False, log=lambda *_: None) == 0
    row = pd.read_csv(tmp_path / "out" / "results.csv").iloc[0]
    assert row["status"] == "ok" and row["weights"] == "imagenet" and row["backbone"] == "deit_tiny"
    assert no_network == []  # found on disk: nothing was probed or downloaded


def damage(folder, how):
    weights = folder / "model.weights.h5"
    if how == "weights file missing":
        weights.unlink()
        return f"{weights} is missing"
    if how == "weights file truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[:len(data) // 2])
        return f"{weights} is damaged or truncated"
    if how == "another model's config":
        config = (folder / "config.json").read_text()
        (folder / "config.json").write_text(config.replace('"hidden_dim": 192', '"hidden_dim": 384'))
        return f"{folder / 'config.json'} has hidden_dim=384 where deit_tiny has 192"
    (folder / "config.json").write_text(
        (folder / "config.json").read_text().replace('"class_name": "DeiTBackbone"', '"class_name": "DINOV2Backbone"'))
    return f"{folder / 'config.json'} describes a 'DINOV2Backbone', not the DeiTBackbone of deit_tiny"


@pytest.mark.parametrize("how", ["weights file missing", "weights file truncated", "another model's config",
                                 "another model's class"])
def test_a_damaged_preset_is_named_with_its_file_never_loaded(no_network, weights_dir, tmp_path, how):
    from zoo.harness.runner import run_suite

    expected = damage(weights_dir, how)
    with pytest.raises(WeightsUnavailableError) as error:
        build_model("deit_tiny", "linear", num_classes=3, input_shape=(32, 32, 3), weights="pretrained",
                    backbone_options=ONE_BLOCK)
    assert f"rejected {expected}" in str(error.value)
    with pytest.raises(WeightsUnavailableError) as error:  # the folder given as the weights themselves
        build_model("deit_tiny", "linear", num_classes=3, input_shape=(32, 32, 3), weights=str(weights_dir),
                    backbone_options=ONE_BLOCK)
    assert expected in str(error.value)
    with pytest.raises(Exception) as error:
        run_suite(suite(), tmp_path / "out", executor="in-process", report=False, log=lambda *_: None)
    assert f"rejected {expected}" in str(error.value) and not (tmp_path / "out" / "runs").exists()


def test_other_backbone_options_than_the_presets_are_refused_by_name(no_network, weights_dir):
    with pytest.raises(WeightsUnavailableError, match="has num_layers=1 where deit_tiny has 2"):
        build_model("deit_tiny", "linear", num_classes=3, input_shape=(32, 32, 3), weights="pretrained",
                    backbone_options={"num_layers": 2})


@pytest.mark.parametrize("name", HUB)
def test_every_size_a_suite_accepts_builds_and_runs(name):
    """Each keras-hub family's input-size rule (patches, windows, MiT's multiples) is known to validation:
    a size it accepts builds and runs; ViT and DeiT at 56 px are refused before anything is built."""
    spec = BACKBONES.get(name)
    for size in (56, 100):
        try:
            check_input_shape(spec, (size, size, 3))
        except ValueError:
            continue
        model = spec.build((size, size, 3), **spec.hub.small)
        outputs = model(np.zeros((1, size, size, 3), "float32"))
        assert all(np.isfinite(np.asarray(o)).all() for o in outputs)
    if name in ("vit_base", "deit_tiny", "deit_small"):
        with pytest.raises(ConfigError, match="multiple of 16"):
            expand_suite(load_suite({"name": "x", "datasets": ["synthetic_terrain"], "backbones": [name],
                                     "heads": ["linear"], "train": {"image_size": 56}}))
