"""Pre-flight: readiness of data and weights before any run, the plan with estimates, overrides."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from zoo.cli import main
from zoo.errors import ConfigError
from zoo.harness.suite import expand_suite, load_suite, suite_warnings

ROOT = Path(__file__).parent.parent
QUICK = {"name": "pre", "datasets": ["synthetic_terrain"], "backbones": ["baseline_cnn", "mobilenet_v2"],
         "heads": ["linear"], "train": {"image_size": 32, "epochs": 1}}


def zoo(*args, env=None):
    return subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_seeds_suite_without_prepared_data_stops_at_once_naming_every_dataset(tmp_path):
    out = tmp_path / "out"
    result = zoo("run", "benchmarks/seeds.yaml", "--out", str(out),
                 env={"TFDS_DATA_DIR": str(tmp_path / "tfds"), "ZOO_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr
    for name in ("stanford_dogs", "eurosat_rgb"):
        assert f"fix: zoo data prepare {name}" in message
    assert "fix: zoo data prepare landcover_ens --data-dir DIR" in message
    assert "zoo weights fetch 'resnet50'" in message and "baseline_cnn" not in message.split("weights")[-1]
    assert "Traceback" not in message and not out.exists()


def test_missing_imagenet_weights_are_named_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    suite = load_suite({**QUICK, "backbones": ["mobilenet_v2"], "weights": "imagenet", "trainable": "frozen"})
    with pytest.raises(Exception) as error:
        from zoo.harness.runner import run_suite

        run_suite(suite, tmp_path / "out", executor="in-process", report=False, log=lambda *_: None,
                  suite_path="s.yaml")
    text = str(error.value)
    assert "weights mobilenet_v2" in text and "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in text
    assert "zoo weights fetch 'mobilenet_v2' --dest DIR" in text and "zoo run s.yaml --prepare" in text
    assert not (tmp_path / "out").exists()


def test_plan_of_the_quickstart_lists_every_run_with_status_and_estimates_and_writes_nothing(tmp_path, capsys):
    suite_file = str(ROOT / "benchmarks" / "quickstart.yaml")
    out = tmp_path / "out"
    assert main(["plan", suite_file, "--out", str(out), "--workers", "3"]) == 0
    before = capsys.readouterr().out
    assert not out.exists()
    runs = expand_suite(load_suite(suite_file))
    lines = {run.run_id: next(l for l in before.splitlines() if l.startswith(run.run_id)) for run in runs}
    assert all(" pending " in line and " yes " in line for line in lines.values())
    assert all(line.split()[-1] != "-" and line.split()[-1] != "0m00s" for line in lines.values())
    assert f"suite: 0 finished, {len(runs)} to run, about" in before
    # zoo run --workers 3's time as well: the runs spread over three workers, less than one after another
    serial = re.search(r"to run, about (\d+)m(\d\d)s on .*, one run after another", before)
    spread = re.search(r"with 3 workers at once: at best about (\d+)m(\d\d)s", before)
    assert serial and spread, before
    assert 0 < int(spread[1]) * 60 + int(spread[2]) < int(serial[1]) * 60 + int(serial[2])

    first = next(r for r in runs if r.backbone == "baseline_cnn" and r.head == "linear")
    assert main(["run", suite_file, "--out", str(out), "--only", first.run_id, "--no-report", "--in-process",
                 "--set", "train.epochs=1"]) == 2  # --set changes every run id: nothing matches
    capsys.readouterr()
    assert main(["run", suite_file, "--out", str(out), "--only", first.run_id, "--no-report", "--in-process"]) == 0
    capsys.readouterr()
    assert main(["run", suite_file, "--out", str(out), "--dry-run"]) == 0
    after = capsys.readouterr().out
    finished = next(l for l in after.splitlines() if l.startswith(first.run_id))
    assert finished.split()[-3:] == ["finished", "-", "-"]  # needs nothing, no estimate
    assert f"suite: 1 finished, {len(runs) - 1} to run" in after
    assert sorted(p.name for p in (out / "runs").iterdir()) == [first.run_id]


def test_runs_spread_over_workers_as_zoo_run_hands_them_out():
    from zoo.harness.preflight import spread_over_workers

    # The first estimate carries its worker's start-up; each further worker pays its own on its first run.
    assert spread_over_workers([10, 10, 10, 10], 1, 3) == 40
    assert spread_over_workers([10, 10, 10, 10], 2, 3) == 23  # 10 + 10 on one, 13 + 10 on the other
    assert spread_over_workers([10, 10, 10, 10], 8, 3) == 13  # more workers than runs
    assert spread_over_workers([30, 5, 5, 5, 5], 2, 0) == 30  # the long run on one worker, the rest on the other


def test_overrides_apply_to_matching_runs_only_and_are_recorded():
    suite = load_suite({**QUICK, "weights": "imagenet", "trainable": "frozen",
                        "finetune": {"epochs": 2},
                        "overrides": [{"match": {"backbone": "baseline_*"},
                                       "set": {"weights": "none", "trainable": "all", "finetune": None,
                                               "train": {"epochs": 7}}}]})
    runs = {r.backbone: r for r in expand_suite(suite)}
    baseline, mobilenet = runs["baseline_cnn"], runs["mobilenet_v2"]
    assert (baseline.weights, baseline.trainable, baseline.finetune, baseline.train.epochs) == \
        ("none", "all", None, 7)
    assert baseline.overrides == ["#0 backbone=baseline_*"]
    assert (mobilenet.weights, mobilenet.trainable, mobilenet.train.epochs) == ("imagenet", "frozen", 1)
    assert mobilenet.finetune["epochs"] == 2 and mobilenet.overrides == []
    plain = {r.backbone: r.run_id for r in expand_suite(load_suite({**QUICK, "weights": "imagenet",
                                                                    "trainable": "frozen", "finetune": {"epochs": 2}}))}
    assert plain["baseline_cnn"] != baseline.run_id and plain["mobilenet_v2"] == mobilenet.run_id


@pytest.mark.parametrize("overrides, message", [
    ([{"match": {"backbone": "resnet*"}, "set": {"trainable": "all"}}], "overrides[0].match"),
    ([{"match": {"backbon": "x"}, "set": {"trainable": "all"}}], "unknown key 'backbon' (did you mean 'backbone'?)"),
    ([{"match": {"head": "linear"}, "set": {"train": {"epoch": 3}}}], "overrides[0].set.train: unknown key 'epoch'"),
    ([{"match": {"head": "linear"}, "set": {"trainable": "top"}}], "top:N"),
    ([{"match": {"head": "linear"}}], "give `match:`"),
])
def test_bad_overrides_fail_before_training_naming_them(overrides, message):
    with pytest.raises(ConfigError) as error:
        expand_suite(load_suite({**QUICK, "overrides": overrides}))
    assert message in str(error.value)


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_suite_validates_without_a_warning(path):
    runs = expand_suite(load_suite(path))
    assert runs and suite_warnings(runs) == []


def test_seeds_baseline_trains_from_scratch_while_the_others_fine_tune():
    runs = expand_suite(load_suite(ROOT / "benchmarks" / "seeds.yaml"))
    for run in runs:
        if run.backbone == "baseline_cnn":
            assert (run.weights, run.trainable, run.finetune) == ("none", "all", None)
        else:
            assert (run.weights, run.trainable) == ("imagenet", "frozen") and run.finetune


@pytest.mark.parametrize("seeds, message", [([], "seeds: give a whole number"), (["abc"], "seeds: give a whole")])
def test_bad_seeds_are_a_clear_error(seeds, message):
    with pytest.raises(ConfigError, match=message):
        expand_suite(load_suite({**QUICK, "seeds": seeds}))


def test_plan_marks_runs_that_cannot_start_and_exits_2(tmp_path):
    result = zoo("plan", "benchmarks/seeds.yaml", "--out", str(tmp_path / "out"),
                 env={"TFDS_DATA_DIR": str(tmp_path / "tfds"), "ZOO_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("stanford_dogs-", "eurosat_rgb-"))]
    assert len(rows) == 36 and all(row[-3:] == ["pending", "NO", "-"] for row in rows)
    assert "fix: zoo data prepare stanford_dogs" in result.stdout and not (tmp_path / "out").exists()


def test_prepare_builds_the_missing_dataset_and_the_suite_then_trains(tmp_path, capsys):
    """`zoo run --prepare` on a suite whose land-cover data is downloaded but not built: without the flag
    the suite is refused with the fix; with it the dataset is built where the suite reads it, and it trains."""
    from test_data import write_challenge_files

    raw, built = tmp_path / "raw", tmp_path / "tfds"
    write_challenge_files(raw, train=12, test=2)
    suite = tmp_path / "land.yaml"
    suite.write_text(json.dumps({
        "name": "land", "datasets": [{"name": "landcover_ens", "manual_dir": str(raw), "data_dir": str(built)}],
        "backbones": ["baseline_cnn"], "heads": ["fcn"],
        "train": {"image_size": 32, "batch_size": 4, "epochs": 1, "steps_per_epoch": 2, "precise_bn": False}}))
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--in-process", "--no-report"]) == 2
    assert "fix: zoo data prepare landcover_ens --data-dir DIR" in capsys.readouterr().err and not out.exists()
    assert main(["run", str(suite), "--out", str(out), "--in-process", "--no-report", "--prepare"]) == 0
    assert "building dataset landcover_ens from" in capsys.readouterr().out
    assert list(built.glob("landcover_ens/*/dataset_info.json"))  # built where the suite's data_dir points
    assert pd.read_csv(out / "results.csv")["status"].tolist() == ["ok"]


def test_a_carving_the_data_cannot_give_stops_the_suite_before_any_run(tmp_path, capsys):
    """Fractions leaving nothing to train on (or a split that comes out empty on small data) were found by each
    run at its start, one failed run after another; now the suite is refused with the carving named, and without
    suggesting --prepare, which cannot fix it."""
    suite = tmp_path / "split.yaml"
    suite.write_text(json.dumps({**QUICK, "backbones": ["baseline_cnn"], "seeds": [0, 1],
                                 "datasets": [{"name": "synthetic_terrain", "split": {"val": 0.6, "test": 0.5}}]}))
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--in-process", "--no-report"]) == 2
    error = capsys.readouterr().err
    assert error.count("split of dataset synthetic_terrain: split: test and val would take 1.1 of the images") == 1
    assert "fix: change split: in its dataset entry" in error and "--prepare" not in error and not out.exists()


@pytest.mark.parametrize("fractions", [None, {"val": 0.2, "test": 0.1}, {"val": 0.05}])
def test_the_plan_estimates_the_split_sizes_the_run_carves(fractions):
    """The plan's sizes come from the run's own carving (zoo.data.splits), so the two cannot drift."""
    from types import SimpleNamespace

    from zoo.data import open_source
    from zoo.data.splits import plan_for_source
    from zoo.harness.preflight import split_sizes
    from zoo.runspec import TrainSettings

    for name in ("synthetic_terrain", "synthetic_landcover"):
        source = open_source(name)
        carved = {split: len(indices) if indices is not None else source.info.splits[origin]
                  for split, (origin, indices) in plan_for_source(source, fractions, 3).items()}
        run = SimpleNamespace(train=TrainSettings(split=fractions), dataset={}, split_seed=3)
        assert split_sizes(run, source.info) == carved


def test_the_pytorch_backend_on_an_nvidia_gpu_is_named_with_its_measured_speed_before_the_suite(tmp_path, monkeypatch,
                                                                                               capsys):
    """Keras's PyTorch backend measured about a tenth of the JAX backend's speed on an H200: zoo plan says so,
    with the figures, where an NVIDIA GPU is present and a run trains there; not on a CPU, not for JAX runs."""
    from zoo.harness.preflight import GPU_SPEED_VS_TIMM, slow_backend_warnings

    runs = expand_suite(load_suite({**QUICK, "train": {**QUICK["train"], "backend": "torch"}}))
    jax_runs = expand_suite(load_suite({**QUICK, "train": {**QUICK["train"], "backend": "jax"}}))
    (line,) = slow_backend_warnings(runs, gpu="/dev/nvidia0")
    assert "2 run(s)" in line and GPU_SPEED_VS_TIMM["torch"]["inference"] in line and "train.backend: jax" in line
    assert slow_backend_warnings(jax_runs, gpu="/dev/nvidia0") == []
    monkeypatch.setattr("zoo.console.nvidia_gpu_present", lambda: None)
    assert slow_backend_warnings(runs) == []

    monkeypatch.setattr("zoo.console.nvidia_gpu_present", lambda: "/dev/nvidia0")
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({**QUICK, "backbones": ["baseline_cnn"], "train": {**QUICK["train"], "backend": "torch"}}))
    main(["plan", str(suite), "--out", str(tmp_path / "out")])
    assert "Keras's PyTorch backend on this NVIDIA GPU" in capsys.readouterr().out


def test_the_plan_prices_decoding_once_per_dataset_and_size_and_not_once_cached(tmp_path, capsys):
    """The first run of a dataset and image size decodes its images (measured on a few), the second seed
    reads them; once OUT/cache/images holds them, no run pays; train.cache: none pays every epoch."""
    from zoo.data import open_source
    from zoo.data.decoded import open_decoded
    from zoo.harness.preflight import _dataset_key, decode_estimates

    suite = {**QUICK, "backbones": ["baseline_cnn"], "seeds": [0, 1]}
    runs = expand_suite(load_suite(suite))
    source = open_source("synthetic_terrain")
    sources = {_dataset_key(runs[0].dataset): source}
    estimates = decode_estimates(runs, sources, tmp_path)
    first, second = (estimates[run.run_id] for run in runs)
    assert first > 0 and second == 0
    streamed = expand_suite(load_suite({**suite, "train": {**QUICK["train"], "cache": "none", "epochs": 3}}))
    with pytest.MonkeyPatch.context() as patch:  # a fixed rate: 900 tiles, 3 epochs and the test pass each
        patch.setattr("zoo.data.decoded.decode_seconds_per_example", lambda *args: 0.01)
        assert [decode_estimates(streamed, sources, tmp_path)[run.run_id] for run in streamed] == \
            pytest.approx([0.01 * 900 * 4] * 2)
    open_decoded(source, "train", 32, tmp_path / "cache" / "images")
    assert set(decode_estimates(runs, sources, tmp_path).values()) == {0.0}

    main(["plan", json_file(tmp_path, suite), "--out", str(tmp_path / "fresh")])
    assert "Decoding the images" in capsys.readouterr().out
    main(["plan", json_file(tmp_path, suite), "--out", str(tmp_path)])
    assert "Decoding the images" not in capsys.readouterr().out


def json_file(folder, suite) -> str:
    path = folder / "suite.json"
    path.write_text(json.dumps(suite))
    return str(path)
