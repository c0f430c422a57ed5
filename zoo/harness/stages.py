"""One run, as stages that take and return values: the runtime (device, precision, batch), the data
(dataset, split, input pipelines), the model, training (the fit result) and the scores. The worker
process (zoo.harness.worker) calls them in order and records the outcome; ``zoo export`` re-opens a
finished run through the same stages (:func:`reopen`), so the two cannot prepare data differently.

What a run does (a head on cached features or the whole model, a fine-tuning phase, precise BatchNorm,
track smoothing, exports) is decided once, by zoo.runspec.RunSpec.stages, which ``zoo plan`` prices too.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zoo.errors import RunFailed
from zoo.results import write_json
from zoo.runspec import RunSpec
from zoo.tasks import TASKS


def cache_folder(run_dir) -> Path:
    """The output folder's cache, shared by every run of the suite (OUT/cache)."""
    return Path(run_dir).parent.parent / "cache"


# -- runtime ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Runtime:
    """Where and how a run computes."""

    precision: str      # the Keras dtype policy's name
    strategy: object    # the tf.distribute strategy (or its single-device stand-in)
    replicas: int
    global_batch: int   # train.batch_size times replicas
    device: str


def start_runtime(spec: RunSpec, any_backend: bool = False) -> Runtime:
    """Seeds, the run's backend checked (unless ``any_backend``: a finished run's model exported
    by TensorFlow's converters), its precision policy set, its device chosen."""
    import keras

    from zoo.runtime import (backend, choose_strategy, describe_device, forget_tracing_history, make_deterministic,
                             precision_policy)

    make_deterministic(spec.seed, xla=bool(spec.train.xla))
    forget_tracing_history()
    wanted = spec.train.backend
    if wanted and backend() != wanted and not any_backend:  # KERAS_BACKEND is read once, when Keras is imported
        raise RunFailed(f"train.backend is {wanted}, but this process runs {backend()}: the process was "
                        f"started without KERAS_BACKEND={wanted}")
    precision = precision_policy(spec.train.precision)
    keras.mixed_precision.set_global_policy(precision)
    strategy = choose_strategy()
    replicas = strategy.num_replicas_in_sync
    return Runtime(precision, strategy, replicas, spec.train.batch_size * replicas, describe_device())


def environment(runtime: Runtime) -> dict:
    """Versions, device and precision: the run's environment.json."""
    import keras

    import zoo
    from zoo import runtime as backends

    def version(module):  # TensorFlow and tensorflow-datasets are optional on JAX and PyTorch
        return importlib.import_module(module).__version__ if backends.installed(module) else None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(zoo.__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "backend": backends.backend(),
            "backend_version": backends.backend_version(), "tensorflow": version("tensorflow"),
            "keras": keras.__version__, "tensorflow_datasets": version("tensorflow_datasets"),
            "numpy": np.__version__, "zoo": zoo.__version__, "git_commit": commit, "device": runtime.device,
            "replicas": runtime.replicas, "precision": runtime.precision, "platform": platform.platform(),
            "cpu_count": os.cpu_count()}


# -- data ---------------------------------------------------------------------------------------------
_SOURCES: dict = {}  # the datasets this process has opened: the runs of a sweep share them


def opened_source(dataset: dict, cache_dir: Path):
    """The dataset of a run, opened once per process (opening generates, scans or indexes it)."""
    from zoo.data.sources import open_source

    key = json.dumps([dataset, str(cache_dir)], sort_keys=True, default=str)
    if key not in _SOURCES:
        _SOURCES[key] = open_source(dataset, cache_dir=cache_dir)
    return _SOURCES[key]


def forget_sources() -> None:
    """Open every dataset afresh from now on: a suite reads a user's folder as it is when the suite starts
    (a process that runs several suites, --in-process or a notebook, would keep the first one's scan)."""
    _SOURCES.clear()


class LazyPipelines(dict):
    """The run's train, val and test input pipelines, each built on first use."""

    def __init__(self, build):
        super().__init__()
        self._build = build

    def __missing__(self, name):
        if name not in ("train", "val", "test"):
            raise KeyError(name)
        self[name] = pipeline = self._build(name)
        return pipeline


