"""zoo.runtime's prediction: the next batch is queued on the device before this one's outputs are read (the
device does not idle while the host copies and scores), and on JAX zoo's own jitted inference leaves
outputs on the device, equals Keras's predict_on_batch and compiles once for a split's batches; processes that
share a GPU with a training run take its memory as they need it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from zoo.runtime import PRECISIONS, precision_policy, predictions_ahead


def test_the_next_batch_is_predicted_before_this_one_is_handed_over():
    queued = []

    def predict(images):
        queued.append(int(images[0]))
        return images * 2

    batches = [np.full(3, index) for index in range(4)]
    handed = []
    for batch, outputs in predictions_ahead(predict, batches):
        # When batch i reaches the caller, batch i + 1 is already on its way (the last one has none after it).
        assert queued == list(range(min(int(batch[0]) + 2, len(batches)))), queued
        handed.append((int(batch[0]), outputs.tolist()))
    assert handed == [(index, [2 * index] * 3) for index in range(4)]
    assert list(predictions_ahead(predict, [])) == []


def test_images_of_picks_the_model_input_out_of_each_batch():
    items = [((np.arange(2) + 10 * index, "targets"), 2) for index in range(3)]
    seen = list(predictions_ahead(lambda images: images + 1, items, images_of=lambda item: item[0][0]))
    assert [item for item, _ in seen] == items
    assert [outputs.tolist() for _, outputs in seen] == [[1, 2], [11, 12], [21, 22]]


def test_precisions_name_their_half_type_and_refuse_others():
    assert precision_policy("float32") == "float32"
    assert precision_policy("mixed_bfloat16") == "mixed_bfloat16"
    assert precision_policy("mixed_float16") == "mixed_float16"
    assert precision_policy("mixed") in ("mixed_float16", "mixed_bfloat16")
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        precision_policy("bfloat16")
    assert set(PRECISIONS) == {"float32", "mixed", "mixed_float16", "mixed_bfloat16"}


JAX_PREDICTION = r"""
import json, sys
import jax, numpy as np
from zoo import build_model
from zoo.harness import compilation
from zoo.runtime import device_predict, predictions_ahead

compilation.watch()
model = build_model("baseline_cnn", "linear", 5, (16, 16, 3))
model.compile(loss="sparse_categorical_crossentropy")
images = np.random.default_rng(0).uniform(0, 255, (20, 16, 16, 3)).astype("float32")
reference = model.predict_on_batch(images[:8])
predict = device_predict(model)
first = predict(jax.device_put(images[:8]))
batches = [images[start:start + 8] for start in (0, 8, 16)]  # the last one short: padded, not compiled again
ahead = np.concatenate([outputs for _, outputs in predictions_ahead(predict, batches)])
dense = [layer for layer in model.layers if hasattr(layer, "kernel")][-1]
dense.kernel.assign(dense.kernel * 2.0)  # new weights are read at the next call
print(json.dumps({"on_device": isinstance(first, jax.Array), "equal": bool((np.asarray(first) == reference).all()),
                  "ahead_rows": len(ahead), "ahead_first": bool((ahead[:8] == reference).all()),
                  "retrained_differs": bool((np.asarray(predict(images[:8])) != reference).any()),
                  "compiled": compilation.snapshot()["functions"]}))
"""


@pytest.mark.skipif(__import__("importlib").util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_inference_stays_on_the_device_equals_keras_and_compiles_once(tmp_path):
    done = subprocess.run([sys.executable, "-c", JAX_PREDICTION], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["on_device"] and found["equal"] and found["ahead_first"] and found["ahead_rows"] == 20
    assert found["retrained_differs"]
    # One compilation of zoo's inference for the batches of 8, the short last one padded to them; Keras's
    # predict step compiled once for the reference above and not used by zoo.
    assert found["compiled"].get("jit(inference)") == 1, found["compiled"]


JAX_COMPILED_AHEAD = r"""
import json
import jax, keras, numpy as np
from zoo import build_model
from zoo.harness import compilation
from zoo.harness.compilation import CompiledAhead
from zoo.harness.precise_bn import forward_in_training_mode, recalibrate_batchnorm, trained_batchnorm_layers
from zoo.runtime import device_predict

compilation.watch()

def built():
    keras.utils.set_random_seed(0)
    model = build_model("baseline_cnn", "linear", 5, (16, 16, 3))
    model.compile(loss="sparse_categorical_crossentropy")
    return model

images = np.random.default_rng(0).uniform(0, 255, (16, 16, 16, 3)).astype("float32")
batches = [images[:8], images[8:]]
like = lambda count: jax.ShapeDtypeStruct((count, 16, 16, 3), "float32")
model, twin = built(), built()
momenta = [layer.momentum for layer in trained_batchnorm_layers(model)]
predict, forward = device_predict(model), forward_in_training_mode(model)
ahead = CompiledAhead([lambda: forward.lowered(like(8)), lambda: predict.lowered(like(8)),
                       lambda: predict.lowered(like(1))])
