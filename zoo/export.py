"""Exporting a run's model for deployment, and what the exported model costs and keeps.

``zoo export RUN --format saved_model|tflite|onnx [--quantize none|float16|int8]`` converts the
run's model with the maintained converters (Keras's exporters, which drive TensorFlow's
SavedModel writer, the LiteRT converter and tf2onnx; ONNX Runtime's float16 converter and static
quantizer), int8 calibrated on the run's own training images. The suite key ``export`` does the
same after every run and then measures, on the run's test split, the exported model in its own
runtime (TensorFlow, the LiteRT interpreter, ONNX Runtime): its score, its file size and its
batch-1 CPU latency; a conversion that fails is recorded in the run's row and never fails the run.

An exported model takes what the Keras model takes: images resized to the run's size and put
through the backbone's preprocessing (see zoo.preprocessing), float32, batch first. Beside each
exported file, ``<file>.json`` says exactly that (size, channels, preprocessing, class names), so
a deployment applies the same steps ``zoo predict`` does.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import ConfigError, DataError

QUANTIZATIONS = ("none", "float16", "int8")
CALIBRATION_IMAGES = 128  # LiteRT's guide asks for ~100-500 representative samples
LATENCY_WARMUP = 5
LATENCY_CALLS = (20, 200)  # at least, at most; and until LATENCY_SECONDS have passed
LATENCY_SECONDS = 1.0
INSTALL_HINT = "install the export tools: pip install 'zoo[export]'"


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str          # "" for a folder
    runtime: str         # what the figures are measured in
    quantizations: tuple
    modules: tuple       # what it needs, for the error when they are missing


FORMATS = {
    "saved_model": ExportFormat("saved_model", "", "TensorFlow", ("none",), ("tensorflow",)),
    "tflite": ExportFormat("tflite", ".tflite", "LiteRT", QUANTIZATIONS, ("tensorflow", "ai_edge_litert")),
    "onnx": ExportFormat("onnx", ".onnx", "ONNX Runtime", QUANTIZATIONS, ("tensorflow", "tf2onnx", "onnx", "onnxruntime")),
}
# What the deployment figures compare: the task's score that a conversion can change.
FIDELITY_METRIC = {"classification": "accuracy", "segmentation": "miou", "distribution": "kl_score"}
LOWER_IS_BETTER = {"kl_score"}
OUTPUTS = {"classification": "class probabilities (batch, classes)",
           "segmentation": "per-pixel class probabilities (batch, height, width, classes)",
           "distribution": "class proportions of the image (batch, classes)"}


class ExportFailed(Exception):
    """A conversion or a measurement of an exported model failed; the message says which."""


def check_export(formats, quantize: str, where: str = "export") -> None:
    """Raise ConfigError naming the key when a format or quantization is unknown or impossible."""
    for name in formats:
        if name not in FORMATS:
            raise ConfigError(f"{where}: unknown format {name!r}; use {', '.join(FORMATS)}")
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"{where}: unknown quantize {quantize!r}; use {', '.join(QUANTIZATIONS)}")
    for name in formats:
        if quantize not in FORMATS[name].quantizations:
            raise ConfigError(f"{where}: {name} keeps float32 weights (quantize: none); float16 and int8 are "
                              f"exported as tflite or onnx")


def normalize_export(value, where: str = "export") -> dict | None:
    """The suite key ``export`` as ``{"formats": [...], "quantize": ...}`` or None; it is given as
    a list of formats (``[tflite, onnx]``) or as ``{formats: [...], quantize: int8}``."""
    if value in (None, False, []):
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        value = {"formats": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: a list of formats such as [tflite, onnx], or {{formats: [...], quantize: int8}}")
    unknown = set(value) - {"formats", "quantize"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; use formats and quantize")
    formats = value.get("formats") or []
    formats = [formats] if isinstance(formats, str) else list(formats)
    if not formats:
        raise ConfigError(f"{where}.formats: name at least one of {', '.join(FORMATS)}")
    quantize = str(value.get("quantize", "none"))
    check_export(formats, quantize, where)
    return {"formats": list(dict.fromkeys(formats)), "quantize": quantize}


def _require(fmt: ExportFormat, converting: bool = False) -> None:
    """The format's tools installed; when ``converting``, this process on Keras's TensorFlow backend too:
    every format is converted by TensorFlow's exporters (SavedModel, LiteRT, tf2onnx) whatever backend
    trained the model, so one converter gives one file (Keras's exporters on JAX and PyTorch need other
    tools: jax2onnx; LiteRT not on JAX)."""
    import importlib.util

    from zoo.runtime import backend

    missing = [module for module in fmt.modules if importlib.util.find_spec(module) is None]
    if missing:
        raise ExportFailed(f"{fmt.name} export needs {', '.join(missing)}: {INSTALL_HINT}")
    if converting and backend() != "tensorflow":
        raise ExportFailed(f"{fmt.name} export runs on Keras's TensorFlow backend, and this process runs "
                           f"{backend()}: run `zoo export` without KERAS_BACKEND (or with KERAS_BACKEND=tensorflow)")


def default_path(run_dir, format_name: str, quantize: str = "none") -> Path:
    """Where ``zoo export`` puts a run's exported model: RUN/export/model[-quantize].<suffix>."""
    fmt = FORMATS[format_name]
    stem = "model" if quantize == "none" else f"model-{quantize}"
    return Path(run_dir) / "export" / (f"{stem}-saved_model" if fmt.suffix == "" else stem + fmt.suffix)


