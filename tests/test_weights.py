import dataclasses
import hashlib

import h5py
import keras
import numpy as np
import pytest

from zoo import build_model
from zoo.backbones import BACKBONES, WeightsFile, register_backbone
from zoo.preprocessing import preprocess
from zoo.weights import (WeightsUnavailableError, adapt_input_kernel, build_backbone_with_weights,
                         resolve_imagenet_weights)


def save_like_keras_imagenet_file(model, path):
    """Write weights in the legacy HDF5 layout of Keras's ImageNet files."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    return path


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_backbone(tmp_path):
    """A registered backbone whose 'ImageNet' file the test makes, with a real hash."""
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    source = BACKBONES.get("baseline_cnn").build((32, 32, 3))
    path = save_like_keras_imagenet_file(source, weights_dir / "tiny_notop.h5")
    spec = dataclasses.replace(BACKBONES.get("baseline_cnn"), name="tiny_test",
                               imagenet_no_top=WeightsFile("tiny_notop.h5", "http://127.0.0.1:9/tiny_notop.h5", md5(path)))
    register_backbone(spec)
    yield spec, path, source
    BACKBONES.unregister("tiny_test")


def test_adapt_input_kernel_sums_for_grey_and_rescales_repeats():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 8)).astype("float32")
    np.testing.assert_allclose(adapt_input_kernel(kernel, 1)[:, :, 0], kernel.sum(axis=2), rtol=1e-6)
    six = adapt_input_kernel(kernel, 6)
    assert six.shape == (3, 3, 6, 8)
    np.testing.assert_allclose(six[:, :, :3] + six[:, :, 3:], kernel, rtol=1e-6)
    four = adapt_input_kernel(kernel, 4)
    np.testing.assert_allclose(four[:, :, 3], kernel[:, :, 0] * 0.75, rtol=1e-6)


@pytest.mark.parametrize("file_format", ["legacy_h5", "weights_h5"])
def test_six_channel_model_from_three_channel_file_answers_like_the_original(tmp_path, rng, file_format):
    source = BACKBONES.get("mobilenet_v2").build((32, 32, 3))
    if file_format == "legacy_h5":
        path = save_like_keras_imagenet_file(source, tmp_path / "mobilenet_v2_notop.h5")
    else:
        path = tmp_path / "mobilenet_v2.weights.h5"
        source.save_weights(path)
    six = build_model("mobilenet_v2", "linear", 4, (32, 32, 6), weights=str(path)).get_layer("backbone")
    three = build_model("mobilenet_v2", "linear", 4, (32, 32, 3), weights=str(path)).get_layer("backbone")
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    first_conv = lambda m: keras.Model(m.input, m.get_layer("Conv1").output)  # noqa: E731
    np.testing.assert_allclose(np.asarray(first_conv(six)(np.concatenate([x, x], axis=-1))),
                               np.asarray(first_conv(three)(x)), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(three(x)), np.asarray(source(x)))
    # Every other layer carries the file's weights unchanged.
    for a, b in zip(three.layers[3:], six.layers[3:]):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)


def test_imagenet_resolves_from_weights_dir_then_keras_cache(tiny_backbone, tmp_path, monkeypatch, rng):
    spec, path, source = tiny_backbone
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(path.parent))
    assert resolve_imagenet_weights(spec) == path
    model = build_model("tiny_test", "linear", 3, (32, 32, 3), weights="imagenet")
    x = rng.uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(model.get_layer("backbone")(x)), np.asarray(source(x)))

    monkeypatch.delenv("ZOO_WEIGHTS_DIR")
    cache = tmp_path / "keras_home" / "models"
    cache.mkdir(parents=True)
    (cache / "tiny_notop.h5").write_bytes(path.read_bytes())
    assert resolve_imagenet_weights(spec) == cache / "tiny_notop.h5"


def test_missing_file_offline_gives_one_clear_message(tiny_backbone, monkeypatch, tmp_path):
    spec, path, _ = tiny_backbone
    corrupt_dir = tmp_path / "elsewhere"
    corrupt_dir.mkdir()
    (corrupt_dir / "tiny_notop.h5").write_bytes(b"truncated")
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(corrupt_dir))
    with pytest.raises(WeightsUnavailableError) as error:
        build_model("tiny_test", "linear", 3, (32, 32, 3), weights="imagenet")
    message = str(error.value)
    assert "tiny_notop.h5" in message and "http://127.0.0.1:9/tiny_notop.h5" in message
    assert "ZOO_WEIGHTS_DIR" in message and "zoo weights fetch tiny_test" in message
    assert "hash differs" in message
    assert error.value.__cause__ is None and "Traceback" not in message


def test_efficientnet_from_file_computes_what_keras_imagenet_build_computes(tmp_path, monkeypatch, rng):
    spec = BACKBONES.get("efficientnet_b0")
    source = spec.build((32, 32, 3))
    normalization = next(layer for layer in source.layers if isinstance(layer, keras.layers.Normalization))
    normalization.adapt_mean.assign(np.array([0.485, 0.456, 0.406], "float32"))
    normalization.adapt_variance.assign(np.array([0.229, 0.224, 0.225], "float32") ** 2)
    path = save_like_keras_imagenet_file(source, tmp_path / "efficientnetb0_notop.h5")

    from keras.src.utils import file_utils
    monkeypatch.setattr(file_utils, "get_file", lambda *args, **kwargs: str(path))
    reference = keras.applications.EfficientNetB0(include_top=False, weights="imagenet", input_shape=(32, 32, 3))

    unchecked = dataclasses.replace(spec, imagenet_no_top=WeightsFile(path.name, "https://x/" + path.name, None))
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(tmp_path))
    ours = build_backbone_with_weights(unchecked, (32, 32, 3), "imagenet")
    x = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(reference(x)), atol=1e-4)


EXTRA_BAND = {"caffe": lambda band: band - np.mean([103.939, 116.779, 123.68]),
              "tf": lambda band: band / 127.5 - 1,
              "torch": lambda band: (band / 255 - np.mean([0.485, 0.456, 0.406])) / np.mean([0.229, 0.224, 0.225])}


@pytest.mark.parametrize("mode, module", [("caffe", "resnet50"), ("tf", "mobilenet_v2"), ("torch", "densenet")])
def test_preprocessing_matches_keras_for_rgb_and_extends_to_more_bands(mode, module, rng):
    rgb = rng.uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, module).preprocess_input(rgb.copy())
    np.testing.assert_allclose(preprocess(rgb, mode), expected, rtol=1e-5, atol=1e-4)
    nir = rng.uniform(0, 255, (2, 8, 8, 1)).astype("float32")
    four = preprocess(np.concatenate([rgb, nir], axis=-1), mode)
    np.testing.assert_allclose(four[..., :3], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(four[..., 3], EXTRA_BAND[mode](nir[..., 0]), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(preprocess(nir, mode), EXTRA_BAND[mode](nir), rtol=1e-5, atol=1e-4)


@pytest.fixture
def weights_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving one weights file; ``requests`` lists the paths asked for."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    (served / "vgg16_test_notop.h5").write_bytes(b"not really HDF5, but hashed like one" * 500)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served / "vgg16_test_notop.h5", requests
    server.shutdown()
    server.server_close()


def test_weights_fetch_downloads_and_checks_the_hash(weights_server, tmp_path, monkeypatch, capsys):
    """The real download path of `zoo weights fetch`: a good file lands in DEST once; a file whose hash
    differs is refused and nothing of it is left."""
    import dataclasses
    import hashlib

    from zoo.backbones import BACKBONES
    from zoo.backbones.spec import WeightsFile
    from zoo.cli import main

    url, served, requests = weights_server
    good = hashlib.md5(served.read_bytes()).hexdigest()
    spec = BACKBONES.get("vgg16")
    for file_hash, expected_code in ((good, 0), ("0" * 32, 1)):
        dest = tmp_path / f"dest-{expected_code}"
        entry = WeightsFile("vgg16_test_notop.h5", f"{url}/vgg16_test_notop.h5", file_hash)
        monkeypatch.setitem(BACKBONES._entries, "vgg16", dataclasses.replace(spec, imagenet_no_top=entry))
        assert main(["weights", "fetch", "vgg16", "--dest", str(dest)]) == expected_code
        if expected_code == 0:
            assert (dest / "vgg16_test_notop.h5").read_bytes() == served.read_bytes()
            asked = len(requests)
            assert main(["weights", "fetch", "vgg16", "--dest", str(dest)]) == 0  # already there: no download
            assert "(already there)" in capsys.readouterr().out and len(requests) == asked
            monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(dest))  # and a run's resolution finds it, hash-checked
            assert resolve_imagenet_weights(BACKBONES.get("vgg16"), download=False) == dest / "vgg16_test_notop.h5"
            monkeypatch.delenv("ZOO_WEIGHTS_DIR")
        else:
            assert "failed\tvgg16" in capsys.readouterr().err
            assert not dest.exists() or list(dest.iterdir()) == []
    assert requests.count("/vgg16_test_notop.h5") == 2


def test_weights_check_says_what_a_run_would_find_here_without_downloading(tiny_backbone, tmp_path, monkeypatch,
                                                                           capsys):
    """An offline machine's question before a suite: which pretrained weights are here? A hash-checked
    file is here, one of the right name with another hash damaged, an absent one missing with the fetch
    command; a keras-hub preset the same; exit 1 unless all are here. Nothing is downloaded."""
    from zoo.cli import main

    spec, path, _ = tiny_backbone
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(path.parent))
    monkeypatch.setattr("zoo.weights.download_weights", lambda *a: pytest.fail("weights check downloaded"))
    assert main(["weights", "check", "tiny_test"]) == 0
    out = capsys.readouterr().out
    assert f"here\ttiny_test\t{path}" in out and "1 of 1 here" in out
    path.write_bytes(path.read_bytes()[:-10])  # a truncated copy
    assert main(["weights", "check", "tiny_test"]) == 1
    out = capsys.readouterr().out
    assert "damaged\ttiny_test" in out and "hash differs" in out and "0 of 1 here; 0 missing, 1 damaged" in out
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(tmp_path / "empty"))
    assert main(["weights", "check", "tiny_test"]) == 1
    out = capsys.readouterr().out
    assert "missing\ttiny_test\ttiny_notop.h5" in out and "`zoo weights fetch 'tiny_test' --dest DIR`" in out
    assert main(["weights", "check", "dinov2_small"]) == 1
    assert "missing\tdinov2_small\tkeras-hub preset dinov2_small" in capsys.readouterr().out
    assert main(["weights", "check", "baseline_cnn"]) == 1  # trained from scratch: no weights to check
    assert "no backbone with pretrained weights matches" in capsys.readouterr().err
