"""What differs between zoo's tasks, one object each: the loss a run trains with, the metrics Keras reports
while it trains, how the test predictions are scored batch by batch, the metrics `zoo compare` can pair by
test example and each one's per-example form, those every run records an interval of, and how many
test examples show each class.

The run code asks its task (``TASKS.get(name)``) instead of comparing task names, as lm-evaluation-harness's
``Task.process_results`` and keras-hub's task models do. The three tasks:
- ``classification``: one label per image (integer, or one-hot for the focal loss); accuracy, macro-F1...
- ``segmentation``: one label per pixel (a mask); mIoU, pixel accuracy, and the KL score of the class
  proportions the masks give.
- ``distribution``: the class proportions of an image (a land-cover tile), predicted without masks; the KL score.
"""
from __future__ import annotations

import numpy as np

from zoo.registry import Registry


class Scorer:
    """The test predictions of one run, taken batch by batch (``add``: a batch's targets and outputs, both
    NumPy, the rows that only complete the last batch already cut), then scored (``finish``: the metrics
    dict and the arrays written as predictions.npz)."""

    def add(self, targets: np.ndarray, outputs: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self) -> tuple[dict, dict]:
        raise NotImplementedError


class Task:
    """One task's rules (see the module's docstring). Subclasses set the names and the metrics."""

    name: str
    target: str                          # what the input pipeline builds for the loss (zoo.data.prepare)
    one_label_per_image: bool            # class weights go to Keras's class_weight, else to the target's weights
    comparable_metrics: tuple[str, ...]  # with a per-example form (example_scores): zoo compare, headline_metric
    interval_metrics: tuple[str, ...]    # every run records their 95 % bootstrap interval
    figures: tuple[tuple[str, str], ...]  # (results.csv column, its name for people): what a run page shows first
    losses: tuple[str, ...] = ("auto", "crossentropy", "focal")  # what ``train.loss`` may name for it
    class_weights_apply: bool = True     # train.class_weights weighs its images or pixels by their class

    def loss(self, name: str):
        """The Keras loss for ``train.loss`` (one of ``losses``) on this task's targets."""
        raise NotImplementedError

    def training_metrics(self, one_hot: bool) -> list:
        """Keras metrics shown while training, weighted so that the zero-weight rows completing the last
        validation batch count for nothing (``one_hot``: labels come one-hot, as the focal loss takes them)."""
        return []

    def scorer(self, class_names, ignore_classes) -> Scorer:
        raise NotImplementedError

    def test_examples_by_class(self, result: dict, predictions: dict, class_names) -> dict:
        """How many test examples show each class, by name: the images of that class."""
        return {row["class"]: row["support"] for row in result.get("per_class", [])}

    def example_scores(self, predictions, example_ids, metric: str, num_classes: int, ignore_classes=()):
        """``metric`` of a run's test predictions (``predictions.npz``) example by example, as zoo.stats
        resamples and pairs it (a ``zoo.metrics.ExampleScores``); None where this task has no such form."""
        return None


def _label_loss(name: str, pixels: bool):
    import keras

    if name == "focal" and pixels:
        from zoo.losses import PixelFocalCrossentropy  # from integer masks, not one-hot ones

        return PixelFocalCrossentropy()
    if name == "focal":
        return keras.losses.CategoricalFocalCrossentropy()
    if pixels and keras.backend.backend() == "torch":
        from zoo.losses import PixelCrossentropy  # Keras's own fails to train there (see zoo.losses)

        return PixelCrossentropy()
    return keras.losses.SparseCategoricalCrossentropy()


class _ClassificationScorer(Scorer):
    def __init__(self, class_names):
        self.class_names, self.truth, self.probabilities = class_names, [], []

    def add(self, labels, outputs):
        self.probabilities.append(outputs)
        self.truth.append(labels.argmax(axis=-1) if labels.ndim == 2 else labels)

    def finish(self):
        from zoo import metrics

        y_true, y_prob = np.concatenate(self.truth), np.concatenate(self.probabilities)
        result = metrics.classification_metrics(y_true, y_prob, self.class_names)
        return result, {"y_true": y_true, "y_pred": y_prob.argmax(axis=1), "probabilities": y_prob}


class Classification(Task):
    name = "classification"
    target, one_label_per_image = "labels", True
    comparable_metrics = ("accuracy", "macro_f1")
    interval_metrics = ("accuracy",)
    figures = (("accuracy", "accuracy"), ("macro_f1", "macro F1"))

    def loss(self, name):
        return _label_loss(name, pixels=False)

    def training_metrics(self, one_hot):
        from zoo.losses import RowAccuracy

        return [RowAccuracy(one_hot=one_hot)]  # each row once

    def scorer(self, class_names, ignore_classes):
        return _ClassificationScorer(class_names)

    def example_scores(self, predictions, example_ids, metric, num_classes, ignore_classes=()):
        from zoo.metrics import ExampleScores, macro_f1_of_pairs

        y_true, y_pred = np.asarray(predictions["y_true"]), np.asarray(predictions["y_pred"])
        if metric == "accuracy":
            return ExampleScores(metric, example_ids, values=(y_true == y_pred).astype(np.float64))
        if metric == "macro_f1":
            return ExampleScores(metric, example_ids, parts=np.stack([y_true, y_pred], axis=1),
                                 aggregate=macro_f1_of_pairs)
        return None


