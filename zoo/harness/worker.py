"""The worker process: executes run folders for the driver, one after another.

A run is a function of its folder: ``run.json`` in, result files out, and whatever happens
the last file written is ``result.json``, the run's row of results.csv. The runner executes
runs in a long-lived worker process (``python -m zoo.harness.worker --serve FD``, see
zoo.harness.executors) so that TensorFlow is imported once per suite, while a hard crash (out
of memory, a segfault) still loses one run, not the suite. The run itself is zoo.harness.stages;
this module is its process: failures recorded, the driver watched, modules preloaded.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras warns that fit's shuffle=True is ignored for a PyDataset; zoo shuffles in the pipeline.
import warnings  # noqa: E402

warnings.filterwarnings("ignore", message=".*shuffle=True. was passed.*")

from zoo.errors import DataError, RunFailed  # noqa: E402
from zoo.results import write_json  # noqa: E402
from zoo.runspec import RunSpec  # noqa: E402


def describe_error(error: BaseException) -> str:
    """The one-line reason of a failed run: the sentence that says what went wrong. TensorFlow's graph
    errors put it last, after "in user code:" and the traced frames."""
    name = type(error).__name__
    text = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    message = text[0] if text else ""
    if message.endswith("in user code:") and len(text) > 1:
        message = text[-1]
        if message.startswith(f"{name}: "):
            message = message[len(name) + 2:]
    if "ResourceExhausted" in name or "OOM" in message or "out of memory" in message.lower():
        from zoo.harness.sharing import runs_at_once

        fewer = " or run fewer at once (zoo run --workers)" if (runs_at_once() or 1) > 1 else ""
        return f"out of memory ({name}): lower train.batch_size or train.image_size{fewer}"
    return f"{name}: {message}"[:500] if not isinstance(error, RunFailed) else message


def execute_run(run_dir) -> dict:
    """Train, evaluate and record one run; never raises for a failed run (it is recorded).

    Raises OSError only when the row itself cannot be written (a full or read-only disk): the
    caller then records it from the spec."""
    from zoo.harness import stages
    from zoo.harness.recipes import reset_keras_state
    from zoo.harness.timing import StageClock
    from zoo.heads import head_task

    clock = StageClock()
    with clock.stage("start"):  # the previous run's Keras state cleared: this run's cost in a shared worker
        reset_keras_state()
    run_dir = Path(run_dir)
    spec = RunSpec.load(run_dir)
    progress: dict = {}
    try:
        trained = stages.train_and_score(run_dir, spec, progress, clock)
        if spec.stages().export_formats:
            with clock.stage("export"):
                trained.result.update(export_figures(trained, spec))
        row = stages.record(trained)
    except Exception as error:  # any failure is this run's, recorded, and the suite goes on
        from zoo.harness import kept_models

        kept_models.forget()
        try:
            (run_dir / "traceback.txt").write_text(traceback.format_exc())
        except OSError:
            pass  # a full disk: the row below says why, which matters more than the traceback
        row = stages.results_row(spec, head_task(spec.head), "failed", describe_error(error), None, 0,
                                 spec.trainable, progress)
        row["errno"] = getattr(error, "errno", None)
    errno = row.pop("errno", None)
    write_json(run_dir / "result.json", row)
    if errno is not None:
        row["errno"] = errno
    return row


def export_figures(trained, spec: RunSpec) -> dict:
    """The deployment figures of the suite key ``export``. TensorFlow's converters make every format: a
    run trained on JAX or PyTorch saves its model first and is exported by a child process on Keras's
    TensorFlow backend; where TensorFlow is not installed, each format's row says what to install."""
    from zoo.harness.deploy import deployment_figures, deployment_figures_on_tensorflow
    from zoo.harness.recipes import keep_keras_saving_skipsets
    from zoo.runtime import backend, installed

    if backend() == "tensorflow" or not installed("tensorflow"):
        return deployment_figures(trained.opened, spec.export, trained.result)
    keep_keras_saving_skipsets()
    trained.opened.model.save(trained.opened.dir / "model.keras")  # the child reads it; the save stage keeps it
    trained.model_saved = True
    return deployment_figures_on_tensorflow(trained.opened.dir, trained.opened.task, spec.export, trained.result)


