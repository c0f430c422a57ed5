"""Where runs execute. The runner owns run folders and results.csv; an executor only takes a
prepared run folder (``run.json`` written) and executes it, returning the row it recorded.

- ``InProcessExecutor``: in the calling process (debugging, tests); a hard crash stops the suite.
- ``RayExecutor`` (zoo.harness.ray_executor): one long-lived actor per slot of a Ray cluster,
  several runs at once.
- ``WorkerExecutor``: a long-lived worker process that keeps TensorFlow imported between runs,
  so start-up is paid once per suite; if it dies mid-run only that run is lost (``WorkerDied``)
  and a fresh worker takes the next one. ``runs_per_worker=1`` is ``--isolate``: a new process
  for every run.
- ``WorkerPool``: N such workers on this machine (``zoo run --workers N``), N runs at once; one
  run compiles while another trains (zoo.harness.sharing says what that means for their times).

An executor hands the runner its ``slots()``: one per run it can execute at once, each with a
blocking ``submit``; the runner drives several slots from threads. Every executor raises ``OSError`` from ``submit`` when the run's row could not be written (a
full or read-only disk), so the runner handles storage faults the same way for all of them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

EXECUTORS = ("worker", "isolated", "in-process", "ray")


class WorkerDied(RuntimeError):
    """The process executing a run died before recording it; the message says how."""


class RunInterrupted(RuntimeError):
    """The suite was stopped (``signum``) while this run executed elsewhere (another thread's slot)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def recorded_row(reply: dict, run_dir: Path, process: str) -> dict:
    """The row a worker recorded for ``run_dir``, given its reply: OSError when the row could not
    be written (a full or read-only disk), WorkerDied when nothing readable was recorded."""
    from zoo.results import read_result

    if reply.get("errno"):
        raise OSError(reply["errno"], reply.get("error") or os.strerror(reply["errno"]))
    row = read_result(run_dir)
    if row is None:
        raise WorkerDied(f"{process} recorded nothing readable in {run_dir}")
    return row


def run_backend(run_dir: Path) -> str | None:
    """The Keras backend a prepared run asks for (``train.backend``); None: the driver's own."""
    from zoo.errors import DataError
    from zoo.runspec import RunSpec

    try:
        return RunSpec.load(run_dir).train.backend
    except DataError:
        return None


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (the system's out-of-memory killer sends this)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {returncode}"


class InProcessExecutor:
    """Runs in this process, one after another, on this process's Keras backend."""

    def check(self, runs) -> None:
        """Refuse, before anything runs, runs whose ``train.backend`` this process cannot switch to."""
        import keras

        from zoo.errors import ConfigError

        current = keras.backend.backend()
        others = sorted({run.train.backend for run in runs} - {None, current})
        if others:
            raise ConfigError(f"train.backend asks for {', '.join(others)}, but this process runs {current} and an "
                              f"in-process run cannot change it; run without --in-process (each worker process "
                              f"sets its own backend) or set KERAS_BACKEND={others[0]} for a suite of that backend")

    def start(self, runs: int | None = None, backend: str | None = None) -> None:
        """Nothing to start; the suite's datasets are opened afresh (this process may have run another suite)."""
        from zoo.harness.stages import forget_sources

        forget_sources()

    def slots(self) -> list:
        return [self]

    def submit(self, run_dir: Path) -> dict:
        from zoo.harness.worker import execute_run

        row = execute_run(run_dir)
        if row.get("errno"):
            raise OSError(row["errno"], row["error"])
        return row

    def stop(self, signum: int | None = None) -> None:
        """Nothing to stop: an interrupt reaches the run directly."""

    def close(self) -> None:
        pass


class WorkerExecutor:
    """Runs in a worker process that serves one run after another (see zoo.harness.worker.serve).

    The worker gets its own session, so a Ctrl-C in the terminal reaches only the driver,
    which stops the worker itself (no traceback from it); the worker dies with its driver.
    """

    def __init__(self, runs_per_worker: int | None = None, environment: dict | None = None):
        self.runs_per_worker = runs_per_worker
        self.environment = environment or {}  # added to the worker's (a pool's settings)
        self.process: subprocess.Popen | None = None
        self.replies = None
        self.runs_served = 0
        self.backend = None  # the worker's train.backend; None: the driver's environment

    def start(self, runs: int | None = None, backend: str | None = None) -> None:
        """Start the worker (for ``backend``, the first run's) now, so that its imports overlap
        the driver's checks. A worker runs one Keras backend: a run that asks for another gets
        a new worker."""
        if self.process is not None and self.process.poll() is None and backend != self.backend:
            self.close()
        if self.process is None or self.process.poll() is not None:
            self._discard()
            self.backend = backend
            self._start()

    def _start(self) -> None:
        from zoo.harness.worker import DRIVER_PID_ENV

        read_fd, write_fd = os.pipe()
        from zoo.runtime import backend_environment

        env = {**backend_environment(self.backend), **self.environment, "PYTHONUNBUFFERED": "1",
               DRIVER_PID_ENV: str(os.getpid())}
        self.process = subprocess.Popen([sys.executable, "-m", "zoo.harness.worker", "--serve", str(write_fd)],
                                        stdin=subprocess.PIPE, text=True, env=env, pass_fds=(write_fd,),
                                        start_new_session=True)
        os.close(write_fd)
        self.replies = os.fdopen(read_fd, "r")
        self.runs_served = 0

    def slots(self) -> list:
        return [self]

    def submit(self, run_dir: Path) -> dict:
        self.start(backend=run_backend(run_dir))
        # Another thread may stop this worker meanwhile (a pool's interrupt) and discard its handles.
        process, replies = self.process, self.replies
        try:
            process.stdin.write(f"{run_dir}\n")
            process.stdin.flush()
            line = replies.readline()
        except (BrokenPipeError, ValueError):  # ValueError: the handles were closed by stop()
            line = ""
        if not line:
            returncode = process.wait()
            if self.process is process:
                self._discard()
            raise WorkerDied(f"the run's process died ({describe_exit(returncode)})")
        reply = json.loads(line)
        self.runs_served += 1
        if self.runs_per_worker and self.runs_served >= self.runs_per_worker:
            self.close()
        return recorded_row(reply, run_dir, "the run's process")

    def stop(self, grace_seconds: float = 5.0, signum: int | None = None) -> None:
        """Stop the worker now (an interrupt): SIGTERM, then SIGKILL after ``grace_seconds``."""
        if self.process is not None and self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._discard()

    def terminate(self) -> None:
        """Ask the worker to stop (SIGTERM) without waiting: a pool asks all of them before it waits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.resume()  # a paused worker (zoo.harness.sharing) acts on SIGTERM only once continued

    def resume(self) -> None:
        """Continue the worker if another pool worker paused it and could not continue it (it died)."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass

    def close(self, timeout_seconds: float = 30.0) -> None:
        """Let the worker finish (it exits when its input closes), then make sure it is gone."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout_seconds)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.stop()

    def _discard(self) -> None:
        if self.replies is not None:
            self.replies.close()
        if self.process is not None and self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        self.process, self.replies = None, None


class PoolSlot:
    """One worker of a pool, used by one driver thread."""

    def __init__(self, pool: "WorkerPool", worker: WorkerExecutor):
        self.pool, self.worker = pool, worker

    def submit(self, run_dir: Path) -> dict:
        if self.pool.stopping is not None:  # a run taken as the suite stopped does not start a worker again
            raise RunInterrupted(self.pool.stopping)
        try:
            return self.worker.submit(run_dir)
        except WorkerDied:
            if self.pool.stopping is not None:
                raise RunInterrupted(self.pool.stopping) from None
            self.pool.resume_all()  # it may have died measuring, with the others paused
            raise

    def stop(self, signum: int | None = None) -> None:
        self.pool.stop(signum)


class WorkerPool:
    """``workers`` worker processes on this machine, each executing one run after another: N runs at
    once (``zoo run --workers N``). Each worker takes GPU memory as it needs it (the backends' default
    gives most of the device to the first one), unless the environment says otherwise."""

    def __init__(self, workers: int, runs_per_worker: int | None = None):
        from zoo.errors import ConfigError
        from zoo.harness.sharing import RUNS_AT_ONCE_ENV, can_pause_others
        from zoo.runtime import GPU_MEMORY_ON_DEMAND

        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, not {workers}")
        if workers > 1 and not can_pause_others():
            raise ConfigError("--workers above 1 needs Linux's /proc (each run's speed is measured with the other "
                              "runs paused); run with --workers 1 here")
        self.environment = {RUNS_AT_ONCE_ENV: str(workers)}  # shared by the workers: the count actually started
        self.environment.update({name: value for name, value in GPU_MEMORY_ON_DEMAND.items()
                                 if name not in os.environ})
        self.workers = [WorkerExecutor(runs_per_worker, self.environment) for _ in range(workers)]
        self.stopping = None
        self.started = len(self.workers)
        self._stopping_lock = threading.Lock()  # the main thread and the slots' threads all stop the pool

    def start(self, runs: int | None = None, backend: str | None = None) -> None:
        """Start one worker per run that can go at once (at most ``runs``), for ``backend`` (the first run's)."""
        from zoo.harness.sharing import RUNS_AT_ONCE_ENV

        self.stopping = None
        self.started = min(len(self.workers), runs or len(self.workers))
        self.environment[RUNS_AT_ONCE_ENV] = str(self.started)
        for worker in self.workers[:self.started]:
            worker.start(backend=backend)

    def slots(self) -> list[PoolSlot]:
        return [PoolSlot(self, worker) for worker in self.workers[:self.started]]

    def submit(self, run_dir: Path) -> dict:
        return PoolSlot(self, self.workers[0]).submit(run_dir)

    def resume_all(self) -> None:
        for worker in self.workers:
            worker.resume()

    def stop(self, signum: int | None = None) -> None:
        """Stop every worker now (an interrupt); runs under way raise RunInterrupted."""
        with self._stopping_lock:
            if self.stopping is None:
                self.stopping = signum or signal.SIGTERM
            for worker in self.workers:
                worker.terminate()
            for worker in self.workers:
                worker.stop()

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
