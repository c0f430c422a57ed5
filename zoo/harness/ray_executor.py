"""``zoo run --executor ray``: the runs of a suite on a Ray cluster.

Each slot of the cluster (``--gpus-per-run`` GPUs and ``--cpus-per-run`` CPUs) holds one Ray
actor, a long-lived worker process that keeps TensorFlow imported and executes one run after
another with the same code as the local worker (``zoo.harness.worker.execute_run``). The driver
keeps what it does locally: claims, run folders, results.csv, progress. So the output folder
must be reachable at the same path from every node (a shared file system).

A worker or node that dies mid-run gets the run retried in a clean run folder (``max_retries``
times, Ray's actor restart and task retry); a run that keeps killing its worker is recorded
``failed`` with the reason. Ray is imported only here, and only when this executor is chosen.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
from pathlib import Path

from zoo.errors import ConfigError
from zoo.harness.executors import RunInterrupted, WorkerDied, recorded_row, run_backend

ATTEMPT_FILE = "worker.json"  # host, pid and attempt of the process executing the run
KEPT_ON_RETRY = ("run.json", "claim.json", ATTEMPT_FILE)


def require_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray executor needs Ray: pip install -e \".[ray]\" (or pip install 'ray[data]') "
                          "on the driver and on every node of the cluster") from None
    return ray


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def connect(address: str | None = "auto"):
    """Connect this process to the Ray cluster at ``address`` (``auto``, ``HOST:PORT`` or
    ``ray://HOST:10001``) and return the ``ray`` module; a clear error when none answers."""
    ray = require_ray()
    import logging

    if ray.is_initialized():
        return ray
    from ray._private import ray_constants, utils

    address = address or "auto"
    resolved = (os.environ.get("RAY_ADDRESS") or utils.read_ray_address() or "") if address == "auto" else address
    host, _, port = resolved.split("://")[-1].rpartition(":")
    if resolved and port.isdigit():
        _check_reachable(address, host.strip("[]"), int(port))
    if resolved and _is_loopback(host):
        # A cluster bound to the loopback interface (one machine, nodes started with
        # --node-ip-address 127.0.0.1) reaches only drivers on 127.0.0.1, but Ray announces a
        # driver on the machine's network address and waits for a raylet there. Ray's own switch
        # for one-machine clusters keeps the driver on 127.0.0.1.
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=True)
    except ConnectionError as error:
        raise ConfigError(f"no Ray cluster answers at {address!r} ({str(error).splitlines()[0][:200]}): start "
                          f"one with `ray start --head` (see the README's \"Scale out\") or pass "
                          f"--address HOST:PORT") from None
    return ray


