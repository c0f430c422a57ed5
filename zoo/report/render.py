"""Build a comparison report from a results store (OUT/results.csv and the run folders).

Reads only what the runs wrote: a report can be regenerated any time without retraining.
"""
from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader

from zoo import stats
from zoo.errors import ConfigError
from zoo.metrics import METRICS, ignored_classes_note
from zoo.report import figures
from zoo.export import FORMATS
from zoo.results import RESULT_COLUMNS, load_runs, write_atomic
from zoo.yamlfile import read_yaml

GROUP_KEYS = ["backbone", "head", "weights", "trainable", "swept"]
# Models of a dataset given per-class tables, confusion matrices and training curves: the leaderboard's
# first ones and every model the recommendation names. A sweep's report stays readable (and quick to
# write) at hundreds of models; zoo serve shows every run's details.
DETAILED_MODELS = 20
# results.csv columns a leaderboard averages over a model's seeds.
NUMERIC_COLUMNS = (["miou", "kl_score", "accuracy_smoothed", "macro_precision", "macro_recall", "train_seconds", "epoch_seconds",
                    "first_epoch_seconds", "images_per_second", "latency_ms", "precise_bn_batches"]
                   + [f"{name}_{measure}" for name in FORMATS
                      for measure in ("megabytes", "latency_ms", "accuracy", "accuracy_drop")])


def _fmt(value, digits=4):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _mean_std(values, digits=4):
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values:
        return ""
    if len(values) == 1:
        return _fmt(values[0], digits)
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _own_measurements(group: pd.DataFrame, column: str) -> list:
    """A model's speed figures, one per measurement: runs of one architecture share the first
    one's (``speed_measured_in`` names it), so its seeds' equal copies are not a spread of 0."""
    if "speed_measured_in" not in group:
        return list(group[column])
    own = group[group["speed_measured_in"].isna() | (group["speed_measured_in"] == "")]
    return list((own if len(own) else group.iloc[:1])[column])


def _label(row) -> str:
    swept = f" [{row['swept']}]" if isinstance(row.get("swept"), str) and row["swept"] else ""
    trainable = "" if row["trainable"] == "all" else f" ({row['trainable']})"
    weights = "" if row["weights"] == "none" else f" +{row['weights']}"
    return f"{row['backbone']}/{row['head']}{weights}{trainable}{swept}"


def _form_name(deployment: dict) -> str:
    """An exported form as the recommendation names it: its format, and its quantization where there is one."""
    quantize = deployment["quantize"]
    return deployment["format"] + (f" {quantize}" if quantize and quantize != "none" else "")


def _backend_name(row) -> str:
    """The Keras backend of a results row ("jax 0.4.38" -> "jax"); "" for rows from before the column."""
    value = row.get("backend")
    return str(value).split(" ")[0] if isinstance(value, str) and value else ""


def _timed_on(row) -> str:
    """Where a row's times come from: the device, the Keras backend and the precision. Times are
    comparable only between rows with the same."""
    backend = _backend_name(row)
    return f"{row['device']}, {backend + ', ' if backend else ''}{row['precision']}"


def _class_note(row: dict, task: str) -> str:
    if row.get("support") == 0 and task == "classification":
        return "no test image: left out of the macro averages"
    if not row.get("too_few_to_judge"):
        return ""
    unit = "test images" if task == "classification" else "test tiles showing it"
    return f"only {row['test_examples']} {unit}: too few to judge"


def published_results(dataset: str) -> list[dict]:
    """The results the dataset's card cites (``reference_results``: source, model, metric, value), those with a
    value, for the report to show beside its own; none for a dataset without a card (a user's folder)."""
    from zoo.data.cards import DATASETS, cited_results

    if dataset not in DATASETS:
        return []
    return [{"source": str(row.get("source", "")), "model": str(row.get("model", "")), "metric": str(row["metric"]),
             "value": f"{float(row['value']):.4g}", "note": str(row.get("note", ""))}
            for row in cited_results(DATASETS.get(dataset))]


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-")[:80]