@dataclass
class RunData:
    """A run's dataset, its carved split and its input pipelines."""

    source: object
    task: str
    plan: dict               # train/val/test -> (source split, indices or None for all)
    sizes: dict              # train/val/test -> examples
    train_counts: list | None  # examples (pixels) per class in the training split
    class_weights: list | None  # train.class_weights: per class, else None
    options: dict            # zoo.data.steps.PipelineOptions' run-wide fields
    augment: bool
    cache: str               # train.cache: the decoded cache's mode (zoo.data.decoded)
    cache_root: str          # where decoded splits live: the output folder's cache/images
    memory_limit: int | None  # bytes of decoded rows held in memory
    pipelines: LazyPipelines = field(init=False)
    input_cache: list = field(default_factory=list)  # each pipeline's rows: built, reused or off

    def __post_init__(self):
        # Built when first used: a head trained on cached features never reads the images.
        self.pipelines = LazyPipelines(lambda name: self.pipeline(name, name == "train"))

    @property
    def info(self):
        return self.source.info

    @property
    def class_weight_dict(self) -> dict | None:
        """Keras fit's ``class_weight``: one label per image (classification) with train.class_weights only."""
        weights = self.class_weights
        return {i: w for i, w in enumerate(weights)} if weights and TASKS.get(self.task).one_label_per_image else None

    @property
    def pixel_weights(self) -> list:
        """Per-pixel loss weights of segmentation: the class weights, else 0 for ignored classes."""
        info = self.info
        return self.class_weights or [0.0 if c in info.ignore_classes else 1.0 for c in range(info.num_classes)]

    def pipeline(self, name: str, training: bool, augment: bool | None = None):
        """The input pipeline of split ``name`` (train/val/test); ``augment`` None: the run's setting
        where ``training``."""
        from zoo.data.pipeline import input_pipeline
        from zoo.data.steps import PipelineOptions

        split, indices = self.plan[name]
        augment = self.augment and training if augment is None else augment
        options = PipelineOptions(**self.options, augment=augment, cache=self.cache, cache_root=self.cache_root,
                                  memory_limit=self.memory_limit)
        batches = input_pipeline(self.source, split, indices, self.info, options, training)
        self.input_cache.append(batches.input_cache)
        return batches

    @property
    def input_cache_state(self) -> str | None:
        """results.csv's input_cache: built when this run decoded any split, else reused or off."""
        for state in ("built", "off", "reused"):
            if state in self.input_cache:
                return state
        return None


def open_data(spec: RunSpec, global_batch: int, cache_dir: Path) -> RunData:
    """The run's dataset opened, its split carved and its pipelines described (built on first use)."""
    from zoo.data.pipeline import class_counts
    from zoo.data.splits import plan_for_source
    from zoo.data.steps import class_weights_from_counts
    from zoo.heads import head_task

    task = TASKS.get(head_task(spec.head))
    source = opened_source(spec.dataset, cache_dir)
    info = source.info
    labelled = {s: n for s, n in info.splits.items() if s in info.labelled_splits}
    plan = plan_for_source(source, spec.train.split or spec.dataset.get("split"), spec.split_seed)
    sizes = {name: (len(idx) if idx is not None else labelled[split]) for name, (split, idx) in plan.items()}
    # Pixel counts mean reading every training mask: only when class weights need them.
    needs_counts = task.one_label_per_image or spec.train.class_weights
    train_counts = class_counts(source, *plan["train"], info.num_classes) if needs_counts else None
    weights = class_weights_from_counts(train_counts, info.ignore_classes) if spec.train.class_weights else None
    fed = spec.input(info)
    options = dict(image_size=fed.image_size, batch_size=global_batch, preprocessing=fed.backbone_preprocessing,
                   extra_preprocessing=list(fed.study_steps), seed=spec.seed,
                   class_weights=None if task.one_label_per_image else weights, target=task.target,
                   one_hot=spec.train.loss == "focal" and task.one_label_per_image)
    return RunData(source=source, task=task.name, plan=plan, sizes=sizes, train_counts=train_counts,
                   class_weights=weights, options=options, augment=bool(spec.train.augment), cache=spec.train.cache,
                   cache_root=str(cache_dir / "images"), memory_limit=input_memory_limit(spec.train.input_memory_gb))


def input_memory_limit(gigabytes) -> int:
    """train.input_memory_gb in bytes; None: a quarter of this machine's memory."""
    if gigabytes is not None:
        return int(float(gigabytes) * 1e9)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 * 10**9


def record_split(run_dir: Path, spec: RunSpec, data: RunData) -> None:
    """split.json, split_indices.npz and dataset.json: how the run carved its data."""
    labelled = data.info.splits
    write_json(run_dir / "split.json", {"split_seed": spec.split_seed, "sizes": data.sizes,
                                        "sources": {k: v[0] for k, v in data.plan.items()},
                                        "train_class_counts": data.train_counts, "class_weights": data.class_weights})
    np.savez_compressed(run_dir / "split_indices.npz",
                        **{k: (v[1] if v[1] is not None else np.arange(labelled[v[0]])) for k, v in data.plan.items()})
    # Each source split's signature: a later `zoo run` tells a user's folder changed since (zoo.harness.preflight).
    signatures = {split: data.source.signature(split) for split in sorted({v[0] for v in data.plan.values()})}
    write_json(run_dir / "dataset.json", {**data.info.to_dict(), "signatures": signatures})


