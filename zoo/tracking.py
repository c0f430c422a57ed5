"""Experiment trackers: MLflow, and TensorBoard's HParams dashboard.

MLflow: one experiment per suite (its name), one MLflow run per zoo run, logged by the driver
from the finished run folder (so every executor, and ``zoo mlflow-sync`` later, share one
code path). A run already logged (same zoo run id and finish time) is never logged twice. A
tracking server that is down or refuses costs one short timeout and one warning; the suite
goes on and ``zoo mlflow-sync OUT --mlflow URI`` sends the runs later.
"""
from __future__ import annotations

import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RUN_ID_TAG = "zoo.run_id"
FINISHED_TAG = "zoo.finished_at"
TIMEOUT_SECONDS = 10
# Results columns logged as the final metrics of an MLflow run (where the row has a number).
FINAL_METRICS = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "top5_accuracy", "macro_precision",
                 "macro_recall", "macro_f1", "miou", "miou_ci_low", "miou_ci_high", "kl_score", "kl_score_ci_low",
                 "kl_score_ci_high", "accuracy_smoothed", "test_examples", "train_seconds", "first_epoch_seconds",
                 "epoch_seconds", "eval_seconds", "feature_seconds", "images_per_second", "latency_ms", "params",
                 "trainable_params", "model_megabytes", "epochs_run") + tuple(
    f"{name}_{figure}" for name in ("saved_model", "tflite", "onnx")
    for figure in ("megabytes", "latency_ms", "accuracy", "accuracy_drop"))
ARTIFACTS = ("run.json", "metrics.json", "history.csv", "environment.json", "split.json", "model.keras")


def mlflow_uri(cli_uri: str | None, suite: dict | None) -> str | None:
    """The tracking URI: ``--mlflow``, else the suite's ``tracking: {mlflow: URI}``, else
    ``MLFLOW_TRACKING_URI``; None when none is set (no tracking)."""
    from_suite = ((suite or {}).get("tracking") or {}).get("mlflow")
    return cli_uri or from_suite or os.environ.get("MLFLOW_TRACKING_URI") or None