def format_of(path) -> str:
    """The format of a model ``zoo export`` wrote: a .tflite or .onnx file, or a SavedModel folder."""
    path = Path(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "saved_model"
    for name, fmt in FORMATS.items():
        if fmt.suffix and path.is_file() and path.suffix.lower() == fmt.suffix:
            return name
    raise DataError(f"{path} is not an exported model: give a .tflite or .onnx file or a SavedModel folder, as "
                    f"`zoo export RUN --format ...` writes them under RUN/export/")


def megabytes(path) -> float:
    """Size on disk of a file, or of every file under a folder (a SavedModel)."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    return path.stat().st_size / 1e6


def export_model(model, format_name: str, path, quantize: str = "none", calibration=None) -> Path:
    """Write ``model`` to ``path`` in ``format_name``; ``calibration()`` yields single preprocessed
    training images (1, H, W, C) for int8. Written beside the target and renamed into place, so
    a failed or interrupted export leaves the previous file or none. Raises ExportFailed."""
    check_export([format_name], quantize)
    fmt = FORMATS[format_name]
    _require(fmt, converting=True)
    if quantize == "int8" and calibration is None:
        raise ExportFailed("int8 needs calibration images (the run's training images)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        written = _convert(model, fmt, work, quantize, calibration)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(written, path)
    except ExportFailed:
        raise
    except Exception as error:  # converter errors come as many types; each means "cannot convert"
        raise ExportFailed(f"{format_name} ({quantize}) conversion failed: {_one_line(error)}") from error
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def _convert(model, fmt: ExportFormat, work: Path, quantize: str, calibration) -> Path:
    if fmt.name == "saved_model":
        target = work / "saved_model"
        model.export(str(target), format="tf_saved_model", verbose=False)
        return target
    if fmt.name == "tflite":
        import tensorflow as tf

        target = work / "model.tflite"
        options = {}
        if quantize == "float16":
            options = dict(optimizations=[tf.lite.Optimize.DEFAULT], target_spec={"supported_types": [tf.float16]})
        elif quantize == "int8":
            # Integer weights and activations with a float32 interface: the same inputs as the Keras model.
            options = dict(optimizations=[tf.lite.Optimize.DEFAULT],
                           representative_dataset=lambda: ([image] for image in calibration()))
        model.export(str(target), format="litert", verbose=False, **options)
        return target
    import onnx

    floating = work / "float.onnx"
    if not model._called:  # Keras's ONNX exporter refuses a model never called (a freshly loaded one)
        model(np.zeros((1, *model.inputs[0].shape[1:]), dtype=np.float32), training=False)
    with warnings.catch_warnings():
        # Keras's tf2onnx shim asks NumPy whether `np.object` exists, which NumPy answers with a
        # FutureWarning about NumPy's own future: nothing the user can or should act on.
        warnings.filterwarnings("ignore", message="In the future `np.object`", category=FutureWarning)
        model.export(str(floating), format="onnx", verbose=False)
    if quantize == "none":
        return floating
    target = work / "model.onnx"
    if quantize == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(floating)), keep_io_types=True), str(target))
        return target
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # ONNX Runtime's recommended preparation: shape inference and graph optimisation first. Its
    # symbolic shape inference is meant for transformers, gives up on some CNN decoders' resizes and
    # then leaves files in the working directory; ONNX's own shape inference is what CNNs need.
    prepared = work / "prepared.onnx"
    quant_pre_process(str(floating), str(prepared), skip_symbolic_shape=True)
    input_name = onnx.load(str(prepared)).graph.input[0].name

    class TrainingImages(CalibrationDataReader):
        def __init__(self):
            self.images = iter(calibration())

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {input_name: image}

    # QDQ with signed int8 weights per channel: ONNX Runtime's recommended CPU form for CNNs.
    quantize_static(str(prepared), str(target), TrainingImages(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return target


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def load_exported(path, format_name: str, threads: int | None = None):
    """A function from a float32 batch to the exported model's NumPy outputs, in the format's own
    runtime on CPU with ``threads`` threads (default: every core)."""
    fmt = FORMATS[format_name]
    _require(fmt)
    threads = threads or os.cpu_count() or 1
    path = str(path)
    if format_name == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        serve = loaded.signatures["serving_default"]
        name = next(iter(serve.structured_input_signature[1]))
        output = next(iter(serve.structured_outputs))

        def predict(batch):
            with tf.device("/CPU:0"):
                return serve(**{name: tf.constant(batch)})[output].numpy()

        predict.keep = loaded  # the functions live as long as the loaded object
        return predict
    if format_name == "tflite":
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # TensorFlow's own copy of the interpreter
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter
        interpreter = Interpreter(model_path=path, num_threads=threads)
        source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        shape = [None]

        def predict(batch):
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            if shape[0] != batch.shape:
                interpreter.resize_tensor_input(source["index"], list(batch.shape))
                interpreter.allocate_tensors()
                shape[0] = batch.shape
            interpreter.set_tensor(source["index"], batch)
            interpreter.invoke()
            return interpreter.get_tensor(target["index"]).copy()

        return predict
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: np.asarray(batch, dtype=np.float32)})[0]


def batch1_latency_ms(predict, input_shape) -> float:
    """Median milliseconds of one image through ``predict``, after warm-up."""
    image = np.random.default_rng(0).normal(size=(1, *input_shape)).astype(np.float32)
    for _ in range(LATENCY_WARMUP):
        predict(image)
    times, start = [], time.perf_counter()
    while len(times) < LATENCY_CALLS[0] or (time.perf_counter() - start < LATENCY_SECONDS
                                            and len(times) < LATENCY_CALLS[1]):
        tick = time.perf_counter()
        predict(image)
        times.append((time.perf_counter() - tick) * 1000)
    return float(statistics.median(times))


def describe_input(spec, info: dict, format_name: str, quantize: str) -> dict:
    """What a deployment must feed the exported model (``spec``: the run's zoo.runspec.RunSpec, ``info``:
    its dataset.json): the ``<file>.json`` written beside it."""
    from zoo import __version__
    from zoo.heads import head_task

    fed = spec.input(info)
    return {"format": format_name, "quantize": quantize, "run_id": spec.run_id, "backbone": spec.backbone,
            "head": spec.head, "input_shape": [None, *fed.shape], "input_dtype": "float32",
            "pixel_range": [0, 255], "max_pixel_value": fed.max_pixel_value,
            "extra_preprocessing": list(fed.study_steps),
            "preprocessing": fed.backbone_preprocessing,
            "steps": "resize the image to input_shape (bilinear, half-pixel centres), scale it to 0-255 (divide by "
                     "max_pixel_value, times 255) rounded to whole steps of 8 bits (of 16 bits where max_pixel_value "
                     "is above 255), apply extra_preprocessing, then the backbone's preprocessing "
                     "(zoo.data.decoded.stored_image, then zoo.data.prepare.Preparation.images)",
            "output": OUTPUTS[head_task(spec.head)],
            "class_names": info["class_names"], "zoo": __version__}


def _write_description(path: Path, description: dict) -> Path:
    from zoo.results import write_json

    sidecar = path.with_name(path.name + ".json")
    write_json(sidecar, description)
    return sidecar
