"""Deployment flows over run folders: re-open a finished run, export its model with its input description,
and measure each exported form on the run's test split (size, CPU latency, score after conversion).

zoo.export converts a model and knows nothing of runs; this module brings the run (its data, its test
split, its results row) to it. The worker calls :func:`deployment_figures` after training; ``zoo export``
calls :func:`export_run` and :func:`measure_finished` on finished runs.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from zoo.errors import ConfigError
from zoo.export import (CALIBRATION_IMAGES, FIDELITY_METRIC, LOWER_IS_BETTER, ExportFailed, _one_line,
                        _write_description, batch1_latency_ms, check_export, default_path, describe_input,
                        export_model, load_exported, megabytes)
from zoo.results import RESULT_COLUMNS, load_run_model, read_result, read_results, write_json


def reopen_run(run_dir):
    """A finished run's data and model (a zoo.harness.stages.OpenedRun), ready to export and measure;
    writes nothing to the run. On this process's backend, whichever trained the run: exports are
    TensorFlow's converters."""
    from zoo.harness.stages import reopen

    return reopen(run_dir, any_backend=True)


def calibration_images(run, count: int = CALIBRATION_IMAGES):
    """A function yielding up to ``count`` of the run's training images, unaugmented and
    preprocessed as in training, one at a time (1, H, W, C): int8's calibration set."""

    import keras

    def images():
        given = 0
        for batch, rows in run.data.pipeline("train", False, augment=False).with_rows():
            for image in keras.ops.convert_to_numpy(batch[0])[:rows].astype(np.float32):
                if given == count:
                    return
                given += 1
                yield image[None]

    return images


def export_run(run_dir, format_name: str, quantize: str = "none", output=None, run=None) -> dict:
    """``zoo export``: the run's model in ``format_name`` at ``output`` (default
    RUN/export/...), with its input description beside it. Returns path, megabytes, seconds."""
    check_export([format_name], quantize, "zoo export")
    if run is None:
        run = reopen_run(run_dir) if quantize == "int8" else _spec_and_model(run_dir)
    path = Path(output) if output else default_path(run_dir, format_name, quantize)
    start = time.perf_counter()
    export_model(run.model, format_name, path, quantize,
                 calibration_images(run) if quantize == "int8" else None)
    seconds = time.perf_counter() - start
    info = json.loads((Path(run_dir) / "dataset.json").read_text())
    _write_description(path, describe_input(run.spec, info, format_name, quantize))
    return {"path": path, "megabytes": megabytes(path), "seconds": seconds}


def _spec_and_model(run_dir):
    """A run reduced to its spec and model: enough to export without int8 calibration."""
    from types import SimpleNamespace

    spec, _, model = load_run_model(run_dir)
    return SimpleNamespace(spec=spec, model=model)


def deployment_figures(run, export: dict, reference: dict) -> dict:
    """Export ``run``'s model in each of ``export["formats"]`` and measure each on the run's test
    split: ``<format>_megabytes``, ``<format>_latency_ms`` (batch 1, CPU), ``<format>_accuracy``
    (the task's fidelity metric after conversion) and ``<format>_accuracy_drop`` (the Keras
    model's score in ``reference`` minus it, so positive means the conversion lost); a failure
    becomes ``<format>_error`` and never raises."""
    quantize = export["quantize"]
    metric = FIDELITY_METRIC[run.task]
    figures = {"export_metric": metric}
    input_shape = run.spec.input(run.info).shape
    for name in export["formats"]:
        try:
            exported = export_run(run.dir, name, quantize, run=run)
            predict = load_exported(exported["path"], name)
            result, _ = run.score(predict, run.data.pipelines["test"])
            score = float(result[metric])
            drop = reference[metric] - score
            figures.update({f"{name}_quantize": quantize, f"{name}_megabytes": exported["megabytes"],
                            f"{name}_latency_ms": batch1_latency_ms(predict, input_shape),
                            f"{name}_accuracy": score,
                            f"{name}_accuracy_drop": -drop if metric in LOWER_IS_BETTER else drop,
                            f"{name}_error": None})
        except Exception as error:  # recorded in the row; the run itself succeeded
            figures[f"{name}_quantize"] = quantize
            figures[f"{name}_error"] = str(error) if isinstance(error, ExportFailed) else _one_line(error)
    return figures


