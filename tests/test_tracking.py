"""MLflow tracking against a real tracking server started here (SQLite store, 127.0.0.1), and
TensorBoard's HParams summary."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("mlflow", reason="the tracking tests need the mlflow extra: pip install -e '.[mlflow]'")

pytestmark = pytest.mark.xdist_group("mlflow")  # one server and one tracked suite for the module
HERE = Path(__file__).parent
# One good run and one that fails (NaN loss), so both MLflow statuses are seen.
SUITE = {"name": "tracked", "datasets": ["synthetic_terrain"], "heads": ["linear"],
         "backbones": ["baseline_cnn", "nan_backbone"], "plugins": [str(HERE / "plugin_faults.py")],
         "train": {"image_size": 32, "epochs": 2, "steps_per_epoch": 2}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = subprocess.Popen(["mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'store.db'}",
                               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).read()
            break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(server.pid, signal.SIGKILL)
        pytest.fail("the MLflow server did not start")
    yield uri
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(30)


def zoo(*args):
    return subprocess.run([sys.executable, "-m", "zoo.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def mlflow_runs(uri: str, experiment: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return {run.data.tags["zoo.run_id"]: run for run in runs}


@pytest.fixture(scope="module")
def tracked(mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    suite = root / "suite.yaml"
    suite.write_text(json.dumps(SUITE))
    result = zoo("run", suite, "--out", root / "out", "--no-report", "--mlflow", mlflow_server)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]  # the NaN run failed
    return suite, root / "out", result


def test_every_run_is_an_mlflow_run_with_the_results_metrics_params_history_and_files(mlflow_server, tracked):
    from mlflow.tracking import MlflowClient

    _, out, _ = tracked
    frame = pd.read_csv(out / "results.csv").set_index("run_id")
    runs = mlflow_runs(mlflow_server, "tracked")
    assert set(runs) == set(frame.index)
    client = MlflowClient(mlflow_server)
    for run_id, row in frame.iterrows():
        run = runs[run_id]
        assert run.data.tags["backbone"] == row["backbone"] and run.data.tags["seed"] == str(row["seed"])
        assert run.data.tags["dataset"] == "synthetic_terrain" and run.data.tags["device"]
        spec = json.loads((out / "runs" / run_id / "run.json").read_text())
        assert run.data.params["train.learning_rate"] == str(spec["train"]["learning_rate"])
        if row["status"] == "ok":
            assert run.info.status == "FINISHED"
            for metric in ("accuracy", "macro_f1", "params", "train_seconds"):
                assert run.data.metrics[metric] == pytest.approx(row[metric]), metric
            history = pd.read_csv(out / "runs" / run_id / "history.csv")
            logged = client.get_metric_history(run.info.run_id, "epoch_val_loss")
            assert [m.value for m in sorted(logged, key=lambda m: m.step)] == pytest.approx(history["val_loss"].tolist())
            files = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
            assert {"metrics.json", "model.keras", "history.csv", "run.json"} <= files
        else:
            assert run.info.status == "FAILED" and "NaN" in run.data.tags["zoo.error"]


def test_running_or_syncing_again_logs_nothing_twice(mlflow_server, tracked):
    suite, out, _ = tracked
    again = zoo("run", suite, "--out", out, "--no-report", "--mlflow", mlflow_server)
    assert again.returncode == 1  # the NaN run fails again: a new result, logged once
    synced = zoo("mlflow-sync", out, "--mlflow", mlflow_server)
    assert synced.returncode == 0 and "0 run(s) logged, 2 already there" in synced.stdout, synced.stdout
    runs = mlflow_runs(mlflow_server, "tracked")
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 2
    from mlflow.tracking import MlflowClient

    found = MlflowClient(mlflow_server).search_runs([runs[frame["run_id"][0]].info.experiment_id])
    ok_run = frame.loc[frame["status"] == "ok", "run_id"].item()
    assert sum(run.data.tags["zoo.run_id"] == ok_run for run in found) == 1  # finished, so not redone or relogged


def test_a_server_that_is_down_warns_once_and_the_runs_are_synced_later(mlflow_server, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({**SUITE, "name": "offline", "backbones": ["baseline_cnn"]}))
    down = f"http://127.0.0.1:{free_port()}"
    result = zoo("run", suite, "--out", tmp_path / "out", "--no-report", "--mlflow", down)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.count(f"MLflow at {down} cannot take runs") == 1
    assert "1 run(s) were not logged to MLflow; send them with `zoo mlflow-sync" in result.stdout
    synced = zoo("mlflow-sync", tmp_path / "out", "--mlflow", mlflow_server)
    assert synced.returncode == 0 and "1 run(s) logged, 0 already there" in synced.stdout, synced.stdout
    assert len(mlflow_runs(mlflow_server, "offline")) == 1


def test_tensorboard_holds_each_runs_hyperparameters_and_test_metrics(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, out, _ = tracked
    frame = pd.read_csv(out / "results.csv")
    ok_run = frame.loc[frame["status"] == "ok"].iloc[0]
    events = EventAccumulator(str(out / "runs" / ok_run["run_id"] / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    session = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert "train.learning_rate" in session.hparams and "backbone" in session.hparams
    from tensorboard.util.tensor_util import make_ndarray

    accuracy = [float(make_ndarray(event.tensor_proto)) for event in events.Tensors("test/accuracy")]
    assert accuracy == [pytest.approx(ok_run["accuracy"], abs=1e-6)]
