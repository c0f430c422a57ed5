"""A served output folder, read-only: the state of every run of its suite, the leaderboards and their
recommendation (computed by zoo.report's own code), comparisons (zoo.stats, as ``zoo compare``), a run's
details and its test examples. Nothing here writes into the folder.

Paths are resolved with :meth:`Study.run_dir` and :meth:`Study.run_file` only, which refuse any name that
leads outside the folder (``..``, absolute paths, symlinks pointing out) with :class:`NotServed`.
"""
from __future__ import annotations

import copy
import datetime
import json
import threading
import time
from pathlib import Path

import numpy as np

from zoo.errors import DataError
from zoo.export import FORMATS
from zoo.runspec import RunSpec
from zoo.yamlfile import read_yaml


class NotServed(LookupError):
    """A name that is not a file or run of the served folder (or leads outside it): answered with 404."""


def _stat_key(path: Path):
    try:
        stat = path.stat()
        return (stat.st_mtime_ns, stat.st_size)
    except OSError:
        return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _history_epochs(path: Path) -> int:
    try:
        with open(path) as handle:
            return max(0, sum(1 for line in handle if line.strip()) - 1)
    except OSError:
        return 0


def _finished_at(row: dict) -> float | None:
    try:
        return datetime.datetime.fromisoformat(str(row.get("finished_at"))).timestamp()
    except ValueError:
        return None