def deployment_figures_on_tensorflow(run_dir, task: str, export: dict, reference: dict) -> dict:
    """:func:`deployment_figures` of a run trained on JAX or PyTorch, whose model.keras is already in
    ``run_dir``: computed in a child process on Keras's TensorFlow backend, where the converters run
    (TensorFlow installed). A child that fails leaves its reason under each format; this never raises."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile

    from zoo.runtime import take_gpu_memory_on_demand

    metric = FIDELITY_METRIC[task]
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    take_gpu_memory_on_demand(env)  # beside the run's own process, which holds the GPU's memory
    with tempfile.TemporaryDirectory() as scratch:
        request, answer = Path(scratch) / "request.json", Path(scratch) / "figures.json"
        request.write_text(json.dumps({"export": export, "reference": {metric: reference[metric]}}))
        child = subprocess.run([sys.executable, "-m", "zoo.harness.deploy", str(run_dir), str(request), str(answer)],
                               env=env, stdin=subprocess.DEVNULL)
        if child.returncode == 0 and answer.is_file():
            return json.loads(answer.read_text())
    ended = (f"killed by {signal.Signals(-child.returncode).name}" if child.returncode < 0
             else f"exit status {child.returncode}")
    reason = f"the export process on TensorFlow's backend ended with {ended}; its lines above say why"
    figures = {"export_metric": metric}
    for name in export["formats"]:
        figures.update({f"{name}_quantize": export["quantize"], f"{name}_error": reason})
    return figures


def measure_finished(run_dir, export: dict) -> dict:
    """Deployment figures of a finished run added afterwards (``zoo export ... --measure``):
    exported, measured on its test split, and written into its metrics.json and result.json."""
    run_dir = Path(run_dir)
    row = read_result(run_dir)
    if not row or row.get("status") != "ok":
        raise ConfigError(f"{run_dir} is not a finished successful run: nothing to measure")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    figures = deployment_figures(reopen_run(run_dir), export, metrics)
    write_json(run_dir / "metrics.json", {**metrics, **figures})
    write_json(run_dir / "result.json", {**row, **{k: v for k, v in figures.items() if k in RESULT_COLUMNS}})
    return figures


def finished_runs(out_dir) -> list[Path]:
    """The successful runs of a results folder, in results.csv's order."""
    table = read_results(out_dir)
    folders = [Path(out_dir) / "runs" / run_id for run_id in table.loc[table["status"] == "ok", "run_id"]]
    return [folder for folder in folders if (read_result(folder) or {}).get("status") == "ok"]


def missing_figures(row: dict, export: dict) -> list[str]:
    """The formats of ``export`` a finished run's row has no figures (nor error) for."""
    return [name for name in export["formats"] if row.get(f"{name}_quantize") != export["quantize"]
            or not (_present(row.get(f"{name}_megabytes")) or _present(row.get(f"{name}_error")))]


def _present(value) -> bool:
    return value is not None and value == value and value != ""


def _figures_in_this_process(run_dir: str, request: str, answer: str) -> None:
    """The child of :func:`deployment_figures_on_tensorflow`: the figures of ``request`` (export and
    reference score) written as JSON to ``answer``."""
    asked = json.loads(Path(request).read_text())
    figures = deployment_figures(reopen_run(run_dir), asked["export"], asked["reference"])
    Path(answer).write_text(json.dumps(figures, default=float))


if __name__ == "__main__":
    import sys

    _figures_in_this_process(*sys.argv[1:4])