class ReportBuilder:
    def __init__(self, out_dir, report_dir, latency_budget_ms=None, size_budget_mb=None,
                 detailed_models: int = DETAILED_MODELS):
        self.out_dir = Path(out_dir)
        self.detailed_models = detailed_models
        # No report folder (zoo serve): the leaderboards and the recommendation only, nothing written.
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.figure_dir = self.report_dir / "figures" if self.report_dir is not None else None
        self.latency_budget_ms = latency_budget_ms
        self.size_budget_mb = size_budget_mb
        self.results, self.left_out = load_runs(out_dir)
        if self.results.empty:
            from zoo.errors import DataError

            raise DataError(f"{Path(out_dir) / 'results.csv'} lists no readable run"
                            + (f" ({'; '.join(self.left_out[:3])})" if self.left_out else "")
                            + f": run `zoo run SUITE --out {out_dir}` first")
        if self.figure_dir is not None:  # only once there is something to report: a refusal leaves no folder
            self.figure_dir.mkdir(parents=True, exist_ok=True)
        self.figure_files: list[Path] = []

    def run_dir(self, run_id) -> Path:
        return self.out_dir / "runs" / run_id

    def metrics_of(self, run_id) -> dict:
        path = self.run_dir(run_id) / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def dataset_info(self, frame: pd.DataFrame) -> dict:
        """dataset.json of the dataset's first run folder that has a readable one."""
        return next(filter(None, (stats.recorded_dataset(self.out_dir, run_id) for run_id in frame["run_id"])), {})

    def score_notes(self, frame: pd.DataFrame) -> list[str]:
        """Runs of the dataset scored by an older zoo in a way that changed since (zoo.results.SCORE_CHANGES)."""
        from zoo.results import older_score_notes

        return older_score_notes(frame.to_dict("records"), f"zoo run SUITE --out {self.out_dir}")

    def figure(self, path) -> dict:
        self.figure_files.append(path)
        return {"file": f"figures/{path.name}", "data": base64.b64encode(path.read_bytes()).decode()}

    # -- one dataset ---------------------------------------------------------------
    def leaderboard(self, ok: pd.DataFrame, metric: str, higher: bool) -> list[dict]:
        # Cast once, not per group: a sweep's leaderboard has as many groups as runs.
        ok = ok.astype({column: float for column in NUMERIC_COLUMNS + [metric, "accuracy"]})
        rows = []
        for _, group in ok.groupby(GROUP_KEYS, sort=False, dropna=False):
            first = group.iloc[0]
            score = group[metric]
            rows.append({
                "label": _label(first), "backbone": first["backbone"], "head": first["head"],
                "weights": first["weights"], "trainable": first["trainable"], "swept": first["swept"],
                "seeds": len(group), "score": float(score.mean()), "score_text": _mean_std(score),
                "miou_text": _mean_std(group["miou"]), "kl_score_text": _mean_std(group["kl_score"]),
                "accuracy_text": _mean_std(group["accuracy"]),
                "smoothed_text": _mean_std(group["accuracy_smoothed"]),
                "macro_precision_text": _mean_std(group["macro_precision"]),
                "macro_recall_text": _mean_std(group["macro_recall"]),
                "train_seconds_text": _mean_std(group["train_seconds"], 1),
                "epoch_seconds_text": _mean_std(group["epoch_seconds"], 2),
                "first_epoch_seconds_text": _mean_std(group["first_epoch_seconds"], 2),
                "images_per_second": float(group["images_per_second"].mean()),
                "images_per_second_text": _mean_std(_own_measurements(group, "images_per_second"), 1),
                "latency_ms": float(group["latency_ms"].mean()),
                "latency_ms_text": _mean_std(_own_measurements(group, "latency_ms"), 2),
                "params": int(first["params"]), "params_text": _fmt(int(first["params"])),
                "model_megabytes_text": _fmt(float(first["model_megabytes"]), 2),
                "precise_bn_text": _mean_std(group["precise_bn_batches"], 0),
                "device": first["device"], "precision": first["precision"], "backend": _backend_name(first),
                "timed_on": _timed_on(first),
                "run_ids": list(group["run_id"]), "task": first["task"],
                "model_megabytes": float(first["model_megabytes"]), "deployments": self.deployments(group, first),
                "test_examples": int(first["test_examples"]) if pd.notna(first.get("test_examples")) else None,
            })
        rows.sort(key=lambda r: -r["score"] if higher else r["score"])
        for rank, row in enumerate(rows, start=1):
            row["rank"] = rank
        return rows

    def deployments(self, group: pd.DataFrame, first: pd.Series) -> list[dict]:
        """The exported forms of one model (its seeds averaged; ``first``: its first row): format,
        quantization, size, CPU latency and score after conversion, or why the conversion failed."""
        found = []
        for name in FORMATS:
            sizes = group[f"{name}_megabytes"]
            errors = [e for e in group[f"{name}_error"] if isinstance(e, str) and e]
            if sizes.isna().all() and not errors:
                continue
            found.append({"label": _label(first), "format": name, "runtime": FORMATS[name].runtime,
                          "quantize": "/".join(dict.fromkeys(str(q) for q in group[f"{name}_quantize"].dropna())),
                          "metric": first["export_metric"],
                          "megabytes": float(sizes.mean()) if sizes.notna().any() else None,
                          "megabytes_text": _mean_std(sizes, 2),
                          "latency_ms": (float(group[f"{name}_latency_ms"].mean())
                                         if group[f"{name}_latency_ms"].notna().any() else None),
                          "latency_ms_text": _mean_std(group[f"{name}_latency_ms"], 2),
                          "score_text": _mean_std(group[f"{name}_accuracy"]),
                          "drop": float(group[f"{name}_accuracy_drop"].mean()),
                          "drop_text": _mean_std(group[f"{name}_accuracy_drop"]),
                          "error": "; ".join(dict.fromkeys(errors))})
        return found

    def size_pick(self, board: list[dict]) -> tuple[str, dict | None]:
        """The best model (leaderboard order) with a working form that fits the size budget: of
        its forms that fit (exported files, its .keras file), the one that loses least; the sentence
        saying so and the model's row (None when nothing fits)."""
        def forms(row):
            found = [(d["megabytes"], _form_name(d), d)
                     for d in row["deployments"] if d["megabytes"] is not None and not d["error"]]
            return found + [(row["model_megabytes"], ".keras", None)]

        budget = self.size_budget_mb
        for row in board:
            fitting = [form for form in forms(row) if form[0] <= budget]
            if fitting:
                size, form, deployment = min(fitting, key=lambda f: (f[2]["drop"] if f[2] else 0.0, f[0]))
                after = (f"; {deployment['metric']} after conversion {deployment['score_text']} (drop "
                         f"{deployment['drop_text']})" if deployment else "")
                return (f"Best within the {budget:g} MB size budget: **{row['label']}**, {row['score_text']}, "
                        f"{size:.2f} MB as {form}{after}."), row
        size, form, row = min(((size, form, row) for row in board for size, form, _ in forms(row)),
                              key=lambda item: item[0])
        hint = "" if any(r["deployments"] for r in board) else " (the suite key export makes smaller files)"
        return (f"No model fits the {budget:g} MB size budget; the smallest, {row['label']}, takes {size:.2f} MB as "
                f"{form}{hint}."), None

    def latency_pick(self, board: list[dict]) -> tuple[str, dict | None]:
        """The best model (leaderboard order) with a working form within the latency budget: of its forms
        within it (the Keras model as its run timed it, exported files as the CPU ran them), the one that
        loses least; the sentence saying so and the model's row (None when nothing is quick enough)."""
        def forms(row):
            found = [(d["latency_ms"], f"{_form_name(d)} on the CPU", d)
                     for d in row["deployments"] if d["latency_ms"] is not None and not d["error"]]
            keras_latency = row["latency_ms"]
            return found + ([(keras_latency, "Keras", None)] if pd.notna(keras_latency) else [])

        budget = self.latency_budget_ms
        for row in board:  # best first: the first with a form within the budget is the pick
            within = [form for form in forms(row) if form[0] <= budget]
            if within:
                latency, form, deployment = min(within, key=lambda f: (f[2]["drop"] if f[2] else 0.0, f[0]))
                if deployment is None:
                    return (f"Best within the {budget:g} ms latency budget: **{row['label']}**, {row['score_text']} "
                            f"at {latency:.2f} ms per image."), row
                return (f"Best within the {budget:g} ms latency budget: **{row['label']}**, {row['score_text']}, "
                        f"at {latency:.2f} ms per image as {form}; {deployment['metric']} after conversion "
                        f"{deployment['score_text']} (drop {deployment['drop_text']})."), row
        timed = [(latency, form, row) for row in board for latency, form, _ in forms(row)]
        if not timed:
            return f"No model meets the {budget:g} ms latency budget: none has a measured latency.", None
        latency, form, row = min(timed, key=lambda item: item[0])
        where = "" if form == "Keras" else f" as {form}"
        return (f"No model meets the {budget:g} ms latency budget; the quickest, {row['label']}, takes "
                f"{latency:.2f} ms per image{where}."), None

    def scores_of(self, row: dict, metric: str) -> stats.ExampleScores:
        """The headline metric's per-example scores of a leaderboard row, its seeds pooled."""
        info = json.loads((self.run_dir(row["run_ids"][0]) / "dataset.json").read_text())
        scores = []
        for run_id in row["run_ids"]:
            with np.load(self.run_dir(run_id) / "predictions.npz") as predictions:
                scores.append(stats.example_scores(predictions, row["task"], metric, len(info["class_names"]),
                                                   info.get("ignore_classes", [])))
        return stats.pool(scores)

    def add_significance(self, board: list[dict], metric: str) -> None:
        """Each row's 95 % interval, and whether it is significantly worse than the best: a paired
        test on the same test examples, Holm-corrected over the comparisons with the best. The rows'
        bootstraps share one set of resamples (zoo.stats.intervals, compare_each)."""
        for row in board:
            row.update(interval_text="", tie=None, p_text="", compared=False)
            try:
                row["scores"] = self.scores_of(row, metric)
                if not row["scores"].n:
                    raise ValueError("no test examples")
            except (OSError, KeyError, ValueError) as error:
                row["scores"], row["p_text"] = None, f"not tested: {error}"
        scored = [row for row in board if row["scores"] is not None]
        for row, (low, high) in zip(scored, stats.intervals([row["scores"] for row in scored])):
            row["interval_text"] = f"[{low:.4f}, {high:.4f}]"
        if not board or board[0]["scores"] is None:
            return
        best = board[0]
        best.update(tie=True, compared=True, p_text="best")
        others = [row for row in board[1:] if row["scores"] is not None]
        comparisons = stats.compare_each([row["scores"] for row in others], best["scores"],
                                         [row["seeds"] for row in others], best["seeds"])
        tested = []
        for row, comparison in zip(others, comparisons):
            if isinstance(comparison, stats.ComparisonError):
                row["p_text"] = f"not compared: {comparison}"
            else:
                row["comparison"] = comparison
                tested.append(row)
        for row, adjusted in zip(tested, stats.holm([r["comparison"]["p_value"] for r in tested])):
            row.update(tie=adjusted >= stats.SIGNIFICANCE, compared=True, p_adjusted=adjusted,
                       p_text=f"{adjusted:.3g}")
        for row in board:
            row["verdict"] = (row["p_text"] if row is best or not row["compared"] else
                              f"{'tie' if row['tie'] else 'worse'} (p = {row['p_text']})")

    def recommendation(self, board: list[dict], metric: str, higher: bool) -> list[str]:
        """The recommendation's sentences for one dataset's leaderboard."""
        return self.recommend(board, metric, higher)[0]

    def recommend(self, board: list[dict], metric: str, higher: bool) -> tuple[list[str], list[dict]]:
        """The recommendation's sentences, and the leaderboard rows they name (the best, the fastest and
        smallest ties, the budget picks)."""
        if not board:
            return [], []
        name = {"accuracy": "accuracy", "kl_score": "KL score", "miou": "mIoU", "macro_f1": "macro F1"}.get(metric, metric)
        best = board[0]
        # The examples the test pairs: a tile with no pixel of a kept class has no KL score.
        scored = best["scores"].n if best.get("scores") is not None else best.get("test_examples")
        examples = (f"{scored:,} test {'images' if best['task'] == 'classification' else 'tiles'}"
                    if scored else "this test set")
        interval = f" {best['interval_text']}" if best.get("interval_text") else ""
        sentences = [f"Best {name}: **{best['label']}** with {best['score_text']}{interval} "
                     f"({best['images_per_second']:,.0f} images/s, {best['params']:,} parameters)."]
        if not best.get("compared"):
            sentences.append("No significance test was possible (see the leaderboard), so no tie is claimed.")
        ties = [r for r in board if r.get("tie")]
        others = [r for r in ties if r is not best]
        if best.get("compared") and not others:
            compared = sum(1 for r in board[1:] if r.get("compared"))
            sentences.append(f"Every other model compared ({compared}) is significantly worse on these {examples} "
                             f"(paired test, Holm-corrected, 0.05)." if compared else
                             "It is the only model that could be compared.")
        # Speed is compared only between models timed on the same device, backend and precision.
        timed_apart = [r for r in ties if r["timed_on"] != best["timed_on"]]
        fastest = max([r for r in ties or [best] if r["timed_on"] == best["timed_on"]] or [best],
                      key=lambda r: r["images_per_second"])
        smallest = min(ties or [best], key=lambda r: r["params"])
        named = [best, fastest, smallest]
        if fastest is not best:
            sentences.append(f"**{fastest['label']}** is statistically indistinguishable from {best['label']} on "
                             f"these {examples} ({fastest['score_text']}, paired test p = {fastest['p_text']} "
                             f"after Holm's correction) and {fastest['images_per_second'] / best['images_per_second']:.1f}x "
                             f"faster ({fastest['images_per_second']:,.0f} images/s).")
        elif len(others) > len(timed_apart):
            sentences.append(f"{len(others) - len(timed_apart)} other model(s) timed alike are statistically "
                             f"indistinguishable from it; the best is also the fastest of them.")
        if timed_apart:
            sentences.append(f"{len(timed_apart)} model(s) statistically indistinguishable from it were timed elsewhere "
                             f"({'; '.join(sorted({r['timed_on'] for r in timed_apart}))}): their speed is not "
                             f"compared with its.")
        if smallest is not best and smallest is not fastest:
            sentences.append(f"Smallest of the models indistinguishable from the best: **{smallest['label']}**, "
                             f"{smallest['score_text']} with {smallest['params']:,} parameters "
                             f"({smallest['params'] / best['params']:.2f}x the best's).")
        elif smallest is not best:
            sentences.append(f"It is also the smallest of them ({smallest['params']:,} parameters, "
                             f"{smallest['params'] / best['params']:.2f}x the best's).")
        if self.latency_budget_ms is not None:
            sentence, pick = self.latency_pick(board)
            sentences.append(sentence)
            named += [pick] if pick is not None else []
        if self.size_budget_mb is not None:
            sentence, pick = self.size_pick(board)
            sentences.append(sentence)
            named += [pick] if pick is not None else []
        sentences.append(f"Its times were measured on {best['timed_on']}.")
        return sentences, named

    def ranked(self, frame: pd.DataFrame) -> dict:
        """One dataset's rows ranked: its task, headline metric and direction, its successful runs and
        the leaderboard with each row's interval and paired verdict against the best."""
        task = "classification" if (frame["task"] == "classification").all() else "segmentation"
        metric = stats.dataset_headline_metric(frame["dataset"].iloc[0], frame["task"], self.dataset_info(frame))
        higher = METRICS.get(metric).higher_is_better
        ok = frame[frame["status"] == "ok"]
        board = self.leaderboard(ok, metric, higher)
        self.add_significance(board, metric)
        # Segmentation leaderboards show the other of mIoU and the KL score beside the headline; classification
        # ranked by another metric (an entry's headline_metric: macro_f1) shows accuracy beside it.
        if task == "classification":
            second = None if metric == "accuracy" else "accuracy"
        else:
            second = "kl_score" if metric == "miou" else "miou"
        return {"task": task, "metric": metric, "higher_is_better": higher, "ok": ok, "board": board,
                "second_metric": second}

    def dataset_section(self, dataset: str, frame: pd.DataFrame) -> dict:
        ranked = self.ranked(frame)
        task, metric, higher, ok, board = (ranked[k] for k in ("task", "metric", "higher_is_better", "ok", "board"))
        recommendation, named = self.recommend(board, metric, higher)
        # Rows are compared by identity: they hold arrays, which == cannot compare.
        named_ids = {id(r) for r in named}
        chosen = {id(r) for r in board[:max(0, self.detailed_models)]} | named_ids
        detailed = [r for r in board if id(r) in chosen]
        detailed_runs = {run_id for r in detailed for run_id in r["run_ids"]}
        runs = []
        histories = {}
        # One confusion matrix per model, its seeds' test predictions pooled, beside its first run.
        seeds_of = {run_ids[0]: run_ids for run_ids in (r["run_ids"] for r in board)}
        for _, row in ok[ok["run_id"].isin(detailed_runs)].iterrows():
            metrics = self.metrics_of(row["run_id"])
            smoothed = {c["class"]: c for c in metrics.get("smoothed", {}).get("per_class", [])}
            per_class = [{**c, "precision_smoothed": smoothed.get(c["class"], {}).get("precision"),
                          "recall_smoothed": smoothed.get(c["class"], {}).get("recall"),
                          "note": _class_note(c, task)}
                         for c in metrics.get("per_class", [])]
            try:
                info = json.loads((self.run_dir(row["run_id"]) / "dataset.json").read_text())
            except (OSError, ValueError):
                info = {}
            entry = {"run_id": row["run_id"], "label": _label(row) + f" seed {row['seed']}",
                     "per_class": per_class, "has_iou": task != "classification", "smoothed": bool(smoothed),
                     "confusion": None, "ignored": ignored_classes_note(metrics, info)}
            if metrics.get("confusion_matrix") and row["run_id"] in seeds_of:
                seeds = seeds_of[row["run_id"]]
                matrix = np.sum([self.metrics_of(run_id)["confusion_matrix"] for run_id in seeds], axis=0)
                title = entry["label"] if len(seeds) == 1 else f"{_label(row)}, {len(seeds)} seeds pooled"
                path = figures.confusion_heatmap(matrix, metrics["class_names"], title,
                                                 self.figure_dir / f"confusion-{_slug(row['run_id'])}.png")
                entry["confusion"] = self.figure(path)
            history_path = self.run_dir(row["run_id"]) / "history.csv"
            if history_path.is_file():
                histories[entry["label"]] = pd.read_csv(history_path)
            runs.append(entry)
        curves = None
        if histories:
            path = figures.training_curves(histories, "accuracy", f"{dataset}: training curves",
                                           self.figure_dir / f"curves-{_slug(dataset)}.png")
            curves = self.figure(path)
        tradeoff = None
        if board:
            path = figures.score_vs_speed([r["label"] for r in board], [r["score"] for r in board],
                                          [r["images_per_second"] for r in board], metric, higher,
                                          f"{dataset}: {metric} against inference speed",
                                          self.figure_dir / f"tradeoff-{_slug(dataset)}.png",
                                          # a large sweep's labels would cover each other: the front's and
                                          # the recommendation's only
                                          named=None if len(detailed) == len(board) else
                                          [index for index, r in enumerate(board) if id(r) in named_ids])
            tradeoff = self.figure(path)
        failed = frame[frame["status"] != "ok"]
        info = self.dataset_info(frame)
        skipped = info.get("skipped") or []
        no_test = sorted({name for _, row in ok.iterrows()
                          for name in self.metrics_of(row["run_id"]).get("classes_without_test_examples", [])})
        return {"name": dataset, "skipped": {"count": len(skipped), "shown": "; ".join(
                    f"{Path(s['path']).name}: {s['reason']}" for s in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")}
                if skipped else None,
                # What the scan noticed about the data (copies of one file, 16-bit files far below full scale,
                # photos stored turned): said before training, and kept beside the scores they qualify.
                "data_notes": list(info.get("notes") or []),
                "score_notes": self.score_notes(frame),
                "no_test_classes": no_test, "classes_tested": len(info.get("class_names", [])) - len(no_test), "task": task, "metric": metric, "higher_is_better": higher,
                "second_metric": ranked["second_metric"],
                "smoothing": bool(ok["accuracy_smoothed"].notna().any()),
                "leaderboard": board, "recommendation": recommendation,
                "references": published_results(dataset),
                "detailed": len(detailed), "not_detailed": len(board) - len(detailed),
                # Where rows were timed on different devices, backends or precisions, the table says where.
                "timed_apart": len({r["timed_on"] for r in board}) > 1,
                "deployment": [d for r in board for d in r["deployments"]],
                "deployment_metric": ", ".join(sorted({d["metric"] for r in board for d in r["deployments"]})),
                "runs": runs, "curves": curves, "tradeoff": tradeoff,
                "failed": [{"run_id": r["run_id"], "label": f"{_label(r)} seed {r['seed']}", "error": r["error"]} for _, r in failed.iterrows()]}

    def matrix(self, sections) -> dict:
        datasets = [s["name"] for s in sections]
        backbones = list(dict.fromkeys(self.results["backbone"]))
        cells = {}
        for section in sections:
            for row in section["leaderboard"]:  # best configuration of each backbone on the dataset
                cells.setdefault(row["backbone"], {}).setdefault(
                    section["name"], f"{row['score_text']} {row.get('interval_text', '')}".strip())
        # The direction goes in the header: a column of KL scores reads the other way from accuracy.
        return {"datasets": datasets,
                "metrics": [f"{s['metric']}, {'higher' if s['higher_is_better'] else 'lower'} is better"
                            for s in sections],
                "rows": [{"backbone": b, "cells": [cells.get(b, {}).get(d, "") for d in datasets]} for b in backbones]}

    def runs_at_once(self) -> int:
        """The most runs that shared a machine (``zoo run --workers N``); 1 for results from before the column."""
        shared = pd.to_numeric(self.results.get("runs_at_once", pd.Series(dtype=float)), errors="coerce").max()
        return int(shared) if pd.notna(shared) and shared > 1 else 1

    def build(self) -> dict:
        suite_file = self.out_dir / "suite.yaml"
        suite = read_yaml(suite_file.read_text()) if suite_file.is_file() else {}
        sections = [self.dataset_section(name, group) for name, group in self.results.groupby("dataset", sort=False)]
        return {"suite": suite.get("name") or self.results["suite"].iloc[0], "description": suite.get("description", ""),
                "runs_total": len(self.results), "runs_ok": int((self.results["status"] == "ok").sum()),
                "devices": sorted(set(self.results["device"].dropna())),
                "backends": sorted({_backend_name(row) for _, row in self.results.iterrows()} - {""}),
                "precisions": sorted(set(self.results["precision"].dropna())),
                "runs_at_once": self.runs_at_once(),
                "sections": sections, "matrix": self.matrix(sections),
                "columns": RESULT_COLUMNS, "latency_budget_ms": self.latency_budget_ms,
                "size_budget_mb": self.size_budget_mb,
                "left_out": self.left_out}


def _markdown_cell(value) -> str:
    """A value inside a markdown table: markdown renders inline HTML, so class names, paths and
    errors (which come from users) are HTML-escaped, and pipes cannot split the cell."""
    return html.escape(str(value), quote=False).replace("|", "\\|").replace("\n", " ")


def _inline_markdown(text: str) -> str:
    """The recommendation's **bold** in HTML, after escaping everything else."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def write_report(out_dir, formats=("md", "html"), report_dir=None, latency_budget_ms=None,
                 notes: list | None = None, size_budget_mb=None, detailed_models: int | None = None,
                 recommendations: list | None = None) -> list[Path]:
    """Write report.md and/or report.html (plus figures/) for a results store; returns the paths.
    ``notes``, if given, receives what was left out of the report (damaged runs, lines of
    results.csv that are not runs), one sentence each; ``recommendations`` receives (dataset, the
    recommendation's sentences as plain text) for each dataset. Per-class tables, confusion matrices and
    training curves are given for each dataset's first ``detailed_models`` models and those the
    recommendation names (DETAILED_MODELS when None); every model has its leaderboard row."""
    builder = None
    out_dir = Path(out_dir)
    unknown = set(formats) - {"md", "html"}
    if unknown:
        raise ConfigError(f"unknown report format(s) {sorted(unknown)}; use md and/or html (--format md,html)")
    suite_name = read_yaml((out_dir / "suite.yaml").read_text()).get("name") \
        if (out_dir / "suite.yaml").is_file() else out_dir.name
    report_dir = Path(report_dir) if report_dir else Path("reports") / suite_name
    builder = ReportBuilder(out_dir, report_dir, latency_budget_ms, size_budget_mb,
                            DETAILED_MODELS if detailed_models is None else detailed_models)
    model = builder.build()
    if notes is not None:
        notes.extend(builder.left_out)
    if recommendations is not None:
        recommendations.extend((section["name"], [sentence.replace("**", "") for sentence in section["recommendation"]])
                               for section in model["sections"])
    # Escape everything in the HTML template (class names, paths and errors come from users);
    # select_autoescape would look at the ".j2" suffix and escape nothing.
    environment = Environment(loader=PackageLoader("zoo.report", "templates"),
                              autoescape=lambda template_name: template_name.endswith(".html.j2"),
                              trim_blocks=True, lstrip_blocks=True)
    environment.filters["md"] = _markdown_cell
    environment.filters["md_text"] = lambda value: html.escape(str(value), quote=False)
    environment.filters["inline_md"] = _inline_markdown
    environment.filters["fmt"] = _fmt
    paths = []
    for name in formats:
        text = environment.get_template(f"report.{name}.j2").render(**model)
        path = report_dir / f"report.{name}"
        write_atomic(path, text)
        paths.append(path)
    return paths