class _SegmentationScorer(Scorer):
    """Masks scored through one confusion matrix summed over batches (a split's masks need not be held
    as probabilities), with each tile's true and predicted class proportions."""

    def __init__(self, class_names, ignore_classes):
        self.class_names, self.ignore_classes = class_names, ignore_classes
        self.confusion = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
        self.masks, self.predicted, self.true_proportions, self.predicted_proportions = [], [], [], []

    def add(self, masks, probabilities):
        from zoo import metrics

        count = len(self.class_names)
        predicted = probabilities.argmax(axis=-1)
        self.confusion += metrics.pixel_confusion(masks, predicted, count)
        self.true_proportions.append(np.stack([np.bincount(mask.ravel(), minlength=count) for mask in masks]))
        self.predicted_proportions.append(probabilities.mean(axis=(1, 2)))
        self.masks.append(masks.astype(np.uint8))
        self.predicted.append(predicted.astype(np.uint8))

    def finish(self):
        from zoo import metrics

        true_proportions = np.concatenate(self.true_proportions)
        predicted_proportions = np.concatenate(self.predicted_proportions)
        result = metrics.segmentation_metrics(self.confusion, self.class_names, self.ignore_classes,
                                              true_proportions, predicted_proportions)
        return result, {"y_true": np.concatenate(self.masks), "y_pred": np.concatenate(self.predicted),
                        "proportions_true": true_proportions, "proportions_pred": predicted_proportions}


class Segmentation(Task):
    name = "segmentation"
    target, one_label_per_image = "masks", False
    comparable_metrics = ("kl_score", "miou", "accuracy")
    interval_metrics = ("accuracy", "miou", "kl_score")
    figures = (("miou", "mIoU"), ("accuracy", "pixel accuracy"), ("kl_score", "KL score"))

    def loss(self, name):
        return _label_loss(name, pixels=True)

    def training_metrics(self, one_hot):
        return ["accuracy"]  # weighted by the pixel weights, as the loss is

    def scorer(self, class_names, ignore_classes):
        return _SegmentationScorer(class_names, ignore_classes)

    def test_examples_by_class(self, result, predictions, class_names):
        """The test tiles showing each class."""
        present = (np.asarray(predictions["proportions_true"]) > 0).sum(axis=0)
        return dict(zip(class_names, present.tolist()))

    def example_scores(self, predictions, example_ids, metric, num_classes, ignore_classes=()):
        """The KL score per tile; mIoU and pixel accuracy from each tile's confusion matrix (a tile is the
        example resampled, its pixels stay together)."""
        from zoo import metrics

        if metric == "kl_score":
            return metrics.kl_example_scores(predictions["proportions_true"], predictions["proportions_pred"],
                                             example_ids, ignore_classes)
        if metric in ("miou", "accuracy", "pixel_accuracy"):
            kept = [c for c in range(num_classes) if c not in set(ignore_classes)]
            confusions = metrics.tile_confusions(predictions["y_true"], predictions["y_pred"], num_classes, kept)
            aggregate = metrics.miou_of_confusions if metric == "miou" else metrics.pixel_accuracy_of_confusions
            return metrics.ExampleScores(metric, example_ids, parts=confusions, aggregate=aggregate)
        return None


class _DistributionScorer(Scorer):
    def __init__(self, class_names, ignore_classes):
        self.class_names, self.ignore_classes, self.truth, self.predicted = class_names, ignore_classes, [], []

    def add(self, proportions, outputs):
        self.predicted.append(outputs)
        self.truth.append(proportions)

    def finish(self):
        from zoo import metrics

        y_true, y_pred = np.concatenate(self.truth), np.concatenate(self.predicted)
        return (metrics.distribution_metrics(y_true, y_pred, self.class_names, self.ignore_classes),
                {"y_true": y_true, "y_pred": y_pred})


class Distribution(Task):
    name = "distribution"
    target, one_label_per_image = "proportions", False
    comparable_metrics = ("kl_score",)
    interval_metrics = ("kl_score",)
    figures = (("kl_score", "KL score"),)
    # Cross-entropy of proportions is their KL divergence plus the truth's own entropy: the same gradients.
    # The focal loss is for labels, not proportions.
    losses = ("auto", "crossentropy")
    class_weights_apply = False  # a tile's proportions are one target: no class of it weighs more in the loss

    def loss(self, name):
        import keras

        return keras.losses.KLDivergence()

    def scorer(self, class_names, ignore_classes):
        return _DistributionScorer(class_names, ignore_classes)

    def example_scores(self, predictions, example_ids, metric, num_classes, ignore_classes=()):
        from zoo.metrics import kl_example_scores

        if metric == "kl_score":
            return kl_example_scores(predictions["y_true"], predictions["y_pred"], example_ids, ignore_classes)
        return None


TASKS: Registry[Task] = Registry("task")
for _task in (Classification(), Segmentation(), Distribution()):
    TASKS.register(_task.name, _task)
