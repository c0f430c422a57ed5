"""The report's recommendation against numbers computed here, independently of zoo's code: which models tie
with the best (an exact binomial test on the discordant examples, Holm's correction written out), the
fastest and the smallest of the ties, the best within a latency and within a size budget.

Four models share one real run's files with predictions written here, so each pairing is known:
B differs from the best on 6 examples (p = 0.031: worse without Holm's correction, a tie with it), C on
1, D on 40."""
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from zoo.cli import main
from zoo.harness.runner import run_suite
from zoo.harness.suite import load_suite
from zoo.results import write_atomic, write_results_csv

N = 200
MODELS = {  # backbone: (wrong answers where the best is right, images/s, parameters, latency ms, model MB)
    "resnet50": (0, 100.0, 1_000, 10.0, 4.0),
    "mobilenet_v2": (6, 400.0, 3_000, 5.0, 12.0),
    "densenet121": (1, 200.0, 500, 8.0, 2.0),
    "vgg16": (40, 1_000.0, 100, 1.0, 0.4),
}
LATENCY_BUDGET_MS, SIZE_BUDGET_MB = 6.0, 3.0


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("recommend")
    suite = load_suite({"name": "recommend", "datasets": ["synthetic_terrain"], "backbones": ["baseline_cnn"],
                        "heads": ["linear"], "train": {"image_size": 32, "epochs": 1, "steps_per_epoch": 2}})
    assert run_suite(suite, root / "trained", executor="in-process", report=False, log=lambda *_: None) == 0
    template = next((root / "trained" / "runs").iterdir())
    out = root / "out"
    truth = np.arange(N) % 3
    for backbone, (wrong, speed, params, latency, megabytes) in MODELS.items():
        run_id = f"synthetic_terrain-{backbone}-linear-s0"
        run = out / "runs" / run_id
        shutil.copytree(template, run)
        predicted = truth.copy()
        predicted[:wrong] = (truth[:wrong] + 1) % 3
        probabilities = np.eye(6, dtype=np.float32)[predicted]
        np.savez(run / "predictions.npz", y_true=truth.astype(np.int32), y_pred=predicted,
                 probabilities=probabilities, example_ids=np.array([f"train/{i}" for i in range(N)]))
        row = json.loads((run / "result.json").read_text())
        row.update(run_id=run_id, backbone=backbone, accuracy=float(np.mean(predicted == truth)), test_examples=N,
                   images_per_second=speed, params=params, latency_ms=latency, model_megabytes=megabytes)
        write_atomic(run / "result.json", json.dumps(row))
        spec = json.loads((run / "run.json").read_text())
        write_atomic(run / "run.json", json.dumps({**spec, "run_id": run_id, "backbone": backbone}))
    write_results_csv(out, [f"synthetic_terrain-{b}-linear-s0" for b in MODELS])
    assert main(["report", str(out), "-o", str(root / "report"), "--format", "md",
                 "--latency-budget", str(LATENCY_BUDGET_MS), "--size-budget", str(SIZE_BUDGET_MB)]) == 0
    return pd.read_csv(out / "results.csv"), (root / "report" / "report.md").read_text(), out


def expected_ties(table: pd.DataFrame) -> set:
    """The best model and those not significantly worse: two-sided exact binomial p on the discordant
    pairs (McNemar's exact test), adjusted by Holm's step-down procedure."""
    best = table.sort_values("accuracy", ascending=False).iloc[0]["backbone"]
    raw = {b: binomtest(MODELS[b][0], MODELS[b][0], 0.5).pvalue if MODELS[b][0] else 1.0
           for b in table["backbone"] if b != best}
    adjusted, running = {}, 0.0
    for rank, (name, p) in enumerate(sorted(raw.items(), key=lambda item: item[1])):
        running = max(running, min(1.0, (len(raw) - rank) * p))
        adjusted[name] = running
    assert raw["mobilenet_v2"] < 0.05 <= adjusted["mobilenet_v2"]  # the case Holm's correction decides
    return {best} | {name for name, p in adjusted.items() if p >= 0.05}


def named(text: str, sentence_start: str) -> str:
    match = re.search(re.escape(sentence_start) + r".*?\*\*(.+?)\*\*", text)
    assert match, f"no sentence starting {sentence_start!r}"
    return match.group(1).split("/")[0]


