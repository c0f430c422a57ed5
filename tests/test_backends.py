"""Same model, same weights, same predictions on every Keras backend (issue 12).

Models are saved here, on TensorFlow, and loaded in a subprocess with another backend set
before Keras is imported (a process has one backend); and one is built and saved there and
loaded here. Loops over the head registry: a new head is covered with no test edit. JAX runs
in CI (``jax[cpu]`` is in ``.[dev]``); PyTorch is tested where it is installed.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from zoo import build_model
from zoo.backbones import BACKBONES
from zoo.heads import HEADS

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(importlib.util.find_spec(module) is None,
                                                        reason=f"{module} is not installed"))
            for name, module in (("jax", "jax"), ("torch", "torch"))]
SIZE = 32

OTHER_BACKEND = """
import json, sys
import numpy as np
import keras
from zoo import build_model
from zoo.runtime import backend, compiled_predict

folder = sys.argv[1]
cases = json.load(open(f"{folder}/cases.json"))
inputs = np.load(f"{folder}/inputs.npz")
outputs = {}
for case in cases:
    model = keras.saving.load_model(f"{folder}/{case}.keras")
    outputs[case] = keras.tree.map_structure(np.asarray, compiled_predict(model)(inputs[case]))
np.savez(f"{folder}/outputs-{backend()}.npz", **outputs)
# Built and saved on this backend, for TensorFlow to load.
keras.utils.set_random_seed(3)
model = build_model("baseline_cnn", "unet", 4, (32, 32, 5))
model.save(f"{folder}/from-{backend()}.keras")
np.save(f"{folder}/from-{backend()}.npy", compiled_predict(model)(inputs["from_other"]))
# A kept compiled head gave other numbers than a new one on JAX: only TensorFlow keeps them.
from zoo.harness import kept_models
settings = dict(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
assert kept_models.identity(model, settings, None) is None
"""


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Every head on baseline_cnn, plus the N-channel adaptation of RGB weights, saved with
    their predictions on fixed inputs."""
    folder = tmp_path_factory.mktemp("backends")
    rng = np.random.default_rng(0)
    rgb_weights = folder / "baseline_cnn-rgb.weights.h5"
    keras.utils.set_random_seed(1)
    BACKBONES.get("baseline_cnn").build((SIZE, SIZE, 3)).save_weights(rgb_weights)
    cases, inputs, expected = [], {}, {}
    for head in HEADS.list():
        channels = 3 if HEADS.get(head).task == "classification" else 4
        for name, weights, shape in ((head, None, (SIZE, SIZE, channels)),
                                     (f"{head}-adapted-5ch", str(rgb_weights), (SIZE, SIZE, 5))):
            if weights and head != "linear":
                continue  # one adapted first convolution is enough
            keras.utils.set_random_seed(2)
            model = build_model("baseline_cnn", head, 4, shape, weights=weights)
            # Non-trivial BatchNorm statistics, so inference-mode normalisation is compared too.
            for layer in model.layers:
                for variable in getattr(layer, "non_trainable_variables", []):
                    if "moving" in variable.path:
                        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
            model.save(folder / f"{name}.keras")
            inputs[name] = rng.uniform(0, 1, (2, *shape)).astype("float32")
            expected[name] = model.predict_on_batch(inputs[name])
            cases.append(name)
    inputs["from_other"] = rng.uniform(0, 1, (2, SIZE, SIZE, 5)).astype("float32")
    (folder / "cases.json").write_text(json.dumps(cases))
    np.savez(folder / "inputs.npz", **inputs)
    return folder, cases, inputs, expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_models_predict_the_same_on_another_backend_and_back(saved_models, backend):
    folder, cases, inputs, expected = saved_models
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", OTHER_BACKEND, str(folder)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(folder / f"outputs-{backend}.npz")
    assert sorted(outputs.files) == sorted(cases)
    for case in cases:
        np.testing.assert_allclose(outputs[case], expected[case], atol=1e-4, err_msg=f"{case} on {backend}")

    model = keras.saving.load_model(folder / f"from-{backend}.keras")
    np.testing.assert_allclose(model.predict_on_batch(inputs["from_other"]), np.load(folder / f"from-{backend}.npy"),
                               atol=1e-4)


BACKEND_SUITE = {"name": "backends", "datasets": [{"name": "synthetic_terrain", "num_examples": 100}],
                 "backbones": ["baseline_cnn"], "heads": ["linear"],
                 "train": {"image_size": 32, "batch_size": 8, "epochs": 1, "steps_per_epoch": 2,
                           "backend": ["tensorflow", "jax"]}}


def test_the_pixel_loss_equals_keras_sparse_crossentropy_with_pixel_weights():
    """PyTorch's segmentation loss (zoo.losses) is the same number as the one the other backends use."""
    from zoo.losses import PixelCrossentropy

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(5), size=(3, 8, 8)).astype("float32")
    probabilities[0, 0, 0] = [1.0, 0, 0, 0, 0]  # clipped as Keras clips
    masks = rng.integers(0, 5, (3, 8, 8))
    weights = rng.uniform(0, 2, (3, 8, 8)).astype("float32")
    for sample_weight in (None, weights):
        ours = float(PixelCrossentropy()(masks, probabilities, sample_weight=sample_weight))
        keras_own = float(keras.losses.SparseCategoricalCrossentropy()(masks, probabilities,
                                                                        sample_weight=sample_weight))
        assert ours == pytest.approx(keras_own, rel=1e-5)


