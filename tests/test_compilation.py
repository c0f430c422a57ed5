"""Compile once per architecture on JAX: the persistent compilation cache of an output folder serves the later
runs of a sweep (each in its own process here, as on Ray or after a resume), counted by JAX itself, and a
damaged or unusable cache changes nothing but the time."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

pytest.importorskip("jax")

SUITE = {"name": "compile_once", "datasets": ["synthetic_terrain"], "backbones": ["baseline_cnn"], "heads": ["linear"],
         "seeds": [0, 1, 2],
         "train": {"image_size": 32, "batch_size": 16, "epochs": 1, "steps_per_epoch": 2, "backend": "jax",
                   "precise_bn": False}}


def zoo_run(suite_file, out, *extra, env=None):
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "run", str(suite_file), "--out", str(out), "--no-report",
                             "--isolate", *extra], capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, pd.read_csv(out / "results.csv").sort_values("seed").reset_index(drop=True)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile")
    suite = root / "suite.yaml"
    suite.write_text(json.dumps(SUITE))
    _, table = zoo_run(suite, root / "out")
    return root, suite, table


def test_later_runs_of_a_sweep_compile_nothing_new(sweep):
    root, _, table = sweep
    first, later = table.iloc[0], table.iloc[1:]
    assert first["compilations"] > 0 and first["compile_seconds"] > 0 and first["compile_cache_hits"] == 0
    assert (later["compilations"] == 0).all() and (later["compile_cache_hits"] > 0).all()
    assert (later["compile_seconds"] < first["compile_seconds"]).all()
    recorded = json.loads((root / "out" / "runs" / first["run_id"] / "metrics.json").read_text())
    compiled = recorded["compiled_functions"]
    assert compiled["jit(train_step)"] == 1  # full batches only (steps_per_epoch): one shape, one compilation
    # Where the compile time went, by function: every compiled function named, the train step the largest
    # share (forward and backward), the parts adding up to the run's compile_seconds.
    by_function = recorded["compile_seconds_by_function"]
    assert set(compiled) <= set(by_function) and max(by_function, key=by_function.get) == "jit(train_step)"
    assert abs(sum(by_function.values()) - first["compile_seconds"]) < 0.01 + 0.001 * len(by_function)
    assert any((root / "out" / "cache" / "compilation" / "jax").iterdir())
    # The inference programs of the evaluation (batches of 16) and of the speed measurement (16 and 1) were
    # compiled in the background while the train step compiled, each once: the calls found them.
    assert recorded["compiled_ahead"]["programs"] == 2 and recorded["compiled_ahead"]["failed"] == 0
    assert compiled["jit(inference)"] == 2
    for run_id in later["run_id"]:  # the speed measured once in the folder: only the evaluation's program
        assert json.loads((root / "out" / "runs" / run_id / "metrics.json").read_text())["compiled_ahead"]["programs"] == 1


def test_compiling_ahead_changes_no_number_of_a_run(tmp_path):
    """The same run (precise BatchNorm on: its forward is compiled ahead too) with ZOO_COMPILE_AHEAD=0, every
    program compiled where it is first called: the same epochs, validation, test metrics and predictions."""
    import numpy as np

    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({**SUITE, "seeds": [0], "train": {**SUITE["train"], "epochs": 2, "precise_bn": True}}))
    runs = {}
    for ahead in ("1", "0"):
        _, table = zoo_run(suite, tmp_path / ahead, env={"ZOO_COMPILE_AHEAD": ahead})
        folder = tmp_path / ahead / "runs" / table.iloc[0]["run_id"]
        runs[ahead] = (table.iloc[0], json.loads((folder / "metrics.json").read_text()),
                       pd.read_csv(folder / "history.csv"), np.load(folder / "predictions.npz"))
    (row, metrics, history, predictions), (row0, metrics0, history0, predictions0) = runs["1"], runs["0"]
    assert metrics["compiled_ahead"]["programs"] == 3 and metrics0["compiled_ahead"] is None
    assert metrics["compiled_functions"]["jit(updated_state)"] == 1 and metrics["compiled_functions"]["jit(inference)"] == 2
    pd.testing.assert_frame_equal(history.drop(columns="learning_rate"), history0.drop(columns="learning_rate"))
    for metric in ("accuracy", "macro_f1", "macro_precision", "macro_recall"):
        assert row[metric] == row0[metric], metric
    assert set(predictions.files) == set(predictions0.files)
    for name in predictions.files:
        assert np.array_equal(predictions[name], predictions0[name]), name


def test_a_damaged_cache_is_compiled_again_and_gives_the_same_numbers(sweep, tmp_path):
    import shutil

    root, suite, table = sweep
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    for entry in (out / "cache" / "compilation" / "jax").rglob("*"):
        if entry.is_file():
            entry.write_bytes(b"not an executable")
    _, again = zoo_run(suite, out, "--force", "--only", table.iloc[1]["run_id"])
    row = again.set_index("run_id").loc[table.iloc[1]["run_id"]]
    assert row["status"] == "ok" and row["compilations"] > 0
    for metric in ("accuracy", "macro_f1", "macro_precision", "macro_recall"):
        assert row[metric] == table.iloc[1][metric]


def test_an_unusable_cache_folder_warns_once_and_the_run_compiles_without_it(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({**SUITE, "seeds": [0]}))
    out = tmp_path / "out"
    (out / "cache").mkdir(parents=True)
    (out / "cache" / "compilation").write_text("a file where the cache folder belongs")
    result, table = zoo_run(suite, out)
    assert table.iloc[0]["status"] == "ok" and table.iloc[0]["compile_cache_hits"] == 0
    assert result.stderr.count("the compilation cache") == 1 and "compiles without it" in result.stderr


def test_tensorflow_xla_runs_share_their_executables_and_leave_the_counts_empty(tmp_path):
    """train.xla on TensorFlow: the first run writes its XLA executables under the output folder (a subfolder
    per machine), a later run of the sweep in another process loads them and writes none, a damaged entry is
    compiled and written again with the same numbers, and the quiet output shows nothing of it. TensorFlow
    gives no per-run count: the columns stay empty."""
    suite = tmp_path / "suite.yaml"
    train = {**SUITE["train"], "backend": "tensorflow", "xla": True}
    suite.write_text(json.dumps({**SUITE, "seeds": [0], "train": train}))
    out = tmp_path / "out"
    zoo_run(suite, out)
    entries = lambda: sorted((out / "cache" / "compilation" / "tensorflow").glob("*/*.pb"))  # noqa: E731
    written = entries()
    assert written and all(entry.stat().st_size > 1000 for entry in written)
    suite.write_text(json.dumps({**SUITE, "seeds": [0, 1], "train": train}))
    result, table = zoo_run(suite, out)
    assert entries() == written  # the second run loaded every executable it needed
    assert "cpu_aot_loader" not in result.stderr and "XLA:CPU AOT" not in result.stderr
    assert (table["status"] == "ok").all() and table["xla"].all()
    assert table[["compilations", "compile_seconds", "compile_cache_hits"]].isna().all().all()
    for number, entry in enumerate(written):  # a foreign file, or one cut short by a killed run
        entry.write_bytes(b"not an executable" if number % 2 else entry.read_bytes()[:-7])
    _, again = zoo_run(suite, out, "--force", "--only", table.iloc[1]["run_id"])
    assert all(entry.stat().st_size > 1000 for entry in entries())
    row = again.set_index("run_id").loc[table.iloc[1]["run_id"]]
    for metric in ("accuracy", "macro_f1", "macro_precision", "macro_recall"):
        assert row[metric] == table.iloc[1][metric]


def test_a_users_own_xla_cache_folder_is_kept_and_zoos_own_follows_the_output_folder(tmp_path, monkeypatch):
    from zoo.harness import compilation

    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_min_cluster_size=2 --tf_xla_persistent_cache_directory=/mine")
    monkeypatch.delenv(compilation.TF_CACHE_SET_BY_ZOO, raising=False)
    assert str(compilation._tensorflow_xla_cache(tmp_path / "a")) == "/mine"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_min_cluster_size=2")
    first = compilation._tensorflow_xla_cache(tmp_path / "a")
    second = compilation._tensorflow_xla_cache(tmp_path / "b")  # a parent's setting, inherited: replaced
    assert first.parent == tmp_path / "a" and second.parent == tmp_path / "b"
    assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_min_cluster_size=2 --tf_xla_persistent_cache_directory={second}"
