"""Several runs at once on one machine (`zoo run --workers N`): real worker processes, real signals.

What users rely on: the runs of a pool give the same scores as one after another, each row says how many
runs shared the machine, each run's images/s is measured with the other workers paused (and they go on
afterwards), and a worker that dies while the others are paused does not leave the suite hanging."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from zoo.errors import ConfigError
from zoo.harness.executors import WorkerPool
from zoo.harness.runner import make_executor
from zoo.harness.sharing import RUNS_AT_ONCE_ENV

HERE = Path(__file__).parent
QUICK = {"name": "quick", "datasets": ["synthetic_terrain"], "heads": ["linear", "mlp"],
         "train": {"image_size": 32, "epochs": 1, "steps_per_epoch": 3}}

MEASURER = """
import json, sys
from zoo.harness.sharing import measured_alone, _stat_fields
pids = json.loads(sys.argv[1])
with measured_alone(sys.argv[2]) as paused:
    during = [_stat_fields(pid)[0] for pid in pids]
    if sys.argv[3] == "die":
        import os
        os._exit(9)
after = [_stat_fields(pid)[0] for pid in pids]
print(json.dumps({"paused": paused, "during": during, "after": after}))
"""


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def measure_beside(pool: WorkerPool, tmp_path, runs_at_once: str, then: str = "go on"):
    """A measurement in another child of this process (a sibling of the pool's workers, as a pool
    worker is); the state of every worker during and after it."""
    pids = [worker.process.pid for worker in pool.workers]
    return subprocess.run([sys.executable, "-c", MEASURER, json.dumps(pids), str(tmp_path / "measuring.lock"), then],
                          env={**os.environ, RUNS_AT_ONCE_ENV: runs_at_once}, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def pool():
    workers = WorkerPool(2)
    workers.start(runs=2)
    yield workers
    workers.stop()


def test_a_measurement_in_a_pool_pauses_every_other_worker_and_continues_them(pool, tmp_path):
    measured = measure_beside(pool, tmp_path, runs_at_once="2")
    assert measured.returncode == 0, measured.stderr[-2000:]
    states = json.loads(measured.stdout)
    assert states["paused"] == 2 and states["during"] == ["T", "T"]
    assert "T" not in states["after"] and all(worker.process.poll() is None for worker in pool.workers)


def test_outside_a_pool_a_measurement_pauses_nothing(pool, tmp_path):
    states = json.loads(measure_beside(pool, tmp_path, runs_at_once="1").stdout)
    assert states["paused"] == 0 and "T" not in states["during"]


def test_the_pool_continues_workers_a_dead_measurer_left_paused(pool, tmp_path):
    assert measure_beside(pool, tmp_path, runs_at_once="2", then="die").returncode == 9
    assert [state(worker.process.pid) for worker in pool.workers] == ["T", "T"]  # nobody left to continue them
    pool.resume_all()
    time.sleep(0.2)
    assert "T" not in [state(worker.process.pid) for worker in pool.workers]


def test_workers_go_with_the_machines_own_worker_processes_only():
    for executor in ("ray", "in-process"):
        with pytest.raises(ConfigError, match="--workers goes with the worker processes"):
            make_executor(executor, workers=2)
    assert isinstance(make_executor("isolated", workers=3), WorkerPool)
    assert make_executor("isolated", workers=3).workers[0].runs_per_worker == 1
    command = [sys.executable, "-m", "zoo.cli", "run", str(HERE.parent / "benchmarks" / "quickstart.yaml"),
               "--workers", "0", "--dry-run"]
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode == 2 and "--workers" in refused.stderr


def test_a_run_out_of_memory_in_a_pool_is_told_to_run_fewer_at_once(monkeypatch):
    from zoo.harness.worker import describe_error

    error = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2.10GiB")
    monkeypatch.setenv(RUNS_AT_ONCE_ENV, "1")
    assert describe_error(error) == "out of memory (RuntimeError): lower train.batch_size or train.image_size"
    monkeypatch.setenv(RUNS_AT_ONCE_ENV, "3")
    assert describe_error(error).endswith("train.image_size or run fewer at once (zoo run --workers)")


def zoo_run(tmp_path, suite: dict, out: Path, *args, timeout=420):
    """`zoo run` in ``tmp_path`` (its report goes to tmp_path/reports)."""
    path = tmp_path / f"{suite['name']}.yaml"
    path.write_text(json.dumps(suite))
    return subprocess.run([sys.executable, "-m", "zoo.cli", "run", str(path), "--out", str(out), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


@pytest.mark.slow
def test_a_pool_gives_the_scores_of_one_worker_and_says_the_runs_shared_the_machine(tmp_path):
    alone = zoo_run(tmp_path, QUICK, tmp_path / "alone", "--no-report")
    shared = zoo_run(tmp_path, QUICK, tmp_path / "shared", "--workers", "2")
    assert alone.returncode == 0 and shared.returncode == 0, (alone.stdout + shared.stdout)[-3000:]
    one, two = (pd.read_csv(tmp_path / name / "results.csv").set_index("run_id") for name in ("alone", "shared"))
    assert list(one["runs_at_once"]) == [1, 1] and list(two["runs_at_once"]) == [2, 2]
    pd.testing.assert_series_equal(one["accuracy"], two["accuracy"])  # the same runs, the same scores
    for run_id in two.index:  # each run's epoch lines name it: two runs print at once
        assert re.search(rf"^{run_id}: epoch 1/1 - \d+s - .*val_accuracy: [0-9.]+", shared.stdout, re.M), shared.stdout
    unnamed = re.compile(r"^\d+/\d+ - \d+m?s - ", re.M)  # Keras's own epoch line ("3/3 - 2s - ...")
    assert not unnamed.search(shared.stdout) and unnamed.search(alone.stdout), alone.stdout
    for run_id in two.index:  # each measured its speed with the other worker paused
        metrics = json.loads((tmp_path / "shared" / "runs" / run_id / "metrics.json").read_text())
        assert metrics["speed_measured_in"] is None and metrics["speed_paused_workers"] == 1
    reports = [tmp_path / path.strip() for path in shared.stdout.split("report: ")[-1].splitlines()[0].split(",")]
    for report in reports:  # markdown and HTML say what the times include
        text = report.read_text()
        assert "Up to 2 runs trained at once on one machine" in text and "measured with the other runs paused" in text


@pytest.mark.slow
def test_a_worker_killed_while_the_others_are_paused_fails_its_run_and_the_suite_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_TEST_LOCK", str(tmp_path / "lock"))
    # The first crashing run pauses the other worker (training, or about to get a run) before it dies: left
    # paused, that worker would never end its run or take the next one.
    suite = {**QUICK, "name": "crashing", "backbones": ["baseline_cnn", "crash_measuring_backbone"],
             "plugins": [str(HERE / "plugin_faults.py")], "train": {**QUICK["train"], "epochs": 3}}
    started = time.perf_counter()
    result = zoo_run(tmp_path, suite, tmp_path / "out", "--workers", "2", "--no-report", timeout=180)
    assert result.returncode == 1, result.stdout[-3000:]
    frame = pd.read_csv(tmp_path / "out" / "results.csv").set_index("backbone")
    assert set(frame.loc["baseline_cnn", "status"]) == {"ok"}
    crashed = frame.loc["crash_measuring_backbone"]
    assert set(crashed["status"]) == {"failed"} and crashed["error"].str.contains("killed by SIGKILL").all()
    assert time.perf_counter() - started < 150


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_of_a_pool_and_records_each_run_under_way_as_interrupted(tmp_path):
    suite = {**QUICK, "name": "slow", "train": {"image_size": 32, "epochs": 200, "steps_per_epoch": 2}}
    path = tmp_path / "slow.yaml"
    path.write_text(json.dumps(suite))
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "zoo.cli", "run", str(path), "--out", str(out), "--workers", "2",
                                "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, cwd=tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "runs").glob(".*.partial/history.csv"))) < 2:
        time.sleep(0.2)
    assert len(list((out / "runs").glob(".*.partial/history.csv"))) == 2, "the two runs never trained at once"
    workers = [int(line.split()[0]) for line in subprocess.run(["ps", "-o", "pid=", "--ppid", str(process.pid)],
                                                                  capture_output=True, text=True).stdout.splitlines()
               if line.strip()]
    os.killpg(process.pid, 2)  # Ctrl-C reaches the terminal's foreground process group
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output and output.strip().splitlines()[-1].startswith("interrupted after 0 of 2 runs")
    frame = pd.read_csv(out / "results.csv")
    assert list(frame["status"]) == ["interrupted", "interrupted"], (output[-3000:], sorted(os.listdir(out / "runs")))
    assert frame["error"].str.contains("SIGINT").all()
    time.sleep(0.5)
    assert workers and not [pid for pid in workers if Path(f"/proc/{pid}").exists() and state(pid) != "Z"]
