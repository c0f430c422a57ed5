"""How sure a test metric is, and whether two models really differ.

Every run of a suite on a dataset is tested on the same images (the suite's ``split_seed``),
and ``predictions.npz`` names each test example, so predictions of two runs are paired by
example. Intervals are percentile bootstraps over test examples (images; tiles for
segmentation), seeded; the accuracy of two single runs is compared with McNemar's exact test
from statsmodels, every other metric with a paired bootstrap. Several seeds of one model are
pooled by averaging their per-example scores.

Metrics that are means over examples (accuracy, the KL score) are resampled here, with the very
resamples ``scipy.stats.bootstrap`` draws from the same seed, counted once for up to 256 rows of a
leaderboard at a time (:func:`intervals`, :func:`compare_each`): scipy draws them anew for every
call, which made a 1,000-run leaderboard take half a minute. Other metrics (mIoU, macro F1) go
through ``scipy.stats.bootstrap`` itself.
"""
from __future__ import annotations

import numpy as np

from zoo.errors import ConfigError
from zoo.metrics import ExampleScores
from zoo.tasks import TASKS

CONFIDENCE = 0.95
SIGNIFICANCE = 0.05
MIN_CLASS_EXAMPLES = 30  # per-class figures on fewer test examples are flagged as too small to judge
RESAMPLES_MEAN = 9999    # metrics that are means over examples: vectorised, cheap
RESAMPLES_RATIO = 1000   # metrics recomputed from resampled confusion matrices (mIoU, pixel accuracy)
BOOTSTRAP_SEED = 0


class ComparisonError(ConfigError):
    """Runs that cannot be compared (different test images, a metric they lack)."""


def example_scores(predictions, task: str, metric: str, num_classes: int, ignore_classes=()) -> ExampleScores:
    """Per-example material of ``metric`` from a run's ``predictions.npz`` (a mapping of arrays), in the form
    its task gives it (``Task.example_scores``)."""
    files = set(predictions.keys()) if hasattr(predictions, "keys") else set(predictions.files)
    if "example_ids" not in files:
        raise ComparisonError("these predictions do not name their test examples (written by an older zoo); "
                              "run the suite again with --force to pair its runs")
    ids = np.asarray(predictions["example_ids"]).astype(str)
    scores = TASKS.get(task).example_scores(predictions, ids, metric, num_classes, ignore_classes)
    if scores is None:
        raise ComparisonError(f"no per-example form of {metric!r} for {task} runs; use "
                              f"{', '.join(TASKS.get(task).comparable_metrics)}")
    return scores


def pool(scores: list[ExampleScores]) -> ExampleScores:
    """Several seeds of one model as one: per-example values averaged (for confusion-based
    metrics the metric of each seed averaged on the same resampled examples)."""
    first = scores[0]
    if len(scores) == 1:
        return first
    aligned = [first] + [s.take(_alignment(first.example_ids, s.example_ids)) for s in scores[1:]]
    if first.values is not None:
        return ExampleScores(first.metric, first.example_ids, values=np.mean([s.values for s in aligned], axis=0))
    parts = np.stack([s.parts for s in aligned], axis=1)  # (examples, seeds, ...)
    aggregate = first.aggregate
    return ExampleScores(first.metric, first.example_ids, parts=parts,
                         aggregate=lambda chosen: float(np.mean([aggregate(chosen[:, k])
                                                                 for k in range(chosen.shape[1])])))


def _alignment(reference_ids, other_ids) -> np.ndarray:
    """Positions in ``other_ids`` of each of ``reference_ids``; refuses different test sets."""
    reference_ids, other_ids = np.asarray(reference_ids), np.asarray(other_ids)
    if len(reference_ids) != len(other_ids) or set(reference_ids) != set(other_ids):
        only_a = len(set(reference_ids) - set(other_ids))
        only_b = len(set(other_ids) - set(reference_ids))
        raise ComparisonError(f"the runs were tested on different images ({len(reference_ids)} and "
                              f"{len(other_ids)} examples; {only_a} only in the first, {only_b} only in the "
                              f"second): compare runs of one suite with the same split_seed")
    position = {name: index for index, name in enumerate(other_ids)}
    return np.array([position[name] for name in reference_ids])


