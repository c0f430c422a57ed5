"""Classification and segmentation metrics, on scikit-learn where it does the job.

Each headline metric is registered with ``higher_is_better`` so reports rank correctly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                             top_k_accuracy_score)

from zoo.registry import Registry

KL_EPSILON = 1e-7


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool
    description: str


METRICS: Registry[MetricSpec] = Registry("metric")
for _spec in [
    MetricSpec("accuracy", True, "fraction of test images classified correctly"),
    MetricSpec("top5_accuracy", True, "fraction whose true class is among the 5 most probable"),
    MetricSpec("macro_precision", True, "precision averaged over classes, each class weighing the same"),
    MetricSpec("macro_recall", True, "recall averaged over classes, each class weighing the same"),
    MetricSpec("macro_f1", True, "F1 averaged over classes"),
    MetricSpec("pixel_accuracy", True, "fraction of non-ignored test pixels classified correctly"),
    MetricSpec("miou", True, "mean intersection-over-union over non-ignored classes present"),
    MetricSpec("kl_score", False, "land-cover challenge score: mean KL(true || predicted) of class proportions"),
]:
    METRICS.register(_spec.name, _spec)


def headline_metric(tasks, preferred: str | None = None) -> str:
    """What a dataset's models are ranked by, given the tasks of its runs (``classification``,
    ``segmentation``, ``distribution``) and the metric its entry or card prefers (``headline_metric:``,
    e.g. the land-cover challenge's KL score, or macro_f1 for imbalanced classes). Classification: the
    choice, else accuracy. Segmentation: the choice, else mIoU (the field's standard, as in
    segmentation_models and mmsegmentation). Where distribution heads, which predict proportions and no
    masks, are ranked beside them: the KL score of class proportions, the one measure they all have."""
    tasks = set(tasks)
    if tasks <= {"classification"}:
        return preferred or "accuracy"
    if "distribution" in tasks:
        return "kl_score"
    return preferred or "miou"


def per_class_table(class_names, support, precision, recall, f1, iou=None) -> list[dict]:
    total = max(int(np.sum(support)), 1)
    rows = []
    for index, name in enumerate(class_names):
        row = {"class": name, "support": int(support[index]), "proportion": float(support[index]) / total,
               "precision": float(precision[index]), "recall": float(recall[index]), "f1": float(f1[index])}
        if iou is not None:
            row["iou"] = float(iou[index])
        rows.append(row)
    return rows


def classification_metrics(y_true, probabilities, class_names) -> dict:
    """Accuracy, top-5, macro/weighted P/R/F1, one-vs-all per-class table, confusion matrix.

    Macro averages run over the classes the test set has: a class without a test example has
    no recall to average (a 0 would be invented), so it is named in
    ``classes_without_test_examples`` and its table row has no precision or recall."""
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    labels = np.arange(len(class_names))
    y_pred = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = labels[support > 0]
    result = {"accuracy": float(accuracy_score(y_true, y_pred)),
              # Only where there are more than 5 classes: with 5 or fewer every truth is among the top 5, and
              # a top-(n-1) under this name (as zoo recorded before 2026-11-30) is not top-5.
              "top5_accuracy": float(top_k_accuracy_score(y_true, probabilities, k=5, labels=labels))
              if len(labels) > 5 else None}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average=average,
                                                     zero_division=0)
        result.update({f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)})
    result["per_class"] = per_class_table(class_names, support, precision, recall, f1)
    result["classes_without_test_examples"] = [class_names[c] for c in labels if support[c] == 0]
    result["macro_classes"] = int(len(present))
    for row in result["per_class"]:
        if row["support"] == 0:
            row.update(precision=None, recall=None, f1=None)
    result["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    result["class_names"] = list(class_names)
    return result


def kl_per_image(true_proportions, predicted_proportions, ignore_classes=()) -> np.ndarray:
    """The land-cover challenge's per-image term, as its scorer computes it (preligens-lab/challenge-ens,
    ``framework/eval.py``): drop the ignored columns, normalise both vectors over the kept classes, add
    1e-7, sum y * log(y / y_hat). Mass a model puts on an ignored class is dropped, not scored. A tile
    with no pixel of a kept class has nothing to score: NaN (the challenge's scorer refuses such rows;
    :func:`kl_score` and the per-tile statistics leave them out)."""
    ignored = set(ignore_classes)
    y = np.asarray(true_proportions, dtype=np.float64)
    keep = [c for c in range(y.shape[1]) if c not in ignored]
    y = y[:, keep]
    y_hat = np.asarray(predicted_proportions, dtype=np.float64)[:, keep]
    truth_total = y.sum(axis=1, keepdims=True)
    y = y / np.maximum(truth_total, 1e-300) + KL_EPSILON
    y_hat = y_hat / np.maximum(y_hat.sum(axis=1, keepdims=True), 1e-300) + KL_EPSILON
    values = np.sum(y * np.log(y / y_hat), axis=1)
    values[truth_total[:, 0] <= 0] = np.nan
    return values


def kl_score(true_proportions, predicted_proportions, ignore_classes=()) -> float:
    """The land-cover challenge metric: the mean over images of :func:`kl_per_image`, over the images
    that show a kept class (NaN when none does). 0 is perfect; lower is better."""
    values = kl_per_image(true_proportions, predicted_proportions, ignore_classes)
    scored = values[np.isfinite(values)]
    return float(np.mean(scored)) if len(scored) else float("nan")


def pixel_confusion(y_true, y_pred, num_classes) -> np.ndarray:
    """Confusion matrix of a batch of masks (accumulate over batches; full class range)."""
    return confusion_matrix(np.ravel(y_true), np.ravel(y_pred), labels=np.arange(num_classes))


def kept_confusion(confusion, kept) -> np.ndarray:
    """A confusion matrix (or a stack of them, rows: truth) over the ``kept`` classes, with one last
    column: kept pixels predicted as an ignored class. Only pixels whose truth is an ignored class leave
    the metrics (``ignore_index`` in mmsegmentation and torchmetrics): a forest pixel predicted as
    clouds is an error of forest, not a pixel left out."""
    confusion = np.asarray(confusion, dtype=np.int64)
    ignored = sorted(set(range(confusion.shape[-1])) - set(kept))
    rows = confusion[..., kept, :]
    return np.concatenate([rows[..., kept], rows[..., ignored].sum(axis=-1, keepdims=True)], axis=-1)


def confusion_counts(matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """True positives, support (pixels of each truth class), predicted (pixels predicted as each class)
    and union of a :func:`kept_confusion` matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    classes = matrix[:, :matrix.shape[0]]
    true_positive, support, predicted = np.diag(classes), matrix.sum(axis=1), classes.sum(axis=0)
    return true_positive, support, predicted, support + predicted - true_positive


