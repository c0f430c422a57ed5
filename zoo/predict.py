"""Prediction with a finished run's model: a few files (``zoo predict RUN IMAGE...``) or a large
image set into one Parquet or CSV file (``--output``), in this process or on a Ray cluster.

Every path goes through one ``Predictor``: the run's own decoding, scaling, resizing and
preprocessing, then its model; so an image gets the same answer whichever way it is predicted.
Inputs are image files, folders (searched recursively) or object-store prefixes
(``s3://bucket/prefix``; credentials and endpoint from the standard AWS variables, including
``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible stores). A file that cannot be read gets
its ``error`` and never stops the job.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

DECODE_THREADS = 4


def _is_remote(location: str) -> bool:
    return str(location).startswith("s3://")


def s3_filesystem():
    """pyarrow's S3 file system, configured from the standard AWS variables."""
    from urllib.parse import urlparse

    from pyarrow import fs

    options = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return fs.S3FileSystem(**options)


def _s3_key(location: str) -> str:
    return str(location)[len("s3://"):]


def list_inputs(inputs) -> list[str]:
    """The images named by ``inputs`` in a stable order: files as given, folders and s3://
    prefixes expanded to the image files under them (hidden ones left out). A name that does not
    exist is kept, so that it gets its error row, as is a photo this machine cannot read (an iPhone's HEIC),
    so that it is named with what reads it rather than passed over."""
    from zoo.data.images import is_image_file, unreadable_here

    def wanted(path: PurePosixPath) -> bool:
        return is_image_file(path) or unreadable_here(path) is not None

    found: list[str] = []
    for item in map(str, inputs):
        if _is_remote(item):
            from pyarrow import fs

            filesystem = s3_filesystem()
            prefix = _s3_key(item).rstrip("/")
            info = filesystem.get_file_info(prefix)
            if info.type == fs.FileType.File:
                found.append(item)
                continue
            entries = filesystem.get_file_info(fs.FileSelector(prefix, recursive=True, allow_not_found=True))
            found += sorted(f"s3://{e.path}" for e in entries if e.type == fs.FileType.File
                            and wanted(PurePosixPath(e.path))
                            and not any(part.startswith(".") for part in PurePosixPath(e.path).parts))
        elif Path(item).is_dir():
            root = Path(item)
            found += sorted(str(p) for p in root.rglob("*") if p.is_file() and wanted(p)
                            and not any(part.startswith(".") for part in p.relative_to(root).parts))
        else:
            found.append(item)
    return found


def read_input(location: str, filesystem=None):
    """What ``read_image`` takes for ``location``: a local path, or the object's bytes."""
    if not _is_remote(location):
        return location
    filesystem = filesystem or s3_filesystem()
    with filesystem.open_input_stream(_s3_key(location)) as stream:
        return io.BytesIO(stream.read())


def mask_name(location: str) -> str:
    """The mask file of an input: its name, prefixed by a digest of its full path so that images
    of the same name in different folders never share one."""
    digest = hashlib.sha1(str(location).encode()).hexdigest()[:12]
    return f"{digest}_{PurePosixPath(str(location)).stem}.png"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


def refuse_suite_folder(run_dir) -> None:
    """A suite's output folder given where a run's folder belongs (`zoo predict runs/quickstart photo.jpg`):
    one DataError listing its finished runs to choose from, each dataset's best first by its headline metric."""
    from zoo.errors import DataError

    run_dir = Path(run_dir)
    if (run_dir / "model.keras").is_file() or not (run_dir / "results.csv").is_file():
        return  # a run folder, or nothing zoo wrote: load_run_model names what is missing
    from zoo.metrics import METRICS
    from zoo.results import read_results
    from zoo.stats import dataset_headline_metric, recorded_dataset

    finished = read_results(run_dir)
    finished = finished[finished["status"] == "ok"]
    choices = []
    for dataset, rows in finished.groupby("dataset", sort=False):
        metric = dataset_headline_metric(dataset, rows["task"], recorded_dataset(run_dir, rows["run_id"].iloc[0]))
        ranked = rows.dropna(subset=[metric]).sort_values(metric, ascending=not METRICS.get(metric).higher_is_better)
        kept = [row for row in ranked.to_dict("records")
                if (run_dir / "runs" / row["run_id"] / "model.keras").is_file()]
        choices += [f"  {run_dir / 'runs' / row['run_id']}  ({dataset}: {metric} {row[metric]:.4f})"
                    for row in kept[:3]]
    raise DataError(f"{run_dir} is a suite's output folder; give the folder of one of its runs"
                    + (", each dataset's best first:\n" + "\n".join(choices) if choices
                       else ", once one has finished with a model"))