RESAMPLE_CHUNK_VALUES = 1 << 22  # resampled indices held at once (32 MiB of int64), whatever the test set's size
COLUMN_BLOCK = 256  # distributions held at once (20 MB at 9,999 resamples), whatever the leaderboard's size


def _mean_distributions(columns: np.ndarray, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """The bootstrap distribution of the mean of each column of ``columns`` (examples x k), shape
    (RESAMPLES_MEAN, k). The resamples are scipy.stats.bootstrap's for this seed
    (``default_rng(seed).integers(0, n, (RESAMPLES_MEAN, n))``), drawn in chunks of rows (the same
    stream) and applied as counts, so k columns cost one draw; with whole-number values (accuracy's
    0/1) every resampled mean equals scipy's exactly."""
    columns = np.asarray(columns, dtype=np.float64)
    n, k = columns.shape
    rng = np.random.default_rng(seed)
    distributions = np.empty((RESAMPLES_MEAN, k))
    chunk = max(1, RESAMPLE_CHUNK_VALUES // n)
    for start in range(0, RESAMPLES_MEAN, chunk):
        rows = min(chunk, RESAMPLES_MEAN - start)
        drawn = rng.integers(0, n, (rows, n)) + (n * np.arange(rows))[:, None]
        counts = np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n)
        distributions[start:start + rows] = counts @ columns / n
    return distributions


def _percentile_interval(distributions: np.ndarray) -> np.ndarray:
    """The percentile interval of each column of bootstrap ``distributions``, as scipy computes it
    (its linear quantiles at (1 - CONFIDENCE) / 2 and its complement); shape (2, k)."""
    alpha = (1 - CONFIDENCE) / 2
    return np.quantile(distributions, [alpha, 1 - alpha], axis=0)


def _p_value_of_zero(distribution: np.ndarray) -> float:
    """The two-sided bootstrap p-value of a difference being 0, from its bootstrap distribution."""
    return float(min(1.0, 2 * min(np.mean(distribution <= 0), np.mean(distribution >= 0))))


def _mean_bootstraps(columns: list[np.ndarray], seed: int = BOOTSTRAP_SEED) -> list[tuple[float, float, float]]:
    """(low, high, p-value of 0) of the mean of each of ``columns`` (per-example values, all of one
    length), from the same resamples for every column (drawn again for each block of COLUMN_BLOCK
    columns, so memory does not grow with their number); a column whose values are all equal gives
    that value."""
    results = [(float(values[0]), float(values[0]), _p_value_of_zero(np.full(2, float(values[0]))))
               for values in columns]
    varied = [index for index, values in enumerate(columns) if np.ptp(values) != 0]
    for start in range(0, len(varied), COLUMN_BLOCK):
        block = varied[start:start + COLUMN_BLOCK]
        distributions = _mean_distributions(np.stack([columns[i] for i in block], axis=1), seed)
        bounds = _percentile_interval(distributions)
        for position, index in enumerate(block):
            results[index] = (float(bounds[0, position]), float(bounds[1, position]),
                              _p_value_of_zero(distributions[:, position]))
    return results


def _bootstrap(statistic_of_indices, n: int, seed: int = BOOTSTRAP_SEED):
    """scipy's percentile bootstrap of a statistic of example indices (metrics that are not means
    over examples); returns (low, high, p-value of 0)."""
    from scipy.stats import bootstrap

    result = bootstrap((np.arange(n),), lambda chosen: statistic_of_indices(chosen.astype(np.int64)),
                       vectorized=False, n_resamples=RESAMPLES_RATIO, confidence_level=CONFIDENCE,
                       method="percentile", random_state=np.random.default_rng(seed))
    return (float(result.confidence_interval.low), float(result.confidence_interval.high),
            _p_value_of_zero(np.asarray(result.bootstrap_distribution)))


def intervals(many: list[ExampleScores], seed: int = BOOTSTRAP_SEED) -> list[tuple[float, float]]:
    """The 95 % bootstrap interval of each of ``many`` over its test examples; those that are means
    over the same number of examples share one set of resamples (each interval is what
    :func:`interval` gives it alone)."""
    results: list = [None] * len(many)
    by_size: dict[int, list[int]] = {}
    for index, scores in enumerate(many):
        if scores.values is None:
            results[index] = _bootstrap(scores.value, scores.n, seed)[:2]
        else:
            by_size.setdefault(scores.n, []).append(index)
    for indices in by_size.values():
        for index, (low, high, _) in zip(indices, _mean_bootstraps([many[i].values for i in indices], seed)):
            results[index] = (low, high)
    return results


def interval(scores: ExampleScores, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The 95 % bootstrap interval of the metric over test examples."""
    return intervals([scores], seed)[0]


def compare(a: ExampleScores, b: ExampleScores, seeds_a: int = 1, seeds_b: int = 1,
            seed: int = BOOTSTRAP_SEED) -> dict:
    """Paired comparison of two models on the same test examples: the difference a - b, its 95 %
    paired-bootstrap interval and a two-sided p-value (McNemar's exact test for the accuracy of
    two single runs; otherwise the paired bootstrap's)."""
    result = compare_each([a], b, [seeds_a], seeds_b, seed)[0]
    if isinstance(result, ComparisonError):
        raise result
    return result


def compare_each(models: list[ExampleScores], reference: ExampleScores, seeds: list[int] | None = None,
                 reference_seeds: int = 1, seed: int = BOOTSTRAP_SEED) -> list:
    """:func:`compare` of each of ``models`` against ``reference`` (a leaderboard's rows against its
    best), the paired bootstraps of mean metrics sharing one set of resamples. Each item is the
    comparison's dict, or the ComparisonError that refused it (tested on other images)."""
    seeds = seeds or [1] * len(models)
    results: list = [None] * len(models)
    paired = []  # (index, a, b aligned to a)
    for index, a in enumerate(models):
        try:
            paired.append((index, a, reference.take(_alignment(a.example_ids, reference.example_ids))))
        except ComparisonError as error:
            results[index] = error
    means = [(index, a, b) for index, a, b in paired if a.values is not None and b.values is not None]
    differences = {index: found for (index, _, _), found in zip(
        means, _mean_bootstraps([a.values - b.values for _, a, b in means], seed))}
    for index, a, b in paired:
        if index in differences:
            low, high, p_bootstrap = differences[index]
        else:
            low, high, p_bootstrap = _bootstrap(lambda chosen, a=a, b=b: a.value(chosen) - b.value(chosen), a.n, seed)
        results[index] = _comparison(a, b, seeds[index], reference_seeds, low, high, p_bootstrap)
    return results


def _comparison(a: ExampleScores, b: ExampleScores, seeds_a: int, seeds_b: int, low: float, high: float,
                p_bootstrap: float) -> dict:
    """The comparison of a and b (aligned) given the bootstrap of their difference (its interval and
    p-value)."""
    value_a, value_b = a.value(), b.value()
    pooled = seeds_a > 1 or seeds_b > 1
    if a.metric == "accuracy" and a.values is not None and not pooled and set(np.unique(a.values)) <= {0.0, 1.0}:
        from statsmodels.stats.contingency_tables import mcnemar

        right_a, right_b = a.values.astype(bool), b.values.astype(bool)
        table = [[int(np.sum(right_a & right_b)), int(np.sum(right_a & ~right_b))],
                 [int(np.sum(~right_a & right_b)), int(np.sum(~right_a & ~right_b))]]
        p_value = float(mcnemar(table, exact=True).pvalue)
        test = "McNemar's exact test"
    else:
        p_value = p_bootstrap
        test = "paired bootstrap over test examples"
    if pooled:
        test += (f"; seeds pooled by averaging each example's score over the seeds of each model "
                 f"({seeds_a} and {seeds_b})")
    return {"metric": a.metric, "value_a": value_a, "value_b": value_b, "difference": value_a - value_b,
            "ci_low": low, "ci_high": high, "p_value": p_value, "test": test, "n": a.n}


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels), for several comparisons against one model."""
    if not p_values:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(p_values, alpha=SIGNIFICANCE, method="holm")[1]]


MODEL_KEYS = ("dataset", "backbone", "head", "weights", "trainable", "swept", "split_seed")


def _matching_runs(out_dir, name: str) -> list[dict]:
    """Finished runs of ``OUT`` whose id is ``name`` or matches it as a glob; several must be
    seeds of one model."""
    import fnmatch
    from pathlib import Path

    from zoo.results import read_result

    runs_dir = Path(out_dir) / "runs"
    if not runs_dir.is_dir():
        raise ComparisonError(f"{out_dir} holds no runs/ folder: give the folder `zoo run` wrote")
    rows = [row for row in (read_result(d) for d in sorted(runs_dir.iterdir()) if not d.name.startswith("."))
            if row and row.get("status") == "ok"]
    chosen = [r for r in rows if r["run_id"] == name] or [r for r in rows if fnmatch.fnmatchcase(r["run_id"], name)]
    if not chosen:
        import difflib

        close = difflib.get_close_matches(name, [r["run_id"] for r in rows], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `zoo report` lists the run ids"
        raise ComparisonError(f"no finished run of {out_dir} is named {name!r}{hint}")
    models = {tuple(str(r.get(k)) for k in MODEL_KEYS) for r in chosen}
    if len(models) > 1:
        raise ComparisonError(f"{name!r} matches runs of {len(models)} different models "
                              f"({', '.join(r['run_id'] for r in chosen[:4])}, ...); a pattern may only "
                              f"gather the seeds of one model")
    return chosen


def dataset_headline_metric(dataset: str, tasks, recorded: dict | None = None) -> str:
    """The metric a dataset's models are ranked and compared by (zoo.metrics.headline_metric): the choice a
    run recorded in its ``dataset.json`` (``recorded``; the suite entry's ``headline_metric``, else its card's),
    else its card's looked up by the dataset's name (the user's folders have no card: mIoU for segmentation)."""
    from zoo.data.cards import DATASETS
    from zoo.metrics import headline_metric

    chosen = (recorded or {}).get("headline_metric")
    if chosen is None:
        chosen = (DATASETS.get(dataset) if dataset in DATASETS else {}).get("headline_metric")
    return headline_metric(tasks, chosen)


def recorded_dataset(out_dir, run_id: str) -> dict:
    """A run's ``dataset.json`` (what its data held and how it is ranked); {} where it has none readable."""
    import json
    from pathlib import Path

    try:
        return json.loads((Path(out_dir) / "runs" / run_id / "dataset.json").read_text())
    except (OSError, ValueError):
        return {}


def compare_runs(out_dir, name_a: str, name_b: str, metric: str | None = None) -> dict:
    """``zoo compare``: model A against model B on the same test examples (see :func:`compare`).
    Each name is a run id of ``out_dir`` or a glob gathering the seeds of one model."""
    import json
    from pathlib import Path

    runs_a, runs_b = _matching_runs(out_dir, name_a), _matching_runs(out_dir, name_b)
    if runs_a[0]["dataset"] != runs_b[0]["dataset"]:
        raise ComparisonError(f"{name_a} ran on {runs_a[0]['dataset']} and {name_b} on {runs_b[0]['dataset']}: "
                              f"compare runs on the same dataset")
    metric = metric or dataset_headline_metric(runs_a[0]["dataset"], {runs_a[0]["task"], runs_b[0]["task"]},
                                               recorded_dataset(out_dir, runs_a[0]["run_id"]))

    def scores(runs):
        run_dir = Path(out_dir) / "runs"
        info = json.loads((run_dir / runs[0]["run_id"] / "dataset.json").read_text())
        parts = []
        for run in runs:
            with np.load(run_dir / run["run_id"] / "predictions.npz") as predictions:
                parts.append(example_scores(predictions, run["task"], metric, len(info["class_names"]),
                                            info.get("ignore_classes", [])))
        return pool(parts)

    from zoo.metrics import METRICS

    result = compare(scores(runs_a), scores(runs_b), len(runs_a), len(runs_b))
    higher = METRICS.get(metric).higher_is_better
    return {"metric": metric, "a": name_a, "b": name_b, **{k: result[k] for k in (
        "value_a", "value_b", "difference", "ci_low", "ci_high", "p_value", "test", "n")},
        "higher_is_better": higher, "runs_a": [r["run_id"] for r in runs_a], "runs_b": [r["run_id"] for r in runs_b]}