def test_the_pixel_focal_loss_equals_keras_focal_loss_on_one_hot_masks_with_pixel_weights():
    """`loss: focal` on a segmentation head is Keras's own focal loss (alpha 0.25, gamma 2), from integer masks."""
    from zoo.losses import PixelFocalCrossentropy

    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(5), size=(3, 8, 8)).astype("float32")
    probabilities[0, 0, 0] = [1.0, 0, 0, 0, 0]
    masks = rng.integers(0, 5, (3, 8, 8))
    weights = rng.uniform(0, 2, (3, 8, 8)).astype("float32")
    for sample_weight in (None, weights):
        ours = float(PixelFocalCrossentropy()(masks, probabilities, sample_weight=sample_weight))
        keras_own = float(keras.losses.CategoricalFocalCrossentropy()(np.eye(5, dtype="float32")[masks], probabilities,
                                                                       sample_weight=sample_weight))
        assert ours == pytest.approx(keras_own, rel=1e-5)
    restored = keras.losses.deserialize(keras.losses.serialize(PixelFocalCrossentropy(alpha=0.5, gamma=1.0)))
    assert (restored.alpha, restored.gamma) == (0.5, 1.0)


SEGMENTATION_STEP = """
import numpy as np, keras
from zoo import build_model
from zoo.tasks import TASKS
images = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 4)).astype("float32")
masks = np.random.default_rng(1).integers(0, 4, (4, 32, 32))
for loss in ("crossentropy", "focal"):
    model = build_model("baseline_cnn", "unet", 4, (32, 32, 4), weights=None)
    model.compile(optimizer="adam", loss=TASKS.get("segmentation").loss(loss))
    history = model.fit(images, masks, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all(), loss
"""


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_a_segmentation_head_trains_on_pytorch():
    """Keras's own sparse cross-entropy made PyTorch's up-sampling backward fail (see zoo.losses); zoo's pixel
    losses, cross-entropy and focal, train there."""
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", SEGMENTATION_STEP], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_backend_is_a_suite_axis_and_each_run_trains_on_all_devices_of_its_backend(tmp_path, monkeypatch):
    """One suite, two backends: each run in a worker of its backend, over two devices (two logical
    CPUs: MirroredStrategy on TensorFlow, keras.distribution.DataParallel on JAX)."""
    import pandas as pd

    from zoo.harness.runner import run_suite
    from zoo.harness.suite import load_suite

    monkeypatch.setenv("ZOO_LOGICAL_CPUS", "2")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert run_suite(load_suite(BACKEND_SUITE), tmp_path, report=False, log=lambda *_: None) == 0
    table = pd.read_csv(tmp_path / "results.csv").set_index("swept")
    assert sorted(table.index) == ["backend=jax", "backend=tensorflow"] and (table["status"] == "ok").all()
    assert table.loc["backend=jax", "backend"].startswith("jax ")
    assert table.loc["backend=tensorflow", "backend"].startswith("tensorflow ")
    assert (table["batch_size"] == 16).all()  # 8 per device, scaled and recorded
    assert (table["precise_bn_batches"] > 0).all()  # BatchNorm recalibrated over the devices too
    for run_id in table["run_id"]:
        environment = json.loads((tmp_path / "runs" / run_id / "environment.json").read_text())
        assert environment["replicas"] == 2 and run_id.split("backend=")[1].startswith(environment["backend"])


