"""Confidence intervals and paired comparisons: exact cases, coverage, and one test set per suite."""
import json
import math

import numpy as np
import pytest

from zoo import stats
from zoo.cli import main
from zoo.harness.runner import run_suite
from zoo.harness.suite import load_suite


def accuracy_scores(correct, ids=None):
    correct = np.asarray(correct, dtype=float)
    ids = np.array([f"test/{i}" for i in range(len(correct))]) if ids is None else np.asarray(ids)
    return stats.ExampleScores("accuracy", ids, values=correct)


def test_identical_predictions_give_p_one_and_an_interval_at_zero(rng):
    correct = rng.random(300) < 0.7
    result = stats.compare(accuracy_scores(correct), accuracy_scores(correct))
    assert result["p_value"] == 1.0 and result["difference"] == 0.0
    assert result["ci_low"] == 0.0 and result["ci_high"] == 0.0 and result["n"] == 300


@pytest.mark.parametrize("fixed, broken", [(6, 0), (9, 2)])
def test_mcnemar_exact_p_value_equals_the_hand_computed_binomial(rng, fixed, broken):
    base = rng.random(200) < 0.6
    wrong, right = np.flatnonzero(~base), np.flatnonzero(base)
    improved = base.copy()
    improved[wrong[:fixed]] = True    # A fixes these errors of B
    improved[right[:broken]] = False  # and makes these new ones
    result = stats.compare(accuracy_scores(improved), accuracy_scores(base))
    discordant = fixed + broken
    by_hand = min(1.0, 2 * sum(math.comb(discordant, i) for i in range(min(fixed, broken) + 1)) / 2 ** discordant)
    assert result["test"] == "McNemar's exact test"
    assert result["p_value"] == pytest.approx(by_hand, rel=1e-12)
    assert result["difference"] == pytest.approx((fixed - broken) / 200)


def test_comparison_pairs_by_example_not_by_position(rng):
    correct = rng.random(100) < 0.5
    shuffled = rng.permutation(100)
    a = accuracy_scores(correct)
    b = accuracy_scores(correct[shuffled], ids=a.example_ids[shuffled])
    assert stats.compare(a, b)["p_value"] == 1.0
    with pytest.raises(stats.ComparisonError, match="different images"):
        stats.compare(a, accuracy_scores(correct, ids=[f"other/{i}" for i in range(100)]))


def test_bootstrap_interval_covers_the_true_accuracy_at_the_expected_rate():
    rng = np.random.default_rng(42)
    true_accuracy, n, trials = 0.8, 200, 200
    covered = 0
    for trial in range(trials):
        sample = rng.random(n) < true_accuracy
        low, high = stats.interval(accuracy_scores(sample), seed=trial)
        covered += low <= true_accuracy <= high
    assert 0.90 <= covered / trials <= 0.99  # 95 % nominal; percentile intervals run slightly narrow


@pytest.mark.parametrize("kind", ["accuracy", "kl_score"])
def test_mean_metric_intervals_are_scipys_bootstrap_and_rows_share_its_resamples(rng, kind, monkeypatch):
    """The leaderboard's intervals are scipy.stats.bootstrap's percentile intervals for the same seed
    (exactly, for 0/1 scores), and scoring many rows at once gives each what it gets alone, across
    blocks of rows too."""
    from scipy.stats import bootstrap

    monkeypatch.setattr(stats, "COLUMN_BLOCK", 2)

    def scores(values):
        return stats.ExampleScores(kind, np.array([f"test/{i}" for i in range(len(values))]), values=values)

    many = [scores((rng.random(150) < p).astype(float) if kind == "accuracy" else rng.gamma(2.0, p, 150))
            for p in (0.3, 0.6, 0.9)]
    many.append(scores(np.ones(150)))  # every resample gives 1
    together = stats.intervals(many, seed=3)
    for row, (low, high) in zip(many[:3], together):
        expected = bootstrap((row.values,), np.mean, vectorized=True, n_resamples=stats.RESAMPLES_MEAN,
                             confidence_level=stats.CONFIDENCE, method="percentile",
                             random_state=np.random.default_rng(3)).confidence_interval
        if kind == "accuracy":
            assert (low, high) == (expected.low, expected.high)
        else:
            assert (low, high) == pytest.approx((expected.low, expected.high), rel=1e-12)
    assert together[3] == (1.0, 1.0)
    alone = [stats.interval(row, seed=3) for row in many]
    for batched, single in zip(together, alone):  # equal but for the matrix product's rounding
        assert batched == (single if kind == "accuracy" else pytest.approx(single, rel=1e-12))

    others, best = many[:3] + [accuracy_scores(np.ones(150), ids=[f"other/{i}" for i in range(150)])], many[2]
    each = stats.compare_each(others, best, seed=3)
    for batched, single in zip(each[:3], [stats.compare(row, best, seed=3) for row in many[:3]]):
        assert batched == (single if kind == "accuracy" else pytest.approx(single, rel=1e-12))
    assert isinstance(each[3], stats.ComparisonError) and "different images" in str(each[3])
    assert each[2]["p_value"] == 1.0 and each[0]["ci_high"] < 0


