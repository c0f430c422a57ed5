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
