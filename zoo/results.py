"""The results store: one folder per run and results.csv, an index rebuilt from those folders.

Every file is written atomically (temporary file, fsync, rename), so a suite killed at any
moment leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

RESULTS_VERSION = 3
# What each results version changed in the recorded scores, and of which tasks: finished runs of an earlier
# version are named where they stand beside runs scored since (zoo run, zoo plan, the report, zoo serve),
# since the two do not compare.
SCORE_CHANGES = {
    3: (("segmentation", "distribution"),
        "its land-cover KL score normalised each tile's class proportions before dropping the ignored classes "
        "(a model's share on clouds counted as missing from the other classes); runs scored since drop them "
        "first, as the challenge's scorer does"),
}
_UMASK = os.umask(0)
os.umask(_UMASK)
# Column -> meaning. Empty cells mean "does not apply" (e.g. miou for classification).
RESULT_COLUMNS = {
    "run_id": "unique run name: dataset-backbone-head[-swept=value]-s<seed>-<config hash>",
    "suite": "suite name",
    "dataset": "dataset name",
    "task": "classification | segmentation | distribution",
    "backbone": "backbone name",
    "head": "head name",
    "weights": "none | imagenet | weights file",
    "trainable": "frozen | all | top:N (then '+finetune top:N' when a second phase ran)",
    "seed": "random seed of initialisation, shuffling and augmentation",
    "split_seed": "seed of the carved validation/test split: runs with the same one are tested on the same images",
    "swept": "the swept train keys of this run, as key=value;...",
    "overrides": "the suite's overrides applied to this run, as '#index key=pattern' (empty when none)",
    "status": "ok | failed | interrupted (stopped by Ctrl-C or SIGTERM; the next `zoo run` redoes it)",
    "error": "why the run failed or stopped (empty when ok)",
    "accuracy": "test accuracy (pixel accuracy for segmentation)",
    "accuracy_ci_low": "lower end of the 95 % bootstrap interval of accuracy over test examples",
    "accuracy_ci_high": "upper end of that interval",
    "top5_accuracy": "test top-5 accuracy (classification, more than 5 classes; empty otherwise)",
    "macro_precision": "test precision averaged over classes",
    "macro_recall": "test recall averaged over classes",
    "macro_f1": "test F1 averaged over classes",
    "miou": "test mean IoU over non-ignored classes (segmentation)",
    "miou_ci_low": "lower end of the 95 % bootstrap interval of mIoU over test tiles",
    "miou_ci_high": "upper end of that interval",
    "kl_score": "land-cover KL score of class proportions, lower is better (segmentation, distribution)",
    "kl_score_ci_low": "lower end of the 95 % bootstrap interval of the KL score over test tiles",
    "kl_score_ci_high": "upper end of that interval",
    "test_examples": "test images (tiles for segmentation) the metrics were computed on",
    "accuracy_smoothed": "test accuracy after smoothing along tracks (datasets with tracks)",
    "train_seconds": "wall-clock seconds of all training epochs, both phases",
    "first_epoch_seconds": "seconds of the first epoch, which includes tracing and compilation",
    "epoch_seconds": "median seconds of the later epochs (empty with a single epoch)",
    "eval_seconds": "seconds to predict the whole test split (the head alone on cached features when features "
                    "is not off)",
    "features": "off | computed | reused: whether the head trained (and was tested) on cached frozen-backbone "
                "features",
    "feature_seconds": "seconds to compute the cached features (0 when reused; not part of train_seconds)",
    "run_seconds": "wall-clock seconds of the whole run in its process: opening the data, building, training, "
                   "scoring, measuring speed, exporting and saving (metrics.json's stage_seconds splits them)",
    "precise_bn_batches": "training batches over which BatchNorm population statistics were recomputed before "
                          "evaluation (0: off, or no BatchNorm layer trained)",
    "images_per_second": "inference throughput at the run's batch size, after warm-up",
    "latency_ms": "median inference latency of one image (batch 1), after warm-up",
    "speed_measured_in": "run whose measurement of images_per_second and latency_ms this row reuses (the same "
                         "architecture, input, batch, precision and device); empty when measured in this run",
    "export_metric": "the score measured after conversion: accuracy (classification), miou (segmentation), "
                     "kl_score (distribution)",
    **{column: text for name, label, runtime in (("saved_model", "SavedModel", "TensorFlow"),
                                                 ("tflite", "LiteRT model", "the LiteRT interpreter"),
                                                 ("onnx", "ONNX model", "ONNX Runtime"))
       for column, text in {
           f"{name}_quantize": f"quantization of the exported {label} the {name}_ figures are of: none | float16 | int8",
           f"{name}_megabytes": f"size of the exported {label} on disk",
           f"{name}_latency_ms": f"median batch-1 latency of the exported {label} in {runtime}, on CPU (every core), "
                                 f"after warm-up",
           f"{name}_accuracy": f"export_metric of the exported {label} on the test split",
           f"{name}_accuracy_drop": f"the Keras model's export_metric minus the exported {label}'s (for kl_score the "
                                    f"other way round): positive means the conversion lost",
           f"{name}_error": f"why the {label} export or its measurement failed (the run itself is ok); empty when it "
                            f"worked"}.items()},
    "params": "total parameters",
    "trainable_params": "trainable parameters in the (last) training phase",
    "model_megabytes": "size of the saved .keras model on disk",
    "epochs_run": "epochs actually trained (early stopping may cut them)",
    "batch_size": "batch size (global, across replicas)",
    "image_size": "input height and width in pixels",
    "device": "device the run trained on (GPU name or CPU model, with count)",
    "host": "machine (host name) the run executed on; with Ray, the cluster node's",
    "runs_at_once": "runs its machine executed at once for the suite (`zoo run --workers N`); above 1 its train, "
                    "epoch and run seconds include sharing the device and cores with the others (images/s and "
                    "latency are measured with them paused); empty with Ray (the cluster places runs)",
    "precision": "float32 | mixed_float16 | mixed_bfloat16",
    "xla": "whether the train step was XLA-compiled (train.xla on TensorFlow, always on JAX), as Keras resolved it",
    "compilations": "XLA compilations the run made, counted by the backend (JAX); 0 when every step came from "
                    "the output folder's compilation cache; empty on TensorFlow and PyTorch (not counted)",
    "compile_seconds": "seconds the run spent tracing, lowering and compiling its steps and reading compiled "
                       "ones from the cache (JAX's own timings; empty where not counted)",
    "compile_cache_hits": "compiled steps the run took from the output folder's persistent compilation cache (JAX)",
    "input_cache": "where the run's images came from: built (decoded into the output folder's cache by this run), "
                   "reused (decoded once by an earlier run), off (decoded every epoch: train.cache none, or no room)",
    "backend": "Keras backend the run trained on, with its library's version (e.g. 'tensorflow 2.21.0'); "
               "compare times only between runs with the same backend and device",
    "finished_at": "UTC time the run ended",
    "results_version": "the version of zoo's results that scored the run (zoo.results.SCORE_CHANGES: what each "
                       "changed); runs of different versions may not compare",
}


def write_atomic(path, content) -> None:
    """Write text or bytes to ``path`` so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are for sharing
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path, value) -> None:
    write_atomic(path, json.dumps(value, indent=2, default=_to_plain) + "\n")


