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



GROUPING_FAILED = pytest.StashKey[str]()


@pytest.fixture(autouse=True, scope="session")
def xdist_groups_hold(request):
    """Every test errors with the reason when xdist_group is not honoured (see below)."""
    if GROUPING_FAILED in request.config.stash:
        pytest.fail(request.config.stash[GROUPING_FAILED])


# Modules whose tests start servers or clusters, train whole suites in subprocesses or build every
# registered backbone: marked slow as a whole. `pytest -m "not slow" -n 2` is the everyday loop (about 5
# minutes on 2 cores); the README's test command, and so CI, runs everything.
SLOW_MODULES = {"test_ray.py", "test_tracking.py", "test_export.py", "test_hub.py", "test_faults.py",
                "test_backends.py", "test_backbones.py", "test_batch_predict.py", "test_kept_models.py",
                "test_performance.py", "test_precise_bn.py", "test_report.py", "test_recommendation.py",
                "test_training_options.py", "test_console.py", "test_serve.py",
                "test_compilation.py"}


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """Tests that use one of their module's module-scoped fixtures (a trained suite, a server)
    run on one xdist worker, so the fixture is built once, not once per worker. Afterwards,
    fail at once if pytest-xdist did not honour the groups (it renames node ids, which some
    pytest versions ignore): the Ray cluster and each shared fixture would be built per worker."""
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if any(True for _ in item.iter_markers("xdist_group")):
            continue
        definitions = getattr(item, "_fixtureinfo", None)
        module = item.nodeid.split("::")[0]
        if definitions and any(fixture.scope == "module" and fixture.baseid == module
                               for name in definitions.names_closure
                               for fixture in definitions.name2fixturedefs.get(name, ())):
            item.add_marker(pytest.mark.xdist_group(module))
    result = yield
    if getattr(config.option, "loadgroup", False):
        for item in items:
            groups = sorted({mark.args[0] for mark in item.iter_markers("xdist_group")})
            if groups and not item.nodeid.endswith("@" + "_".join(groups)):
                config.stash[GROUPING_FAILED] = (f"pytest-xdist's loadgroup did not group {item.nodeid}: this "
                                                 f"pytest and pytest-xdist do not work together; reinstall with "
                                                 f"pip install -e '.[dev]'")
    return result
