"""``zoo evaluate``: a finished run's model, or every model of a study, scored on a folder of labelled
images it has never seen (photos from another shelter, tiles of another region), through the run's own
input path and scoring: the same decoding, preparation, metrics and bootstrap intervals as its test split.

The folder is read as a training folder is (class folders, or images/ with masks/); a folder of class
folders may hold a few of the model's classes, each named as the model names it. Every labelled image of
the folder is scored, whatever its subfolders (train/, val/, test/).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from zoo.errors import DataError
from zoo.tasks import TASKS


def evaluation_source(spec, info: dict, folder):
    """``folder`` opened as a dataset described as the run's own: its classes, ignored classes, void value
    and pixel scale; refused when it cannot be fed to the model (another task, other channels)."""
    from zoo.data.folder import detect_layout
    from zoo.data.sources import FolderSource

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; give a folder of class folders (classification) or of "
                        f"images/ and masks/ (segmentation), labelled as the run's training data was")
    layout, _ = detect_layout(folder)
    if layout != info["task"]:
        raise DataError(f"{folder} holds {layout} data, but the run was trained for {info['task']} "
                        f"({spec.head} head): give a folder laid out as its training data was")
    names = list(info["class_names"])
    void_value = spec.dataset.get("void_value")
    entry = {"name": folder.name, "source": "folder", "path": str(folder),
             "max_pixel_value": info["max_pixel_value"], "void_value": void_value}
    if info["task"] == "classification":
        entry["model_classes"] = names
    else:
        kept = names[:-1] if void_value is not None else names  # the folder's scan appends its void class again
        entry.update(class_names=kept, ignore_classes=[c for c in info.get("ignore_classes", []) if c < len(kept)])
    source = FolderSource(entry)
    if int(source.info.channels) != int(info["channels"]):
        raise DataError(f"{folder} holds {source.info.channels}-channel images; the model takes {info['channels']} "
                        f"channels")
    if not any(source.info.splits.values()):
        raise DataError(f"{folder} holds no labelled image the model can be scored on")
    return source


def evaluate_folder(run_dir, folder, cache_root=None) -> dict:
    """The test metrics of the finished run in ``run_dir`` on every labelled image of ``folder``, with their
    bootstrap intervals, per-class figures and how many images each class had. The folder's images are
    decoded once per image size into ``cache_root`` (a temporary folder when None), held in memory where they
    fit a quarter of it, else read from there batch by batch: a large folder does not fill the memory."""
    if cache_root is None:
        with tempfile.TemporaryDirectory(prefix="zoo-evaluate-") as temporary:
            return evaluate_folder(run_dir, folder, temporary)
    from zoo.harness.stages import ModelPredict, RunData, add_uncertainty, input_memory_limit, score_into, start_runtime
    from zoo.heads import head_task
    from zoo.results import load_run_model

    spec, info, model = load_run_model(run_dir)
    source = evaluation_source(spec, info, folder)
    runtime = start_runtime(spec, any_backend=True)
    task = TASKS.get(head_task(spec.head))
    fed = spec.input(info)
    options = dict(image_size=fed.image_size, batch_size=runtime.global_batch,
                   preprocessing=fed.backbone_preprocessing, extra_preprocessing=list(fed.study_steps),
                   seed=spec.seed, class_weights=None, target=task.target, one_hot=False)
    scorer = task.scorer(source.info.class_names, source.info.ignore_classes)
    predict, example_ids, data = ModelPredict(model), [], None
    for split in (split for split in source.info.labelled_splits if source.info.splits.get(split)):
        # Not into a study's cache: the folder is not one of its datasets.
        data = RunData(source=source, task=task.name, plan={"test": (split, None)},
                       sizes={"test": source.info.splits[split]}, train_counts=None, class_weights=None,
                       options=options, augment=False, cache="auto", cache_root=str(cache_root),
                       memory_limit=input_memory_limit(None))
        score_into(scorer, predict, data.pipeline("test", training=False))
        example_ids += source.example_ids(split)
    result, predictions = scorer.finish()
    predictions["example_ids"] = np.array(example_ids)
    add_uncertainty(data, result, predictions)
    result.update(run_id=Path(run_dir).name, folder=str(folder), task=task.name, backbone=spec.backbone,
                  head=spec.head, images=len(example_ids), skipped=source.info.skipped,
                  notes=list(source.info.notes), headline_metric=info.get("headline_metric"))
    return result


def finished_runs(out_dir) -> list[Path]:
    """The run folders of a study's finished runs, in results.csv's order."""
    from zoo.results import read_result, read_results

    out_dir = Path(out_dir)
    table = read_results(out_dir)
    folders = [out_dir / "runs" / run_id for run_id in table.get("run_id", [])]
    return [f for f in folders if (read_result(f) or {}).get("status") == "ok" and (f / "model.keras").is_file()]


def evaluate(run_or_out, folder, log=print) -> list[dict]:
    """:func:`evaluate_folder` of one run (a run folder), or of every finished run of a study (the folder
    `zoo run` wrote), ranked by the headline metric of the run's data; a run whose model cannot take the
    folder (other classes, channels, task) is a row with its ``error``, never the end of the others."""
    run_or_out = Path(run_or_out).expanduser()
    if (run_or_out / "model.keras").is_file():
        return ranked([evaluate_folder(run_or_out, folder)])
    if not (run_or_out / "results.csv").is_file():
        raise DataError(f"{run_or_out} is neither a finished run folder (OUT/runs/<run_id>, with model.keras) nor "
                        f"a study (the folder `zoo run` wrote, with results.csv)")
    runs = finished_runs(run_or_out)
    if not runs:
        raise DataError(f"{run_or_out} holds no finished run to evaluate")
    results = []
    with tempfile.TemporaryDirectory(prefix="zoo-evaluate-") as decoded:  # each image size decoded once
        for index, run_dir in enumerate(runs, start=1):
            log(f"[{index}/{len(runs)}] {run_dir.name}")
            try:
                results.append(evaluate_folder(run_dir, folder, decoded))
            except DataError as error:
                results.append({"run_id": run_dir.name, "error": str(error)})
    return ranked(results)


def ranked(results: list[dict]) -> list[dict]:
    """The results scored by their headline metric, best first (each given ``metric``), then those that failed."""
    from zoo.metrics import METRICS, headline_metric

    scored = [r for r in results if "error" not in r]
    for result in scored:
        result["metric"] = headline_metric({result["task"]}, result.get("headline_metric"))
    scored.sort(key=lambda r: r[r["metric"]] * (-1 if METRICS.get(r["metric"]).higher_is_better else 1))
    return scored + [r for r in results if "error" in r]


def format_evaluation(results: list[dict]) -> str:
    """The table `zoo evaluate` prints: each model's headline score with its 95 % interval, and, for one
    model, its per-class figures on the folder."""
    lines = []
    for result in results:
        if "error" in result:
            lines.append(f"{result['run_id']}: not evaluated: {result['error']}")
            continue
        metric = result["metric"]
        low, high = result.get(f"{metric}_ci_low"), result.get(f"{metric}_ci_high")
        interval = f" [{low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
        others = ", ".join(f"{name} {result[name]:.4f}" for name in ("accuracy", "macro_f1", "miou", "kl_score")
                           if name != metric and isinstance(result.get(name), float))
        lines.append(f"{result['run_id']} ({result['backbone']}/{result['head']}): {metric} {result[metric]:.4f}"
                     f"{interval}" + (f"; {others}" if others else ""))
    good = [r for r in results if "error" not in r]
    if good:
        first = good[0]
        unit = "images" if first["task"] == "classification" else "tiles"
        lines.insert(0, f"{first['folder']}: {first['images']:,} {unit}, each model scored on all of them "
                        f"(95 % bootstrap intervals over the {unit})")
        lines += [f"  note: {note}" for note in first.get("notes", [])]
        if first.get("skipped"):
            lines.append(f"  skipped: {len(first['skipped'])} file(s) that cannot be read, e.g. "
                         f"{first['skipped'][0]['path']}: {first['skipped'][0]['reason']}")
    if len(good) == 1:
        result = good[0]
        lines.append(f"  {'class':24} {'images' if result['task'] == 'classification' else 'tiles':>7} "
                     f"{'precision':>9} {'recall':>7}")
        for row in result.get("per_class", []):
            if row.get("test_examples", 0) or row.get("support", 0):
                lines.append(f"  {str(row['class'])[:24]:24} {row.get('test_examples', row['support']):>7,} "
                             f"{_figure(row['precision']):>9} {_figure(row['recall']):>7}")
    return "\n".join(lines)


def _figure(value) -> str:
    """A per-class figure, or "-" where there is none (a class never predicted has no precision)."""
    return "-" if value is None or value != value else f"{value:.4f}"