def test_segmentation_scores_resample_tiles(rng):
    y_true = rng.integers(0, 4, (20, 8, 8))
    y_pred = np.where(rng.random((20, 8, 8)) < 0.7, y_true, rng.integers(0, 4, (20, 8, 8)))
    ids = np.array([f"train/{i}" for i in range(20)])
    scores = stats.example_scores({"y_true": y_true, "y_pred": y_pred, "example_ids": ids}, "segmentation",
                                  "miou", num_classes=4, ignore_classes=[0])
    from zoo.metrics import pixel_confusion, segmentation_metrics

    whole = segmentation_metrics(pixel_confusion(y_true, y_pred, 4), list("abcd"), [0])
    expected = whole["miou"]
    assert scores.value() == pytest.approx(expected)
    assert whole["pixels_predicted_as_ignored"] > 0  # the two agree where the ignored class is predicted too
    accuracy = stats.example_scores({"y_true": y_true, "y_pred": y_pred, "example_ids": ids}, "segmentation",
                                    "accuracy", num_classes=4, ignore_classes=[0])
    assert accuracy.value() == pytest.approx(whole["pixel_accuracy"])
    low, high = stats.interval(scores)
    assert low < expected < high


@pytest.fixture(scope="module")
def two_seeds_two_splits(tmp_path_factory):
    out = tmp_path_factory.mktemp("stats") / "out"
    suite = load_suite({"name": "splits", "datasets": ["synthetic_terrain"], "backbones": ["baseline_cnn"],
                        "heads": ["linear"], "seeds": [0, 1], "split_seed": [0, 1],
                        "train": {"image_size": 16, "batch_size": 32, "epochs": 1, "steps_per_epoch": 2,
                                  "precise_bn": False}})
    assert run_suite(suite, out, executor="in-process", report=False, log=lambda *_: None) == 0
    return out


def test_every_run_with_one_split_seed_is_tested_on_the_same_images(two_seeds_two_splits):
    import pandas as pd

    frame = pd.read_csv(two_seeds_two_splits / "results.csv")
    assert sorted(zip(frame["seed"], frame["split_seed"])) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    ids = {}
    for _, row in frame.iterrows():
        run_dir = two_seeds_two_splits / "runs" / row["run_id"]
        split = json.loads((run_dir / "split.json").read_text())
        assert split["split_seed"] == row["split_seed"]
        test_ids = tuple(np.load(run_dir / "predictions.npz")["example_ids"])
        assert test_ids == tuple(f"train/{i}" for i in np.load(run_dir / "split_indices.npz")["test"])
        ids.setdefault(row["split_seed"], set()).add(test_ids)
        assert row["accuracy_ci_low"] <= row["accuracy"] <= row["accuracy_ci_high"]
    assert len(ids[0]) == 1 and len(ids[1]) == 1  # both seeds: identical test examples
    assert ids[0] != ids[1]                         # another split seed: other test examples


def test_zoo_compare_prints_the_documented_json_and_refuses_other_test_sets(two_seeds_two_splits, capsys):
    out = str(two_seeds_two_splits)
    assert main(["compare", out, "*split_seed=0-s0-*", "*split_seed=0-s1-*", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"metric", "a", "b", "value_a", "value_b", "difference", "ci_low", "ci_high", "p_value", "test",
            "n"} <= set(result)
    assert result["metric"] == "accuracy" and result["n"] == 135
    assert result["difference"] == pytest.approx(result["value_a"] - result["value_b"])
    assert main(["compare", out, "*split_seed=0-s0-*", "*split_seed=1-s0-*"]) == 2
    assert "different images" in capsys.readouterr().err
    assert main(["compare", out, "*split_seed=0-*", "*split_seed=0-s1-*"]) == 0  # two seeds pooled
    assert "seeds pooled" in capsys.readouterr().out
