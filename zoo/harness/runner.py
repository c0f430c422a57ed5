"""Running a suite: every run in its own process, resumable, with progress and ETA.

Each run works in ``OUT/runs/.<run_id>.partial`` and is renamed to ``OUT/runs/<run_id>``
once its result.json is written, so a folder without the dot is always complete. After
every run, results.csv is rebuilt atomically from the finished run folders.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from zoo.errors import ConfigError
from zoo.harness.suite import RunSpec, expand_suite, suite_warnings
from zoo.results import read_result, write_atomic, write_json, write_results_csv


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (the system's out-of-memory killer sends this)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {returncode}"


def _eta(durations: list[float], remaining: int) -> str:
    if not durations:
        return "ETA: after the first run"
    seconds = sum(durations) / len(durations) * remaining
    return f"ETA {int(seconds // 60)}m{int(seconds % 60):02d}s"


def run_one(run: RunSpec, runs_dir: Path, isolate: bool) -> dict:
    """Execute one run into its partial folder, then move it into place; returns its row."""
    partial = runs_dir / f".{run.run_id}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_json(partial / "run.json", run.to_dict())
    if isolate:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.run([sys.executable, "-m", "zoo.harness.worker", str(partial)], env=env)
        row = read_result(partial)
        if row is None:
            from zoo.harness.worker import Run

            row = Run(partial).row("failed", f"the run's process died ({describe_exit(process.returncode)})",
                                   None, 0, run.trainable, None)
            write_json(partial / "result.json", row)
    else:
        from zoo.harness.worker import execute_run

        row = execute_run(partial)
    final = runs_dir / run.run_id
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return row


def _log(message):
    print(message, flush=True)


def select_runs(suite: dict, only: str | None) -> tuple[list[RunSpec], list[RunSpec]]:
    """All runs of a validated suite, and those ``--only`` selects."""
    runs = expand_suite(suite)
    selected = [r for r in runs if not only or fnmatch.fnmatchcase(r.run_id, only)
                or fnmatch.fnmatchcase(r.run_id, f"*{only}*")]
    if only and not selected:
        raise ConfigError(f"--only {only!r} matches none of the {len(runs)} runs; `zoo plan SUITE` lists them")
    return runs, selected


def pending_runs(selected: list[RunSpec], runs_dir: Path, force: bool) -> list[RunSpec]:
    return [r for r in selected if force or (read_result(runs_dir / r.run_id) or {}).get("status") != "ok"]


def run_suite(suite: dict, out_dir, only: str | None = None, force: bool = False, isolate: bool = True,
              report: bool = True, log=_log, prepare: bool = False, suite_path: str | None = None) -> int:
    """Run every run of ``suite`` not yet finished; 0 if all succeeded, 1 if any failed.

    Before anything is written, every pending run's data and weights are checked; any problem
    raises NotReadyError listing them all (``prepare=True`` first fetches what it can).
    """
    from zoo.harness.preflight import NotReadyError, check_readiness, format_problems, prepare_missing

    out_dir = Path(out_dir)
    runs, selected = select_runs(suite, only)
    runs_dir = out_dir / "runs"
    todo = pending_runs(selected, runs_dir, force)
    if todo:
        # The folder-scan cache under OUT/cache is the one the runs read: no folder is probed twice.
        _, problems = check_readiness(todo, cache_dir=out_dir / "cache")
        if problems and prepare:
            prepare_missing(todo, problems, log)
            _, problems = check_readiness(todo, cache_dir=out_dir / "cache")
        if problems:
            raise NotReadyError(format_problems(problems, None if prepare else suite_path))
    runs_dir.mkdir(parents=True, exist_ok=True)
    for stale in runs_dir.glob(".*.partial"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed suite
    write_atomic(out_dir / "suite.yaml", yaml.safe_dump(suite, sort_keys=False))
    all_ids = [r.run_id for r in runs]

    durations: list[float] = []
    log(f"suite {suite['name']}: {len(runs)} runs, {len(selected) - len(todo)} already finished, "
        f"{len(todo)} to run -> {out_dir}")
    for warning in suite_warnings(todo):
        log(warning)
    for index, run in enumerate(todo, start=1):
        log(f"[{index}/{len(todo)}] {run.run_id}  ({_eta(durations, len(todo) - index + 1)})")
        start = time.perf_counter()
        row = run_one(run, runs_dir, isolate)
        durations.append(time.perf_counter() - start)
        write_results_csv(out_dir, all_ids)
        status = "ok" if row["status"] == "ok" else f"FAILED: {row['error']}"
        log(f"[{index}/{len(todo)}] {run.run_id}: {status} ({durations[-1]:.0f}s)")
    write_results_csv(out_dir, all_ids)

    rows = [read_result(runs_dir / r.run_id) for r in selected]
    failed = [row for row in rows if row and row["status"] != "ok"]
    if report:
        from zoo.report import write_report

        paths = write_report(out_dir)
        log("report: " + ", ".join(str(p) for p in paths))
    if failed:
        log(f"{len(failed)} of {len(selected)} runs failed:")
        for row in failed:
            log(f"  {row['run_id']}: {row['error']}")
    return 1 if failed else 0


def plan_suite(suite: dict, out_dir, only: str | None = None, log=_log) -> int:
    """``zoo plan`` / ``zoo run --dry-run``: every run with its status and readiness, and time
    estimates for the pending ones; trains nothing and writes nothing but the folder-scan cache
    the runs reuse. 2 if a run cannot start."""
    from zoo.harness.preflight import check_readiness, format_plan, format_problems, make_plan

    out_dir = Path(out_dir)
    _, selected = select_runs(suite, only)
    todo = pending_runs(selected, out_dir / "runs", force=False)
    sources, problems = check_readiness(todo, cache_dir=out_dir / "cache")
    log(format_plan(make_plan(selected, out_dir, sources, problems, log=log)))
    if problems:
        log(format_problems(problems))
        return 2
    return 0


def predict_images(run_dir, image_paths, top_k: int = 5) -> list[dict]:
    """Top-k classes (or class proportions for segmentation) of image files, with a run's model."""
    import keras
    import numpy as np
    import tensorflow as tf

    from zoo.backbones import BACKBONES
    from zoo.data.folder import read_image
    from zoo.data.pipeline import apply_extra_preprocessing, preprocessing_steps
    from zoo.errors import ConfigError
    from zoo.preprocessing import preprocess

    run_dir = Path(run_dir)
    if not (run_dir / "model.keras").is_file():
        raise ConfigError(f"{run_dir} holds no model.keras: give a finished run folder, e.g. runs/<suite>/runs/<run_id>")
    spec = json.loads((run_dir / "run.json").read_text())
    info = json.loads((run_dir / "dataset.json").read_text())
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    size = spec["train"]["image_size"]
    mode = BACKBONES.get(spec["backbone"]).preprocessing
    steps = preprocessing_steps(spec["train"]["preprocessing"])
    answers = []
    for path in image_paths:
        array = read_image(path).astype("float32")
        if array.shape[-1] != info["channels"]:
            if array.shape[-1] == 1:
                array = np.repeat(array, info["channels"], axis=-1)
            else:
                raise ConfigError(f"{path} has {array.shape[-1]} channels; the model expects {info['channels']}")
        image = tf.image.resize(array * (255.0 / info["max_pixel_value"]), (size, size))
        if steps:
            image = apply_extra_preprocessing(image, steps)
        probabilities = np.asarray(model.predict_on_batch(preprocess(image, mode)[None]))[0]
        if probabilities.ndim == 3:  # segmentation: report class proportions of the image
            probabilities = probabilities.reshape(-1, probabilities.shape[-1]).mean(axis=0)
        order = np.argsort(probabilities)[::-1][:top_k]
        answers.append({"image": str(path), "top": [(info["class_names"][i], float(probabilities[i])) for i in order]})
    return answers
