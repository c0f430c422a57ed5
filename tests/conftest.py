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