DRIVER_PID_ENV = "ZOO_DRIVER_PID"


def stay_with_driver() -> None:
    """Make sure this worker never outlives the ``zoo run`` that started it: the kernel kills
    it when the driver dies (Linux's PR_SET_PDEATHSIG), and a watcher thread does the same
    wherever that is missing."""
    import ctypes
    import signal
    import threading

    driver = int(os.environ.get(DRIVER_PID_ENV, "0") or 0)
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if not driver:
        return
    if os.getppid() != driver:  # the driver died before prctl took effect
        os._exit(1)

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != driver:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="driver-watch", daemon=True).start()


def _unraisable_in_one_line(unraisable) -> None:
    """Errors raised where nothing can catch them (a file handle's destructor on a full disk)
    are the run's failure, already recorded: one line for them, not a traceback each."""
    message = str(unraisable.exc_value).strip().splitlines()
    print(f"zoo worker: ignored {type(unraisable.exc_value).__name__} while cleaning up: "
          f"{message[0][:160] if message else ''}", file=sys.stderr, flush=True)


def _storage_faults_in_one_line(kind, value, trace) -> None:
    """HDF5's file handles report a failed write on a full disk from their destructor with a full
    traceback (through this hook); the run's row already says the disk is full."""
    from zoo.errors import storage_problem

    text = str(value)
    if storage_problem(value) or "No space left on device" in text or "Read-only file system" in text:
        print(f"zoo worker: {kind.__name__}: {text.strip().splitlines()[0][:160] if text.strip() else ''}",
              file=sys.stderr, flush=True)
    else:
        sys.__excepthook__(kind, value, trace)


def preload_run_modules() -> None:
    """Import what every run needs (TensorFlow, Keras, zoo's run modules) before the first run
    arrives, while the driver checks the suite, then move everything imported out of the garbage
    collector's way (gc.freeze): the collection clear_session makes between runs then scans only
    what the runs created (about 0.2 s less per run). A failed import is left for the run to
    report with its own error."""
    import gc

    try:
        import keras  # noqa: F401

        from zoo import factory, metrics, runtime, stats  # noqa: F401
        from zoo.data import decoded, pipeline, prepare  # noqa: F401
        from zoo.harness import features, stages  # noqa: F401
    except Exception:
        return
    gc.collect()
    gc.freeze()


def serve(reply_fd: int) -> int:
    """Execute the run folders read line by line from stdin; after each, one JSON line on
    ``reply_fd``: ``{"run_dir", "status"}``, plus ``errno`` when the row could not be written."""
    from zoo.harness.suite import load_plugins

    stay_with_driver()
    sys.unraisablehook = _unraisable_in_one_line
    sys.excepthook = _storage_faults_in_one_line
    preload_run_modules()
    replies = os.fdopen(reply_fd, "w")
    for line in sys.stdin:
        run_dir = line.strip()
        if not run_dir:
            continue
        reply = {"run_dir": run_dir}
        try:
            load_plugins(RunSpec.load(run_dir).plugins)
            row = execute_run(run_dir)
            reply.update(status=row["status"], errno=row.get("errno"))
        except (OSError, DataError) as error:
            reply.update(status="failed", error=describe_error(error), errno=getattr(error, "errno", None))
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--serve":
        return serve(int(argv[1]))
    if len(argv) != 1:
        print("usage: python -m zoo.harness.worker RUN_DIR | --serve REPLY_FD", file=sys.stderr)
        return 2
    from zoo.harness.suite import load_plugins

    load_plugins(RunSpec.load(argv[0]).plugins)
    execute_run(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
