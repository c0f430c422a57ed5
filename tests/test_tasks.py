"""Every registered task (zoo.tasks) keeps the promises the run code relies on when it asks its task instead of
comparing names: scores that do not depend on where the batches end, every metric it promises to compare or to
give an interval of, predictions that zoo compare can pair by test example. A new task is covered here with no
test edit (once its target kind has an example below)."""
import numpy as np
import pytest

from zoo import stats
from zoo.tasks import TASKS

CLASSES = ["water", "trees", "crops", "built"]
EXAMPLES = 12


def targets_and_outputs(target: str, rng):
    """A task's test targets and a model's outputs of the kind its input pipeline builds (``target``). The last
    class is never a label or a mask's pixel, but predicted: a class the test set lacks, as a small test split
    of rare classes has."""
    count = len(CLASSES)
    if target == "labels":
        probabilities = rng.dirichlet(np.ones(count), EXAMPLES).astype("float32")
        probabilities[0] = [0.1, 0.1, 0.1, 0.7]
        return rng.integers(0, count - 1, EXAMPLES), probabilities
    if target == "masks":
        probabilities = rng.dirichlet(np.ones(count), (EXAMPLES, 6, 6)).astype("float32")
        probabilities[0, 0, 0] = [0.1, 0.1, 0.1, 0.7]
        return rng.integers(0, count - 1, (EXAMPLES, 6, 6)), probabilities
    if target == "proportions":
        return (rng.dirichlet(np.ones(count), EXAMPLES).astype("float32"),
                rng.dirichlet(np.ones(count), EXAMPLES).astype("float32"))
    raise AssertionError(f"give this test an example of {target!r} targets")


def scored(task, targets, outputs, batch: int, ignore_classes=()):
    scorer = task.scorer(CLASSES, list(ignore_classes))
    for start in range(0, EXAMPLES, batch):
        scorer.add(targets[start:start + batch], outputs[start:start + batch])
    return scorer.finish()


@pytest.mark.parametrize("ignore_classes", [(), (1,)], ids=["all classes", "one ignored"])
@pytest.mark.parametrize("name", list(TASKS))
def test_a_tasks_scores_do_not_depend_on_where_batches_end_and_hold_every_promised_metric(name, ignore_classes):
    task = TASKS.get(name)
    if ignore_classes and task.one_label_per_image:
        pytest.skip("a classification dataset refuses ignore_classes: its images are each one class")
    targets, outputs = targets_and_outputs(task.target, np.random.default_rng(0))
    nothing_kept = 1 if ignore_classes and not task.one_label_per_image else None
    if nothing_kept is not None:  # a tile all cloud: nothing of it to score where a metric is per tile
        targets[nothing_kept] = np.eye(len(CLASSES))[ignore_classes[0]] if task.target == "proportions" \
            else ignore_classes[0]
    whole, predictions = scored(task, targets, outputs, EXAMPLES, ignore_classes)
    for batch in (1, 5):
        result, again = scored(task, targets, outputs, batch, ignore_classes)
        assert result == whole  # the same arrays concatenated, the same confusion summed: the same numbers
        assert all(np.array_equal(again[key], predictions[key]) for key in predictions)
    assert set(task.comparable_metrics) | set(task.interval_metrics) <= set(whole), sorted(whole)
    predictions["example_ids"] = np.array([f"tile{index}" for index in range(EXAMPLES)])
    for metric in task.comparable_metrics:  # zoo compare and the intervals pair runs by these
        paired = stats.example_scores(predictions, name, metric, len(CLASSES), ignore_classes)
        expected_ids = [example for index, example in enumerate(predictions["example_ids"])
                        if not (index == nothing_kept and metric == "kl_score")]  # per-tile: left out, not a 0
        assert list(paired.example_ids) == expected_ids, metric
        # what they resample is the metric the run recorded, not another definition of it
        assert paired.value() == pytest.approx(whole[metric], abs=1e-12), metric
    examples = task.test_examples_by_class(whole, predictions, CLASSES)
    if examples:  # tasks with per-class tables say how many test examples show each class
        assert set(examples) == set(CLASSES) and all(0 <= count <= EXAMPLES for count in examples.values())


def test_every_head_and_dataset_card_serves_a_registered_task():
    from zoo.data import DATASETS
    from zoo.heads import HEADS

    assert {HEADS.get(name).task for name in HEADS} <= set(TASKS)
    assert {DATASETS.get(name)["task"] for name in DATASETS} <= set(TASKS)


@pytest.mark.parametrize("name", list(TASKS))
def test_every_loss_a_task_accepts_is_built_and_scores_its_targets(name):
    """Each `train.loss` the suite lets through for a task (Task.losses) gives a Keras loss that takes the targets
    its input pipeline builds: none is accepted with the suite to fail inside the run."""
    import keras

    task = TASKS.get(name)
    targets, outputs = targets_and_outputs(task.target, np.random.default_rng(0))
    for loss_name in task.losses:
        loss = task.loss(loss_name)
        one_hot = loss_name == "focal" and task.one_label_per_image  # as zoo.harness.stages builds the labels
        given = np.eye(len(CLASSES), dtype="float32")[targets] if one_hot else targets
        value = float(loss(given, outputs))
        assert isinstance(loss, keras.losses.Loss) and np.isfinite(value) and value > 0, loss_name


def test_every_dataset_cards_published_results_name_a_metric_zoo_records():
    """A card's reference_results stand beside zoo's own numbers (the report, zoo data info): each row has only
    the known fields and a metric zoo computes. A model name with an unquoted comma in YAML's flow style split
    into a stray key (two rows of stanford_dogs' card until 2026-11-30)."""
    from zoo.data import DATASETS
    from zoo.metrics import METRICS

    for name in DATASETS:
        for row in DATASETS.get(name).get("reference_results") or []:
            assert set(row) <= {"source", "model", "metric", "value", "note"}, (name, row)
            assert row["metric"] in METRICS and row.get("source"), (name, row)
            assert row.get("value") is None or float(row["value"]) >= 0, (name, row)
