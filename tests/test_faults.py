"""Faults and bad input, each as a real process against real files: signals to real
processes, a real full file system, real corrupted files. After each: the exit code, the one
line the user reads, and nothing lost (one row per finished run, every run folder readable)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zoo.results import read_result

HERE = Path(__file__).parent
# Long enough to be caught mid-training; a signal or the test ends it.
SLOW = {"name": "slow", "datasets": ["synthetic_terrain"], "heads": ["linear", "mlp"],
        "train": {"image_size": 32, "epochs": 200, "steps_per_epoch": 2}}
QUICK = {"name": "quick", "datasets": ["synthetic_terrain"], "heads": ["linear", "mlp"],
         "train": {"image_size": 32, "epochs": 1, "steps_per_epoch": 2}}


def zoo(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "zoo.cli", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def write_suite(tmp_path, suite, name="suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(suite))
    return path


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_mid_run(tmp_path, out):
    """``zoo run`` on SLOW in its own session (as a terminal's foreground job), returned once its
    worker is training."""
    suite = write_suite(tmp_path, SLOW)
    process = subprocess.Popen([sys.executable, "-m", "zoo.cli", "run", str(suite), "--out", str(out),
                                "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "runs").glob(".*.partial/history.csv")):
        time.sleep(0.2)
    assert list((out / "runs").glob(".*.partial/history.csv")), "the run never started training"
    workers = children(process.pid)
    assert len(workers) == 1
    return process, workers[0], suite


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupt_records_the_run_as_interrupted_and_says_how_to_resume(tmp_path, signum, exit_code):
    out = tmp_path / "out"
    process, worker, suite = start_mid_run(tmp_path, out)
    os.killpg(process.pid, signum)  # Ctrl-C reaches the whole foreground process group
    output, _ = process.communicate(timeout=60)
    assert process.returncode == exit_code, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert output.strip().splitlines()[-1] == "interrupted after 0 of 2 runs; run the same command to resume"
    assert not alive(worker)
    frame = pd.read_csv(out / "results.csv")
    assert list(frame["status"]) == ["interrupted"] and signal.Signals(signum).name in frame["error"][0]
    if signum == signal.SIGTERM:  # the next run redoes the interrupted run and does the rest
        result = zoo("run", suite, "--out", out, "--no-report", "--set", "train.epochs=1")
        # --set changes the run ids; the interrupted run is simply one more unfinished folder
        assert result.returncode == 0, result.stdout[-2000:]


def test_a_killed_driver_takes_its_worker_with_it(tmp_path):
    out = tmp_path / "out"
    process, worker, _ = start_mid_run(tmp_path, out)
    os.kill(process.pid, signal.SIGKILL)  # the driver alone, as a scheduler or the OOM killer would
    process.communicate(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and alive(worker):
        time.sleep(0.1)
    assert not alive(worker), "the worker outlived its driver"


def test_runs_give_the_same_metrics_first_or_second_in_their_worker(tmp_path):
    suite = write_suite(tmp_path, {**QUICK, "seeds": [0, 1], "heads": ["linear"],
                                   "train": {**QUICK["train"], "epochs": 2}})
    both = zoo("run", suite, "--out", tmp_path / "both", "--no-report")
    alone = zoo("run", suite, "--out", tmp_path / "alone", "--no-report", "--only", "*-s1-*")
    assert both.returncode == 0 and alone.returncode == 0, both.stdout[-2000:] + alone.stdout[-2000:]
    run_id = next(p.name for p in (tmp_path / "alone" / "runs").iterdir())
    second = np.load(tmp_path / "both" / "runs" / run_id / "predictions.npz")["probabilities"]
    first = np.load(tmp_path / "alone" / "runs" / run_id / "predictions.npz")["probabilities"]
    np.testing.assert_array_equal(second, first)