def flat_params(spec: dict, prefix: str = "") -> dict[str, str]:
    """A run's resolved config as MLflow params: nested keys joined with dots."""
    params = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            params.update(flat_params(value, f"{name}."))
        else:
            params[name] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return {key: value[:6000] for key, value in params.items()}


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class MlflowTracker:
    """Logs finished run folders to an MLflow tracking server, in the background."""

    def __init__(self, uri: str, experiment: str, warn=print):
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:  # imported later, in the logging thread
            from zoo.errors import ConfigError

            raise ConfigError(f"MLflow tracking ({uri}) needs MLflow: pip install -e \".[mlflow]\" (or unset "
                              f"--mlflow, the suite's tracking.mlflow and MLFLOW_TRACKING_URI)") from None
        # Fail fast: MLflow's client otherwise retries a dead server for minutes per call.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(TIMEOUT_SECONDS))
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # zoo prints its own progress
        self.uri, self.experiment, self.warn = uri, experiment, warn
        self.client, self.experiment_id, self.failed = None, None, None
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow")
        self.pending = []

    def _connect(self) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(self.experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)

    def submit(self, run_dir) -> None:
        """Log ``run_dir`` soon, without holding up the caller."""
        self.pending.append(self.pool.submit(self.log_run, Path(run_dir)))

    def log_run(self, run_dir: Path) -> str:
        """Log one finished run folder: 'logged', 'already' (logged before), or 'unavailable'."""
        from zoo.results import read_result

        with self.lock:
            if self.failed:
                return "unavailable"
            try:
                if self.client is None:
                    self._connect()
                row = read_result(run_dir)
                if row is None:
                    return "unavailable"
                if self._already_logged(row):
                    return "already"
                self._log(run_dir, row)
                return "logged"
            except Exception as error:  # any client, HTTP or server error: stop trying, say so once
                self.failed = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}"
                self.warn(f"zoo: warning: MLflow at {self.uri} cannot take runs ({self.failed}); the suite goes on "
                          f"untracked: send its runs later with `zoo mlflow-sync OUT --mlflow {self.uri}`")
                return "unavailable"

    def _already_logged(self, row: dict) -> bool:
        found = self.client.search_runs([self.experiment_id],
                                        filter_string=f"tags.`{RUN_ID_TAG}` = '{row['run_id']}' and "
                                                      f"tags.`{FINISHED_TAG}` = '{row['finished_at']}'",
                                        max_results=1)
        return bool(found)

    def _log(self, run_dir: Path, row: dict) -> None:
        from mlflow.entities import Metric, Param

        from zoo.runspec import RunSpec

        spec = RunSpec.load(run_dir)
        environment = {}
        if (run_dir / "environment.json").is_file():
            environment = json.loads((run_dir / "environment.json").read_text())
        tags = {RUN_ID_TAG: row["run_id"], FINISHED_TAG: row["finished_at"], "dataset": row["dataset"],
                "backbone": row["backbone"], "head": row["head"], "seed": str(row["seed"]),
                "trainable": str(row["trainable"]), "backend": environment.get("backend", "tensorflow"),
                "device": str(row.get("device") or ""), "host": str(row.get("host") or ""),
                "zoo.suite": row["suite"], "zoo.status": row["status"]}
        if row["status"] != "ok":
            tags.update({"zoo.error": str(row["error"])[:5000], "mlflow.note.content": str(row["error"])[:5000]})
        run = self.client.create_run(self.experiment_id, run_name=row["run_id"], tags=tags)
        run_id = run.info.run_id
        params = [Param(key, value) for key, value in flat_params(spec.to_dict()).items()]
        metrics = [Metric(name, value, 0, 0) for name in FINAL_METRICS
                   if (value := _number(row.get(name))) is not None]
        if (run_dir / "history.csv").is_file():
            import pandas as pd

            history = pd.read_csv(run_dir / "history.csv")
            for _, epoch in history.iterrows():
                for name, value in epoch.items():
                    if name != "epoch" and _number(value) is not None:
                        metrics.append(Metric(f"epoch_{name}", float(value), 0, int(epoch["epoch"])))
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start:start + 100])
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self.client.log_artifact(run_id, str(run_dir / name))
        self.client.set_terminated(run_id, status="FINISHED" if row["status"] == "ok" else "FAILED")

    def close(self, wait_seconds: float = 120) -> int:
        """Wait for the runs still being logged; the number that were not (server down or slow)."""
        from concurrent.futures import wait

        done, not_done = wait(self.pending, timeout=wait_seconds)
        self.pool.shutdown(wait=False, cancel_futures=True)
        unlogged = len(not_done) + sum(1 for future in done if future.result() == "unavailable")
        return unlogged


def sync(out_dir, uri: str, log=print) -> int:
    """``zoo mlflow-sync``: log every finished run of ``out_dir`` not yet in MLflow; 1 if the
    server could not take them."""
    from zoo.results import read_results
    from zoo.yamlfile import read_yaml

    out_dir = Path(out_dir)
    suite = read_yaml((out_dir / "suite.yaml").read_text())
    tracker = MlflowTracker(uri, suite["name"], warn=log)
    counts = {"logged": 0, "already": 0, "unavailable": 0}
    for run_id in read_results(out_dir)["run_id"]:
        counts[tracker.log_run(out_dir / "runs" / str(run_id))] += 1
    log(f"MLflow {uri}, experiment {suite['name']}: {counts['logged']} run(s) logged, {counts['already']} already "
        f"there" + (f", {counts['unavailable']} not sent" if counts["unavailable"] else ""))
    return 1 if counts["unavailable"] else 0


def tensorboard_hparams(logdir, spec, metrics: dict) -> None:
    """The run's hyperparameters and test metrics in TensorBoard's HParams format, so that
    ``tensorboard --logdir OUT/runs`` compares the runs of a suite in its HParams dashboard.
    Nothing without TensorFlow, which writes TensorBoard's files."""
    from zoo.runtime import has_tensorflow

    if not has_tensorflow():
        return
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    values = {key: value for key, value in flat_params(spec.to_dict()).items()
              if key not in ("run_id", "suite", "overrides", "plugins") and len(value) <= 200}
    with tf.summary.create_file_writer(str(logdir)).as_default():
        hp.hparams(values, trial_id=spec.run_id)
        for name in FINAL_METRICS:
            value = _number(metrics.get(name))
            if value is not None:
                tf.summary.scalar(f"test/{name}", value, step=0)
