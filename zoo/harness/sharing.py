"""Several runs at once on one machine (``zoo run --workers N``): what a worker knows of the others.

A GPU waits while a run compiles (most of a short run's first epoch; XLA compiles on the host's cores),
so N worker processes on one machine overlap one run's compiling with another's training. They share the
device and the cores: a run's epoch times include the sharing, and results.csv's ``runs_at_once`` says
how many shared. A run's images/s and latency are another matter: the report sets them beside other
models' and reuses them for every seed, so they are figures of the model alone. :func:`measured_alone`
takes them with the pool's other workers paused (SIGSTOP, then SIGCONT), one measurement at a time, after
the measuring run has compiled and warmed up what it times: a paused worker may hold any file lock, and
the timed code takes none.

The other workers are found, not listed: this process's siblings (children of the same driver) running
zoo's worker. A worker that died while measuring leaves the others paused; the driver sees it die and
resumes them (zoo.harness.executors.WorkerPool).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from pathlib import Path

RUNS_AT_ONCE_ENV = "ZOO_RUNS_AT_ONCE"  # set by the driver for its workers; empty: not known (Ray)
WORKER_MODULE = "zoo.harness.worker"
_PROC = Path("/proc")


def runs_at_once() -> int | None:
    """How many runs this process's machine executes at once for its driver: 1 unless a pool said more;
    None where nobody knows (a Ray actor: the cluster places runs)."""
    value = os.environ.get(RUNS_AT_ONCE_ENV)
    if value is None:
        return 1
    return int(value) if value.strip() else None


def can_pause_others() -> bool:
    """Whether this system lets a worker find and pause its siblings (Linux's /proc)."""
    return (_PROC / "self" / "stat").is_file()


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ")".
    return (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def sibling_workers() -> list[int]:
    """Process ids of the other zoo workers started by this process's driver (its parent)."""
    me, parent = os.getpid(), os.getppid()
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) != parent:
                continue
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if WORKER_MODULE.encode() in command:
            found.append(int(entry.name))
    return found


def _wait_until_stopped(pids: list[int], timeout_seconds: float = 2.0) -> None:
    """SIGSTOP is delivered asynchronously: wait (briefly) until each process shows it is stopped."""
    deadline = time.monotonic() + timeout_seconds
    waiting = list(pids)
    while waiting and time.monotonic() < deadline:
        still = []
        for pid in waiting:
            try:
                if _stat_fields(pid)[0] not in ("T", "t", "Z", "X"):
                    still.append(pid)
            except (OSError, IndexError):
                pass
        waiting = still
        if waiting:
            time.sleep(0.005)


@contextlib.contextmanager
def measured_alone(lock_path):
    """Inside, the pool's other workers are paused (one measuring process at a time, through a lock on
    ``lock_path``); outside a pool of more than one, nothing happens. Yields the number paused.
    Call it with everything to be timed already compiled: a paused worker may hold a lock the timed code
    would otherwise wait for."""
    shared = runs_at_once()
    if shared is None or shared <= 1 or not can_pause_others():
        yield 0
        return
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        # Only the lock's holder pauses others, and it never pauses itself: a paused worker never holds it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        paused = []
        try:
            for pid in sibling_workers():
                try:
                    os.kill(pid, signal.SIGSTOP)
                    paused.append(pid)
                except (ProcessLookupError, PermissionError):
                    pass
            _wait_until_stopped(paused)
            yield len(paused)
        finally:
            for pid in paused:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            fcntl.flock(lock, fcntl.LOCK_UN)