def _check_reachable(address: str, host: str, port: int, seconds: float = 5.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at the cluster's address (Ray's own
    client keeps retrying a dead address for minutes)."""
    try:
        socket.create_connection((host, port), timeout=seconds).close()
    except OSError as error:
        raise ConfigError(f"no Ray cluster answers at {address!r} ({error.strerror or error}): start one with "
                          f"`ray start --head` (see the README's \"Scale out\") or pass --address HOST:PORT") from None


def cluster_slots(resources: dict, cpus_per_slot: float, gpus_per_slot: float | None) -> tuple[int, float]:
    """How many workers a cluster holds with these resources each, and the GPUs each gets (by
    default one where the cluster has GPUs, else none)."""
    gpus = (1 if resources.get("GPU") else 0) if gpus_per_slot is None else gpus_per_slot
    slots = int(resources.get("CPU", 0) // cpus_per_slot)
    if gpus:
        slots = min(slots, int(resources.get("GPU", 0) // gpus))
    return slots, gpus


class RunActor:
    """One slot of the cluster: executes runs one after another in the same process."""

    def __init__(self, shares_a_gpu: bool = False):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if shares_a_gpu:  # --gpus-per-run below 1: no actor may take most of the GPU's memory at its start
            from zoo.runtime import take_gpu_memory_on_demand

            take_gpu_memory_on_demand()
        from zoo.harness.worker import preload_run_modules

        preload_run_modules()  # start-up paid while the driver checks the runs, as the local worker does

    def execute(self, run_dir: str) -> dict:
        from zoo.harness.suite import load_plugins
        from zoo.harness.worker import describe_error, execute_run

        run_dir = Path(run_dir)
        if not (run_dir / "run.json").is_file():
            return {"status": "failed", "unshared": True, "host": socket.gethostname()}
        attempt = _start_attempt(run_dir)
        try:
            from zoo.runspec import RunSpec

            load_plugins(RunSpec.load(run_dir).plugins)
            row = execute_run(run_dir)
            return {"status": row["status"], "errno": row.get("errno"), "host": socket.gethostname(),
                    "attempt": attempt}
        except OSError as error:
            return {"status": "failed", "error": describe_error(error), "errno": error.errno,
                    "host": socket.gethostname(), "attempt": attempt}


def _start_attempt(run_dir: Path) -> int:
    """Clear what an earlier attempt left (a retry starts from a clean run folder) and record
    who executes this one."""
    from zoo.results import write_json

    previous = 0
    try:
        previous = int(json.loads((run_dir / ATTEMPT_FILE).read_text()).get("attempt", 0))
    except (OSError, ValueError):
        pass
    for entry in run_dir.iterdir():
        if entry.name not in KEPT_ON_RETRY:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    write_json(run_dir / ATTEMPT_FILE, {"host": socket.gethostname(), "pid": os.getpid(), "attempt": previous + 1})
    return previous + 1


def last_attempt(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / ATTEMPT_FILE).read_text())
    except (OSError, ValueError):
        return {}


class RaySlot:
    """One actor, used by one driver thread: ``submit`` blocks until the run is recorded. An
    actor runs one Keras backend: a run that asks for another gets a new actor in this slot."""

    def __init__(self, executor: "RayExecutor", index: int):
        self.executor, self.index = executor, index

    @property
    def actor(self):
        return self.executor.actors[self.index]

    def submit(self, run_dir: Path) -> dict:
        ray = self.executor.ray
        wanted = run_backend(run_dir)
        if wanted != self.executor.backends[self.index]:
            self.executor.replace_actor(self.index, wanted)
        reference = self.actor.execute.remote(str(run_dir))
        try:
            reply = ray.get(reference)
        except ray.exceptions.RayError as error:
            if self.executor.stopping is not None:
                raise RunInterrupted(self.executor.stopping) from None
            attempts = last_attempt(run_dir).get("attempt", 1)
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise WorkerDied(f"its Ray worker died in each of {attempts} attempt(s) ({type(error).__name__}: "
                             f"{reason})") from None
        if reply.get("unshared"):
            raise WorkerDied(f"{run_dir} does not exist on node {reply['host']}: --out must be a folder every node "
                             f"of the cluster sees at the same path (a shared file system)")
        return recorded_row(reply, run_dir, "its Ray worker")

    def stop(self, signum: int | None = None) -> None:
        self.executor.stop(signum)


class RayExecutor:
    """Runs on a Ray cluster, as many at once as it has slots for."""

    def __init__(self, address: str | None = "auto", gpus_per_run: float | None = None, cpus_per_run: float = 1,
                 max_retries: int = 1):
        if cpus_per_run <= 0 or (gpus_per_run is not None and gpus_per_run < 0) or max_retries < 0:
            raise ConfigError("--cpus-per-run must be > 0, --gpus-per-run and --max-retries >= 0")
        self.address, self.gpus_per_run, self.cpus_per_run = address, gpus_per_run, cpus_per_run
        self.max_retries = max_retries
        self.ray, self.actors, self.stopping, self.gpus = None, [], None, 0
        self.backends: list = []  # each actor's train.backend (None: the cluster's environment)
        self.remote = None

    def start(self, runs: int | None = None, backend: str | None = None) -> None:
        """Connect and start one actor per slot (at most ``runs``), for ``backend`` (the first
        run's); they import Keras and its backend while the driver checks the runs."""
        if self.actors:
            return
        self.ray = connect(self.address)
        self.stopping = None
        resources = self.ray.cluster_resources()
        slots, self.gpus = cluster_slots(resources, self.cpus_per_run, self.gpus_per_run)
        if slots < 1:
            raise ConfigError(f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and "
                              f"{resources.get('GPU', 0):g} GPUs: not enough for one run with --cpus-per-run "
                              f"{self.cpus_per_run:g} --gpus-per-run {self.gpus:g}")
        self.remote = self.ray.remote(num_cpus=self.cpus_per_run, num_gpus=self.gpus, max_restarts=-1,
                                      max_task_retries=self.max_retries)(RunActor)
        count = min(slots, runs or slots)
        self.actors = [self._new_actor(backend) for _ in range(count)]
        self.backends = [backend] * count

    def _new_actor(self, backend: str | None):
        # Ray sets the actor process's environment before it imports anything, Keras included.
        from zoo.runtime import backend_environment

        from zoo.harness.sharing import RUNS_AT_ONCE_ENV

        env = backend_environment(backend, base={})  # only what the actor's environment adds
        env[RUNS_AT_ONCE_ENV] = ""  # how many runs share its node is the cluster's business: not known
        options = {"runtime_env": {"env_vars": env}} if env else {}
        return self.remote.options(**options).remote(0 < self.gpus < 1)

    def replace_actor(self, index: int, backend: str | None) -> None:
        """Slot ``index`` gets an actor for ``backend``; its previous actor is stopped first, so
        that the new one can take its CPUs and GPUs."""
        try:
            self.ray.kill(self.actors[index], no_restart=True)
        except Exception:  # already gone
            pass
        self.actors[index], self.backends[index] = self._new_actor(backend), backend

    def slots(self) -> list[RaySlot]:
        return [RaySlot(self, index) for index in range(len(self.actors))]

    def submit(self, run_dir: Path) -> dict:
        if not self.actors:
            self.start(runs=1, backend=run_backend(run_dir))
        return RaySlot(self, 0).submit(run_dir)

    def stop(self, signum: int | None = None) -> None:
        """Kill the actors now (an interrupt or a fault); runs under way raise RunInterrupted."""
        import signal

        if self.stopping is None:
            self.stopping = signum or signal.SIGTERM
        self.close()

    def close(self) -> None:
        actors, self.actors = self.actors, []
        for actor in actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
