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
import yaml
from jinja2 import Environment, PackageLoader

from zoo.metrics import METRICS
from zoo.report import figures
from zoo.results import RESULT_COLUMNS, read_results, write_atomic

ONE_POINT = 0.01  # "within one point": one percentage point of accuracy/mIoU, 0.01 of KL score
GROUP_KEYS = ["backbone", "head", "weights", "trainable", "swept"]


def headline_metric(task: str) -> str:
    """Accuracy for classification; the challenge's KL score for segmentation datasets (shared by
    segmentation and distribution heads; mIoU is shown beside it)."""
    return "accuracy" if task == "classification" else "kl_score"


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


def _label(row) -> str:
    swept = f" [{row['swept']}]" if isinstance(row.get("swept"), str) and row["swept"] else ""
    trainable = "" if row["trainable"] == "all" else f" ({row['trainable']})"
    weights = "" if row["weights"] == "none" else f" +{row['weights']}"
    return f"{row['backbone']}/{row['head']}{weights}{trainable}{swept}"


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-")[:80]


class ReportBuilder:
    def __init__(self, out_dir, report_dir, latency_budget_ms=None):
        self.out_dir = Path(out_dir)
        self.report_dir = Path(report_dir)
        self.figure_dir = self.report_dir / "figures"
        self.figure_dir.mkdir(parents=True, exist_ok=True)
        self.latency_budget_ms = latency_budget_ms
        self.results = read_results(out_dir)
        for column in ("swept", "error"):
            self.results[column] = self.results[column].fillna("")
        self.figure_files: list[Path] = []

    def run_dir(self, run_id) -> Path:
        return self.out_dir / "runs" / run_id

    def metrics_of(self, run_id) -> dict:
        path = self.run_dir(run_id) / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def figure(self, path) -> dict:
        self.figure_files.append(path)
        return {"file": f"figures/{path.name}", "data": base64.b64encode(path.read_bytes()).decode()}

    # -- one dataset ---------------------------------------------------------------
    def leaderboard(self, ok: pd.DataFrame, metric: str, higher: bool) -> list[dict]:
        rows = []
        for _, group in ok.groupby(GROUP_KEYS, sort=False, dropna=False):
            first = group.iloc[0]
            score = group[metric].astype(float)
            rows.append({
                "label": _label(first), "backbone": first["backbone"], "head": first["head"],
                "weights": first["weights"], "trainable": first["trainable"], "swept": first["swept"],
                "seeds": len(group), "score": float(score.mean()), "score_text": _mean_std(score),
                "miou_text": _mean_std(group["miou"].astype(float)),
                "smoothed_text": _mean_std(group["accuracy_smoothed"].astype(float)),
                "macro_precision_text": _mean_std(group["macro_precision"].astype(float)),
                "macro_recall_text": _mean_std(group["macro_recall"].astype(float)),
                "train_seconds_text": _mean_std(group["train_seconds"].astype(float), 1),
                "epoch_seconds_text": _mean_std(group["epoch_seconds"].astype(float), 2),
                "first_epoch_seconds_text": _mean_std(group["first_epoch_seconds"].astype(float), 2),
                "images_per_second": float(group["images_per_second"].mean()),
                "images_per_second_text": _mean_std(group["images_per_second"].astype(float), 1),
                "latency_ms": float(group["latency_ms"].mean()),
                "latency_ms_text": _mean_std(group["latency_ms"].astype(float), 2),
                "params": int(first["params"]), "params_text": _fmt(int(first["params"])),
                "model_megabytes_text": _fmt(float(first["model_megabytes"]), 2),
                "device": first["device"], "precision": first["precision"],
                "run_ids": list(group["run_id"]),
            })
        rows.sort(key=lambda r: -r["score"] if higher else r["score"])
        for rank, row in enumerate(rows, start=1):
            row["rank"] = rank
        return rows

    def recommendation(self, board: list[dict], metric: str, higher: bool) -> list[str]:
        if not board:
            return []
        name = {"accuracy": "accuracy", "kl_score": "KL score"}.get(metric, metric)
        best = board[0]
        close = [r for r in board if abs(r["score"] - best["score"]) <= ONE_POINT + 1e-12]
        fastest = max(close, key=lambda r: r["images_per_second"])
        smallest = min(close, key=lambda r: r["params"])
        sentences = [f"Best {name}: **{best['label']}** with {best['score_text']} "
                     f"({best['images_per_second']:,.0f} images/s, {best['params']:,} parameters)."]
        if fastest is not best:
            sentences.append(f"Fastest within one point ({ONE_POINT:g}) of the best: **{fastest['label']}**, "
                             f"{fastest['score_text']} at {fastest['images_per_second']:,.0f} images/s "
                             f"({fastest['images_per_second'] / best['images_per_second']:.1f}x the best's speed).")
        else:
            sentences.append("The best is also the fastest of those within one point of it.")
        if smallest is not best:
            sentences.append(f"Smallest within one point: **{smallest['label']}**, {smallest['score_text']} with "
                             f"{smallest['params']:,} parameters ({smallest['params'] / best['params']:.2f}x the best's).")
        else:
            sentences.append("The best is also the smallest of those within one point of it.")
        if self.latency_budget_ms is not None:
            within = [r for r in board if r["latency_ms"] <= self.latency_budget_ms]
            if within:
                pick = within[0]
                sentences.append(f"Best within the {self.latency_budget_ms:g} ms latency budget: **{pick['label']}**, "
                                 f"{pick['score_text']} at {pick['latency_ms']:.2f} ms per image.")
            else:
                fastest_any = min(board, key=lambda r: r["latency_ms"])
                sentences.append(f"No model meets the {self.latency_budget_ms:g} ms latency budget; the quickest, "
                                 f"{fastest_any['label']}, takes {fastest_any['latency_ms']:.2f} ms per image.")
        sentences.append(f"Times measured on {best['device']} in {best['precision']}.")
        return sentences

    def dataset_section(self, dataset: str, frame: pd.DataFrame) -> dict:
        task = "classification" if (frame["task"] == "classification").all() else "segmentation"
        metric = headline_metric(task)
        higher = METRICS.get(metric).higher_is_better
        ok = frame[frame["status"] == "ok"]
        board = self.leaderboard(ok, metric, higher)
        runs = []
        histories = {}
        for _, row in ok.iterrows():
            metrics = self.metrics_of(row["run_id"])
            smoothed = {c["class"]: c for c in metrics.get("smoothed", {}).get("per_class", [])}
            per_class = [{**c, "precision_smoothed": smoothed.get(c["class"], {}).get("precision"),
                          "recall_smoothed": smoothed.get(c["class"], {}).get("recall")}
                         for c in metrics.get("per_class", [])]
            entry = {"run_id": row["run_id"], "label": _label(row) + f" seed {row['seed']}",
                     "per_class": per_class, "has_iou": task != "classification", "smoothed": bool(smoothed),
                     "confusion": None}
            if metrics.get("confusion_matrix"):
                path = figures.confusion_heatmap(metrics["confusion_matrix"], metrics["class_names"], entry["label"],
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
                                          self.figure_dir / f"tradeoff-{_slug(dataset)}.png")
            tradeoff = self.figure(path)
        failed = frame[frame["status"] != "ok"]
        return {"name": dataset, "task": task, "metric": metric, "higher_is_better": higher,
                "smoothing": bool(ok["accuracy_smoothed"].notna().any()),
                "leaderboard": board, "recommendation": self.recommendation(board, metric, higher),
                "runs": runs, "curves": curves, "tradeoff": tradeoff,
                "failed": [{"run_id": r["run_id"], "label": f"{_label(r)} seed {r['seed']}", "error": r["error"]} for _, r in failed.iterrows()]}

    def matrix(self, sections) -> dict:
        datasets = [s["name"] for s in sections]
        backbones = list(dict.fromkeys(self.results["backbone"]))
        cells = {}
        for section in sections:
            for row in section["leaderboard"]:  # best configuration of each backbone on the dataset
                cells.setdefault(row["backbone"], {}).setdefault(section["name"], row["score_text"])
        # The direction goes in the header: a column of KL scores reads the other way from accuracy.
        return {"datasets": datasets,
                "metrics": [f"{s['metric']}, {'higher' if s['higher_is_better'] else 'lower'} is better"
                            for s in sections],
                "rows": [{"backbone": b, "cells": [cells.get(b, {}).get(d, "") for d in datasets]} for b in backbones]}

    def build(self) -> dict:
        suite_file = self.out_dir / "suite.yaml"
        suite = yaml.safe_load(suite_file.read_text()) if suite_file.is_file() else {}
        sections = [self.dataset_section(name, group) for name, group in self.results.groupby("dataset", sort=False)]
        return {"suite": suite.get("name") or self.results["suite"].iloc[0], "description": suite.get("description", ""),
                "runs_total": len(self.results), "runs_ok": int((self.results["status"] == "ok").sum()),
                "devices": sorted(set(self.results["device"].dropna())),
                "precisions": sorted(set(self.results["precision"].dropna())),
                "sections": sections, "matrix": self.matrix(sections),
                "columns": RESULT_COLUMNS, "latency_budget_ms": self.latency_budget_ms}


