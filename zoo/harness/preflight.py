"""Before any run: is everything the runs need there (readiness), and what will the suite cost (plan)?

A study is hours of GPU time; its mistakes must surface in seconds, not as dozens of failed
runs. ``check_readiness`` opens each dataset the pending runs use and looks for each ImageNet
weights file, and returns every problem at once with the command that fixes it; the runner
refuses to start (exit 2, no run folder written) while any remains. ``plan`` lists every run
with its status and estimates the pending ones from a short measurement of each distinct
architecture on this device.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from zoo.errors import ConfigError, DataError
from zoo.runtime import installed
from zoo.weights import OFFLINE_ENV, downloads_allowed, reachable

TFDS_SOURCES = ("tfds", "landcover_ens")


class NotReadyError(DataError):
    """The suite cannot start; the message lists every problem with its fix."""


@dataclass(frozen=True)
class Problem:
    subject: str  # what is missing: "dataset stanford_dogs", "weights resnet50", "package tensorflow-datasets"
    message: str  # why, with the file or folder
    fix: str      # the command that fixes it


def _dataset_key(dataset: dict) -> str:
    return json.dumps(dataset, sort_keys=True, default=str)


def open_datasets(runs, cache_dir=None) -> tuple[dict, list[Problem]]:
    """Each distinct dataset of ``runs`` opened (keyed by its configuration), and the problems of
    those that cannot be."""
    from zoo.data.sources import open_source

    sources, problems = {}, []
    for run in runs:
        key = _dataset_key(run.dataset)
        if key in sources or any(p.subject == f"dataset {run.dataset['name']}" for p in problems):
            continue
        name, kind = run.dataset["name"], run.dataset.get("source")
        missing = [m for m in ("tensorflow", "tensorflow_datasets") if not installed(m)]
        if kind in TFDS_SOURCES and missing:
            packages = " and ".join(m.replace("_", "-") for m in missing)
            problems.append(Problem(f"dataset {name}", f"it is read through tensorflow-datasets, which needs "
                                    f"{packages}, not installed here (the embedded synthetic datasets and your own "
                                    f"folders need neither)", f"pip install {' '.join(m.replace('_', '-') for m in missing)}"))
            continue
        try:
            sources[key] = open_source(run.dataset, cache_dir=cache_dir)
        except (DataError, ConfigError, OSError) as error:
            if isinstance(error, ConfigError):  # the entry itself says something impossible
                fix = f"fix the suite's entry of dataset {name!r}"
            elif kind == "landcover_ens":
                fix = ("zoo data prepare landcover_ens --data-dir DIR  (DIR: the unzipped challenge download "
                       "holding train/ and test/)")
            elif kind in TFDS_SOURCES:
                fix = f"zoo data prepare {name}"
            else:
                fix = f"fix or point `path:` of dataset {name!r} at a readable folder"
            problems.append(Problem(f"dataset {name}", str(error).split(" Run `zoo data prepare")[0], fix))
            continue
        if run.postprocess and sources[key].tracks("train") is None:
            problems.append(Problem(f"dataset {name}", "postprocess smooths predictions along tracks, but its "
                                    "manifest has no track_id and position columns", "add those columns (each "
                                    "point's track and its order along it), or remove postprocess from the suite"))
    return sources, problems


def weights_problems(runs) -> list[Problem]:
    """Pretrained weights (ImageNet files, keras-hub presets) that are neither on disk nor downloadable
    from here."""
    from zoo.backbones import BACKBONES
    from zoo.weights import candidate_paths, file_matches_hash, weights_file

    problems = []
    pretrained = [r for r in runs if r.weights == "imagenet"]
    for name in sorted({r.backbone for r in pretrained}):
        spec = BACKBONES.get(name)
        if spec.hub is not None:
            problems += preset_problems(spec, [r.backbone_options for r in pretrained if r.backbone == name])
            continue
        weights = weights_file(spec)
        paths = candidate_paths(weights)
        if any(p.is_file() and file_matches_hash(p, weights.file_hash) for p in paths):
            continue
        if downloads_allowed():
            if reachable(weights.url):
                continue  # downloaded (and hash-checked) by the first run that needs it
            reason = f"{urlparse(weights.url).hostname} cannot be reached"
        else:
            reason = f"downloads are off ({OFFLINE_ENV}=1)"
        problems.append(Problem(
            f"weights {name}", f"{weights.file_name} is not in {' or '.join(str(p.parent) for p in paths)} and "
            f"{reason}", fetch_fix(name)))
    return problems


def fetch_fix(name: str) -> str:
    """The fix for pretrained weights missing here, CNN files and keras-hub presets alike."""
    from zoo.weights import WEIGHTS_DIR_ENV

    return f"zoo weights fetch '{name}' --dest DIR on a connected machine, then export {WEIGHTS_DIR_ENV}=DIR here"


def preset_problems(spec, options_of_runs) -> list[Problem]:
    """The keras-hub preset of ``spec`` for each distinct ``backbone_options`` of its runs: found complete
    on disk, or downloadable by keras-hub from here; else one problem naming it, its size and the fix."""
    from zoo.weights import WEIGHTS_DIR_ENV, preset_availability, preset_download_size

    if not installed("keras_hub"):
        return [Problem("package keras-hub", f"{spec.name} comes from keras-hub, which is not installed here",
                        "pip install -e '.[hub]' (or pip install keras-hub)")]
    for options in {json.dumps(o, sort_keys=True): o for o in options_of_runs}.values():
        location, rejected, blocker = preset_availability(spec, options)
        if location is None:
            message = (f"keras-hub preset {spec.hub.preset} ({preset_download_size(spec)}) is neither in "
                       f"${WEIGHTS_DIR_ENV}/{spec.hub.preset} nor in keras-hub's cache, and {blocker}"
                       + "".join(f"; rejected {r}" for r in rejected))
            return [Problem(f"weights {spec.name}", message, fetch_fix(spec.name))]
    return []


BACKEND_PACKAGES = {"tensorflow": ("tensorflow", "pip install tensorflow"),
                    "jax": ("jax", "pip install -e '.[jax]' (on an NVIDIA GPU: pip install 'jax[cuda12]')"),
                    "torch": ("torch", "pip install torch (https://pytorch.org for the build that fits your GPU)")}


def backend_problems(runs) -> list[Problem]:
    """Keras backends asked for by ``train.backend`` that are not installed here."""
    problems = []
    for backend in sorted({run.train.backend for run in runs} - {None}):
        module, fix = BACKEND_PACKAGES[backend]
        if not installed(module):
            problems.append(Problem(f"package {module}", f"train.backend: {backend} needs {module}, which is not "
                                    f"installed in this environment", fix))
    return problems


# Keras's backends against timm on one NVIDIA H200 (benchmarks/vs_timm.py at 224 px, batch 64, mixed
# precision; Keras 3.15.1, JAX 0.11.2, PyTorch 2.11): zoo's images/s over timm's. PyTorch: 2026-11, recorded
# in issue 31; JAX: 2026-11-30, mobilenet_v2, resnet50 and densenet121 (reports/gpu-1x-nvidia-h200.csv).
GPU_SPEED_VS_TIMM = {"torch": {"inference": "0.07-0.09x", "training": "0.13x"},
                     "jax": {"inference": "0.81-1.41x", "training": "1.32-1.98x"}}


def slow_backend_warnings(runs, gpu: str | None = None) -> list[str]:
    """One line when runs train with Keras's PyTorch backend on an NVIDIA GPU (``gpu``: the device file
    that shows one, found when None), where it measured about a tenth of the JAX backend's speed; nothing
    on CPUs, where it is not the slower one."""
    import os

    from zoo.console import nvidia_gpu_present

    gpu = gpu or nvidia_gpu_present()
    slow = [run for run in runs if (run.train.backend or os.environ.get("KERAS_BACKEND")) == "torch"]
    if not gpu or not slow:
        return []
    torch, jax = GPU_SPEED_VS_TIMM["torch"], GPU_SPEED_VS_TIMM["jax"]
    return [f"warning: {len(slow)} run(s) train with Keras's PyTorch backend on this NVIDIA GPU, which measured "
            f"{torch['inference']} of timm's inference and {torch['training']} of its training images/s on an "
            f"H200 (benchmarks/vs_timm.py), against {jax['inference']} and {jax['training']} with the JAX "
            f"backend: set train.backend: jax (pip install 'jax[cuda12]') unless the runs need PyTorch"]


def check_readiness(runs, cache_dir=None) -> tuple[dict, list[Problem]]:
    """Every problem that would stop a run of ``runs`` at its start, and the datasets opened."""
    sources, problems = open_datasets(runs, cache_dir)
    return sources, problems + split_problems(runs, sources) + weights_problems(runs) + backend_problems(runs)


def split_problems(runs, sources: dict) -> list[Problem]:
    """Each carving of ``runs`` (dataset, split fractions, split seed) that this data cannot give: fractions
    leaving nothing to train on, a split that comes out empty, ``group_by`` with nothing to group. Each run would
    fail at its start on it, one after another."""
    from zoo.data.splits import plan_for_source

    problems = []
    for run, source, fractions in _carvings(runs, sources):
        try:
            plan_for_source(source, fractions, run.split_seed)
        except ConfigError as error:
            problems.append(Problem(f"split of dataset {run.dataset['name']}", f"{error} (split_seed {run.split_seed})",
                                    "change split: in its dataset entry (or train.split)"))
    return problems


def _carvings(runs, sources: dict):
    """(run, opened source, split fractions) once per distinct carving of ``runs``: dataset, fractions, split seed."""
    seen = set()
    for run in runs:
        source = sources.get(_dataset_key(run.dataset))
        fractions = run.train.split or run.dataset.get("split")
        key = (_dataset_key(run.dataset), json.dumps(fractions, sort_keys=True), run.split_seed)
        if source is not None and key not in seen:
            seen.add(key)
            yield run, source, fractions


def carved_as_now(run, source, run_dir: Path, plans: dict) -> bool:
    """Whether a finished run's recorded split (split_indices.npz) is the one zoo carves from ``source`` today
    (True where the run recorded none readable: nothing to say). ``plans`` keeps today's carvings, one per
    source, fractions and seed, for the other runs (seeds and sweeps share them)."""
    from zoo.data.splits import plan_for_source

    try:
        with np.load(run_dir / "split_indices.npz") as recorded:
            recorded = {name: recorded[name] for name in recorded.files}
    except (OSError, ValueError):
        return True
    fractions = run.train.split or run.dataset.get("split")
    key = (id(source), json.dumps(fractions, sort_keys=True), run.split_seed)
    if key not in plans:
        plans[key] = plan_for_source(source, fractions, run.split_seed)
    for name, (split, indices) in plans[key].items():
        today = np.arange(source.info.splits[split]) if indices is None else indices
        if name not in recorded or not np.array_equal(recorded[name], today):
            return False
    return True


def changed_data_warnings(finished, runs_dir: Path, cache_dir=None, command: str = "zoo run SUITE") -> list[str]:
    """Finished runs of the user's own data (folders, track manifests) whose images have changed since they
    ran (their dataset.json's signatures): their results are kept, not silently taken for today's data. One
    line per dataset. A folder that cannot be opened now says nothing here (its results stand as they are)."""
    from zoo.data.sources import PATH_SOURCES, open_source

    changed: dict[str, list] = {}
    recarved: dict[str, list] = {}
    sources: dict = {}
    plans: dict = {}
    for run in finished:
        if run.dataset.get("source") not in PATH_SOURCES:
            continue  # cards pin their data: a version, or embedded generation
        try:
            recorded = json.loads((Path(runs_dir) / run.run_id / "dataset.json").read_text())
            signatures, counts = recorded["signatures"], recorded["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a run of an earlier zoo recorded none
        key = _dataset_key(run.dataset)
        if key not in sources:
            try:
                sources[key] = open_source(run.dataset, cache_dir=cache_dir)
            except (DataError, ConfigError, OSError):
                sources[key] = None
        source = sources[key]
        if source is None:
            continue
        # A signature without "c" was recorded by a zoo that hashed the files' sizes, not their contents.
        moved = [split for split, signature in signatures.items() if split not in source.info.splits
                 or source.signature(split, by_size=":c" not in signature) != signature]
        if moved:
            changed.setdefault(key, []).append((run, {split: (counts.get(split), source.info.splits.get(split, 0))
                                                      for split in moved}))
        elif not carved_as_now(run, source, Path(runs_dir) / run.run_id, plans):
            recarved.setdefault(key, []).append(run)
    warnings = [f"warning: dataset {runs[0].dataset['name']}: {len(runs)} finished run(s) carved validation and test "
                f"otherwise than zoo does now (each file's copies now stay on one side), so they were scored on another "
                f"test set; their results are kept as they were. `{command} --force --only '{runs[0].dataset['name']}-*'` "
                f"trains them on today's carving" for runs in recarved.values()]
    for key, entries in changed.items():
        run, splits = entries[0]
        name = run.dataset["name"]
        sizes = ", ".join(f"{split} {then} -> {now} images" if then != now else f"{split}: other images, as many"
                          for split, (then, now) in splits.items())
        warnings.append(f"warning: dataset {name}: {len(entries)} finished run(s) saw other images than "
                        f"{run.dataset.get('path')} holds now ({sizes}); their results are kept as they were. "
                        f"`{command} --force --only '{name}-*'` trains them on the current images")
    return warnings


def small_class_warnings(runs, sources: dict) -> list[str]:
    """Classes too small for the requested splits: with no validation or test example their
    results cannot be judged. One line per dataset and carving."""
    from zoo.data.splits import classes_missing_from_splits, plan_for_source

    warnings = []
    for run, source, fractions in _carvings(runs, sources):
        if source.info.has_masks:
            continue
        try:
            missing = classes_missing_from_splits(source, plan_for_source(source, fractions, run.split_seed))
        except ConfigError:
            continue  # an impossible carving is a problem of check_readiness (split_problems)
        for split, names in missing.items():
            if names:
                shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                counts = np.bincount(source.labels("train"), minlength=source.info.num_classes) \
                    if source.labels("train") is not None else None
                sizes = f" ({', '.join(str(int(counts[source.info.class_names.index(n)])) for n in names[:5])} " \
                        f"image(s))" if counts is not None else ""
                warnings.append(f"warning: dataset {run.dataset['name']}: class(es) {shown}{sizes} have no "
                                f"{'validation' if split == 'val' else 'test'} example with split_seed "
                                f"{run.split_seed}; their results cannot be judged and macro averages leave them "
                                f"out. Add images to them, or drop them from the folder")
    return warnings


def format_problems(problems: list[Problem], suite_path: str | None = None) -> str:
    lines = [f"the suite cannot start: {len(problems)} problem(s); nothing was run and no run folder was written"]
    for problem in problems:
        lines += [f"  - {problem.subject}: {problem.message}", f"      fix: {problem.fix}"]
    if suite_path and any(problem.subject.split(" ", 1)[0] in ("dataset", "weights") for problem in problems):
        lines.append(f"or let zoo prepare what it can first: zoo run {suite_path} --prepare")
    return "\n".join(lines)


def prepare_missing(runs, problems: list[Problem], log=print) -> None:
    """Fix what can be fixed automatically: download and build tensorflow-datasets, download weights.
    What cannot (the land-cover manual download) stays a problem for the next check."""
    from zoo.backbones import BACKBONES
    from zoo.data.commands import prepare_dataset
    from zoo.weights import resolve_imagenet_weights

    by_name = {r.dataset["name"]: r.dataset for r in runs}
    for problem in problems:
        kind, name = problem.subject.split(" ", 1)
        if kind == "dataset" and by_name[name].get("source") == "tfds":
            log(f"preparing dataset {name} ...")
            prepare_dataset(name, by_name[name].get("data_dir"))
        elif kind == "dataset" and by_name[name].get("source") == "landcover_ens" and by_name[name].get("manual_dir"):
            log(f"building dataset {name} from {by_name[name]['manual_dir']} ...")
            prepare_dataset(name, by_name[name]["manual_dir"], tfds_dir=by_name[name].get("data_dir"))
        elif kind == "weights" and downloads_allowed():
            log(f"downloading pretrained weights of {name} ...")
            try:
                spec = BACKBONES.get(name)
                if spec.hub is not None:
                    from zoo.weights import preset_backbone

                    preset_backbone(spec, spec.hub.preset)  # into keras-hub's cache
                else:
                    resolve_imagenet_weights(spec, download=True)
            except Exception as error:  # reported again, with its fix, by the next readiness check
                log(f"  could not download: {error}".splitlines()[0])


# --- the plan -------------------------------------------------------------------------

# A training step inside fit (backward pass, update, metrics, callbacks) costs about this many
# times an inference batch, and tracing it about this many times tracing the inference function:
# fitted on the quickstart's six architectures on a 2-core CPU (5-17x and 20-31x measured there;
# benchmarks/plan_accuracy.py compares estimates with measured runs, rerun it on other hardware).
TRAIN_STEP_FACTOR = 6.0
TRAIN_TRACE_FACTOR = 27.0
# Refitted on the quickstart once runs shared a worker (benchmarks/plan_accuracy.py):
RUN_FIXED_SECONDS = 1.0  # saving, writing the run folder
SPEED_SECONDS = 2.0  # inference speed after warm-up: once per architecture, reused by the others


def split_plan(run, info) -> dict:
    """``run``'s train/validation/test carving (name -> (source split, indices or None)), by
    zoo.data.splits.plan_splits as the worker carves it (unstratified here: without the labels the sizes
    and source splits are the same)."""
    from zoo.data.splits import plan_splits

    labelled = {s: n for s, n in info.splits.items() if s in info.labelled_splits}
    return plan_splits(labelled, run.train.split or run.dataset.get("split"), run.split_seed, {"train": None})


def split_sizes(run, info) -> dict:
    """Train/validation/test sizes of ``run`` (see :func:`split_plan`)."""
    return {name: len(indices) if indices is not None else info.splits[split]
            for name, (split, indices) in split_plan(run, info).items()}


def architecture_key(run, info) -> tuple:
    return (run.backbone, run.head, run.train.image_size, run.train.batch_size, info.channels,
            info.num_classes, run.train.precision, json.dumps(run.backbone_options, sort_keys=True),
            run.trainable)


_MEASURED: dict = {}  # architecture_key -> figures: a process measures each architecture once


def measure_architecture(run, info, repeats: int = 5) -> dict:
    """Seconds to build the model, to trace its inference function, and per inference batch
    (measured once per process and architecture: a second plan in the same process reuses them)."""
    key = architecture_key(run, info)
    if key not in _MEASURED:
        _MEASURED[key] = _measure(run, info, repeats)
    return _MEASURED[key]


def _measure(run, info, repeats: int) -> dict:
    import keras
    import numpy as np

    from zoo import build_model
    from zoo.harness.precise_bn import trained_batchnorm_layers
    from zoo.runtime import compiled_predict

    shape = (run.train.image_size, run.train.image_size, info.channels)
    keras.backend.clear_session()
    start = time.perf_counter()
    model = build_model(run.backbone, run.head, info.num_classes, shape,
                        trainable=run.trainable, backbone_options=run.backbone_options)
    build_seconds = time.perf_counter() - start
    predict = compiled_predict(model)
    batch = np.random.default_rng(0).uniform(0, 255, (run.train.batch_size, *shape))
    batch = batch.astype("float32")
    start = time.perf_counter()
    predict(batch)
    trace_seconds = time.perf_counter() - start
    steps = []
    for _ in range(repeats):
        tick = time.perf_counter()
        predict(batch)
        steps.append(time.perf_counter() - tick)
    return {"build_seconds": build_seconds, "trace_seconds": trace_seconds,
            "infer_step_seconds": statistics.median(steps), "batchnorm": bool(trained_batchnorm_layers(model))}


def estimate_seconds(run, sizes: dict, figures: dict, startup: float, features_cached: bool = False,
                     speed_measured: bool = False) -> float:
    """Wall seconds of one run from its architecture's figures (see the factors above), stage by stage
    as the run's own zoo.runspec.RunStages decide them.

    ``startup``: the worker's start-up, paid by the suite's first pending run only;
    ``features_cached``: an earlier run computes the frozen backbone's features;
    ``speed_measured``: an earlier run of the same architecture measures inference speed."""
    import math

    from zoo.harness.precise_bn import validation_batches

    stages = run.stages()
    batch = run.train.batch_size
    infer_per_image = figures["infer_step_seconds"] / batch
    train_trace = TRAIN_TRACE_FACTOR * figures["trace_seconds"]
    steps = run.train.steps_per_epoch
    train_images = min(sizes["train"], steps * batch) if steps else sizes["train"]
    recalibrates = bool(stages.precise_bn_batches) and figures["batchnorm"]
    epoch = train_images * infer_per_image * TRAIN_STEP_FACTOR + sizes["val"] * infer_per_image
    if recalibrates:  # before each validation
        epoch += validation_batches(math.ceil(train_images / batch), batch,
                                    stages.precise_bn_batches) * figures["infer_step_seconds"] * 1.5
    if stages.trains_on_features:
        # One forward pass of train and validation images, then a head on features: its epochs cost
        # next to nothing against the backbone's, but its training step is still traced.
        forward = 0.0 if features_cached else (sizes["train"] + sizes["val"] + sizes["test"]) * infer_per_image
        training = forward + figures["trace_seconds"] * 2
    else:
        training = train_trace + stages.epochs * epoch
        if stages.finetune_epochs:
            training += train_trace + stages.finetune_epochs * epoch
    calibration = 0.0
    if recalibrates:  # before evaluation
        batches = min(stages.precise_bn_batches, math.ceil(sizes["train"] / batch))
        calibration = 2 * figures["trace_seconds"] + batches * figures["infer_step_seconds"] * 1.5
    evaluation = figures["trace_seconds"] + sizes["test"] * infer_per_image
    return (startup + figures["build_seconds"] + training + calibration + evaluation
            + RUN_FIXED_SECONDS + (0.0 if speed_measured else SPEED_SECONDS))


def decode_estimates(runs, sources: dict, out_dir) -> dict:
    """Seconds each run spends decoding images (zoo.data.decoded), by run id: a split decoded at an image
    size is paid by the first run that reads it, unless OUT/cache/images already holds it; with
    ``train.cache: none`` every run decodes its splits each epoch and for the test. Measured on a few
    examples per split and size."""
    from zoo.data.decoded import decode_needed, decode_seconds_per_example

    cache_root = Path(out_dir) / "cache" / "images"
    rates, decoded, estimates = {}, set(), {}
    for run in runs:
        source = sources.get(_dataset_key(run.dataset))
        if source is None:
            continue
        info = source.info
        try:
            plan = split_plan(run, info)
        except ConfigError:
            continue
        seconds = 0.0
        for split in sorted({split for split, _ in plan.values()}):
            key = (_dataset_key(run.dataset), split, run.train.image_size)
            streamed = run.train.cache == "none"
            if not streamed and (key in decoded or not decode_needed(source, split, run.train.image_size, cache_root)):
                decoded.add(key)
                continue
            if key not in rates:
                rates[key] = decode_seconds_per_example(source, split, run.train.image_size)
            passes = run.train.epochs + 1 + (run.finetune or {}).get("epochs", 0) if streamed else 1
            seconds += rates[key] * info.splits[split] * passes
            decoded.add(key)
        estimates[run.run_id] = seconds
    return estimates


def run_status(run, runs_dir: Path) -> str:
    from zoo.results import read_result

    row = read_result(runs_dir / run.run_id)
    return "pending" if row is None else ("finished" if row.get("status") == "ok" else row.get("status", "failed"))


def make_plan(runs, out_dir, sources: dict, problems: list[Problem] = (), log=print) -> dict:
    """Every run with its status and readiness (None when finished: it needs nothing) and, for
    pending ones, an estimated wall time on this device."""
    from zoo.harness import features
    from zoo.heads import HEADS
    from zoo.runtime import describe_device

    startup = worker_startup = startup_seconds()
    runs_dir = Path(out_dir) / "runs"
    statuses = {run.run_id: run_status(run, runs_dir) for run in runs}
    decoding = decode_estimates([run for run in runs if statuses[run.run_id] != "finished"], sources, out_dir)
    figures, rows = {}, []
    speed_keys, feature_keys = set(), set()
    for run in runs:
        status = statuses[run.run_id]
        source = sources.get(_dataset_key(run.dataset))
        row = {"run_id": run.run_id, "dataset": run.dataset["name"], "backbone": run.backbone, "head": run.head,
               "weights": run.weights, "trainable": run.trainable + (f" then {run.finetune['trainable']} for "
                                                                     f"{run.finetune['epochs']}" if run.finetune else ""),
               "epochs": run.train.epochs, "image_size": run.train.image_size, "status": status,
               "ready": None if status == "finished" else (
                   source is not None and not any(p.subject == f"weights {run.backbone}" for p in problems
                                                  if run.weights == "imagenet")),
               "estimate_seconds": None}
        if status != "finished" and source is not None:
            key = architecture_key(run, source.info)
            if key not in figures:
                log(f"measuring {run.backbone}/{run.head} at {run.train.image_size} px, batch "
                    f"{run.train.batch_size} ...")
                figures[key] = measure_architecture(run, source.info)
            # The run's own feature-cache key, without the images' content (one dataset, one content).
            feature_key = features.cache_key(run, {}, HEADS.get(run.head), run.train.precision)
            cached = run.trains_on_features and feature_key in feature_keys
            try:
                sizes = split_sizes(run, source.info)
            except ConfigError:  # an impossible split: the run says so itself; no estimate
                rows.append(row)
                continue
            row["decode_seconds"] = decoding.get(run.run_id, 0.0)
            row["estimate_seconds"] = row["decode_seconds"] + estimate_seconds(
                run, sizes, figures[key], startup, features_cached=cached, speed_measured=key in speed_keys)
            startup = 0.0  # one worker runs them all
            speed_keys.add(key)
            if run.trains_on_features:
                feature_keys.add(feature_key)
        rows.append(row)
    return {"rows": rows, "device": describe_device(), "startup_seconds": worker_startup}


def spread_over_workers(estimates, workers: int, startup: float) -> float:
    """Wall seconds of runs of ``estimates`` (in the suite's order, the first one carrying the start-up of
    its worker) handed out as ``zoo run --workers N`` hands them out, each to the first worker free, each
    further worker paying its own start-up: the time if no run slowed another."""
    import heapq

    free_at = [0.0] * max(1, workers)
    for index, seconds in enumerate(estimates):
        started = heapq.heappop(free_at)
        extra = startup if 0 < index < workers else 0.0  # a worker's first run: its own start-up
        heapq.heappush(free_at, started + seconds + extra)
    return max(free_at)


DEFAULT_IMPORT_SECONDS = 8.0
_IMPORTED: dict = {}


def startup_seconds() -> float:
    """What the worker process spends importing Keras, its backend and tensorflow-datasets (it
    records their versions): measured here when this process has not imported them yet."""
    import sys

    if "keras" not in sys.modules and "seconds" not in _IMPORTED:
        start = time.perf_counter()
        import keras  # noqa: F401

        if installed("tensorflow_datasets"):
            import tensorflow_datasets  # noqa: F401
        _IMPORTED["seconds"] = time.perf_counter() - start + 1.0  # and the interpreter's own start
    return _IMPORTED.get("seconds", DEFAULT_IMPORT_SECONDS)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def format_plan(plan: dict, workers: int = 1) -> str:
    """The plan as the table ``zoo plan`` prints, with each dataset's and the suite's time; ``workers``:
    ``zoo run --workers N``'s N, for the suite's time when the runs share N workers."""
    rows = plan["rows"]
    header = ["run", "dataset", "backbone", "head", "weights", "trainable", "epochs", "size", "status", "ready",
              "estimate"]
    table = [[r["run_id"], r["dataset"], r["backbone"], r["head"], r["weights"], r["trainable"], str(r["epochs"]),
              str(r["image_size"]), r["status"], {True: "yes", False: "NO", None: "-"}[r["ready"]],
              format_duration(r["estimate_seconds"])] for r in rows]
    widths = [max(len(header[i]), *(len(t[i]) for t in table)) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(t, widths)) for t in table]
    pending = [r for r in rows if r["status"] != "finished"]
    lines.append("")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in pending if r["dataset"] == dataset]
        total = sum(r["estimate_seconds"] or 0 for r in mine)
        lines.append(f"{dataset}: {len(mine)} pending run(s), about {format_duration(total)}")
    total = sum(r["estimate_seconds"] or 0 for r in pending)
    unknown = sum(1 for r in pending if r["estimate_seconds"] is None)
    lines.append(f"suite: {len(rows) - len(pending)} finished, {len(pending)} to run, about "
                 f"{format_duration(total)} on {plan['device']}"
                 + (", one run after another" if workers > 1 else "")
                 + (f" ({unknown} run(s) not estimated: their data is not ready)" if unknown else ""))
    estimated = [r["estimate_seconds"] for r in pending if r["estimate_seconds"] is not None]
    if workers > 1 and len(estimated) > 1:
        spread = spread_over_workers(estimated, workers, plan.get("startup_seconds", 0.0))
        lines.append(f"with {workers} workers at once: at best about {format_duration(spread)}, if no run slowed "
                     f"another; they share this machine's cores and any GPU, so expect more (zoo run's ETA follows the "
                     f"runs as they finish)")
    lines.append("Estimates: each architecture's inference measured here after tracing; training taken as "
                 f"{TRAIN_STEP_FACTOR:g}x inference per image and its tracing as {TRAIN_TRACE_FACTOR:g}x; every epoch "
                 "counted (early stopping can only shorten a run).")
    decoding = sum(r.get("decode_seconds") or 0 for r in pending)
    if decoding:
        lines.append(f"Decoding the images, measured on a few of each split: "
                     f"{'about ' + format_duration(decoding) if decoding >= 1 else 'under a second'} of "
                     f"that, paid by the first run of each dataset and image size (OUT/cache/images keeps them; "
                     f"train.cache: none decodes every epoch).")
    return "\n".join(lines)