def _to_plain(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


# What a successful run leaves besides result.json; if any is missing or unreadable the run
# counts as unfinished: `zoo run` redoes it and reports leave it out, naming it.
OK_RUN_FILES = ("run.json", "metrics.json", "dataset.json")


def unreadable_files(run_dir) -> list[str]:
    """The files of a successful run folder that are missing or are not valid JSON."""
    bad = []
    for name in OK_RUN_FILES:
        try:
            json.loads((Path(run_dir) / name).read_text())
        except (OSError, ValueError):
            bad.append(name)
    return bad


def read_result(run_dir) -> dict | None:
    """The results row a finished run wrote last, or None if it has not finished (or its
    files cannot be read: then it is as good as unfinished)."""
    path = Path(run_dir) / "result.json"
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(row, dict) or "run_id" not in row:
        return None
    if row.get("status") == "ok" and unreadable_files(run_dir):
        return None
    return row


def run_row(spec, task: str, status: str, error: str = "", values: dict | None = None) -> dict:
    """A results row from a run's spec (a zoo.runspec.RunSpec); ``values`` fills the measured columns.

    The driver builds the rows of runs whose process died or was stopped from the spec alone,
    so that it never needs Keras."""
    import datetime
    import socket
    from importlib.metadata import version

    values = values or {}
    row = {column: values.get(column) for column in RESULT_COLUMNS}
    row.update({"run_id": spec.run_id, "suite": spec.suite, "dataset": spec.dataset["name"], "task": task,
                "backbone": spec.backbone, "head": spec.head, "weights": spec.weights,
                "trainable": values.get("trainable", spec.trainable), "seed": spec.seed,
                "split_seed": spec.split_seed,
                "swept": ";".join(f"{k}={v}" for k, v in sorted(spec.swept.items())),
                "overrides": "; ".join(spec.overrides or []), "status": status, "error": error,
                "epochs_run": values.get("epochs_run", 0),
                "batch_size": values.get("batch_size") or spec.train.batch_size,
                "image_size": spec.train.image_size,
                "host": values.get("host") or socket.gethostname(),
                "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    row.update(results_version=RESULTS_VERSION, keras=version("keras"))
    return row


def score_changes_since(version, task: str) -> list[str]:
    """What changed in the recorded scores of a ``task`` run since results ``version`` (a row's
    ``results_version``; none recorded: before versions were kept)."""
    try:
        version = int(version)
    except (TypeError, ValueError):
        version = 1
    return [text for changed_at, (tasks, text) in sorted(SCORE_CHANGES.items())
            if changed_at > version and task in tasks]


def older_score_notes(rows, command: str = "zoo run SUITE") -> list[str]:
    """One line per dataset whose finished runs (result rows: dicts) include some scored by an older zoo in
    a way that changed since: which, what changed, how to score them again."""
    by_dataset: dict[str, list] = {}
    for row in rows:
        changes = score_changes_since(row.get("results_version"), str(row.get("task")))
        if changes and row.get("status") == "ok":
            by_dataset.setdefault(str(row["dataset"]), []).append((row, changes))
    notes = []
    for dataset, entries in by_dataset.items():
        versions = sorted({str(row.get("results_version") or "1") for row, _ in entries})
        changes = list(dict.fromkeys(text for _, texts in entries for text in texts))
        notes.append(f"{len(entries)} finished run(s) of {dataset} were scored by an older zoo (results version "
                     f"{', '.join(versions)}): {'; '.join(changes)}. Their scores do not compare with "
                     f"those of runs scored since: `{command} --force --only '{dataset}-*'` trains and scores them "
                     f"again")
    return notes


def write_results_csv(out_dir, run_ids) -> Path:
    """Rebuild OUT/results.csv from the run folders of ``run_ids`` (finished ones only).

    Reading the folders and writing the table happen under a lock on OUT/.results.lock: with
    several processes finishing runs in one folder, the last rebuild sees every run folder
    renamed before it, so no row is lost."""
    import fcntl

    import pandas as pd

    path = Path(out_dir) / "results.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(out_dir) / ".results.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [row for row in (read_result(Path(out_dir) / "runs" / run_id) for run_id in run_ids) if row]
        frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
        write_atomic(path, frame.to_csv(index=False))
    return path


STATUSES = ("ok", "failed", "interrupted")


def read_results(out_dir):
    """OUT/results.csv as a pandas DataFrame (with the documented columns), exactly as written."""
    import pandas as pd

    path = Path(out_dir) / "results.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `zoo run SUITE --out {out_dir}` first")
    try:
        return pd.read_csv(path, dtype={"error": str, "swept": str, "overrides": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        from zoo.errors import DataError

        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path} cannot be read as a table ({reason}); it is an index of the run folders: "
                        f"rebuild it with `zoo run {Path(out_dir) / 'suite.yaml'} --out {out_dir}` "
                        f"(finished runs are kept, nothing is retrained)") from None


def load_runs(out_dir):
    """The rows of results.csv that are runs, for reports: each must name a run folder whose own
    row (result.json) it is, and a successful run's files must be readable. Returns the rows
    (values from the run folders, typed as the schema says) and one note per row left out."""
    import pandas as pd

    table = read_results(out_dir)
    rows, notes = [], []
    for line, (_, entry) in enumerate(table.iterrows(), start=2):
        run_id = entry.get("run_id")
        if not isinstance(run_id, str) or entry.get("status") not in STATUSES \
                or "/" in run_id or run_id.startswith("."):
            shown = ",".join("" if pd.isna(v) else str(v) for v in entry.tolist()).rstrip(",")[:60]
            notes.append(f"line {line} of results.csv is not a run ({shown!r}): ignored")
            continue
        run_dir = Path(out_dir) / "runs" / run_id
        row = read_result(run_dir)
        if row is None or row.get("run_id") != run_id:
            bad = unreadable_files(run_dir) if (run_dir / "result.json").is_file() else ["result.json"]
            notes.append(f"run {run_id} is left out: {', '.join(bad) or 'result.json'} in {run_dir} cannot be "
                         f"read; `zoo run` redoes it")
            continue
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    for column in ("seed", "split_seed", "epochs_run", "batch_size", "image_size"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in ("error", "swept", "overrides"):
        frame[column] = frame[column].fillna("").astype(str)
    return frame, notes


def _read_json(path: Path, what: str) -> dict:
    from zoo.errors import DataError

    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} is missing: {what}") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path} cannot be read ({str(error).splitlines()[0]}): {what}") from None


def load_run_model(run_dir):
    """A finished run's spec (a zoo.runspec.RunSpec), dataset info (dataset.json's dict) and model, or one
    DataError naming the broken file."""
    import keras

    from zoo.errors import DataError

    run_dir = Path(run_dir)
    redo = f"the run folder is damaged; run its suite again with `zoo run SUITE --only {run_dir.name} --force`"
    if not (run_dir / "model.keras").is_file():
        raise DataError(f"{run_dir} holds no model.keras: give a finished run folder, e.g. runs/<suite>/runs/<run_id>")
    from zoo.runspec import RunSpec

    spec = RunSpec.load(run_dir)
    info = _read_json(run_dir / "dataset.json", redo)
    from zoo.backbones import BACKBONES

    if spec.backbone in BACKBONES and BACKBONES.get(spec.backbone).hub is not None:
        from zoo.backbones.hub import _keras_hub, zoo_layers

        _keras_hub()  # keras-hub's layer classes and zoo's, registered for loading
        zoo_layers()
    import zoo.losses  # noqa: F401  (registers the losses a model may have been compiled with)
    from zoo.runtime import initial_values_on_host

    try:
        with initial_values_on_host():  # the layers' first values, replaced by the saved ones at once
            model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    except Exception as error:  # zip, HDF5 and deserialisation errors all mean "damaged"
        raise DataError(f"{run_dir / 'model.keras'} cannot be loaded ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:160] if str(error) else 'no detail'}): {redo}") from None
    return spec, info, model