def _markdown_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _inline_markdown(text: str) -> str:
    """The recommendation's **bold** in HTML, after escaping everything else."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def write_report(out_dir, formats=("md", "html"), report_dir=None, latency_budget_ms=None) -> list[Path]:
    """Write report.md and/or report.html (plus figures/) for a results store; returns the paths."""
    builder = None
    out_dir = Path(out_dir)
    unknown = set(formats) - {"md", "html"}
    if unknown:
        raise ValueError(f"unknown report format(s) {sorted(unknown)}; use md and/or html")
    suite_name = yaml.safe_load((out_dir / "suite.yaml").read_text()).get("name") \
        if (out_dir / "suite.yaml").is_file() else out_dir.name
    report_dir = Path(report_dir) if report_dir else Path("reports") / suite_name
    builder = ReportBuilder(out_dir, report_dir, latency_budget_ms)
    model = builder.build()
    # Escape everything in the HTML template (class names, paths and errors come from users);
    # select_autoescape would look at the ".j2" suffix and escape nothing.
    environment = Environment(loader=PackageLoader("zoo.report", "templates"),
                              autoescape=lambda template_name: template_name.endswith(".html.j2"),
                              trim_blocks=True, lstrip_blocks=True)
    environment.filters["md"] = _markdown_cell
    environment.filters["inline_md"] = _inline_markdown
    environment.filters["fmt"] = _fmt
    paths = []
    for name in formats:
        text = environment.get_template(f"report.{name}.j2").render(**model)
        path = report_dir / f"report.{name}"
        write_atomic(path, text)
        paths.append(path)
    return paths
