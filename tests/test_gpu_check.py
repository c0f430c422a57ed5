"""benchmarks/gpu_check.py, the one command a GPU session runs (issue 31), tried on this CPU with --quick:
every check writes its rows, the summary names the device and each figure beside its target."""
import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_the_gpu_check_writes_every_figure_with_its_target(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--backends", "jax",
                           "--models", "mobilenet_v2", "--out-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [table] = list(tmp_path.glob("gpu-*-quick.csv"))
    rows = list(csv.DictReader(open(table)))
    checks = {(row["check"], row["subject"]) for row in rows}
    assert {("vs_timm", "mobilenet_v2"), ("quickstart", "whole command"),
            ("input", "delivered / mobilenet_v2 training"),
            ("evaluation", "run's evaluation / zoo speed, mobilenet_v2"), ("bfloat16", "mobilenet_v2 infer"),
            ("bfloat16", "mobilenet_v2 train")} <= checks
    has_timm = importlib.util.find_spec("timm") is not None
    for row in rows:
        if row["check"] == "bfloat16":  # measured in bfloat16, set beside zoo's own other figure and timm's
            figures = re.search(r"zoo mixed_bfloat16 ([0-9.]+) img/s, zoo float32 ([0-9.]+) img/s", row["detail"])
            assert figures and float(figures.group(1)) > 0 and float(figures.group(2)) > 0, row
            assert bool(row["value"]) == has_timm, row  # the ratio to timm where timm is installed
    runs = [row for row in rows if row["check"] == "quickstart" and row["subject"] != "whole command"]
    assert len(runs) == 2 and all("status ok" in row["detail"] for row in runs)
    assert all(float(row["value"]) > 0 for row in runs)  # JAX compiled each run's steps: seconds measured
    assert all(re.search(r"compile s by function: .*jit\(train_step\) [0-9.]+", row["detail"]) for row in runs), runs
    whole = next(row for row in rows if row["subject"] == "whole command")
    assert float(whole["value"]) > 0 and whole["backend"] == "jax" and whole["target"] == "<= 60 on an H200"
    summary = table.with_suffix(".md").read_text()
    assert summary.startswith("# GPU check: CPU") and "not a measurement of a GPU" in summary
    assert "| input | delivered / mobilenet_v2 training | jax |" in summary