ahead.wait()
before = compilation.snapshot()["functions"]
recalibrate_batchnorm(model, batches, 2, forward)
outputs = [np.asarray(predict(images[:8])), np.asarray(predict(images[:1]))]
after = compilation.snapshot()["functions"]
recalibrate_batchnorm(twin, batches, 2)  # compiled when called, as without compiling ahead
twin_predict = device_predict(twin)
expected = [np.asarray(twin_predict(images[:8])), np.asarray(twin_predict(images[:1]))]
statistics = lambda m: [np.asarray(l.moving_variance) for l in trained_batchnorm_layers(m)]

class Unbuildable:
    def compile(self):
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while compiling")

def untraceable():
    return predict.lowered(jax.ShapeDtypeStruct((4, 16, 16, 2), "float32"))  # the model takes 3 channels

failing = CompiledAhead([Unbuildable, untraceable, lambda: predict.lowered(like(4))])
failing.wait()
print(json.dumps({"summary": ahead.summary(), "failing": failing.summary(),
                  "compiled_at_call": {name: count - before.get(name, 0) for name, count in after.items()
                                       if count - before.get(name, 0)},
                  "momenta_kept": momenta == [layer.momentum for layer in trained_batchnorm_layers(model)],
                  "same_statistics": all(np.array_equal(a, b) for a, b in zip(statistics(model), statistics(twin))),
                  "same_outputs": all(np.array_equal(a, b) for a, b in zip(outputs, expected)),
                  "after_a_failure": np.asarray(predict(images[:4])).shape[0]}))
"""


@pytest.mark.skipif(__import__("importlib").util.find_spec("jax") is None, reason="jax is not installed")
def test_programs_compiled_ahead_are_the_ones_later_calls_run_with_the_same_results(tmp_path):
    """What a run compiles in the background while its train step compiles (zoo.harness.compilation.CompiledAhead):
    precise BatchNorm's forward and the inference at two batch sizes. The later calls compile nothing and give
    exactly what programs compiled at the call give (precise BatchNorm's forward traced with the momenta it
    runs with); a program that cannot be lowered or compiled ahead is counted, not raised."""
    done = subprocess.run([sys.executable, "-c", JAX_COMPILED_AHEAD], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["summary"]["programs"] == 3 and found["summary"]["failed"] == 0 and found["summary"]["seconds"] > 0
    assert not {name for name in found["compiled_at_call"] if "inference" in name or "updated_state" in name}, found
    assert found["momenta_kept"] and found["same_statistics"] and found["same_outputs"]
    assert found["failing"]["programs"] == 3 and found["failing"]["failed"] == 2 and found["after_a_failure"] == 4


JAX_BUILD = r"""
import json
import keras, numpy as np
from zoo import build_model
from zoo.harness import compilation

compilation.watch()

def built(seed):
    keras.utils.set_random_seed(seed)
    model = build_model("mobilenet_v3_small", "linear", 5, (32, 32, 3))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model

first, again, other = built(0), built(0), built(1)
from zoo.runtime import initial_values_on_host
with initial_values_on_host():  # ConvNeXt's layer scale: a constant of each block's width
    constants = [keras.initializers.Constant(1e-6)(shape) for shape in ((96,), (192,), (3, 5))]
dense = [layer for layer in first.layers if hasattr(layer, "kernel")][-1]
fan_in, fan_out = dense.kernel.shape
limit = float(np.sqrt(6.0 / (fan_in + fan_out)))  # Glorot uniform's bound
kernel = np.asarray(dense.kernel)
print(json.dumps({
    "same_seed_same_weights": all((np.asarray(a) == np.asarray(b)).all() for a, b in zip(first.weights, again.weights)),
    "other_seed_differs": any((np.asarray(a) != np.asarray(b)).any() for a, b in zip(first.weights, other.weights)),
    "glorot": bool(np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit),
    "constants": all(tuple(c.shape) == shape and np.allclose(np.asarray(c), 1e-6)
                     for c, shape in zip(constants, ((96,), (192,), (3, 5)))),
    "compiled": compilation.snapshot()["functions"]}))