@dataclass
class ExampleScores:
    """A metric of one model on its test examples, ready for resampling (zoo.stats: intervals, paired
    tests, seeds pooled).

    ``values``: one score per example when the metric is their mean (accuracy of a
    classifier, the KL score); otherwise ``parts`` (per-example pieces, e.g. confusion
    matrices of tiles) and ``aggregate(parts_subset) -> metric``.
    """

    metric: str
    example_ids: np.ndarray
    values: np.ndarray | None = None
    parts: np.ndarray | None = None
    aggregate: Callable | None = None

    @property
    def n(self) -> int:
        return len(self.example_ids)

    def value(self, indices=None) -> float:
        if self.values is not None:
            return float(np.mean(self.values if indices is None else self.values[indices]))
        return float(self.aggregate(self.parts if indices is None else self.parts[indices]))

    def take(self, order) -> "ExampleScores":
        return ExampleScores(self.metric, self.example_ids[order],
                             None if self.values is None else self.values[order],
                             None if self.parts is None else self.parts[order], self.aggregate)


def kl_example_scores(true_proportions, predicted_proportions, example_ids, ignore_classes=()) -> ExampleScores:
    """The KL score per image, for resampling: the images with no pixel of a kept class left out, as
    :func:`kl_score` leaves them out."""
    values = kl_per_image(true_proportions, predicted_proportions, ignore_classes)
    scored = np.isfinite(values)
    return ExampleScores("kl_score", np.asarray(example_ids)[scored], values=values[scored])