def test_the_fastest_and_smallest_ties_and_the_budget_picks_follow_the_numbers(report):
    table, text, _ = report
    ties = table[table["backbone"].isin(expected_ties(table))]
    best = table.sort_values("accuracy", ascending=False).iloc[0]["backbone"]
    fastest = ties.sort_values("images_per_second").iloc[-1]["backbone"]
    smallest = ties.sort_values("params").iloc[0]["backbone"]
    within_latency = table[table["latency_ms"] <= LATENCY_BUDGET_MS].sort_values("accuracy").iloc[-1]["backbone"]
    within_size = table[table["model_megabytes"] <= SIZE_BUDGET_MB].sort_values("accuracy").iloc[-1]["backbone"]
    assert (best, fastest, smallest, within_latency, within_size) == (
        "resnet50", "mobilenet_v2", "densenet121", "mobilenet_v2", "densenet121")  # the fixture's design
    recommendation = text[text.index("Best accuracy:"):]
    assert named(recommendation, "Best accuracy:") == best
    assert re.search(rf"\*\*{fastest}/linear\*\* is statistically indistinguishable from {best}", recommendation)
    assert named(recommendation, "Smallest of the models indistinguishable from the best:") == smallest
    assert named(recommendation, f"Best within the {LATENCY_BUDGET_MS:g} ms latency budget:") == within_latency
    assert named(recommendation, f"Best within the {SIZE_BUDGET_MB:g} MB size budget:") == within_size


def test_the_leaderboard_verdicts_are_holm_corrected(report):
    table, text, _ = report
    ties = expected_ties(table)
    for backbone in MODELS:
        line = next(line for line in text.splitlines() if line.startswith("|") and f" {backbone}/linear " in line)
        verdict = "best" if backbone == "resnet50" else ("tie" if backbone in ties else "worse")
        assert f"| {verdict}" in line, line


def test_a_large_study_details_the_first_models_and_every_one_the_recommendation_names(report, tmp_path):
    """With --detailed-models 1 the per-class sections are the best's and those of the models the
    recommendation names (the fastest and smallest ties, the budget picks); the fourth model keeps its
    leaderboard row, and the report says how many were left out."""
    _, _, out = report
    assert main(["report", str(out), "-o", str(tmp_path), "--format", "md", "--detailed-models", "1",
                 "--latency-budget", str(LATENCY_BUDGET_MS), "--size-budget", str(SIZE_BUDGET_MB)]) == 0
    text = (tmp_path / "report.md").read_text()
    detailed = set(re.findall(r"^#### (\w+)/linear", text, flags=re.MULTILINE))
    assert detailed == {"resnet50", "mobilenet_v2", "densenet121"}  # vgg16 is named by nothing
    assert "The 1 other models have their leaderboard rows only" in text
    assert sum(1 for line in text.splitlines() if line.startswith("|") and "/linear " in line) >= len(MODELS)
    assert len(list((tmp_path / "figures").glob("confusion-*.png"))) == 3


def test_the_latency_budget_counts_exported_forms_as_the_size_budget_does(report, tmp_path):
    """The best model (resnet50, 10 ms in Keras) exported to two forms timed on the CPU: within 6 ms both
    are, and the one that loses less is named; within 2.5 ms only the other; within 0.5 ms nothing is, and
    the quickest form of any model is named."""
    _, _, trained = report
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    run = out / "runs" / "synthetic_terrain-resnet50-linear-s0"
    row = json.loads((run / "result.json").read_text())
    row.update(export_metric="accuracy", tflite_quantize="int8", tflite_megabytes=1.0, tflite_latency_ms=3.0,
               tflite_accuracy=row["accuracy"], tflite_accuracy_drop=0.0, tflite_error=None,
               onnx_quantize="int8", onnx_megabytes=1.0, onnx_latency_ms=2.0, onnx_accuracy=row["accuracy"] - 0.005,
               onnx_accuracy_drop=0.005, onnx_error=None)
    write_atomic(run / "result.json", json.dumps(row))
    write_results_csv(out, [f"synthetic_terrain-{b}-linear-s0" for b in MODELS])

    def recommendation(budget):
        assert main(["report", str(out), "-o", str(tmp_path / str(budget)), "--format", "md",
                     "--latency-budget", str(budget)]) == 0
        text = (tmp_path / str(budget) / "report.md").read_text()
        return next(line for line in text.splitlines() if "latency budget" in line)

    assert "**resnet50/linear**, 1.0000, at 3.00 ms per image as tflite int8 on the CPU; accuracy after " \
           "conversion 1.0000 (drop 0.0000)" in recommendation(6)
    assert "**resnet50/linear**, 1.0000, at 2.00 ms per image as onnx int8 on the CPU" in recommendation(2.5)
    assert "No model meets the 0.5 ms latency budget; the quickest, vgg16/linear, takes 1.00 ms per image." \
           in recommendation(0.5)
