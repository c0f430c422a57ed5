"""``--executor ray`` on a real two-node Ray cluster started here (both nodes on 127.0.0.1).

One cluster serves the whole test session (it takes seconds to start and each node's workers
import TensorFlow once)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("ray", reason="the Ray executor needs the ray extra: pip install -e '.[ray]'")

from zoo.harness.ray_executor import ATTEMPT_FILE  # noqa: E402

QUICK = {"name": "quick", "datasets": ["synthetic_terrain"], "heads": ["linear", "mlp"],
         "train": {"image_size": 32, "epochs": 1, "steps_per_epoch": 2}}
# The backend as a suite axis: each run goes to an actor whose process imported Keras on it.
BACKENDS = {"name": "backends", "datasets": ["synthetic_terrain"], "heads": ["linear"],
            "train": {"image_size": 32, "epochs": 1, "steps_per_epoch": 2, "backend": ["tensorflow", "jax"]}}
# One run long enough to be caught mid-training, short enough to redo.
LONG = {"name": "long", "datasets": ["synthetic_terrain"], "heads": ["linear"],
        "train": {"image_size": 32, "epochs": 8, "steps_per_epoch": 4}}

pytestmark = pytest.mark.xdist_group("ray")


def write_suite(folder: Path, suite: dict) -> Path:
    path = folder / f"{suite['name']}.yaml"
    path.write_text(json.dumps(suite))
    return path


def zoo_run(suite: Path, out: Path, *options, wait=True):
    command = [sys.executable, "-m", "zoo.cli", "run", str(suite), "--out", str(out), "--no-report", *options]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def wait_for_training(out: Path, seconds: float = 240) -> dict:
    """The attempt file of the run under way, once it trains."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        for partial in (out / "runs").glob(".*.partial"):
            if (partial / "history.csv").is_file() and (partial / ATTEMPT_FILE).is_file():
                return {**json.loads((partial / ATTEMPT_FILE).read_text()), "folder": partial}
        time.sleep(0.2)
    raise AssertionError("no run started training")


def test_a_suite_on_the_cluster_gives_the_local_results_with_the_host(ray_cluster, tmp_path):
    pytest.importorskip("jax", reason="the backend axis needs the jax extra: pip install -e '.[jax]'")
    suite = write_suite(tmp_path, BACKENDS)
    on_ray = zoo_run(suite, tmp_path / "ray", "--executor", "ray", "--address", ray_cluster.address)
    assert on_ray.returncode == 0, on_ray.stdout + on_ray.stderr
    local = zoo_run(suite, tmp_path / "local")
    assert local.returncode == 0, local.stderr
    ray_rows = pd.read_csv(tmp_path / "ray" / "results.csv").set_index("run_id").sort_index()
    local_rows = pd.read_csv(tmp_path / "local" / "results.csv").set_index("run_id").sort_index()
    assert len(ray_rows) == 2 and set(ray_rows["status"]) == {"ok"}
    assert sorted(ray_rows["backend"].str.split().str[0]) == ["jax", "tensorflow"]
    assert ray_rows["backend"].tolist() == local_rows["backend"].tolist()
    # One implementation: the same run code gives the same numbers wherever it executes.
    for metric in ("accuracy", "macro_f1", "params"):
        assert ray_rows[metric].tolist() == pytest.approx(local_rows[metric].tolist(), abs=1e-6), metric
    assert ray_rows["host"].notna().all()
    # A cluster places runs where it likes: how many shared a node is not known, and not claimed.
    assert ray_rows["runs_at_once"].isna().all() and (local_rows["runs_at_once"] == 1).all()
    assert on_ray.stdout.count(": ok (") == 2 and ", on " in on_ray.stdout  # progress names the node
    assert not list((tmp_path / "ray" / "runs").glob(".*"))


@pytest.mark.parametrize("retries, status", [(1, "ok"), (0, "failed")], ids=["retried", "out-of-retries"])
def test_a_worker_killed_mid_run_is_retried_in_a_clean_folder(ray_cluster, tmp_path, retries, status):
    suite = write_suite(tmp_path, LONG)
    out = tmp_path / "out"
    driver = zoo_run(suite, out, "--executor", "ray", "--address", ray_cluster.address,
                     "--max-retries", str(retries), wait=False)
    attempt = wait_for_training(out)
    assert attempt["attempt"] == 1 and attempt["pid"] != driver.pid
    os.kill(attempt["pid"], signal.SIGKILL)
    log = driver.communicate(timeout=600)[0]
    frame = pd.read_csv(out / "results.csv")
    assert frame["status"].tolist() == [status], log
    run_dir = out / "runs" / frame["run_id"][0]
    if status == "ok":
        assert driver.returncode == 0, log
        assert json.loads((run_dir / ATTEMPT_FILE).read_text())["attempt"] == 2
        history = pd.read_csv(run_dir / "history.csv")
        assert history["epoch"].tolist() == list(range(len(history)))  # the retry started clean
    else:
        assert driver.returncode == 1
        assert "Ray worker died in each of 1 attempt(s)" in frame["error"][0], frame["error"][0]
        # The same command redoes the failed run.
        again = zoo_run(suite, out, "--executor", "ray", "--address", ray_cluster.address)
        assert again.returncode == 0, again.stdout + again.stderr
        assert pd.read_csv(out / "results.csv")["status"].tolist() == ["ok"]


def test_a_killed_driver_resumes_with_nothing_lost_or_duplicated(ray_cluster, tmp_path):
    suite = write_suite(tmp_path, {**LONG, "seeds": [0, 1]})
    out = tmp_path / "out"
    options = ("--executor", "ray", "--address", ray_cluster.address)
    driver = zoo_run(suite, out, *options, wait=False)
    attempt = wait_for_training(out)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    # The driver's job ends with it: Ray stops its workers.
    deadline = time.time() + 60
    while time.time() < deadline and Path(f"/proc/{attempt['pid']}").exists():
        time.sleep(0.5)
    assert not Path(f"/proc/{attempt['pid']}").exists(), "the killed driver's Ray worker kept running"
    again = zoo_run(suite, out, *options)
    assert again.returncode == 0, again.stdout + again.stderr
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 2 and frame["run_id"].is_unique and set(frame["status"]) == {"ok"}
    assert not list((out / "runs").glob(".*"))


def test_no_cluster_at_the_address_is_one_line_in_seconds_and_writes_nothing(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    suite = write_suite(tmp_path, QUICK)
    started = time.monotonic()
    result = zoo_run(suite, tmp_path / "out", "--executor", "ray", "--address", f"127.0.0.1:{port}")
    assert result.returncode == 2 and f"no Ray cluster answers at '127.0.0.1:{port}'" in result.stderr
    assert "ray start --head" in result.stderr and time.monotonic() - started < 60
    assert not (tmp_path / "out").exists()