def test_a_backend_this_process_cannot_run_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from zoo.errors import ConfigError
    from zoo.harness.preflight import NotReadyError
    from zoo.harness.runner import run_suite
    from zoo.harness.suite import expand_suite, load_suite

    suite = load_suite({**BACKEND_SUITE, "train": {**BACKEND_SUITE["train"], "backend": "jax"}})
    with pytest.raises(ConfigError, match="this process runs tensorflow.*without --in-process"):
        run_suite(suite, tmp_path / "in-process", executor="in-process", report=False, log=lambda *_: None)
    assert not (tmp_path / "in-process").exists()
    import importlib.util as util

    real_find_spec = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "jax" else real_find_spec(name, *a))
    with pytest.raises(NotReadyError, match=r"(?s)train.backend: jax needs jax.*pip install -e '.\[jax\]'"):
        run_suite(suite, tmp_path / "worker", report=False, log=lambda *_: None)
    assert not (tmp_path / "worker" / "runs").exists()
    with pytest.raises(ConfigError, match="train.backend: 'mxnet' is not allowed; use one of null, tensorflow, jax"):
        expand_suite(load_suite({**BACKEND_SUITE, "train": {"backend": "mxnet"}}))


# Imported first by every Python process started with this folder on PYTHONPATH: TensorFlow
# cannot be imported (and is not left in sys.modules, where Keras would take it as imported).
NO_TENSORFLOW = """
import importlib.util
import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "tf_keras")


class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


_find_spec = importlib.util.find_spec


def find_spec(name, package=None):  # as where it is not installed: None, not an error (PyTorch asks)
    return None if name.split(".")[0] in BLOCKED else _find_spec(name, package)


importlib.util.find_spec = find_spec
sys.meta_path.insert(0, NoTensorFlow())
"""


def test_zoo_runs_reports_predicts_and_measures_on_jax_without_tensorflow(tmp_path, monkeypatch):
    """As on a GPU machine with JAX alone: TensorFlow cannot be imported at all, yet `zoo run`
    trains a user's folder (a full model and a head on cached features, through the array
    pipeline) and writes its report, `zoo predict` answers from a run, `zoo list` and
    `zoo speed --backend jax` (started from this TensorFlow process) work; a tensorflow-datasets
    dataset is refused before anything runs, naming what to install."""
    import pandas as pd
    from PIL import Image

    from zoo.cli import main

    blocker = tmp_path / "no_tensorflow"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_TENSORFLOW)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(blocker), str(ROOT)]))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    rng = np.random.default_rng(0)
    for label, name in enumerate(["dune", "forest"]):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for index in range(12):
            pixels = np.clip(rng.normal(60 + 120 * label, 30, (28 + index % 3, 30, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / name / f"{index}.png")
    suite = {"name": "no-tf", "backbones": ["baseline_cnn"], "heads": ["linear"], "weights": "none",
             "trainable": "frozen",
             "datasets": [{"name": "photos", "source": "folder", "path": str(tmp_path / "photos")}],
             # Augmented: the head trains on images (Keras's augmentation layers on JAX); plain: on cached features.
             "train": {"image_size": 32, "batch_size": 8, "epochs": 2, "augment": [True, False]},
             "export": ["onnx"]}  # TensorFlow's converters: the row says what to install
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    env = {**os.environ, "KERAS_BACKEND": "jax"}

    def zoo(*args):
        done = subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=600)
        return done.returncode, done.stdout + done.stderr

    code, output = zoo("run", "suite.json", "--out", "out")
    assert code == 0, output[-3000:]
    rows = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(rows["status"]) == ["ok", "ok"], rows["error"].tolist()
    assert rows["backend"].str.startswith("jax").all() and (rows["accuracy"] > 0).all()
    assert sorted(rows["features"]) == ["computed", "off"]
    assert rows["onnx_error"].str.contains("onnx export needs tensorflow").all() and rows["onnx_megabytes"].isna().all()
    assert "baseline_cnn" in (tmp_path / "reports" / "no-tf" / "report.md").read_text()
    code, output = zoo("predict", str(tmp_path / "out" / "runs" / rows["run_id"].iloc[0]),
                       str(tmp_path / "photos" / "forest" / "0.png"))
    assert code == 0 and ("forest" in output or "dune" in output), output[-3000:]

    code, output = zoo("run", "suite.json", "--out", "refused", "--set", "datasets=[eurosat_rgb]")
    assert code != 0 and "pip install tensorflow tensorflow-datasets" in output, output[-3000:]
    assert not (tmp_path / "refused" / "runs").exists()

    out = tmp_path / "speed.csv"
    assert main(["speed", "baseline_cnn", "--size", "32", "--batch", "4", "--backend", "jax", "--out", str(out)]) == 0
    row = pd.read_csv(out).iloc[0]
    assert row["backend"] == "jax" and row["xla"] and not isinstance(row["error"], str)  # JAX always compiles
    assert row["infer_images_per_second"] > 0 and row["train_images_per_second"] > 0
    code, output = zoo("list", "backbones")
    assert code == 0 and "resnet50" in output, output[-2000:]
    blocked = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, env=dict(os.environ))
    assert blocked.returncode != 0  # the blocker works: nothing above imported TensorFlow