# -- model --------------------------------------------------------------------------------------------
def build_run_model(spec: RunSpec, data: RunData, runtime: Runtime):
    """The run's backbone and head, assembled under the runtime's strategy."""
    from zoo import build_model

    with runtime.strategy.scope():
        return build_model(spec.backbone, spec.head, data.info.num_classes, spec.input(data.info).shape,
                           weights=None if spec.weights == "none" else spec.weights, trainable=spec.trainable,
                           backbone_options=spec.backbone_options, batchnorm_momentum=spec.train.batchnorm_momentum,
                           head_seed=spec.seed, reuse_frozen_backbone=not spec.finetune)


# -- training -----------------------------------------------------------------------------------------
@dataclass
class Fitted:
    """What training returns: the model fit trained (the full model, or a head on cached features whose
    weights are already copied into the full model), and how it went."""

    trained_model: object
    epochs_run: int
    trainable: str           # the row's trainable: the setting, "+finetune ..." after a second phase
    xla: bool
    precise_bn: dict         # what precise BatchNorm did before evaluation, for metrics.json
    timing: dict             # zoo.harness.timing.EpochTimer's summary
    features: dict | None    # the feature cache used (zoo.harness.features.prepare), None: images
    compiled_ahead: dict | None = None  # zoo.harness.compilation.CompiledAhead's summary, None: nothing ahead


# ZOO_COMPILE_AHEAD=0: every program compiled when first called, on the main thread (as before zoo compiled ahead).
COMPILE_AHEAD_ENV = "ZOO_COMPILE_AHEAD"


