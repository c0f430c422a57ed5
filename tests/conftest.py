import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """Tests never read or write the user's Keras cache or weights folder."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("ZOO_WEIGHTS_DIR", raising=False)
    # No test probes or downloads from the internet: readiness checks report missing weights.
    monkeypatch.setenv("ZOO_OFFLINE", "1")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_input_size(spec, multiple=32):
    """A small input every backbone accepts: its minimum size rounded up to a multiple of 32."""
    size = max(64, spec.min_size)
    return -(-size // multiple) * multiple


test_input_size.__test__ = False


@pytest.fixture(scope="session")
def ray_cluster():
    """A real two-node Ray cluster on 127.0.0.1 for the session (tests using it are in the
    xdist group "ray", so one worker runs them all)."""
    pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[ray]'")
    from zoo.harness.local_ray import LocalRayCluster

    with LocalRayCluster(nodes=2, cpus_per_node=1) as cluster:
        yield cluster