def test_every_backend_trains_with_augmentation_where_tensorflow_is_installed(tmp_path):
    """Keras's augmentation layers inside tf.data on every backend (they run TensorFlow's ops there), for
    classification and for segmentation: each run trains."""
    import pandas as pd

    backends = ["tensorflow"] + [b for b, module in (("jax", "jax"), ("torch", "torch"))
                                 if importlib.util.find_spec(module) is not None]
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({
        "name": "augmented", "datasets": ["synthetic_terrain", "synthetic_landcover"], "backbones": ["baseline_cnn"],
        "heads": ["linear", "fcn"], "train": {"image_size": 32, "batch_size": 8, "epochs": 1, "steps_per_epoch": 2,
                                              "augment": True, "precise_bn": False, "backend": backends}}))
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "run", str(suite), "--out", str(tmp_path / "out"),
                             "--no-report"], capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert result.returncode == 0 and (table["status"] == "ok").all(), table[["run_id", "error"]].to_string()
    assert len(table) == 2 * len(backends)


def test_runs_trained_on_jax_and_pytorch_are_exported_by_tensorflows_converters(tmp_path):
    """The suite key export on a JAX or PyTorch run (whose Keras exporters need jax2onnx, or refuse LiteRT):
    the model is converted on TensorFlow's backend in a child process and measured like any other; `zoo
    export --measure` of such a run works too, without a line of the converters' INFO output."""
    import pandas as pd

    backends = [b for b, module in (("jax", "jax"), ("torch", "torch")) if importlib.util.find_spec(module)]
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({
        "name": "exported", "datasets": ["synthetic_terrain"], "backbones": ["baseline_cnn"], "heads": ["linear"],
        "train": {"image_size": 32, "batch_size": 8, "epochs": 1, "steps_per_epoch": 2, "backend": backends},
        "export": ["tflite", "onnx"]}))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "run", str(suite), "--out", str(tmp_path / "out"),
                             "--no-report"], capture_output=True, text=True, env=env)
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert result.returncode == 0 and (table["status"] == "ok").all(), result.stderr[-3000:]
    assert sorted(table["backend"].str.split().str[0]) == sorted(backends)
    for name in ("tflite", "onnx"):
        assert table[f"{name}_error"].isna().all(), table[f"{name}_error"].tolist()
        assert (table[f"{name}_megabytes"] > 0).all() and (table[f"{name}_accuracy_drop"].abs() <= 0.01).all()
    run_dir = tmp_path / "out" / "runs" / table["run_id"].iloc[0]
    exported = subprocess.run([sys.executable, "-m", "zoo.cli", "export", str(run_dir), "--format", "saved_model",
                               "--measure"], capture_output=True, text=True, env=env)
    assert exported.returncode == 0 and "saved_model none" in exported.stdout, exported.stderr[-3000:]
    assert "Reading SavedModel" not in exported.stderr and "Starting new session" not in exported.stderr


def test_a_failed_run_s_reason_is_the_sentence_that_explains_it():
    from zoo.harness.worker import describe_error

    wrapped = NotImplementedError(
        "in user code:\n\n    File \"pipeline.py\", line 128, in None  *\n        lambda images, labels: ...\n\n"
        "    NotImplementedError: Cannot convert a symbolic tf.Tensor (args_0:0) to a numpy array.\n")
    assert describe_error(wrapped) == "NotImplementedError: Cannot convert a symbolic tf.Tensor (args_0:0) to a numpy array."
    assert describe_error(ValueError("plain\nsecond line")) == "ValueError: plain"