def tile_confusions(y_true, y_pred, num_classes: int, kept) -> np.ndarray:
    """One confusion matrix per tile over the kept classes (:func:`kept_confusion`: rows truth, a last column
    of pixels predicted as an ignored class)."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(len(y_pred), -1)
    tiles = np.arange(len(y_true))[:, None]
    flat = (tiles * num_classes + y_true) * num_classes + y_pred
    counts = np.bincount(flat.ravel(), minlength=len(y_true) * num_classes ** 2)
    return kept_confusion(counts.reshape(len(y_true), num_classes, num_classes), kept)


def miou_of_confusions(confusions) -> float:
    """mIoU of the tiles whose :func:`tile_confusions` these are, over the classes present in them."""
    true_positive, _, _, union = confusion_counts(confusions.sum(axis=0))
    present = union > 0
    return float((true_positive[present] / union[present]).mean()) if present.any() else 0.0


def pixel_accuracy_of_confusions(confusions) -> float:
    """Pixel accuracy of the tiles whose :func:`tile_confusions` these are."""
    matrix = confusions.sum(axis=0)
    return float(confusion_counts(matrix)[0].sum() / max(matrix.sum(), 1))


def macro_f1_of_pairs(pairs) -> float:
    """Macro F1 of (true class, predicted class) rows over the classes these rows' truth has, as
    :func:`classification_metrics` averages it: a class only predicted is not a class to average (scikit-learn's
    default, the union of both, gave zoo compare a lower macro-F1 than the run's own)."""
    truth, predicted = pairs[:, 0], pairs[:, 1]
    return float(f1_score(truth, predicted, labels=np.unique(truth), average="macro", zero_division=0))


def segmentation_metrics(confusion, class_names, ignore_classes=(), true_proportions=None,
                         predicted_proportions=None) -> dict:
    """Pixel accuracy, per-class IoU/precision/recall and mIoU from an accumulated confusion matrix
    (rows: truth). Pixels whose truth is an ignored class are left out; a pixel predicted as an ignored
    class counts as an error of its true class (:func:`kept_confusion`). Plus the KL score when
    proportions are given."""
    kept = [c for c in range(len(class_names)) if c not in set(ignore_classes)]
    with_ignored = kept_confusion(confusion, kept)
    true_positive, support, predicted, union = confusion_counts(with_ignored)
    support = support.astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, 0.0)
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        recall = np.where(support > 0, true_positive / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = union > 0
    names = [class_names[c] for c in kept]
    result = {"pixel_accuracy": float(true_positive.sum() / max(with_ignored.sum(), 1)),
              "miou": float(iou[present].mean()) if present.any() else 0.0,
              "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
              "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
              "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
              "per_class": per_class_table(names, support, precision, recall, f1, iou),
              # rows: kept truth; columns: kept predictions, then (with ignored classes) "predicted as one of them"
              "confusion_matrix": (with_ignored if len(kept) < len(class_names) else with_ignored[:, :-1]).tolist(),
              "class_names": names, "pixels_predicted_as_ignored": int(with_ignored[:, -1].sum())}
    result["accuracy"] = result["pixel_accuracy"]
    if true_proportions is not None:
        result["kl_score"] = kl_score(true_proportions, predicted_proportions, ignore_classes)
    return result


def distribution_metrics(true_proportions, predicted_proportions, class_names, ignore_classes=()) -> dict:
    """For the distribution head: the KL score, and how often the dominant class is right."""
    true_proportions, predicted_proportions = np.asarray(true_proportions), np.asarray(predicted_proportions)
    kept = [c for c in range(len(class_names)) if c not in set(ignore_classes)]
    dominant_true = true_proportions[:, kept].argmax(axis=1)
    dominant_pred = predicted_proportions[:, kept].argmax(axis=1)
    return {"kl_score": kl_score(true_proportions, predicted_proportions, ignore_classes),
            "dominant_class_accuracy": float(accuracy_score(dominant_true, dominant_pred)),
            "mean_absolute_proportion_error": float(np.abs(true_proportions[:, kept] - predicted_proportions[:, kept]).mean()),
            "class_names": [class_names[c] for c in kept]}


def ignored_classes_note(metrics: dict, info: dict) -> str:
    """For a run whose dataset ignores classes (land cover's no_data and clouds, a folder's void pixels):
    which, and how many scored pixels the model gave to them (each an error of its true class)."""
    names = [info["class_names"][i] for i in info.get("ignore_classes") or [] if i < len(info.get("class_names", []))]
    if not names:
        return ""
    note = f"Left out of the loss and the scores: {', '.join(names)}."
    predicted = metrics.get("pixels_predicted_as_ignored")
    scored = int(np.sum(metrics.get("confusion_matrix") or 0))
    if predicted is not None and scored:
        note += (f" {predicted:,} of the {scored:,} scored test pixels ({predicted / scored:.1%}) were predicted as "
                 f"{'it' if len(names) == 1 else 'one of them'}, each an error of its true class.")
    return note