"""


@pytest.mark.skipif(__import__("importlib").util.find_spec("jax") is None, reason="jax is not installed")
def test_building_a_model_on_jax_compiles_nothing_per_weight_shape():
    done = subprocess.run([sys.executable, "-c", JAX_BUILD], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["same_seed_same_weights"] and found["other_seed_differs"] and found["glorot"], found
    assert found["constants"], found
    # JAX's own draws compiled one program per weight shape (59 for this model, 17 s on a 2-core CPU): the
    # initial values are drawn on the host instead, and three builds leave at most a handful of programs.
    per_shape = {name: count for name, count in found["compiled"].items()
                 if name in ("jit(_uniform)", "jit(_normal)", "jit(_truncated_normal)", "jit(broadcast_in_dim)",
                             "jit(multiply)", "jit(stage)")}
    assert not per_shape and sum(found["compiled"].values()) <= 5, found["compiled"]


ON_DEMAND = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


@pytest.fixture
def backend_defaults(monkeypatch):
    """A process environment where nobody has set how the backends take GPU memory."""
    for name in ON_DEMAND:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _memory_settings():
    return {name: os.environ.get(name) for name in ON_DEMAND}


def test_serve_predict_export_and_evaluate_take_gpu_memory_as_needed_before_any_model_is_loaded(backend_defaults, tmp_path):
    """zoo serve's "try it", zoo predict, zoo export and zoo evaluate run beside a suite training on the same GPU: with TensorFlow's
    and JAX's defaults whichever process opened the GPU first would keep most of its memory and the other
    would fail for lack of it."""
    import zoo.predict
    import zoo.serve
    from zoo.cli import main

    seen = {}
    backend_defaults.setattr(zoo.serve, "serve", lambda *a, **k: seen.setdefault("serve", _memory_settings()) and 0)
    backend_defaults.setattr(zoo.predict, "predict_images",
                             lambda *a, **k: seen.setdefault("predict", _memory_settings()) and [])
    assert main(["serve", str(tmp_path)]) == 0
    for name in ON_DEMAND:
        backend_defaults.delenv(name)
    image = tmp_path / "photo.png"
    image.write_bytes(b"")
    assert main(["predict", str(tmp_path), str(image)]) == 0
    for name in ON_DEMAND:
        backend_defaults.delenv(name)
    import zoo.harness.deploy

    backend_defaults.setattr(zoo.harness.deploy, "export_run", lambda *a, **k: seen.setdefault("export", _memory_settings())
                             and {"path": "model.onnx", "megabytes": 1.0, "seconds": 0.1})
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 0
    for name in ON_DEMAND:
        backend_defaults.delenv(name)
    import zoo.harness.evaluate

    backend_defaults.setattr(zoo.harness.evaluate, "evaluate", lambda *a, **k: seen.setdefault("evaluate", _memory_settings())
                             and [])
    assert main(["evaluate", str(tmp_path), str(tmp_path)]) == 0
    for name in ON_DEMAND:
        backend_defaults.delenv(name)
    backend_defaults.setattr(zoo.predict, "Predictor", lambda *a: seen.setdefault("ray actor", _memory_settings()))
    zoo.predict.PredictBatches(str(tmp_path), 5, None)  # zoo predict --executor ray's actors: maybe several per GPU
    # The child that exports a JAX or PyTorch run on TensorFlow's backend, beside the run's own process.
    import subprocess

    for name in ON_DEMAND:
        backend_defaults.delenv(name)

    def child(command, env, **_):
        seen["export child"] = {name: env.get(name) for name in ON_DEMAND}
        assert env["KERAS_BACKEND"] == "tensorflow"
        return subprocess.CompletedProcess(command, 1)

    backend_defaults.setattr(subprocess, "run", child)
    figures = zoo.harness.deploy.deployment_figures_on_tensorflow(tmp_path, "classification",
                                                                  {"formats": ["onnx"], "quantize": "none"},
                                                                  {"accuracy": 0.5})
    assert "ended with exit status 1" in figures["onnx_error"]  # a failed child is recorded, never raised
    assert seen == {"serve": ON_DEMAND, "predict": ON_DEMAND, "export": ON_DEMAND, "evaluate": ON_DEMAND,
                    "ray actor": ON_DEMAND, "export child": ON_DEMAND}
    assert _memory_settings() == dict.fromkeys(ON_DEMAND)  # this process's own settings untouched


def test_only_ray_actors_sharing_a_gpu_take_its_memory_as_needed_and_a_users_setting_is_kept(backend_defaults):
    import zoo.harness.worker
    from zoo.harness.ray_executor import RunActor

    backend_defaults.setattr(zoo.harness.worker, "preload_run_modules", lambda: None)
    RunActor(shares_a_gpu=False)  # a whole GPU per run: the backends' defaults, fastest for training
    assert _memory_settings() == dict.fromkeys(ON_DEMAND)
    backend_defaults.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
    RunActor(shares_a_gpu=True)
    assert _memory_settings() == {**ON_DEMAND, "XLA_PYTHON_CLIENT_PREALLOCATE": "true"}