class _Training:
    """The state fit's phases share (callbacks, the kept best weights, precise BatchNorm's traced
    forward), for :func:`train` alone; everything it needs is given to its constructor.
    ``later_programs()``: the programs the run calls after training, to lower (see :func:`train`)."""

    def __init__(self, spec: RunSpec, runtime: Runtime, data: RunData, model, run_dir: Path, later_programs=None):
        from zoo.harness.timing import EpochTimer

        self.spec, self.runtime, self.data, self.model, self.dir = spec, runtime, data, model, run_dir
        self.later_programs = later_programs
        self.ahead = None  # zoo.harness.compilation.CompiledAhead of the last phase
        self.timer = EpochTimer()
        self.features = None
        self.calibration_forward = None
        self.validation_calibration_batches = 0
        self.xla = False
        self.best_weights = None
        if spec.trains_on_features:
            # Only the head trains, on cached frozen-backbone features (the image pipelines are then never
            # built: about 0.4 s a run).
            from zoo.backbones import BACKBONES
            from zoo.harness import features
            from zoo.heads import HEADS

            with runtime.strategy.scope():
                self.features = features.prepare(spec, data, model, HEADS.get(spec.head),
                                                 BACKBONES.get(spec.backbone), runtime.precision,
                                                 runtime.global_batch, cache_folder(run_dir) / "features")
            self.trained_model = self.features["head_model"]
            self.fit_data = (self.features["train"], self.features["val"])
        else:
            self.trained_model, self.fit_data = model, (data.pipelines["train"], data.pipelines["val"])
        if spec.train.steps_per_epoch:  # a cap on each epoch's steps: every epoch gets them all
            self.fit_data[0].endless()

    def steps_per_epoch(self) -> int:
        return self.spec.train.steps_per_epoch or max(1, math.ceil(self.data.sizes["train"] / self.runtime.global_batch))

    def compile(self, learning_rate, epochs) -> None:
        import keras

        from zoo.harness.recipes import FEATURE_STEPS_PER_EXECUTION, compiled_with_xla, jit_compile, make_optimizer
        from zoo.runtime import initial_values_on_host

        train = self.spec.train
        schedule = learning_rate
        if train.lr_schedule == "cosine":
            schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=self.steps_per_epoch() * epochs)
        task = TASKS.get(self.data.task)
        weighted = task.training_metrics(one_hot=self.data.options["one_hot"])
        self.calibration_forward = None  # traced again: trainable flags may have changed
        with self.runtime.strategy.scope():  # the optimizer's variables too belong to the strategy
            settings = dict(optimizer=make_optimizer(train.optimizer, schedule), loss=task.loss(train.loss),
                            weighted_metrics=weighted, jit_compile=jit_compile(train.xla))
            if self.features is None:
                self.trained_model.compile(**settings)
                if keras.backend.backend() == "jax":  # the optimizer's slots, zeros of each weight's shape, too
                    with initial_values_on_host():
                        self.trained_model.optimizer.build(self.trained_model.trainable_variables)
            else:
                # A head on cached features: each step is a matrix product or two, so Keras's
                # per-call overhead would dominate; several steps per call give the same numbers.
                # A worker's later runs train the same compiled head again (zoo.harness.kept_models).
                from zoo.harness import kept_models

                # (Keras 3.15 cannot run several steps per call over a MirroredStrategy's datasets.)
                settings["steps_per_execution"] = FEATURE_STEPS_PER_EXECUTION if self.runtime.replicas == 1 else 1
                self.trained_model = kept_models.compiled(self.trained_model, settings, self.runtime.strategy)
                self.features["head_model"] = self.trained_model
            self.xla = compiled_with_xla(self.trained_model, train.xla)

    def calibration_batches(self, repeat: bool):
        """Training batches without augmentation (the statistics serve evaluation on unaugmented
        images), shuffled with the run's seed: images, or cached features for a head on features."""
        if self.features is None:
            batches = self.data.pipeline("train", True, augment=False)
        else:
            batches = self.features["dataset"]("train", self.spec.seed)
        return batches.repeat() if repeat else batches

    def callbacks(self, append: bool) -> list:
        import keras

        from zoo.data.pipeline import padding_loss_correction
        from zoo.harness.precise_bn import (forward_in_training_mode, precise_bn_callback, trained_batchnorm_layers,
                                            validation_batches)
        from zoo.harness.recipes import best_weights_callback, learning_rate_log, tensorboard_callbacks

        train = self.spec.train
        self.best_weights = best_weights_callback()
        # First: every later callback (checkpointing, early stopping, schedules, the CSV log) reads val_loss.
        callbacks = [padding_loss_correction(self.fit_data[1]), self.timer, learning_rate_log(),
                     keras.callbacks.TerminateOnNaN()]
        if train.precise_bn_batches and trained_batchnorm_layers(self.trained_model):
            # Keras runs validation inside fit before on_epoch_end: this callback's on_test_begin
            # recalibrates first, so checkpointing, early stopping and schedules judge current statistics.
            self.validation_calibration_batches = validation_batches(self.steps_per_epoch(), self.runtime.global_batch,
                                                                     train.precise_bn_batches)
            self.calibration_forward = forward_in_training_mode(self.trained_model)
            callbacks.append(precise_bn_callback(lambda: self.calibration_batches(repeat=True),
                                                 self.validation_calibration_batches, self.calibration_forward))
        callbacks += [keras.callbacks.CSVLogger(str(self.dir / "history.csv"), append=append),
                      self.best_weights, *tensorboard_callbacks(self.dir / "tensorboard")]
        if train.early_stopping:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=train.early_stopping,
                                                           restore_best_weights=True))
        if train.lr_schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2,
                                                               patience=max(1, train.early_stopping // 2 or 2)))
        return callbacks

    def compile_ahead(self) -> list:
        """Start compiling the programs called after Keras's train step (precise BatchNorm's forward, the
        evaluation's and speed measurement's inference) in the background; the callbacks that wait for them
        before the first is called (validation, where precise BatchNorm recalibrates) and before the timed
        later epochs. On JAX with images in, once the variables are as they stay (the last phase)."""
        import keras

        from zoo.harness.compilation import CompiledAhead

        if (keras.backend.backend() != "jax" or self.features is not None or self.later_programs is None
                or self.runtime.replicas > 1  # sharded calls: programs per placement, not these stand-ins
                or os.environ.get(COMPILE_AHEAD_ENV, "").strip() == "0"):
            return []
        import jax

        images = jax.ShapeDtypeStruct((self.runtime.global_batch, *self.spec.input(self.data.info).shape), "float32")
        forward = getattr(self.calibration_forward, "lowered", None)
        lowerings = ([lambda: forward(images)] if forward else []) + self.later_programs()
        if not lowerings:
            return []
        self.ahead = ahead = CompiledAhead(lowerings)
        waits = lambda *_: ahead.wait()  # noqa: E731
        return [keras.callbacks.LambdaCallback(on_epoch_end=waits, on_test_begin=waits)]

    def phase(self, learning_rate, epochs: int, initial_epoch: int = 0, last: bool = True) -> int:
        """Compile and fit for ``epochs``; returns the epochs run (early stopping may end sooner). The
        ``last`` phase compiles the later programs ahead (:meth:`compile_ahead`)."""
        from zoo.harness.recipes import named_epoch_lines
        from zoo.harness.sharing import runs_at_once

        self.compile(learning_rate, epochs)
        train, val = self.fit_data
        callbacks = self.callbacks(append=initial_epoch > 0)
        # First: the wait for the programs compiled ahead counts in the epoch that waits (the first).
        callbacks = (self.compile_ahead() if last else []) + callbacks
        shared = (runs_at_once() or 1) > 1  # several runs print at once: each line names its run
        if shared:
            callbacks.append(named_epoch_lines(self.spec.run_id, initial_epoch + epochs))
        history = self.trained_model.fit(train, validation_data=val, epochs=initial_epoch + epochs,
                                         initial_epoch=initial_epoch, steps_per_epoch=self.spec.train.steps_per_epoch,
                                         class_weight=self.data.class_weight_dict, callbacks=callbacks,
                                         verbose=0 if shared else 2)
        if self.ahead is not None:
            self.ahead.wait()  # an epoch-less end (a resumed run) still leaves nothing compiling behind it
        losses = history.history.get("loss", [])
        if not losses or any(not math.isfinite(v) for v in losses):
            raise RunFailed(f"the training loss became NaN or infinite at epoch {initial_epoch + len(losses)}; "
                            f"lower train.learning_rate or check the data")
        return len(losses)

    def restore_best(self) -> None:
        best = self.best_weights.weights
        if best is not None and not self.spec.train.early_stopping:
            self.trained_model.set_weights(best)  # early stopping already restored the best epoch
        if self.features is not None:
            from zoo.harness.features import copy_head_weights

            copy_head_weights(self.trained_model, self.model)

    def recalibrate(self) -> dict:
        """Population statistics for the trained BatchNorm layers before evaluation, speed
        measurement and saving (see zoo.harness.precise_bn); what was done, for metrics.json."""
        from zoo.harness.precise_bn import recalibrate_batchnorm, trained_batchnorm_layers

        batches_wanted = self.spec.train.precise_bn_batches
        layers = len(trained_batchnorm_layers(self.trained_model)) if batches_wanted else 0
        start = time.perf_counter()
        batches = recalibrate_batchnorm(self.trained_model, self.calibration_batches(repeat=False), batches_wanted,
                                        self.calibration_forward) if layers else 0
        if batches and self.features is not None:
            from zoo.harness.features import copy_head_weights

            copy_head_weights(self.trained_model, self.model)
        return {"batches": batches, "layers": layers, "augmented": False, "seconds": time.perf_counter() - start,
                "before_validation_batches": self.validation_calibration_batches if layers else 0}


def train(spec: RunSpec, runtime: Runtime, data: RunData, model, run_dir: Path, later_programs=None) -> Fitted:
    """The run's training, as its stages say: one phase, or two with fine-tuning; the best epoch's
    weights restored, precise BatchNorm statistics computed. ``model`` ends trained. ``later_programs()``:
    the programs the run calls after training, as functions that lower them (:meth:`ModelPredict.lowerings`),
    compiled in the background while the last phase's train step compiles and runs."""
    stages = spec.stages()
    training = _Training(spec, runtime, data, model, run_dir, later_programs)
    epochs_run = training.phase(spec.train.learning_rate, stages.epochs, last=not stages.finetune_epochs)
    trainable = spec.trainable
    if stages.finetune_epochs:
        from zoo.factory import set_trainable

        training.restore_best()
        set_trainable(model, spec.finetune["trainable"])  # never with cached features (zoo.runspec.features_apply)
        epochs_run += training.phase(spec.finetune["learning_rate"], stages.finetune_epochs, initial_epoch=epochs_run)
        trainable = f"{trainable}+finetune {spec.finetune['trainable']}"
    training.restore_best()
    precise_bn = training.recalibrate()
    return Fitted(trained_model=training.trained_model, epochs_run=epochs_run, trainable=trainable, xla=training.xla,
                  precise_bn=precise_bn, timing=training.timer.summary(), features=training.features,
                  compiled_ahead=training.ahead.summary() if training.ahead else None)


# -- scores -------------------------------------------------------------------------------------------
def _host(tensor) -> np.ndarray:
    """A batch's tensor (on the backend's device: zoo.data.prepare) as NumPy."""
    import keras

    return keras.ops.convert_to_numpy(tensor)


def _predicted(predict, test_data):
    """``(targets, rows, outputs)`` of each batch of ``test_data``, the next batch's prediction queued
    on the device before this one's outputs are read (zoo.runtime.predictions_ahead)."""
    from zoo.runtime import predictions_ahead

    for ((_, targets, _), rows), outputs in predictions_ahead(predict, test_data.with_rows(),
                                                             images_of=lambda item: item[0][0]):
        yield targets, rows, outputs


def score_into(scorer, predict, test_data) -> None:
    """Every batch of ``test_data`` predicted by ``predict`` and added to the task's ``scorer``, its
    padding cut from predictions and targets alike."""
    for targets, rows, outputs in _predicted(predict, test_data):
        scorer.add(_host(targets)[:rows], outputs[:rows])


def score(data: RunData, predict, test_data) -> tuple[dict, dict]:
    """The test metrics and predictions of ``predict`` (batch in, probabilities out: device tensors
    or NumPy) over ``test_data`` (a zoo.data.pipeline.ArrayBatches: full batches, each ending with
    its row weights; the last batch's completion is cut from predictions and targets alike): the
    trained model's, or an exported copy's (zoo.harness.deploy)."""
    start = time.perf_counter()
    scorer = TASKS.get(data.task).scorer(data.info.class_names, data.info.ignore_classes)
    score_into(scorer, predict, test_data)
    eval_seconds = time.perf_counter() - start
    result, predictions = scorer.finish()
    result["eval_seconds"] = eval_seconds
    predictions["example_ids"] = np.array(data.source.example_ids(*data.plan["test"]))
    return result, predictions


def add_uncertainty(data: RunData, result: dict, predictions: dict) -> None:
    """95 % bootstrap intervals of the test metrics over test examples, and a flag on classes
    with too few test examples to judge (see zoo.stats)."""
    from zoo import stats

    info, task = data.info, TASKS.get(data.task)
    for metric in task.interval_metrics:
        scores = stats.example_scores(predictions, data.task, metric, info.num_classes, info.ignore_classes)
        result[f"{metric}_ci_low"], result[f"{metric}_ci_high"] = stats.interval(scores)
    result["confidence_level"] = stats.CONFIDENCE
    result["test_examples"] = len(predictions["example_ids"])
    examples = task.test_examples_by_class(result, predictions, info.class_names)
    for row in result.get("per_class", []):
        row["test_examples"] = int(examples[row["class"]])
        row["too_few_to_judge"] = row["test_examples"] < stats.MIN_CLASS_EXAMPLES


class ModelPredict:
    """A model's compiled inference function (zoo.runtime.device_predict: outputs left on the
    device), traced on first use and then shared by evaluation and the speed measurement."""

    def __init__(self, model):
        self.model, self._predict = model, None

    def __call__(self, images):
        return self._function()(images)

    def _function(self):
        if self._predict is None:
            from zoo.runtime import device_predict

            self._predict = device_predict(self.model)
        return self._predict

    def lowerings(self, batch_sizes, input_shape) -> list:
        """For each of ``batch_sizes``, a function that lowers the program for float32 batches of that many
        images of ``input_shape`` (as the input pipeline and the speed measurement give them), to compile
        ahead (zoo.harness.compilation.CompiledAhead); none where the backend compiles otherwise (TensorFlow
        traces once for any batch, PyTorch and several devices go through Keras's predict step)."""
        lowered = getattr(self._function(), "lowered", None)
        if lowered is None:
            return []
        import jax

        return [lambda size=size: lowered(jax.ShapeDtypeStruct((size, *input_shape), "float32"))
                for size in batch_sizes]


def evaluate(data: RunData, predict_model: ModelPredict, fitted: Fitted) -> tuple[dict, dict]:
    """Test metrics and predictions: the full model on test images, or, with cached features,
    the head on the test images' features (the same function of the same images)."""
    from zoo.runtime import device_predict

    if fitted.features is None:
        predict, test_data = predict_model, data.pipelines["test"]
    else:
        predict, test_data = device_predict(fitted.trained_model), fitted.features["test"]
    result, predictions = score(data, predict, test_data)
    add_uncertainty(data, result, predictions)
    return result, predictions


def smooth(spec: RunSpec, data: RunData, result: dict, predictions: dict) -> None:
    """Smooth test predictions along their tracks; metrics before stay, after go to 'smoothed'."""
    from zoo import metrics
    from zoo.postprocess import estimate_transitions, smooth_tracks

    params = dict(spec.postprocess)
    method = params.pop("method")
    source, plan, info = data.source, data.plan, data.info
    if params.pop("transitions") == "estimate":
        train = source.tracks(*plan["train"])
        labels = source.labels(plan["train"][0])
        labels = labels if plan["train"][1] is None else labels[plan["train"][1]]
        params["transitions"] = estimate_transitions(labels, train["track_id"], train["position"], info.num_classes)
    if method == "window":
        params.pop("switch_penalty"), params.pop("transitions", None)
    else:
        params.pop("window")
    tracks = source.tracks(*plan["test"])
    smoothed = smooth_tracks(predictions["probabilities"], tracks["track_id"], tracks["position"], method,
                             point_ids=tracks["point_id"], **params)
    after = metrics.classification_metrics(predictions["y_true"], np.eye(info.num_classes)[smoothed], info.class_names)
    result["smoothed"] = {k: after[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1",
                                                 "per_class", "confusion_matrix")}
    result["accuracy_smoothed"] = after["accuracy"]
    predictions["y_pred_smoothed"] = smoothed


def _speed_record(spec: RunSpec, runtime: Runtime, data: RunData, cache_dir: Path) -> tuple[Path, dict]:
    """Where the output folder keeps the speed of this run's architecture, input, batch, precision and
    device, and that identity."""
    import keras

    identity = {"backbone": spec.backbone, "head": spec.head, "backbone_options": spec.backbone_options,
                "input": list(spec.input(data.info).shape), "classes": data.info.num_classes,
                "batch_size": runtime.global_batch, "precision": runtime.precision, "device": runtime.device,
                "replicas": runtime.replicas, "backend": keras.backend.backend(), "keras": keras.__version__}
    key = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir / "speed" / f"{key}.json", identity


def recorded_speed(spec: RunSpec, runtime: Runtime, data: RunData, cache_dir: Path,
                   path: Path | None = None) -> dict | None:
    """An earlier run's speed of the same architecture, input, batch, precision and device in this output
    folder (metrics.json's fields; ``path``: the record's, when known), or None where it is still to be
    measured."""
    try:
        recorded = json.loads((path or _speed_record(spec, runtime, data, cache_dir)[0]).read_text())
        return {"images_per_second": recorded["images_per_second"], "latency_ms": recorded["latency_ms"],
                "speed_measured_in": recorded["run_id"]}
    except (OSError, ValueError, KeyError):
        return None


def measure_speed(spec: RunSpec, runtime: Runtime, data: RunData, predict_model: ModelPredict, cache_dir: Path) -> dict:
    """Inference images/s and latency, measured once per architecture, input, batch,
    precision and device within the output folder: a seed or learning rate does not change
    them, so later runs reuse the first measurement and name the run it came from. In a pool of workers
    (``zoo run --workers N``) it is timed with the other runs paused (zoo.harness.sharing)."""
    from zoo.harness.sharing import measured_alone
    from zoo.harness.timing import inference_speed

    path, identity = _speed_record(spec, runtime, data, cache_dir)
    recorded = recorded_speed(spec, runtime, data, cache_dir, path)
    if recorded is not None:
        return recorded
    paused = []  # the pool's other workers paused while it was timed (metrics.json's speed_paused_workers)

    @contextlib.contextmanager
    def alone():
        with measured_alone(cache_dir / "speed" / ".measuring.lock") as count:
            paused.append(count)
            yield

    speed = inference_speed(predict_model, spec.input(data.info).shape, runtime.global_batch, quiet=alone)
    write_json(path, {**speed, "run_id": spec.run_id, "identity": identity, "paused_workers": paused[0]})
    return {**speed, "speed_measured_in": None, "speed_paused_workers": paused[0]}


# -- a whole run --------------------------------------------------------------------------------------
@dataclass
class OpenedRun:
    """A run's spec, runtime, data and model together: what export and deployment figures work on."""

    dir: Path
    spec: RunSpec
    runtime: Runtime
    data: RunData
    model: object

    @property
    def task(self) -> str:
        return self.data.task

    @property
    def info(self):
        return self.data.info

    def score(self, predict, test_data):
        return score(self.data, predict, test_data)


@dataclass
class Trained:
    """A trained and scored run, before its folder is completed (:func:`record`)."""

    opened: OpenedRun
    fitted: Fitted
    result: dict             # metrics.json's content so far
    predictions: dict
    clock: object            # zoo.harness.timing.StageClock: the stages' seconds so far
    model_saved: bool = False  # model.keras written already (an export on another backend needs it first)


def train_and_score(run_dir: Path, spec: RunSpec, progress: dict, clock=None) -> Trained:
    """Every stage of a run up to its scores, writing the run folder's records as it goes;
    ``progress`` collects what is known so far, for the row of a run that fails midway; ``clock``
    (zoo.harness.timing.StageClock, a new one when None) times each stage."""
    from zoo.harness import compilation
    from zoo.harness.timing import StageClock

    clock = clock or StageClock()
    progress.update(clock=clock)
    cache_dir = cache_folder(run_dir)
    with clock.stage("start"):
        compilation.use_persistent_cache(cache_dir)
        compiled_before = compilation.snapshot()
        runtime = start_runtime(spec)
        progress.update(runtime=runtime)
        write_json(run_dir / "environment.json", environment(runtime))
    with clock.stage("data"):
        data = open_data(spec, runtime.global_batch, cache_dir)
        record_split(run_dir, spec, data)
    with clock.stage("build"):
        model = build_run_model(spec, data, runtime)
    progress.update(model=model)
    predict_model = ModelPredict(model)

    def later_programs() -> list:  # evaluation's batches (unless a head on features is scored), speed's
        speed = recorded_speed(spec, runtime, data, cache_dir) is None
        sizes = ([runtime.global_batch] if speed or not spec.trains_on_features else []) + ([1] if speed else [])
        return predict_model.lowerings(sizes, spec.input(data.info).shape)

    with clock.stage("train"):
        fitted = train(spec, runtime, data, model, run_dir, later_programs)
    progress.update(xla=fitted.xla)
    result = {"precise_bn": fitted.precise_bn, "compiled_ahead": fitted.compiled_ahead}
    with clock.stage("evaluate"):
        evaluation, predictions = evaluate(data, predict_model, fitted)
        result.update(evaluation)
        if spec.stages().smooths_tracks:
            smooth(spec, data, result, predictions)
    with clock.stage("speed"):
        result.update(measure_speed(spec, runtime, data, predict_model, cache_dir))
    result.update(compilation.since(compiled_before))
    return Trained(OpenedRun(Path(run_dir), spec, runtime, data, model), fitted, result, predictions, clock)


def record(trained: Trained) -> dict:
    """The run folder completed (model.keras, predictions.npz, metrics.json, TensorBoard's hparams);
    returns the run's results row."""
    from zoo.harness.recipes import keep_keras_saving_skipsets
    from zoo.tracking import tensorboard_hparams

    opened, fitted, result = trained.opened, trained.fitted, trained.result
    model_path = opened.dir / "model.keras"
    with trained.clock.stage("save"):
        if not trained.model_saved:
            keep_keras_saving_skipsets()
            opened.model.save(model_path)
        np.savez_compressed(opened.dir / "predictions.npz", **trained.predictions)
    result.update(fitted.timing)
    cache = fitted.features
    result["features"] = "off" if cache is None else ("reused" if cache["reused"] else "computed")
    result["input_cache"] = opened.data.input_cache_state
    result["feature_seconds"] = None if cache is None else cache["seconds"]
    result["precise_bn_batches"] = result["precise_bn"]["batches"]
    result.update(trained.clock.summary())  # metrics.json and TensorBoard's hparams below: its last milliseconds
    write_json(opened.dir / "metrics.json", result)
    tensorboard_hparams(opened.dir / "tensorboard", opened.spec, result)
    return results_row(opened.spec, opened.task, "ok", "", result, fitted.epochs_run, fitted.trainable,
                       {"runtime": opened.runtime, "model": opened.model, "xla": fitted.xla}, model_path)


def results_row(spec: RunSpec, task: str, status: str, error: str, result: dict | None, epochs_run: int,
                trainable: str, progress: dict, model_path: Path | None = None) -> dict:
    """The run's results row from what is known: for a failed run, whatever stages finished."""
    from zoo import runtime as backends
    from zoo.harness.sharing import runs_at_once
    from zoo.results import run_row

    runtime, model, clock = progress.get("runtime"), progress.get("model"), progress.get("clock")
    count = lambda weights: int(sum(np.prod(w.shape) for w in weights))  # noqa: E731
    values = dict(result or (clock.summary() if clock else {}), trainable=trainable, epochs_run=epochs_run,
                  batch_size=runtime.global_batch if runtime else None, device=runtime.device if runtime else None,
                  precision=runtime.precision if runtime else None, xla=progress.get("xla"),
                  backend=f"{backends.backend()} {backends.backend_version()}", runs_at_once=runs_at_once())
    if model is not None:
        values.update(params=model.count_params(), trainable_params=count(model.trainable_weights))
    if model_path and model_path.is_file():
        values["model_megabytes"] = model_path.stat().st_size / 1e6
    return run_row(spec, task, status, error, values)


def reopen(run_dir, any_backend: bool = False) -> OpenedRun:
    """A finished run's runtime, data and model, through the stages that trained it; writes nothing.
    ``any_backend``: on this process's backend even where the run trained on another (its model.keras
    is the same model on every backend)."""
    from zoo.results import load_run_model

    spec, _, model = load_run_model(run_dir)
    runtime = start_runtime(spec, any_backend)
    data = open_data(spec, runtime.global_batch, cache_folder(run_dir))
    return OpenedRun(Path(run_dir), spec, runtime, data, model)