class Predictor:
    """A finished run's model with its input path: locations in, answers out. ``exported``: a copy of the
    model that `zoo export` wrote (LiteRT, ONNX, SavedModel) to answer with instead, in its own runtime,
    from the same prepared inputs (what a deployment would compute)."""

    def __init__(self, run_dir, exported=None):
        from zoo.results import load_run_model

        refuse_suite_folder(run_dir)
        self.run_dir = Path(run_dir)
        self.spec, self.info, self.model = load_run_model(run_dir)
        self.input = self.spec.input(self.info)
        self.class_names = self.info["class_names"]
        self.filesystem = None
        self.exported = None if exported is None else str(exported)
        self._exported_predict = None
        if exported is not None:
            from zoo.export import format_of, load_exported

            self._check_export_description(Path(exported))
            self._exported_predict = load_exported(exported, format_of(exported))

    def _check_export_description(self, exported: Path) -> None:
        """An export of another run (other classes) is refused by the description zoo export wrote beside it."""
        from zoo.errors import DataError

        try:
            described = json.loads(exported.with_name(exported.name + ".json").read_text())
        except (OSError, ValueError):
            return  # no description (renamed or copied alone): the output's width is checked at each batch
        if described.get("class_names") not in (None, list(self.class_names)):
            others = ", ".join(described["class_names"][:5]) + ("..." if len(described["class_names"]) > 5 else "")
            raise DataError(f"{exported} is the export of a model of other classes ({others}) than "
                            f"{self.run_dir}'s: give the run it was exported from")

    def outputs(self, inputs) -> np.ndarray:
        """The model's outputs (NumPy) for a batch from :meth:`model_inputs`."""
        if self._exported_predict is None:
            return np.asarray(self.model.predict_on_batch(inputs))
        import keras

        from zoo.errors import DataError

        batch = np.asarray(keras.ops.convert_to_numpy(inputs), dtype=np.float32)
        try:
            outputs = np.asarray(self._exported_predict(batch))
        except Exception as error:  # the runtime's own exception types differ by format
            raise DataError(f"{self.exported} cannot take this run's input {tuple(batch.shape[1:])} "
                            f"({_one_line(error)}): is it an export of {self.run_dir}?") from None
        if outputs.shape[-1] != len(self.class_names):
            raise DataError(f"{self.exported} answers {outputs.shape[-1]} classes where {self.run_dir} has "
                            f"{len(self.class_names)}: is it an export of this run?")
        return outputs

    def prepare(self, location: str):
        """One input as a stored row (resized and stored as the run's decoded cache stores it: what
        :meth:`model_inputs` turns into the model's input) and its original (height, width); raises
        ValueError with the reason when it cannot be."""
        from zoo.data.decoded import stored_image
        from zoo.data.images import decode_image, to_dataset_scale, unreadable_here

        try:
            if _is_remote(location) and self.filesystem is None:
                self.filesystem = s3_filesystem()
            # Decoded as the run's own images were (a large JPEG at a reduced scale); a mask is made at
            # the file's own size, whatever the scale it was decoded at.
            array, original = decode_image(read_input(location, self.filesystem),
                                           suffix=PurePosixPath(location).suffix, size=self.input.image_size)
            array = to_dataset_scale(array, self.input.max_pixel_value)
        except Exception as error:  # PIL, tifffile, S3 and OS errors all mean "unreadable"
            format_hint = unreadable_here(PurePosixPath(location))
            raise ValueError(f"cannot be read as an image ({_one_line(error)})"
                             + (f": {format_hint}" if format_hint else "")) from None
        channels = self.input.channels
        if array.shape[-1] != channels:
            if array.shape[-1] != 1:
                raise ValueError(f"has {array.shape[-1]} channels; the model expects {channels}")
            array = np.repeat(array, channels, axis=-1)
        return stored_image(array, self.input.image_size, self.input.max_pixel_value), original

    def model_inputs(self, rows: np.ndarray):
        """Stored rows (N, S, S, C) as the model's input: the training pipeline's own function
        (zoo.data.prepare), on the backend's device."""
        from zoo.data.prepare import Preparation

        preparation = Preparation(max_pixel_value=float(self.input.max_pixel_value),
                                  study_steps=tuple(self.input.study_steps),
                                  preprocessing=self.input.backbone_preprocessing)
        return preparation.images(rows)

    def answer(self, locations, top_k: int = 5, mask_dir=None, threads: int = DECODE_THREADS) -> list[dict]:
        """One answer per location, in order: ``path``, ``label`` (top-1 class), ``probability``,
        ``top_k`` ([{label, probability}], best first), ``probabilities`` ({class: probability}, every
        class in the run's order), ``error`` (None, or why it could not be predicted); segmentation adds
        ``mask`` (the file written under ``mask_dir``, or None) and reports class proportions of the image
        as its probabilities."""
        locations = [str(location) for location in locations]
        prepared = [None] * len(locations)

        def attempt(index):
            try:
                prepared[index] = self.prepare(locations[index])
            except ValueError as error:
                prepared[index] = error

        if threads > 1 and len(locations) > 1:
            with ThreadPoolExecutor(min(threads, len(locations))) as pool:
                list(pool.map(attempt, range(len(locations))))
        else:
            for index in range(len(locations)):
                attempt(index)
        good = [i for i, item in enumerate(prepared) if not isinstance(item, ValueError)]
        outputs = self.outputs(self.model_inputs(np.stack([prepared[i][0] for i in good]))) if good else []
        answers = [{"path": location, "label": None, "probability": None, "top_k": None, "error": str(item)}
                   if isinstance(item, ValueError) else None for location, item in zip(locations, prepared)]
        for output, index in zip(outputs, good):
            answers[index] = self._answer(locations[index], output, prepared[index][1], top_k, mask_dir)
        if self.segmentation:
            for item in answers:
                item.setdefault("mask", None)
        return answers

    @property
    def segmentation(self) -> bool:
        return len(self.model.outputs[0].shape) == 4

    def _answer(self, location, probabilities, original_shape, top_k, mask_dir) -> dict:
        answer = {"path": location, "error": None}
        if probabilities.ndim == 3:
            classes = probabilities.argmax(axis=-1)
            if mask_dir is not None:
                answer["mask"] = str(_write_mask(classes, original_shape, Path(mask_dir) / mask_name(location)))
            probabilities = probabilities.reshape(-1, probabilities.shape[-1]).mean(axis=0)
        answer["probabilities"] = {name: float(p) for name, p in zip(self.class_names, probabilities)}
        order = np.argsort(probabilities)[::-1][:top_k]
        answer["top_k"] = [{"label": self.class_names[i], "probability": float(probabilities[i])} for i in order]
        answer["label"], answer["probability"] = answer["top_k"][0]["label"], answer["top_k"][0]["probability"]
        return answer


