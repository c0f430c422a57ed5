"""One run: train, evaluate, measure and record, inside a run folder.

A run is a function of its folder: ``run.json`` in, result files out, and whatever happens
the last file written is ``result.json``, the run's row of results.csv. The runner executes
runs in a long-lived worker process (``python -m zoo.harness.worker --serve FD``, see
zoo.harness.executors) so that TensorFlow is imported once per suite, while a hard crash (out
of memory, a segfault) still loses one run, not the suite.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras warns that fit's shuffle=True is ignored for tf.data input; zoo shuffles in the pipeline.
import warnings  # noqa: E402

warnings.filterwarnings("ignore", message=".*shuffle=True. was passed.*")

import numpy as np

from zoo.results import write_json


# Training steps per call of a head on cached features (see Run.compile).
FEATURE_STEPS_PER_EXECUTION = 32


class RunFailed(RuntimeError):
    """A run that cannot finish, with a message for the results table."""


def environment(precision: str, device: str, replicas: int) -> dict:
    import keras

    import zoo
    from zoo import runtime

    def version(module):  # TensorFlow and tensorflow-datasets are optional on JAX and PyTorch
        return importlib.import_module(module).__version__ if runtime.installed(module) else None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(zoo.__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "backend": runtime.backend(),
            "backend_version": runtime.backend_version(), "tensorflow": version("tensorflow"), "keras": keras.__version__,
            "tensorflow_datasets": version("tensorflow_datasets"), "numpy": np.__version__, "zoo": zoo.__version__,
            "git_commit": commit, "device": device, "replicas": replicas, "precision": precision,
            "platform": platform.platform(), "cpu_count": os.cpu_count()}


def make_optimizer(name: str, learning_rate):
    import keras

    makers = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "rmsprop": keras.optimizers.RMSprop,
              "nadam": keras.optimizers.Nadam,
              "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.9)}
    return makers[name](learning_rate=learning_rate)


def make_loss(task: str, loss: str):
    import keras

    if task == "distribution":
        return keras.losses.KLDivergence()
    if loss == "focal":
        return keras.losses.CategoricalFocalCrossentropy()
    if task == "segmentation" and keras.backend.backend() == "torch":
        from zoo.losses import PixelCrossentropy  # Keras's own fails to train there (see zoo.losses)

        return PixelCrossentropy()
    return keras.losses.SparseCategoricalCrossentropy()


def jit_compile(xla: bool):
    """Keras's ``jit_compile`` for ``train.xla``: XLA when asked; otherwise TensorFlow's graph
    without XLA, and each other backend's own default ("auto": JAX jits every step, as every JAX
    user expects; a JAX step without jit runs op by op, several times slower)."""
    from zoo.runtime import backend

    if xla:
        return True
    return False if backend() == "tensorflow" else "auto"


def compiled_with_xla(model, asked: bool) -> bool:
    """Whether Keras compiles ``model``'s train step with XLA. Asked for (``train.xla``) but refused by
    Keras (a layer that does not support it), the run stops here, naming the layers, rather than
    train in another mode than its row would say."""
    used = model.jit_compile  # what Keras resolved: "auto" is XLA on JAX, eager on PyTorch
    if asked and not used:
        refusing = sorted({f"{layer.name} ({type(layer).__name__})" for layer in model._flatten_layers()
                           if not getattr(layer, "supports_jit", True)})
        raise RunFailed(f"train.xla: true, but Keras cannot XLA-compile this model: "
                        f"{', '.join(refusing) or 'its backend refused'} do(es) not support XLA; "
                        f"set train.xla: false for it")
    return bool(used)


def best_weights_callback():
    """Keeps the weights of the epoch with the lowest validation loss, in memory (as EarlyStopping's
    restore_best_weights does): a copy per improving epoch costs far less than writing a file."""
    import keras

    class BestWeights(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best, self.weights = math.inf, None

        def on_epoch_end(self, epoch, logs=None):
            loss = (logs or {}).get("val_loss")
            if loss is not None and loss < self.best:
                self.best, self.weights = loss, self.model.get_weights()

    return BestWeights()


def learning_rate_log():
    """A callback that puts the optimizer's learning rate at each epoch's end into that epoch's logs
    (history.csv's ``learning_rate``), before a plateau schedule lowers it for the next epoch."""
    import keras

    class LearningRateLog(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    return LearningRateLog()


def epoch_tensorboard(log_dir: Path):
    """Keras's TensorBoard callback writing per epoch only (its default ``update_freq``), without
    its per-batch hooks: at epoch frequency they write nothing yet cost about 1 ms a batch, as much
    as a small head's training step on cached features."""
    import keras

    class EpochTensorBoard(keras.callbacks.TensorBoard):
        def on_train_batch_begin(self, batch, logs=None):
            self._global_train_batch += 1

        def on_train_batch_end(self, batch, logs=None):
            pass

    return EpochTensorBoard(str(log_dir), write_graph=False, profile_batch=0)


def tensorboard_callbacks(log_dir: Path) -> list:
    """The epoch TensorBoard callback where TensorFlow is installed (Keras writes its logs
    through tf.summary); none without it."""
    from zoo.runtime import has_tensorflow

    return [epoch_tensorboard(log_dir)] if has_tensorflow() else []


_SOURCES: dict = {}  # the datasets this process has opened: the runs of a sweep share them


def opened_source(dataset: dict, cache_dir: Path):
    """The dataset of a run, opened once per process (opening generates, scans or indexes it)."""
    from zoo.data.sources import open_source

    key = json.dumps([dataset, str(cache_dir)], sort_keys=True, default=str)
    if key not in _SOURCES:
        _SOURCES[key] = open_source(dataset, cache_dir=cache_dir)
    return _SOURCES[key]


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


class Run:
    """Everything one run needs, resolved from its run.json."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.spec = json.loads((self.dir / "run.json").read_text())
        self.train = self.spec["train"]
        from zoo.heads import head_task

        self.task = head_task(self.spec["head"])
        self.timer = None

    # -- data -----------------------------------------------------------------------
    def open_data(self, record: bool = True):
        """The run's dataset, split and input pipelines; ``record`` writes split.json,
        split_indices.npz and dataset.json (False: a finished run reopened, e.g. to export it)."""
        from zoo.backbones import BACKBONES
        from zoo.data.pipeline import class_counts
        from zoo.data.steps import PipelineOptions, class_weights_from_counts, preprocessing_steps
        from zoo.data.splits import plan_for_source

        cache_dir = self.dir.parent.parent / "cache"
        self.source = opened_source(self.spec["dataset"], cache_dir)
        info = self.info = self.source.info
        fractions = self.train.get("split") or self.spec["dataset"].get("split")
        labelled = {s: n for s, n in info.splits.items() if s in info.labelled_splits}
        self.plan = plan_for_source(self.source, fractions, self.spec["split_seed"])
        sizes = {name: (len(idx) if idx is not None else labelled[split]) for name, (split, idx) in self.plan.items()}
        # Pixel counts mean reading every training mask: only when class weights need them.
        needs_counts = self.task == "classification" or self.train["class_weights"]
        train_counts = class_counts(self.source, *self.plan["train"], info.num_classes) if needs_counts else None
        weights = None
        if self.train["class_weights"]:
            weights = class_weights_from_counts(train_counts, info.ignore_classes)
        if record:
            self.record_split(sizes, train_counts, weights)

        self.class_weight_dict = ({i: w for i, w in enumerate(weights)}
                                  if weights and self.task == "classification" else None)
        # Per-pixel loss weights of segmentation: the class weights, else 0 for ignored classes.
        self.pixel_weights = weights or [0.0 if c in info.ignore_classes else 1.0 for c in range(info.num_classes)]
        steps = preprocessing_steps(self.train["preprocessing"])
        cache = self.train["cache"]
        self.options = dict(
            image_size=self.train["image_size"], batch_size=self.global_batch,
            preprocessing=BACKBONES.get(self.spec["backbone"]).preprocessing, extra_preprocessing=steps,
            seed=self.spec["seed"], class_weights=weights if self.task != "classification" else None,
            target={"classification": "labels", "segmentation": "masks", "distribution": "proportions"}[self.task],
            one_hot=self.train["loss"] == "focal" and self.task == "classification")
        self.sizes = sizes

        def pipeline(name, training, augment=None):
            split, indices = self.plan[name]
            option_cache = None if cache == "none" else ("memory" if cache == "memory" else
                                                          str(cache_dir / f"{self.spec['run_id']}-{name}"))
            augment = bool(self.train["augment"]) and training if augment is None else augment
            options = PipelineOptions(**self.options, augment=augment, cache=option_cache)
            return input_pipeline(self.source, split, indices, info, options, training)

        from zoo.data.pipeline import input_pipeline

        self.make_pipeline = pipeline
        # Built when first used: a head trained on cached features never reads the images.
        self.pipelines = LazyPipelines(lambda name: pipeline(name, name == "train"))

    def record_split(self, sizes, train_counts, class_weights) -> None:
        labelled = self.info.splits
        write_json(self.dir / "split.json", {"split_seed": self.spec["split_seed"], "sizes": sizes,
                                             "sources": {k: v[0] for k, v in self.plan.items()},
                                             "train_class_counts": train_counts, "class_weights": class_weights})
        np.savez_compressed(self.dir / "split_indices.npz",
                            **{k: (v[1] if v[1] is not None else np.arange(labelled[v[0]])) for k, v in self.plan.items()})
        write_json(self.dir / "dataset.json", self.info.to_dict())

    # -- model ----------------------------------------------------------------------
    def build(self, record: bool = True):
        import keras

        from zoo.runtime import backend, choose_strategy, describe_device, precision_policy

        wanted = self.train.get("backend")
        if wanted and backend() != wanted:  # KERAS_BACKEND is read once, when Keras is imported
            raise RunFailed(f"train.backend is {wanted}, but this process runs {backend()}: the process was "
                            f"started without KERAS_BACKEND={wanted}")
        self.precision = precision_policy(self.train["precision"])
        keras.mixed_precision.set_global_policy(self.precision)
        self.strategy = choose_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.global_batch = self.train["batch_size"] * self.replicas
        self.device = describe_device()
        if record:
            write_json(self.dir / "environment.json", environment(self.precision, self.device, self.replicas))

    def make_model(self):
        from zoo import build_model

        size, channels = self.train["image_size"], self.info.channels
        with self.strategy.scope():
            self.model = build_model(self.spec["backbone"], self.spec["head"], self.info.num_classes,
                                     (size, size, channels), weights=None if self.spec["weights"] == "none"
                                     else self.spec["weights"], trainable=self.spec["trainable"],
                                     backbone_options=self.spec["backbone_options"],
                                     batchnorm_momentum=self.train.get("batchnorm_momentum"),
                                     head_seed=self.spec["seed"],
                                     reuse_frozen_backbone=not self.spec.get("finetune"))

    def predictor(self):
        """The model's compiled inference function (see zoo.runtime.compiled_predict)."""
        from zoo.runtime import compiled_predict

        if getattr(self, "_predict", None) is None:
            self._predict = compiled_predict(self.model)
        return self._predict

    def compile(self, learning_rate, epochs):
        import keras

        schedule = learning_rate
        if self.train["lr_schedule"] == "cosine":
            steps = self.train["steps_per_epoch"] or max(1, math.ceil(self.sizes["train"] / self.global_batch))
            schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps * epochs)
        metrics = {"classification": ["accuracy"], "segmentation": [], "distribution": []}[self.task]
        weighted = ["accuracy"] if self.task == "segmentation" else None
        self.calibration_forward = None  # traced again: trainable flags may have changed
        with self.strategy.scope():  # the optimizer's variables too belong to the strategy
            settings = dict(optimizer=make_optimizer(self.train["optimizer"], schedule),
                            loss=make_loss(self.task, self.train["loss"]), metrics=metrics,
                            weighted_metrics=weighted, jit_compile=jit_compile(self.train["xla"]))
            if self.trained_model is self.model:
                self.trained_model.compile(**settings)
                self.xla = compiled_with_xla(self.trained_model, self.train["xla"])
            else:
                # A head on cached features: each step is a matrix product or two, so Keras's
                # per-call overhead would dominate; several steps per call give the same numbers.
                # A worker's later runs train the same compiled head again (zoo.harness.kept_models).
                from zoo.harness import kept_models

                # (Keras 3.15 cannot run several steps per call over a MirroredStrategy's datasets.)
                settings["steps_per_execution"] = FEATURE_STEPS_PER_EXECUTION if self.replicas == 1 else 1
                self.trained_model = kept_models.compiled(self.trained_model, settings, self.strategy)
                self.xla = compiled_with_xla(self.trained_model, self.train["xla"])
                self.feature_cache["head_model"] = self.trained_model

    def calibration_batches(self, repeat: bool):
        """Training batches without augmentation (the statistics serve evaluation on unaugmented
        images), shuffled with the run's seed: images, or cached features for a head on features."""
        if self.trained_model is self.model:
            batches = self.make_pipeline("train", True, augment=False)
        else:
            batches = self.feature_cache["dataset"]("train", self.spec["seed"])
        return batches.repeat() if repeat else batches

    def callbacks(self, append: bool):
        import keras

        from zoo.harness.precise_bn import (forward_in_training_mode, precise_bn_callback, trained_batchnorm_layers,
                                            validation_batches)
        from zoo.harness.timing import EpochTimer

        self.timer = self.timer or EpochTimer()
        self.best_weights = best_weights_callback()
        callbacks = [self.timer, learning_rate_log(), keras.callbacks.TerminateOnNaN()]
        precise = self.train["precise_bn"]
        if precise and trained_batchnorm_layers(self.trained_model):
            # Keras runs validation inside fit before on_epoch_end: this callback's on_test_begin
            # recalibrates first, so checkpointing, early stopping and schedules judge current statistics.
            steps = self.train["steps_per_epoch"] or max(1, math.ceil(self.sizes["train"] / self.global_batch))
            self.validation_calibration_batches = validation_batches(steps, self.global_batch, precise["batches"])
            self.calibration_forward = forward_in_training_mode(self.trained_model)
            callbacks.append(precise_bn_callback(lambda: self.calibration_batches(repeat=True),
                                                 self.validation_calibration_batches, self.calibration_forward))
        callbacks += [keras.callbacks.CSVLogger(str(self.dir / "history.csv"), append=append),
                      self.best_weights, *tensorboard_callbacks(self.dir / "tensorboard")]
        if self.train["early_stopping"]:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.train["early_stopping"],
                                                           restore_best_weights=True))
        if self.train["lr_schedule"] == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2,
                                                               patience=max(1, self.train["early_stopping"] // 2 or 2)))
        return callbacks

    def fit(self, epochs, initial_epoch=0, append=False):
        train, val = self.fit_data
        history = self.trained_model.fit(train, validation_data=val,
                                 epochs=initial_epoch + epochs, initial_epoch=initial_epoch,
                                 steps_per_epoch=self.train["steps_per_epoch"], class_weight=self.class_weight_dict,
                                 callbacks=self.callbacks(append), verbose=2)
        losses = history.history.get("loss", [])
        if not losses or any(not math.isfinite(v) for v in losses):
            raise RunFailed(f"the training loss became NaN or infinite at epoch {initial_epoch + len(losses)}; "
                            f"lower train.learning_rate or check the data")
        return len(losses)

    # -- evaluation -----------------------------------------------------------------
    def evaluate(self) -> dict:
        """Test metrics and predictions: the full model on test images, or, with cached features,
        the head on the test images' features (the same function of the same images)."""
        from zoo.runtime import compiled_predict

        if self.feature_cache is None:
            predict, test_data = self.predictor(), self.pipelines["test"]
        else:
            predict, test_data = compiled_predict(self.trained_model), self.feature_cache["test"]
        result, predictions = self.score(predict, test_data)
        self.add_uncertainty(result, predictions)
        return result, predictions

    def score(self, predict, test_data):
        """The test metrics and predictions of ``predict`` (batch in, NumPy probabilities out) over
        ``test_data``: the trained model's, or an exported copy's (zoo.export)."""
        from zoo import metrics

        start = time.perf_counter()
        names, ignore = self.info.class_names, self.info.ignore_classes
        if self.task == "classification":
            truth, probabilities = [], []
            for images, labels in test_data:
                probabilities.append(predict(images))
                labels = np.asarray(labels)
                truth.append(labels.argmax(axis=-1) if labels.ndim == 2 else labels)
            y_true, y_prob = np.concatenate(truth), np.concatenate(probabilities)
            eval_seconds = time.perf_counter() - start
            result = metrics.classification_metrics(y_true, y_prob, names)
            predictions = {"y_true": y_true, "y_pred": y_prob.argmax(axis=1), "probabilities": y_prob}
        elif self.task == "segmentation":
            confusion = np.zeros((len(names), len(names)), dtype=np.int64)
            masks, predicted, true_props, predicted_props = [], [], [], []
            for images, batch_masks, _ in test_data:
                probabilities = predict(images)
                batch_masks = np.asarray(batch_masks)
                batch_pred = probabilities.argmax(axis=-1)
                confusion += metrics.pixel_confusion(batch_masks, batch_pred, len(names))
                true_props.append(np.stack([np.bincount(m.ravel(), minlength=len(names)) for m in batch_masks]))
                predicted_props.append(probabilities.mean(axis=(1, 2)))
                masks.append(batch_masks.astype(np.uint8))
                predicted.append(batch_pred.astype(np.uint8))
            eval_seconds = time.perf_counter() - start
            result = metrics.segmentation_metrics(confusion, names, ignore, np.concatenate(true_props),
                                                  np.concatenate(predicted_props))
            predictions = {"y_true": np.concatenate(masks), "y_pred": np.concatenate(predicted),
                           "proportions_true": np.concatenate(true_props),
                           "proportions_pred": np.concatenate(predicted_props)}
        else:
            truth, predicted = [], []
            for images, proportions in test_data:
                predicted.append(predict(images))
                truth.append(np.asarray(proportions))
            y_true, y_pred = np.concatenate(truth), np.concatenate(predicted)
            eval_seconds = time.perf_counter() - start
            result = metrics.distribution_metrics(y_true, y_pred, names, ignore)
            predictions = {"y_true": y_true, "y_pred": y_pred}
        result["eval_seconds"] = eval_seconds
        predictions["example_ids"] = np.array(self.source.example_ids(*self.plan["test"]))
        return result, predictions

    def add_uncertainty(self, result, predictions) -> None:
        """95 % bootstrap intervals of the test metrics over test examples, and a flag on classes
        with too few test examples to judge (see zoo.stats)."""
        from zoo import stats

        for metric in stats.INTERVAL_METRICS[self.task]:
            scores = stats.example_scores(predictions, self.task, metric, self.info.num_classes,
                                          self.info.ignore_classes)
            result[f"{metric}_ci_low"], result[f"{metric}_ci_high"] = stats.interval(scores)
        result["confidence_level"] = stats.CONFIDENCE
        result["test_examples"] = len(predictions["example_ids"])
        if self.task == "segmentation":  # tiles showing each class, by name
            present = (np.asarray(predictions["proportions_true"]) > 0).sum(axis=0)
            examples = dict(zip(self.info.class_names, present.tolist()))
        else:
            examples = {row["class"]: row["support"] for row in result.get("per_class", [])}
        for row in result.get("per_class", []):
            row["test_examples"] = int(examples[row["class"]])
            row["too_few_to_judge"] = row["test_examples"] < stats.MIN_CLASS_EXAMPLES

    def execute(self) -> dict:
        from zoo.runtime import make_deterministic

        make_deterministic(self.spec["seed"], xla=bool(self.train["xla"]))
        self.build()
        self.open_data()
        self.make_model()
        # What fit trains: the full model on images, or only the head on cached frozen-backbone
        # features (then the image pipelines are never built: about 0.4 s a run).
        self.feature_cache = None
        from zoo.harness import features

        if not features.wanted(self.spec):
            self.trained_model, self.fit_data = self.model, (self.pipelines["train"], self.pipelines["val"])
        else:
            from zoo.backbones import BACKBONES
            from zoo.heads import HEADS

            with self.strategy.scope():
                self.feature_cache = features.prepare(self, HEADS.get(self.spec["head"]),
                                                      BACKBONES.get(self.spec["backbone"]))
            self.trained_model = self.feature_cache["head_model"]
            self.fit_data = (self.feature_cache["train"], self.feature_cache["val"])
        self.compile(self.train["learning_rate"], self.train["epochs"])
        epochs_run = self.fit(self.train["epochs"])
        trainable = self.spec["trainable"]
        finetune = self.spec.get("finetune")
        if finetune:
            from zoo.factory import set_trainable

            self.restore_best()
            set_trainable(self.model, finetune["trainable"])  # never with cached features (features.applies)
            self.compile(finetune["learning_rate"], finetune["epochs"])
            epochs_run += self.fit(finetune["epochs"], initial_epoch=epochs_run, append=True)
            trainable = f"{trainable}+finetune {finetune['trainable']}"
        self.restore_best()
        result = {"precise_bn": self.recalibrate()}
        evaluation, predictions = self.evaluate()
        result.update(evaluation)
        if self.spec.get("postprocess"):
            self.smooth(result, predictions)

        speed = self.measure_speed()
        model_path = self.dir / "model.keras"
        keep_keras_saving_skipsets()
        self.model.save(model_path)
        np.savez_compressed(self.dir / "predictions.npz", **predictions)
        result.update(self.timer.summary(), **speed)
        if self.spec.get("export"):
            from zoo.harness.deploy import deployment_figures

            result.update(deployment_figures(self, self.spec["export"], result))
        cache = self.feature_cache
        result["features"] = "off" if cache is None else ("reused" if cache["reused"] else "computed")
        result["feature_seconds"] = None if cache is None else cache["seconds"]
        result["precise_bn_batches"] = result["precise_bn"]["batches"]
        write_json(self.dir / "metrics.json", result)
        from zoo.tracking import tensorboard_hparams

        tensorboard_hparams(self.dir / "tensorboard", self.spec, result)
        return self.row("ok", "", result, epochs_run, trainable, model_path)

    def measure_speed(self) -> dict:
        """Inference images/s and latency, measured once per architecture, input, batch,
        precision and device within the output folder: a seed or learning rate does not change
        them, so later runs reuse the first measurement and name the run it came from."""
        import keras

        from zoo.harness.timing import inference_speed
        from zoo.results import write_json

        size = self.train["image_size"]
        identity = {"backbone": self.spec["backbone"], "head": self.spec["head"],
                    "backbone_options": self.spec["backbone_options"], "input": [size, size, self.info.channels],
                    "classes": self.info.num_classes, "batch_size": self.global_batch, "precision": self.precision,
                    "device": self.device, "replicas": self.replicas, "backend": keras.backend.backend(),
                    "keras": keras.__version__}
        key = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = self.dir.parent.parent / "cache" / "speed" / f"{key}.json"
        try:
            recorded = json.loads(path.read_text())
            return {"images_per_second": recorded["images_per_second"], "latency_ms": recorded["latency_ms"],
                    "speed_measured_in": recorded["run_id"]}
        except (OSError, ValueError, KeyError):
            pass
        speed = inference_speed(self.predictor(), (size, size, self.info.channels), self.global_batch)
        write_json(path, {**speed, "run_id": self.spec["run_id"], "identity": identity})
        return {**speed, "speed_measured_in": None}

    def smooth(self, result, predictions):
        """Smooth test predictions along their tracks; metrics before stay, after go to 'smoothed'."""
        from zoo import metrics
        from zoo.postprocess import estimate_transitions, smooth_tracks

        params = dict(self.spec["postprocess"])
        method = params.pop("method")
        if params.pop("transitions") == "estimate":
            train = self.source.tracks(*self.plan["train"])
            labels = self.source.labels(self.plan["train"][0])
            labels = labels if self.plan["train"][1] is None else labels[self.plan["train"][1]]
            params["transitions"] = estimate_transitions(labels, train["track_id"], train["position"],
                                                         self.info.num_classes)
        if method == "window":
            params.pop("switch_penalty"), params.pop("transitions", None)
        else:
            params.pop("window")
        tracks = self.source.tracks(*self.plan["test"])
        smoothed = smooth_tracks(predictions["probabilities"], tracks["track_id"], tracks["position"], method,
                                 point_ids=tracks["point_id"], **params)
        after = metrics.classification_metrics(predictions["y_true"], np.eye(self.info.num_classes)[smoothed],
                                               self.info.class_names)
        result["smoothed"] = {k: after[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1",
                                                     "per_class", "confusion_matrix")}
        result["accuracy_smoothed"] = after["accuracy"]
        predictions["y_pred_smoothed"] = smoothed

    def recalibrate(self) -> dict:
        """Population statistics for the trained BatchNorm layers before evaluation, speed
        measurement and saving (see zoo.harness.precise_bn); what was done, for metrics.json."""
        from zoo.harness.precise_bn import recalibrate_batchnorm, trained_batchnorm_layers

        precise = self.train["precise_bn"]
        layers = len(trained_batchnorm_layers(self.trained_model)) if precise else 0
        start = time.perf_counter()
        batches = recalibrate_batchnorm(self.trained_model, self.calibration_batches(repeat=False),
                                        precise["batches"], self.calibration_forward) if layers else 0
        if batches and self.trained_model is not self.model:
            from zoo.harness.features import copy_head_weights

            copy_head_weights(self.trained_model, self.model)
        return {"batches": batches, "layers": layers, "augmented": False,
                "seconds": time.perf_counter() - start,
                "before_validation_batches": getattr(self, "validation_calibration_batches", 0) if layers else 0}

    def restore_best(self):
        best = self.best_weights.weights
        if best is not None and not self.train["early_stopping"]:
            self.trained_model.set_weights(best)  # early stopping already restored the best epoch
        if self.trained_model is not self.model:
            from zoo.harness.features import copy_head_weights

            copy_head_weights(self.trained_model, self.model)

    def row(self, status, error, result, epochs_run, trainable, model_path) -> dict:
        from zoo import runtime
        from zoo.results import run_row

        model = getattr(self, "model", None)
        count = lambda weights: int(sum(np.prod(w.shape) for w in weights))  # noqa: E731
        values = dict(result or {}, trainable=trainable, epochs_run=epochs_run,
                      batch_size=getattr(self, "global_batch", None), device=getattr(self, "device", None),
                      precision=getattr(self, "precision", None), xla=getattr(self, "xla", None),
                      backend=f"{runtime.backend()} {runtime.backend_version()}")
        if model is not None:
            values.update(params=model.count_params(), trainable_params=count(model.trainable_weights))
        if model_path and model_path.is_file():
            values["model_megabytes"] = model_path.stat().st_size / 1e6
        return run_row(self.spec, self.task, status, error, values)


def describe_error(error: BaseException) -> str:
    name = type(error).__name__
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    if "ResourceExhausted" in name or "OOM" in message or "out of memory" in message.lower():
        return f"out of memory ({name}): lower train.batch_size or train.image_size"
    return f"{name}: {message}"[:500] if not isinstance(error, RunFailed) else message


def keep_keras_saving_skipsets() -> None:
    """Keras 3 (3.15) caches the attribute sets its saver skips under one key and looks them up under
    another (``saving_attr_skipset_`` / ``saving_attr_skiplist_``), so every layer saved builds a
    throw-away Layer to list its attributes: about 0.3 s per save of a MobileNetV2. Store the sets
    under the key Keras reads (clear_session forgets them); the sets are Keras's own."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.saving import saving_lib
    except ImportError:
        return
    for obj_type in ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss"):
        key = f"saving_attr_skiplist_{obj_type}"
        if global_state.get_global_attribute(key) is None:
            global_state.set_global_attribute(key, saving_lib.get_attr_skipset(obj_type))


def reset_keras_state() -> None:
    """What one run may leave behind for the next in the same process: layer-name counters,
    the global dtype policy, traced functions. Cleared so a run's result does not depend on
    whether it ran first or fifth in its worker."""
    import keras

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")


def execute_run(run_dir) -> dict:
    """Train, evaluate and record one run; never raises for a failed run (it is recorded).

    Raises OSError only when the row itself cannot be written (a full or read-only disk): the
    caller then records it from the spec."""
    reset_keras_state()
    run = Run(Path(run_dir))
    try:
        row = run.execute()
    except Exception as error:  # any failure is this run's, recorded, and the suite goes on
        from zoo.harness import kept_models

        kept_models.forget()
        try:
            (run.dir / "traceback.txt").write_text(traceback.format_exc())
        except OSError:
            pass  # a full disk: the row below says why, which matters more than the traceback
        row = run.row("failed", describe_error(error), None, 0, run.spec["trainable"], None)
        row["errno"] = getattr(error, "errno", None)
    errno = row.pop("errno", None)
    write_json(run.dir / "result.json", row)
    if errno is not None:
        row["errno"] = errno
    return row


DRIVER_PID_ENV = "ZOO_DRIVER_PID"


def stay_with_driver() -> None:
    """Make sure this worker never outlives the ``zoo run`` that started it: the kernel kills
    it when the driver dies (Linux's PR_SET_PDEATHSIG), and a watcher thread does the same
    wherever that is missing."""
    import ctypes
    import signal
    import threading

    driver = int(os.environ.get(DRIVER_PID_ENV, "0") or 0)
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if not driver:
        return
    if os.getppid() != driver:  # the driver died before prctl took effect
        os._exit(1)

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != driver:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="driver-watch", daemon=True).start()


def _unraisable_in_one_line(unraisable) -> None:
    """Errors raised where nothing can catch them (a file handle's destructor on a full disk)
    are the run's failure, already recorded: one line for them, not a traceback each."""
    message = str(unraisable.exc_value).strip().splitlines()
    print(f"zoo worker: ignored {type(unraisable.exc_value).__name__} while cleaning up: "
          f"{message[0][:160] if message else ''}", file=sys.stderr, flush=True)


def _storage_faults_in_one_line(kind, value, trace) -> None:
    """HDF5's file handles report a failed write on a full disk from their destructor with a full
    traceback (through this hook); the run's row already says the disk is full."""
    from zoo.errors import storage_problem

    text = str(value)
    if storage_problem(value) or "No space left on device" in text or "Read-only file system" in text:
        print(f"zoo worker: {kind.__name__}: {text.strip().splitlines()[0][:160] if text.strip() else ''}",
              file=sys.stderr, flush=True)
    else:
        sys.__excepthook__(kind, value, trace)


def preload_run_modules() -> None:
    """Import what every run needs (TensorFlow, Keras, zoo's run modules) before the first run
    arrives, while the driver checks the suite, then move everything imported out of the garbage
    collector's way (gc.freeze): the collection clear_session makes between runs then scans only
    what the runs created (about 0.2 s less per run). A failed import is left for the run to
    report with its own error."""
    import gc

    try:
        import keras  # noqa: F401

        from zoo import factory, metrics, runtime, stats  # noqa: F401
        from zoo.data import pipeline  # noqa: F401

        if runtime.has_tensorflow():  # the input pipeline's, on every backend
            import tensorflow  # noqa: F401
        else:
            from zoo.data import array_pipeline  # noqa: F401
        from zoo.harness import features  # noqa: F401
    except Exception:
        return
    gc.collect()
    gc.freeze()


def serve(reply_fd: int) -> int:
    """Execute the run folders read line by line from stdin; after each, one JSON line on
    ``reply_fd``: ``{"run_dir", "status"}``, plus ``errno`` when the row could not be written."""
    from zoo.harness.suite import load_plugins

    stay_with_driver()
    sys.unraisablehook = _unraisable_in_one_line
    sys.excepthook = _storage_faults_in_one_line
    preload_run_modules()
    replies = os.fdopen(reply_fd, "w")
    for line in sys.stdin:
        run_dir = line.strip()
        if not run_dir:
            continue
        reply = {"run_dir": run_dir}
        try:
            spec = json.loads((Path(run_dir) / "run.json").read_text())
            load_plugins(spec.get("plugins"))
            row = execute_run(run_dir)
            reply.update(status=row["status"], errno=row.get("errno"))
        except OSError as error:
            reply.update(status="failed", error=describe_error(error), errno=error.errno)
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--serve":
        return serve(int(argv[1]))
    if len(argv) != 1:
        print("usage: python -m zoo.harness.worker RUN_DIR | --serve REPLY_FD", file=sys.stderr)
        return 2
    from zoo.harness.suite import load_plugins

    spec = json.loads((Path(argv[0]) / "run.json").read_text())
    load_plugins(spec.get("plugins"))
    execute_run(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