class Study:
    """One output folder of ``zoo run`` (OUT: suite.yaml, results.csv, runs/, cache/)."""

    def __init__(self, out_dir):
        self.root = Path(out_dir).resolve()
        self.runs_root = self.root / "runs"
        self._lock = threading.Lock()
        self._planned = (None, None)  # (suite.yaml's stat, (run specs, problem))
        self._boards: dict = {}        # results.csv's stat -> builder with significance computed
        self._building = threading.Lock()  # guards _boards: one computation at a time, others wait for its result
        self._sources: dict = {}

    @property
    def name(self) -> str:
        suite = self.suite_file()
        return str((suite or {}).get("name") or self.root.name)

    def suite_file(self) -> dict | None:
        import yaml

        try:
            return read_yaml((self.root / "suite.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return None

    # -- safe paths ---------------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        """The finished run folder ``runs/<run_id>``; NotServed for anything else."""
        if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith(".") or "\x00" in run_id:
            raise NotServed(run_id)
        folder = self.runs_root / run_id
        resolved = folder.resolve()
        if resolved.parent != self.runs_root.resolve() or not resolved.is_relative_to(self.root) \
                or not (resolved / "run.json").is_file():
            raise NotServed(run_id)
        return resolved

    def run_file(self, run_id: str, relative: str) -> Path:
        """A file inside a run folder (``export/model.onnx``); NotServed if it leads anywhere else."""
        folder = self.run_dir(run_id)
        if not relative or relative.startswith(("/", "\\")) or "\x00" in relative:
            raise NotServed(relative)
        path = (folder / relative).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise NotServed(relative)
        return path

    # -- the study ----------------------------------------------------------------------------------
    def planned(self):
        """The suite's runs (zoo.runspec.RunSpec) from OUT/suite.yaml, and a problem sentence when
        it cannot be expanded here (then only the run folders show)."""
        key = _stat_key(self.root / "suite.yaml")
        with self._lock:
            if self._planned[0] == key and key is not None:
                return self._planned[1]
        if key is None:
            result = ([], f"{self.root / 'suite.yaml'} is missing: only the run folders are shown")
        else:
            from zoo.harness.suite import expand_suite, load_suite

            try:
                result = (expand_suite(load_suite(self.root / "suite.yaml")), None)
            except Exception as error:  # noqa: BLE001  a suite this machine cannot expand still has its runs shown
                result = ([], f"{self.root / 'suite.yaml'} cannot be expanded here ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}): only the run folders are shown")
        with self._lock:
            self._planned = (key, result)
        return result

    def estimates(self) -> dict:
        from zoo.harness.runner import recorded_estimates

        return recorded_estimates(self.root)

    def runs(self) -> dict:
        """Every run with its state: done, failed (its one-line reason), running (on which host, epochs
        done, elapsed, ETA), interrupted or pending; plus the suite's progress and ETA."""
        from zoo.harness.claims import holder

        specs, problem = self.planned()
        estimates = self.estimates()
        ordered = {spec.run_id: spec for spec in specs}
        folders = {}
        if self.runs_root.is_dir():
            for entry in sorted(self.runs_root.iterdir()):
                if entry.is_symlink() or not entry.is_dir():
                    continue  # a link may lead anywhere: not a run of this folder
                name = entry.name
                if name.startswith(".") and name.endswith(".partial"):
                    folders.setdefault(name[1:-len(".partial")], {})["partial"] = entry
                elif not name.startswith("."):
                    folders.setdefault(name, {})["final"] = entry
        now = time.time()
        rows = []
        for run_id in list(ordered) + [r for r in folders if r not in ordered]:
            spec, found = ordered.get(run_id), folders.get(run_id, {})
            row = {"run_id": run_id, "dataset": spec.dataset["name"] if spec else "", "backbone": spec.backbone if spec
                   else "", "head": spec.head if spec else "", "state": "pending", "host": None, "error": "",
                   "epochs_done": 0, "epochs_total": (spec.train.epochs + (spec.finetune["epochs"] if spec.finetune
                                                                           else 0)) if spec else None,
                   "elapsed_seconds": None, "eta_seconds": None, "estimate_seconds": estimates.get(run_id),
                   "in_suite": spec is not None, "problem": None}
            final, partial = found.get("final"), found.get("partial")
            if final is not None:
                result = _read_json(final / "result.json")
                claim = _read_json(final / "claim.json") or {}
                attempt = _read_json(final / "worker.json") or {}
                if not isinstance(result, dict) or "status" not in result:
                    row.update(state="damaged", problem=f"{final / 'result.json'} is missing or unreadable; "
                                                        f"`zoo run` redoes this run")
                else:
                    row.update(state="done" if result["status"] == "ok" else result["status"],
                               error=str(result.get("error") or ""), host=attempt.get("host") or result.get("host"),
                               epochs_done=result.get("epochs_run") or 0,
                               dataset=row["dataset"] or result.get("dataset", ""),
                               backbone=row["backbone"] or result.get("backbone", ""),
                               head=row["head"] or result.get("head", ""))
                    finished = _finished_at(result)
                    if finished and claim.get("started"):
                        row["elapsed_seconds"] = max(0.0, finished - float(claim["started"]))
            elif partial is not None:
                live = holder(partial)
                attempt = _read_json(partial / "worker.json") or {}
                if live:
                    done = _history_epochs(partial / "history.csv")
                    elapsed = max(0.0, now - float(live.get("started") or now))
                    row.update(state="running", host=attempt.get("host") or live.get("host"), epochs_done=done,
                               elapsed_seconds=elapsed)
                    total = row["epochs_total"]
                    if total and done:
                        row["eta_seconds"] = elapsed / done * max(0, total - done)
                    elif row["estimate_seconds"] is not None:
                        row["eta_seconds"] = max(0.0, float(row["estimate_seconds"]) - elapsed)
                else:
                    row["state"] = "interrupted"
                    row["error"] = "its process ended before the run finished; `zoo run` starts it again"
            rows.append(row)
        counts = {}
        for row in rows:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        taken = [r["elapsed_seconds"] for r in rows if r["state"] in ("done", "failed") and r["elapsed_seconds"]]
        remaining = sum(1 for r in rows if r["state"] in ("pending", "interrupted"))
        running = [r for r in rows if r["state"] == "running"]
        eta = None
        if taken and (remaining or running):
            per_run = sum(taken) / len(taken)
            eta = remaining * per_run / max(1, len(running)) + max([r["eta_seconds"] or 0 for r in running] or [0])
        return {"name": self.name, "rows": rows, "counts": counts, "total": len(rows), "eta_seconds": eta,
                "problem": problem, "updated": now}

    # -- leaderboards -------------------------------------------------------------------------------
    def _builder(self):
        """zoo.report's ReportBuilder over results.csv, its leaderboards and significance computed once
        per version of results.csv (the budgets only change the recommendation)."""
        from zoo.report.render import ReportBuilder

        with self._building:
            key = _stat_key(self.root / "results.csv")
            cached = self._boards.get(key)
            if cached is not None:
                return cached
            builder = ReportBuilder(self.root, report_dir=None)
            sections = []
            for dataset, frame in builder.results.groupby("dataset", sort=False):
                ranked = builder.ranked(frame)  # the report's own ranking and significance
                failed = [{"run_id": r["run_id"], "error": r["error"]}
                          for _, r in frame[frame["status"] != "ok"].iterrows()]
                sections.append({"name": dataset, "failed": failed,
                                 "data_notes": list(builder.dataset_info(frame).get("notes") or []),
                                 "score_notes": builder.score_notes(frame),
                                 **{k: ranked[k] for k in ("task", "metric", "higher_is_better", "board")}})
            cached = (builder, sections)
            self._boards = {key: cached}
            return cached

    def warm(self) -> threading.Thread:
        """Compute the leaderboards in a background thread (a large study's take seconds), so that the
        first visit finds them ready, or waits for this computation instead of starting its own."""
        def compute():
            try:
                self._builder()
            except Exception:  # noqa: BLE001  the page that asks for them shows the problem
                pass

        thread = threading.Thread(target=compute, name=f"zoo-serve-warm-{self.root.name}", daemon=True)
        thread.start()
        return thread

    def leaderboards(self, latency_budget_ms=None, size_budget_mb=None) -> dict:
        """Each dataset's leaderboard (the report's table, with intervals and the paired verdict
        against the best) and its recommendation for these budgets, by the report's own code, with the
        results its dataset card cites."""
        from zoo.backbones import BACKBONES
        from zoo.report.render import published_results

        try:
            builder, sections = self._builder()
        except (DataError, FileNotFoundError) as error:
            return {"sections": [], "problem": str(error), "left_out": []}
        budgeted = copy.copy(builder)
        budgeted.latency_budget_ms, budgeted.size_budget_mb = latency_budget_ms, size_budget_mb
        shown = []
        for section in sections:
            rows = []
            for row in section["board"]:
                family = BACKBONES.get(row["backbone"]).family if row["backbone"] in BACKBONES else "other"
                rows.append({key: row.get(key) for key in (
                    "rank", "label", "backbone", "head", "weights", "trainable", "swept", "seeds", "score",
                    "score_text", "interval_text", "verdict", "images_per_second", "latency_ms", "params",
                    "model_megabytes", "device", "precision", "backend", "run_ids", "train_seconds_text")}
                            | {"family": family})
            shown.append({**{k: section[k] for k in ("name", "task", "metric", "higher_is_better", "failed",
                                                     "data_notes", "score_notes")},
                          "rows": rows, "recommendation": budgeted.recommendation(section["board"], section["metric"],
                                                                                  section["higher_is_better"]),
                          "references": published_results(section["name"])})
        return {"sections": shown, "problem": None, "left_out": builder.left_out}

    # -- one run ------------------------------------------------------------------------------------
    def run_details(self, run_id: str) -> dict:
        """What a run page shows; a damaged file is named, never raised."""
        folder = self.run_dir(run_id)
        problems = []

        def read(name):
            value = _read_json(folder / name)
            if value is None and (folder / name).exists():
                problems.append(f"{name} cannot be read")
            return value

        result = read("result.json") or {}
        metrics = read("metrics.json") or {}
        if not result:
            problems.append("result.json is missing: the run did not finish")
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                       if p.is_file() and "tensorboard" not in p.relative_to(folder).parts)
        deployments = [{"format": name, **{k: result.get(f"{name}_{k}") for k in (
                            "quantize", "megabytes", "latency_ms", "accuracy", "accuracy_drop", "error")}}
                       for name in FORMATS
                       if result.get(f"{name}_megabytes") is not None or result.get(f"{name}_error")]
        from zoo.metrics import ignored_classes_note
        from zoo.tasks import TASKS

        task = result.get("task") or "classification"
        figures = TASKS.get(task).figures if task in TASKS else ()
        return {"run_id": run_id, "result": result, "metrics": metrics, "problems": problems,
                "files": files, "deployments": deployments, "has_model": (folder / "model.keras").is_file(),
                "task": task, "figures": [(label, result.get(column)) for column, label in figures],
                "ignored": ignored_classes_note(metrics, _read_json(folder / "dataset.json") or {})}

    def history(self, run_id: str):
        import pandas as pd

        path = self.run_dir(run_id) / "history.csv"
        try:
            return pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            return None

    def predictions(self, run_id: str) -> dict | None:
        try:
            with np.load(self.run_dir(run_id) / "predictions.npz") as loaded:
                return {key: loaded[key] for key in loaded.files}
        except (OSError, ValueError):
            return None

    def worst_examples(self, run_id: str, count: int = 12) -> list[dict]:
        """The test examples the run got most wrong: misclassified ones by the confidence of the wrong
        answer (classification), the tiles of lowest pixel accuracy (segmentation)."""
        predictions = self.predictions(run_id)
        info = _read_json(self.run_dir(run_id) / "dataset.json") or {}
        names = info.get("class_names") or []
        if predictions is None or "y_true" not in predictions:
            return []
        y_true, y_pred = predictions["y_true"], predictions["y_pred"]
        if y_true.ndim == 1:
            probabilities = predictions.get("probabilities")
            wrong = np.flatnonzero(y_true != y_pred)
            confidence = probabilities[wrong, y_pred[wrong]] if probabilities is not None else np.zeros(len(wrong))
            order = wrong[np.argsort(-confidence, kind="stable")][:count]
            return [{"index": int(i), "true": _name(names, y_true[i]), "predicted": _name(names, y_pred[i]),
                     "score": float(probabilities[i, y_pred[i]]) if probabilities is not None else None}
                    for i in order]
        if y_true.ndim == 3:
            accuracy = (y_true == y_pred).reshape(len(y_true), -1).mean(axis=1)
            order = np.argsort(accuracy, kind="stable")[:count]
            return [{"index": int(i), "true": "mask", "predicted": "mask", "score": float(accuracy[i])} for i in order]
        return []

    def disagreements(self, run_ids: list[str], count: int = 12) -> list[dict]:
        """Test examples on which the runs' predicted classes differ (classification), aligned by example
        id; for segmentation the tiles whose predicted masks differ most."""
        loaded = [self.predictions(run_id) for run_id in run_ids]
        if any(p is None for p in loaded):
            return []
        info = _read_json(self.run_dir(run_ids[0]) / "dataset.json") or {}
        names = info.get("class_names") or []
        ids = [list(map(str, p["example_ids"])) for p in loaded]
        positions = [{example: k for k, example in enumerate(examples)} for examples in ids]
        common = [i for i in ids[0] if all(i in other for other in positions[1:])]
        found = []
        for example in common:
            predicted = [p["y_pred"][positions[n][example]] for n, p in enumerate(loaded)]
            if predicted[0].ndim == 0:
                if len({int(v) for v in predicted}) > 1:
                    found.append({"example": example, "index": positions[0][example],
                                  "true": _name(names, loaded[0]["y_true"][positions[0][example]]),
                                  "predicted": [_name(names, v) for v in predicted], "share": None})
            else:
                share = float(np.mean(predicted[0] != predicted[1]))
                if share > 0:
                    found.append({"example": example, "index": positions[0][example], "true": "mask",
                                  "predicted": ["mask"] * len(predicted), "share": share})
        if found and found[0]["share"] is not None:
            found.sort(key=lambda f: -f["share"])
        return found[:count]

    def test_example(self, run_id: str, index: int):
        """The run's ``index``-th test example as (uint8 RGB image, mask or None), read from its dataset
        (opened without the output folder's cache, so nothing is written); None where the dataset
        cannot be read here (a tensorflow-datasets source without TensorFlow, a moved folder)."""
        folder = self.run_dir(run_id)
        split = _read_json(folder / "split.json") or {}
        try:
            with np.load(folder / "split_indices.npz") as loaded:
                indices = loaded["test"]
            source = self._source(RunSpec.load(folder).dataset)
            if not 0 <= index < len(indices):
                raise NotServed(str(index))
            arrays = source.example_arrays((split.get("sources") or {}).get("test", "train"))
            image, target = arrays[int(indices[index])]
        except NotServed:
            raise
        except Exception:  # noqa: BLE001  the thumbnail is missing, the page still shows
            return None
        scale = 255.0 / float(source.info.max_pixel_value or 255.0)
        image = np.clip(np.asarray(image, dtype=np.float32) * scale, 0, 255).astype(np.uint8)
        image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
        mask = np.asarray(target) if np.ndim(target) == 2 else None
        return image, mask

    def _source(self, dataset: dict):
        from zoo.data.sources import open_source

        key = json.dumps(dataset, sort_keys=True, default=str)
        with self._lock:
            source = self._sources.get(key)
        if source is None:
            source = open_source(dataset)  # no cache_dir: reads, never writes into OUT/cache
            with self._lock:
                self._sources[key] = source
        return source


def _name(names, index) -> str:
    index = int(index)
    return str(names[index]) if 0 <= index < len(names) else str(index)