def predict_images(run_dir, image_paths, top_k: int = 5, exported=None) -> list[dict]:
    """``zoo predict`` without ``--output``: top-k classes (class proportions for segmentation) of
    each input, one at a time; ``{"image", "top": [(class, probability)]}`` or ``{"image",
    "error"}`` when the file cannot be read or does not fit the model. ``exported``: see Predictor."""
    predictor = Predictor(run_dir, exported)
    answers = []
    for location in image_paths:
        answer = predictor.answer([location], top_k, threads=1)[0]
        if answer["error"]:
            answers.append({"image": str(location), "error": answer["error"]})
        else:
            answers.append({"image": str(location),
                            "top": [(item["label"], item["probability"]) for item in answer["top_k"]]})
    return answers


def _write_mask(classes: np.ndarray, shape, path: Path) -> Path:
    """Class indices at the input image's own size (nearest neighbour), as an 8- or 16-bit PNG."""
    from PIL import Image

    from zoo.results import write_atomic

    dtype = np.uint8 if classes.max(initial=0) < 256 else np.uint16
    mask = Image.fromarray(classes.astype(dtype)).resize((int(shape[1]), int(shape[0])), Image.NEAREST)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())
    return path


def parquet_schema(segmentation: bool, class_names):
    import pyarrow as pa

    fields = [("path", pa.string()), ("label", pa.string()), ("probability", pa.float64()),
              ("top_k", pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float64())]))),
              ("probabilities", pa.struct([(name, pa.float64()) for name in class_names])),
              ("error", pa.string())]
    return pa.schema(fields + ([("mask", pa.string())] if segmentation else []))


