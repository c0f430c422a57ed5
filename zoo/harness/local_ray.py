"""A Ray cluster of several nodes on this one machine, bound to 127.0.0.1: for tests, the
scale-out benchmark, and trying ``--executor ray`` on a laptop before a real cluster.

    python -m zoo.harness.local_ray --nodes 2 --cpus-per-node 1

prints ``address 127.0.0.1:PORT`` and keeps the cluster up until SIGTERM or Ctrl-C. Each node is
its own raylet process (Ray's own multi-node test cluster, ``ray.cluster_utils.Cluster``); every
node listens on the loopback interface only, and Ray's usage statistics are off.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

OBJECT_STORE_BYTES = 100 * 1024 * 1024


def serve(nodes: int, cpus_per_node: float, gpus_per_node: float = 0) -> int:
    from ray.cluster_utils import Cluster

    node = {"node_ip_address": "127.0.0.1", "num_cpus": cpus_per_node, "num_gpus": gpus_per_node,
            "object_store_memory": OBJECT_STORE_BYTES}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**node)
    stopped = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stopped.append(number))
    print(f"address {cluster.address}", flush=True)
    while not stopped:
        time.sleep(0.2)
    cluster.shutdown()
    return 0


class LocalRayCluster:
    """``with LocalRayCluster(nodes=2) as cluster: ... cluster.address``; started and stopped by
    process id (its own session), never by ``ray stop``, which would stop every cluster here."""

    def __init__(self, nodes: int = 2, cpus_per_node: float = 1, start_seconds: float = 180):
        self.nodes, self.cpus_per_node, self.start_seconds = nodes, cpus_per_node, start_seconds
        self.process, self.address = None, None

    def __enter__(self) -> "LocalRayCluster":
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        self.process = subprocess.Popen([sys.executable, "-m", "zoo.harness.local_ray", "--nodes", str(self.nodes),
                                         "--cpus-per-node", str(self.cpus_per_node)],
                                        stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
        deadline = time.monotonic() + self.start_seconds
        line = ""
        while time.monotonic() < deadline and not line.startswith("address "):
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                break
        if not line.startswith("address "):
            self.stop()
            raise RuntimeError("the local Ray cluster did not start (see its output above)")
        self.address = line.split()[1]
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.harness.local_ray", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=float, default=1)
    parser.add_argument("--gpus-per-node", type=float, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return serve(args.nodes, args.cpus_per_node, args.gpus_per_node)


if __name__ == "__main__":
    sys.exit(main())
