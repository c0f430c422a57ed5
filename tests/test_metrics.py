import numpy as np
import pytest

from zoo.metrics import METRICS, classification_metrics, kl_per_image, kl_score, pixel_confusion, segmentation_metrics

NAMES = ["a", "b", "c"]


def one_hot(labels, classes=3):
    return np.eye(classes)[labels]


def test_perfect_classifier():
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    result = classification_metrics(y, one_hot(y), NAMES)
    assert result["accuracy"] == result["macro_precision"] == result["macro_recall"] == result["macro_f1"] == 1.0
    assert result["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 3]]
    assert [row["support"] for row in result["per_class"]] == [2, 2, 3]


def test_constant_classifier_scores_the_majority_share():
    y = np.array([2, 2, 2, 0, 1, 2])
    result = classification_metrics(y, np.tile([0.1, 0.2, 0.7], (6, 1)), NAMES)
    assert result["accuracy"] == pytest.approx(4 / 6)
    table = {row["class"]: row for row in result["per_class"]}
    assert table["c"]["precision"] == pytest.approx(4 / 6) and table["c"]["recall"] == 1.0
    assert table["a"]["recall"] == 0.0 and table["a"]["precision"] == 0.0
    assert result["macro_recall"] == pytest.approx(1 / 3)
    assert table["c"]["proportion"] == pytest.approx(4 / 6)


def test_hand_computed_precision_recall_and_top_k():
    y_true = np.array([0, 0, 1, 1, 2])
    probabilities = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .8, .1], [.6, .3, .1], [.3, .3, .4]])
    result = classification_metrics(y_true, probabilities, NAMES)
    # predictions 0, 1, 1, 0, 2: class a P=1/2 R=1/2; b P=1/2 R=1/2; c P=1 R=1
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["macro_precision"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert result["top5_accuracy"] is None  # 3 classes: every truth is among the top 5


def test_top5_accuracy_is_the_share_of_truths_among_the_five_most_probable_classes():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(8), 40)
    y_true = rng.integers(0, 8, 40)
    result = classification_metrics(y_true, probabilities, [f"class{i}" for i in range(8)])
    top5 = np.argsort(-probabilities, axis=1)[:, :5]
    assert result["top5_accuracy"] == pytest.approx(np.mean([truth in row for truth, row in zip(y_true, top5)]))


def test_segmentation_metrics_leave_ignored_classes_out():
    truth = np.array([[0, 1, 2], [2, 3, 3]])
    predicted = np.array([[2, 2, 2], [3, 3, 2]])
    names = ["no_data", "clouds", "x", "y"]
    result = segmentation_metrics(pixel_confusion(truth, predicted, 4), names, ignore_classes=[0, 1])
    # kept pixels (truth x or y): x->x, x->y, y->y, y->x. IoU(x) = 1 / (2 + 2 - 1) = 1/3, same for y
    assert result["class_names"] == ["x", "y"]
    assert result["pixel_accuracy"] == pytest.approx(0.5)
    assert result["miou"] == pytest.approx(1 / 3)
    assert result["confusion_matrix"] == [[1, 1, 0], [1, 1, 0]]


def test_a_pixel_predicted_as_an_ignored_class_is_an_error_of_its_true_class():
    # Only truth decides what leaves the metrics (mmsegmentation's and torchmetrics's ignore_index): a
    # model that paints x as clouds must not score as if that pixel did not exist.
    truth = np.array([[2, 2], [3, 3], [0, 1]])
    predicted = np.array([[2, 1], [3, 3], [2, 3]])
    names = ["no_data", "clouds", "x", "y"]
    result = segmentation_metrics(pixel_confusion(truth, predicted, 4), names, ignore_classes=[0, 1])
    assert result["pixel_accuracy"] == pytest.approx(3 / 4)
    by_class = {row["class"]: row for row in result["per_class"]}
    assert by_class["x"]["support"] == 2 and by_class["x"]["recall"] == pytest.approx(0.5)
    assert by_class["x"]["precision"] == pytest.approx(1.0)
    assert by_class["x"]["iou"] == pytest.approx(0.5) and by_class["y"]["iou"] == pytest.approx(1.0)
    assert result["miou"] == pytest.approx(0.75)
    assert result["pixels_predicted_as_ignored"] == 1
    assert result["confusion_matrix"] == [[1, 0, 1], [0, 2, 0]]  # the last column: predicted as ignored


def test_kl_score_matches_the_challenge_definition():
    truth = np.array([[0, 0, 5, 5], [0, 0, 10, 0]], dtype=float)
    assert kl_score(truth, truth, ignore_classes=[0, 1]) == pytest.approx(0.0, abs=1e-12)
    predicted = np.array([[0, 0, 2, 8], [0, 0, 10, 0]], dtype=float)
    eps = 1e-7
    y = np.array([0.5, 0.5]) + eps
    y_hat = np.array([0.2, 0.8]) + eps
    expected = (np.sum(y * np.log(y / y_hat)) + 0.0) / 2
    assert kl_score(truth, predicted, ignore_classes=[0, 1]) == pytest.approx(expected)


def test_kl_score_drops_the_ignored_classes_before_normalising_as_the_challenge_scorer_does():
    # preligens-lab/challenge-ens framework/eval.py: drop no_data and clouds, normalise, add 1e-7. A tile
    # with clouds is scored on its other pixels; a model's mass on clouds is dropped, not counted as missing.
    truth = np.array([[0, 2, 6, 2], [3, 7, 0, 0], [0, 0, 10, 0]], dtype=float)
    predicted = np.array([[0, 0.5, 0.3, 0.2], [0.5, 0.5, 0, 0], [0, 0, 1, 0]], dtype=float)
    cloudy = 0.75 * np.log(0.75 / 0.6) + 0.25 * np.log(0.25 / 0.4)  # kept [6, 2] against [0.3, 0.2]
    values = kl_per_image(truth, predicted, ignore_classes=[0, 1])
    assert values[0] == pytest.approx(cloudy, rel=1e-5) and values[2] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(values[1])  # all no_data and clouds: nothing to score (the challenge's scorer refuses it)
    assert kl_score(truth, predicted, ignore_classes=[0, 1]) == pytest.approx(cloudy / 2, rel=1e-5)
    assert np.isnan(kl_score(truth[1:2], predicted[1:2], ignore_classes=[0, 1]))


def test_metric_registry_knows_which_way_is_better():
    assert METRICS.get("accuracy").higher_is_better and not METRICS.get("kl_score").higher_is_better


def test_leaderboards_rank_segmentation_by_miou_unless_the_card_or_a_distribution_head_says_otherwise():
    from zoo.data.cards import DATASETS
    from zoo.metrics import headline_metric
    from zoo.stats import dataset_headline_metric

    assert headline_metric({"classification"}) == "accuracy"
    assert headline_metric({"segmentation"}) == "miou"
    assert headline_metric({"segmentation"}, "kl_score") == "kl_score"
    # Distribution heads predict no masks: the KL score is what they share with segmentation heads.
    assert headline_metric({"segmentation", "distribution"}) == "kl_score" == headline_metric({"distribution"})
    assert dataset_headline_metric("synthetic_landcover", ["segmentation"]) == "kl_score"  # the challenge's metric
    assert dataset_headline_metric("my_tiles", ["segmentation"]) == "miou"
    for name, card in DATASETS.items():
        assert card.get("headline_metric", "accuracy") in METRICS, name