def answers_table(answers: list[dict], segmentation: bool, class_names):
    import pyarrow as pa

    schema = parquet_schema(segmentation, class_names)
    return pa.Table.from_pylist([{name: a.get(name) for name in schema.names} for a in answers], schema=schema)


def mask_folder(output: Path) -> Path:
    """Where the masks of a segmentation run's predictions go: beside the Parquet file."""
    return output.with_name(output.stem + "_masks")


class PredictBatches:
    """Ray Data's callable class: loads the run's model once per actor, answers a batch of paths."""

    def __init__(self, run_dir: str, top_k: int, mask_dir: str | None, exported: str | None = None):
        from zoo.runtime import take_gpu_memory_on_demand

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        take_gpu_memory_on_demand()  # gpus_per_worker below 1 puts several actors on one GPU
        self.predictor = Predictor(run_dir, exported)
        self.top_k, self.mask_dir = top_k, mask_dir

    def __call__(self, batch):
        answers = self.predictor.answer(list(batch["path"]), self.top_k, self.mask_dir)
        return answers_table(answers, self.predictor.segmentation, self.predictor.class_names)


OUTPUT_FORMATS = (".parquet", ".csv")


def predict_to_file(run_dir, inputs, output, batch_size: int = 64, top_k: int = 5, executor: str = "local",
                    address: str | None = "auto", gpus_per_worker: float | None = None,
                    workers: int | None = None, exported=None) -> dict:
    """Predict every image of ``inputs`` into ``output``, written to a temporary file and renamed when
    complete; segmentation runs also write one mask per image into ``<output stem>_masks/``.

    ``.parquet``: one row per image (:func:`parquet_schema`), a file that cannot be read included with
    its ``error``. ``.csv``: a submission table, ``sample_id`` (the file's name without its extension)
    and one column per class in the run's order, the image's probabilities (a segmentation run's class
    proportions: the land-cover challenge's submission format); only images that were predicted.

    Returns {images, failed, failures ([(path, why)]), seconds, images_per_second, first_batch_seconds,
    steady_images_per_second}: ``seconds`` is the whole call; the first batch pays for loading the model
    and compiling its step, so the rate after it (None with a single batch) is what more images cost.
    ``exported``: see Predictor."""
    from zoo.errors import ConfigError

    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor {executor!r}: use local or ray")
    if batch_size < 1 or top_k < 1:
        raise ConfigError("--batch-size and --top-k must be at least 1")
    output = Path(output)
    if output.suffix not in OUTPUT_FORMATS:
        raise ConfigError(f"--output {output}: give a .parquet file (a row per image, errors included) or a .csv "
                          f"file (sample_id and a column per class)")
    started = time.perf_counter()
    locations = list_inputs(inputs)
    if not locations:
        raise ConfigError(f"no image files under {', '.join(map(str, inputs))}")
    if output.suffix == ".csv":
        _refuse_shared_names(locations, output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.partial")
    counts, failures = {"images": 0, "failed": 0}, []
    writer, first = None, None  # first: (seconds until the first batch was written, its rows)
    try:
        for table in (_local_tables if executor == "local" else _ray_tables)(
                run_dir, locations, output, batch_size, top_k, address, gpus_per_worker, workers, exported):
            if writer is None:
                writer = (_ParquetWriter if output.suffix == ".parquet" else _CsvWriter)(temporary, table.schema)
            writer.write(table)
            counts["images"] += table.num_rows
            if first is None:
                first = (time.perf_counter() - started, table.num_rows)
            failures += [(row["path"], row["error"]) for row in table.select(["path", "error"]).to_pylist()
                         if row["error"] is not None]
        counts["failed"] = len(failures)
        writer.close()
        writer = None
        os.replace(temporary, output)
    finally:
        if writer is not None:
            writer.close()
        temporary.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    after_first = counts["images"] - first[1]
    return {**counts, "failures": failures, "seconds": seconds, "images_per_second": counts["images"] / seconds,
            "first_batch_seconds": first[0],
            "steady_images_per_second": after_first / (seconds - first[0]) if after_first else None}


def sample_id(location: str) -> str:
    """A CSV row's name for an image: its file name without the extension (``10000`` for
    ``test/images/10000.tif``), as the land-cover challenge and most submission formats name them."""
    return PurePosixPath(str(location)).stem


def _refuse_shared_names(locations, output: Path) -> None:
    from zoo.errors import ConfigError

    seen = {}
    for location in locations:
        other = seen.setdefault(sample_id(location), location)
        if other != location:
            raise ConfigError(f"{other} and {location} would both be row {sample_id(location)!r} of {output}: a "
                              f"CSV names each image by its file name without the extension. Predict one folder "
                              f"at a time, or write a .parquet file (rows named by path)")


class _ParquetWriter:
    def __init__(self, path: Path, schema):
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(path, schema)

    def write(self, table) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()


class _CsvWriter:
    """sample_id and one column per class (the probabilities struct's fields, in the run's order); the
    rows of images that could not be predicted are left out (the command names them)."""

    def __init__(self, path: Path, schema):
        import csv

        self._file = open(path, "w", newline="", encoding="utf-8")
        self._classes = [field.name for field in schema.field("probabilities").type]
        self._csv = csv.writer(self._file)
        self._csv.writerow(["sample_id", *self._classes])

    def write(self, table) -> None:
        for row in table.select(["path", "probabilities", "error"]).to_pylist():
            if row["error"] is None:
                # csv writes a float's shortest round-trip form (repr): the probabilities in full
                self._csv.writerow([sample_id(row["path"]), *(row["probabilities"][name] for name in self._classes)])

    def close(self) -> None:
        self._file.close()


def _local_tables(run_dir, locations, output, batch_size, top_k, address, gpus, workers, exported):
    predictor = Predictor(run_dir, exported)
    mask_dir = mask_folder(output) if predictor.segmentation else None
    for start in range(0, len(locations), batch_size):
        answers = predictor.answer(locations[start:start + batch_size], top_k, mask_dir)
        yield answers_table(answers, predictor.segmentation, predictor.class_names)


def _ray_tables(run_dir, locations, output, batch_size, top_k, address, gpus_per_worker, workers, exported):
    from zoo.harness.ray_executor import cluster_slots, connect

    ray = connect(address)
    import ray.data

    slots, gpus = cluster_slots(ray.cluster_resources(), 1, gpus_per_worker)
    workers = workers or max(1, slots)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in the order of the inputs, as locally
    context.enable_progress_bars = False
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    mask_dir = str(mask_folder(output)) if _run_task(run_dir) == "segmentation" else None
    dataset = ray.data.from_items([{"path": location} for location in locations],
                                  override_num_blocks=max(1, min(len(locations) // batch_size, 4 * workers)))
    dataset = dataset.map_batches(PredictBatches, fn_constructor_kwargs={"run_dir": str(Path(run_dir).resolve()),
                                                                         "top_k": top_k, "mask_dir": mask_dir,
                                                                         "exported": exported and str(
                                                                             Path(exported).resolve())},
                                  batch_size=batch_size, batch_format="numpy",
                                  compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, num_gpus=gpus)
    yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")


def _run_task(run_dir) -> str:
    from zoo.heads import head_task
    from zoo.runspec import RunSpec

    return head_task(RunSpec.load(run_dir).head)
