"""Faults and bad input, each as a real process against real files: signals to real
processes, a real full file system, real corrupted files. After each: the exit code, the one
line the user reads, and nothing lost (one row per finished run, every run folder readable)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zoo.results import read_result

HERE = Path(__file__).parent
# Long enough to be caught mid-training; a signal or the test ends it.
SLOW = {"name": "slow", "datasets": ["synthetic_terrain"], "heads": ["linear", "mlp"],
        "train": {"image_size": 32, "epochs": 200, "steps_per_epoch": 2}}
QUICK = {"name": "quick", "datasets": ["synthetic_terrain"], "heads": ["linear", "mlp"],
         "train": {"image_size": 32, "epochs": 1, "steps_per_epoch": 2}}


def zoo(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "zoo.cli", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def write_suite(tmp_path, suite, name="suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(suite))
    return path


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, less zoo's output filter (zoo.console)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z" and b"zoo/console.py" not in command:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_nothing_lost(out: Path) -> None:
    """One row per run in results.csv, each naming a run folder whose own row it is, and every
    finished run folder readable."""
    from zoo.results import unreadable_files

    frame = pd.read_csv(out / "results.csv")
    assert frame["run_id"].is_unique
    for row in frame.itertuples():
        recorded = read_result(out / "runs" / row.run_id)
        assert recorded is not None and recorded["status"] == row.status, row.run_id
        if row.status == "ok":
            assert not unreadable_files(out / "runs" / row.run_id)


def start_mid_run(tmp_path, out):
    """``zoo run`` on SLOW in its own session (as a terminal's foreground job), returned once its
    worker is training."""
    suite = write_suite(tmp_path, SLOW)
    process = subprocess.Popen([sys.executable, "-m", "zoo.cli", "run", str(suite), "--out", str(out),
                                "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "runs").glob(".*.partial/history.csv")):
        time.sleep(0.2)
    assert list((out / "runs").glob(".*.partial/history.csv")), "the run never started training"
    workers = children(process.pid)
    assert len(workers) == 1
    return process, workers[0], suite


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupt_records_the_run_as_interrupted_and_says_how_to_resume(tmp_path, signum, exit_code):
    out = tmp_path / "out"
    process, worker, suite = start_mid_run(tmp_path, out)
    os.killpg(process.pid, signum)  # Ctrl-C reaches the whole foreground process group
    output, _ = process.communicate(timeout=60)
    assert process.returncode == exit_code, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert output.strip().splitlines()[-1] == "interrupted after 0 of 2 runs; run the same command to resume"
    assert not alive(worker)
    frame = pd.read_csv(out / "results.csv")
    assert list(frame["status"]) == ["interrupted"] and signal.Signals(signum).name in frame["error"][0]
    assert_nothing_lost(out)
    if signum == signal.SIGTERM:  # the next run redoes the interrupted run and does the rest
        result = zoo("run", suite, "--out", out, "--no-report", "--set", "train.epochs=1")
        # --set changes the run ids; the interrupted run is simply one more unfinished folder
        assert result.returncode == 0, result.stdout[-2000:]


def test_a_killed_driver_takes_its_worker_with_it(tmp_path):
    out = tmp_path / "out"
    process, worker, _ = start_mid_run(tmp_path, out)
    os.kill(process.pid, signal.SIGKILL)  # the driver alone, as a scheduler or the OOM killer would
    process.communicate(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and alive(worker):
        time.sleep(0.1)
    assert not alive(worker), "the worker outlived its driver"
    assert not (out / "results.csv").exists() or pd.read_csv(out / "results.csv").empty


def test_runs_give_the_same_metrics_first_or_second_in_their_worker(tmp_path, backend="tensorflow"):
    import keras

    from zoo.backbones import BACKBONES

    # linear trains everything; mlp is frozen on "pretrained" weights, so its second run reuses the
    # backbone, the features and the compiled head its first made.
    weights = tmp_path / "baseline_cnn.weights.h5"
    keras.utils.set_random_seed(7)
    BACKBONES.get("baseline_cnn").build((32, 32, 3)).save_weights(weights)
    suite = write_suite(tmp_path, {**QUICK, "seeds": [0, 1], "heads": ["linear", "mlp"],
                                   "overrides": [{"match": {"head": "mlp"},
                                                  "set": {"trainable": "frozen", "weights": str(weights)}}],
                                   "train": {**QUICK["train"], "epochs": 2}})
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    both = zoo("run", suite, "--out", tmp_path / "both", "--no-report", env=env)
    alone = zoo("run", suite, "--out", tmp_path / "alone", "--no-report", "--only", "*-s1-*", env=env)
    assert both.returncode == 0 and alone.returncode == 0, both.stdout[-2000:] + alone.stdout[-2000:]
    table = pd.read_csv(tmp_path / "both" / "results.csv")
    assert table["backend"].str.startswith(f"{backend} ").all()
    assert set(table.loc[table["head"] == "mlp", "features"]) == {"computed", "reused"}
    run_ids = sorted(p.name for p in (tmp_path / "alone" / "runs").iterdir())
    assert len(run_ids) == 2  # each head's seed 1: later in its worker in "both", first of its kind in "alone"
    for run_id in run_ids:
        second = np.load(tmp_path / "both" / "runs" / run_id / "predictions.npz")["probabilities"]
        first = np.load(tmp_path / "alone" / "runs" / run_id / "predictions.npz")["probabilities"]
        np.testing.assert_array_equal(second, first, err_msg=run_id)


# --- damaged results ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-run suite (through the CLI, with its report), copied by each test that damages it."""
    root = tmp_path_factory.mktemp("finished")
    suite = write_suite(root, QUICK)
    result = zoo("run", suite, "--out", root / "out", "--no-report")
    assert result.returncode == 0, result.stdout[-2000:]
    return root / "out", suite


@pytest.fixture
def damaged(finished, tmp_path):
    out, suite = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return copy, suite, sorted(p.name for p in (copy / "runs").iterdir())


def one_line(result) -> str:
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("zoo")]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) >= 1, result.stderr[-3000:]
    return lines[0]


def test_a_corrupted_metrics_file_is_named_left_out_of_the_report_and_redone(damaged, tmp_path):
    out, suite, run_ids = damaged
    (out / "runs" / run_ids[0] / "metrics.json").write_text('{"accuracy": 0.9, "per_cl')
    report = zoo("report", out, "-o", tmp_path / "report", "--format", "md")
    assert report.returncode == 1  # written, but incomplete
    assert one_line(report).startswith(f"zoo: warning: run {run_ids[0]} is left out: metrics.json")
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"run {run_ids[0]} is left out: metrics.json" in text and "1 of 1 runs succeeded" in text
    rerun = zoo("run", suite, "--out", out, "--no-report")
    assert rerun.returncode == 0 and "1 already finished, 1 to run" in rerun.stdout, rerun.stdout[-2000:]
    assert_nothing_lost(out)
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 2 and set(frame["status"]) == {"ok"}
    assert json.loads((out / "runs" / run_ids[0] / "metrics.json").read_text())["accuracy"] is not None


def test_rows_that_are_not_runs_are_ignored_and_said_so(damaged, tmp_path):
    out, _, _ = damaged
    with open(out / "results.csv", "a") as table:
        table.write("garbage,line\n")
    report = zoo("report", out, "-o", tmp_path / "report", "--format", "md")
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "2 of 2 runs succeeded" in text and "seed 0.0" not in text and "seed 0" in text
    assert "line 4 of results.csv is not a run ('garbage,line'): ignored" in text


def test_an_unparseable_results_table_is_one_line(damaged, tmp_path):
    out, _, _ = damaged
    with open(out / "results.csv", "a") as table:
        table.write('"unclosed,quote\n')
    result = zoo("report", out, cwd=tmp_path)
    assert result.returncode == 2
    assert "results.csv cannot be read as a table" in one_line(result) and "zoo run" in one_line(result)
    assert not (tmp_path / "reports").exists()  # a refused report leaves no folder behind


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.keras").write_bytes((d / "model.keras").read_bytes()[:2000]), "model.keras cannot be loaded"),
    (lambda d: (d / "run.json").write_text("{broken"), "run.json cannot be read"),
], ids=["truncated-model", "corrupted-run-json"])
def test_predict_with_a_damaged_run_folder_is_one_line(damaged, tmp_path, damage, message):
    from PIL import Image

    out, _, run_ids = damaged
    run_dir = out / "runs" / run_ids[0]
    damage(run_dir)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "good.png")
    result = zoo("predict", run_dir, tmp_path / "good.png")
    assert result.returncode == 2 and message in one_line(result) and "--force" in one_line(result)


def test_predict_answers_every_input_and_names_the_ones_it_cannot_read(finished, tmp_path):
    from PIL import Image

    out, _ = finished
    run_dir = next((out / "runs").iterdir())
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "notes.txt").write_text("not an image")
    result = zoo("predict", run_dir, tmp_path / "notes.txt", tmp_path / "good.png")
    assert result.returncode == 1
    assert result.stdout.startswith(str(tmp_path / "good.png")) and "%" in result.stdout
    assert "notes.txt: cannot be read as an image" in one_line(result)
    assert "1 of 2 input(s) could not be classified" in result.stderr


# --- storage faults ---------------------------------------------------------------------------

@pytest.fixture
def small_filesystem(tmp_path):
    """A real 8 MB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_read_only_output_folder_is_one_line_and_writes_nothing(tmp_path, small_filesystem):
    subprocess.run(["mount", "-o", "remount,ro", str(small_filesystem)], check=True)
    result = zoo("run", write_suite(tmp_path, QUICK), "--out", small_filesystem / "out", "--no-report")
    assert result.returncode == 2
    line = one_line(result)
    assert "read-only" in line and str(small_filesystem / "out") in line and "--out" in line


def test_a_full_disk_fails_the_run_stops_the_suite_and_keeps_finished_rows(tmp_path, small_filesystem):
    suite = write_suite(tmp_path, QUICK)
    out = small_filesystem / "out"
    # The finished run and the resume run in this process; the fault hits the CLI's worker.
    from zoo.cli import main

    assert main(["run", str(suite), "--out", str(out), "--no-report", "--only", "*-linear-*", "--in-process"]) == 0
    filler = small_filesystem / "filler"
    free = shutil.disk_usage(small_filesystem).free
    filler.write_bytes(b"\0" * max(0, free - 64 * 1024))  # leave 64 KB: too little for a run
    result = zoo("run", suite, "--out", out, "--no-report")
    assert result.returncode == 1, result.stdout[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("zoo: error: no space left on the device") and "Free space and run the same command" in last
    print(result.stdout[-4000:], result.stderr[-4000:])
    assert "Traceback" not in result.stdout + result.stderr
    frame = pd.read_csv(out / "results.csv")
    assert (frame["status"] == "ok").sum() == 1  # the finished run is kept
    assert_nothing_lost(out)
    filler.unlink()
    assert main(["run", str(suite), "--out", str(out), "--no-report", "--in-process"]) == 0
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 2 and set(frame["status"]) == {"ok"}
    assert_nothing_lost(out)


# --- bad data -------------------------------------------------------------------------------

def make_messy_folder(root: Path) -> Path:
    """A classification folder with what users' folders have: a 16-bit PNG among 8-bit ones, a
    text file, a truncated image, a hidden folder, a class named with HTML, a class too small
    to reach the test split."""
    from PIL import Image

    rng = np.random.default_rng(0)
    classes = {"cat": 60, "dog": 200, "<b>x": 130}
    for split, count in (("train", 14), ("test", 4)):
        for name, level in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(rng.normal(level, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    (root / "train" / "rare").mkdir()
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(root / "train" / "rare" / "only.png")
    sixteen = (np.full((24, 24), 60, np.uint16) * 257)  # the same grey as an 8-bit 60
    Image.fromarray(sixteen).save(root / "train" / "cat" / "sixteen.png")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    good = (root / "train" / "dog" / "0.png").read_bytes()
    (root / "train" / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train" / ".thumbnails").mkdir()
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(root / "train" / ".thumbnails" / "t.png")
    return root


def test_a_messy_folder_runs_and_says_what_it_skipped_and_what_it_cannot_judge(tmp_path):
    data = make_messy_folder(tmp_path / "messy")
    # A photo in the folder's own train and test splits: the test then scores an image the model trained on.
    (data / "test" / "<b>x" / "from-train.png").write_bytes((data / "train" / "<b>x" / "3.png").read_bytes())
    suite = write_suite(tmp_path, {"name": "messy", "datasets": [{"name": "messy", "source": "folder",
                                                                   "path": str(data)}],
                                   "train": {"image_size": 24, "epochs": 1, "batch_size": 8}})
    result = zoo("run", suite, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "dataset messy: 3 file(s) skipped (" in result.stdout  # text file, truncated PNG, hidden folder
    assert "`zoo data info` lists them all" in result.stdout
    assert "class(es) 'rare' (1 image(s)) have no test example" in result.stdout
    run_dir = next((tmp_path / "out" / "runs").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["classes_without_test_examples"] == ["rare"] and metrics["macro_classes"] == 3
    rare = next(row for row in metrics["per_class"] if row["class"] == "rare")
    assert rare["precision"] is None and rare["recall"] is None
    report = (tmp_path / "reports" / "messy" / "report.md").read_text()
    assert "&lt;b&gt;x" in report and "<b>x" not in report
    assert "Skipped files: 3 were left out of the data" in report
    assert "Classes without a test example: rare" in report
    from markupsafe import escape

    copied = "1 image(s) are in two of this folder's own splits (test/<b>x/from-train.png = train/<b>x/3.png)"
    assert "note: dataset messy: 1 image(s) are in two of this folder's own splits" in result.stdout
    assert "Notes on the data:\n\n- classes range from 1 image (rare) to 19" in report
    assert "\n- 1 image(s) are byte-for-byte copies" in report
    assert f"- {copied}".replace("<", "&lt;").replace(">", "&gt;") in report
    assert f"<li>{escape(copied)}" in (tmp_path / "reports" / "messy" / "report.html").read_text()
    from zoo.serve.study import Study

    served = Study(tmp_path / "out").leaderboards()["sections"][0]["data_notes"]  # zoo serve's leaderboard
    assert any(note.startswith(copied) for note in served), served
    info = zoo("data", "info", data)
    assert "hidden folder" in info.stdout and ".thumbnails" in info.stdout


@pytest.mark.parametrize("minority", ["png", "tif"])
def test_every_file_is_scaled_by_its_own_bit_depth(tmp_path, minority):
    import tifffile
    from PIL import Image

    from zoo.data.sources import open_source

    for name, level in (("dark", 40), ("light", 200)):
        (tmp_path / name).mkdir()
        for index in range(6):
            Image.fromarray(np.full((8, 8, 3) if minority == "png" else (8, 8), level, np.uint8)).save(
                tmp_path / name / f"{index}.png")
    deep = np.full((8, 8), 200 * 257, np.uint16)  # 16 bits, as bright as an 8-bit 200
    if minority == "png":
        Image.fromarray(deep).save(tmp_path / "light" / "deep.png")
    else:
        tifffile.imwrite(tmp_path / "light" / "deep.tif", deep)
    source = open_source({"name": "depths", "source": "folder", "path": str(tmp_path)})
    arrays = source.example_arrays("train")
    values = {float(np.max(arrays[i][0])) for i in range(len(arrays))}
    assert values == {40.0, 200.0}, values


def test_huge_images_are_reduced_as_they_decode_and_refused_above_the_limit(tmp_path, monkeypatch):
    from PIL import Image

    from zoo.data import images

    Image.fromarray(np.full((300, 450, 3), 7, np.uint8)).save(tmp_path / "wide.png")
    monkeypatch.setattr(images, "DECODE_LONG_SIDE", 100)
    assert images.read_image(tmp_path / "wide.png").shape == (75, 113, 3)  # reduced 4x (rounding up)
    assert images.read_image(tmp_path / "wide.png", reduce=False).shape == (300, 450, 3)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100_000)
    assert "megapixels is above zoo's limit" in images.probe_file(tmp_path / "wide.png")["error"]


# --- several writers -------------------------------------------------------------------------

def start_two(tmp_path, started_when: str):
    """Two `zoo run` of one 4-run suite on one folder, the second started once the first's run
    folder holds ``started_when``; the first in its own session."""
    suite = write_suite(tmp_path, {**QUICK, "seeds": [0, 1]})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "zoo.cli", "run", str(suite), "--out", str(out), "--no-report"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "runs").glob(f".*.partial/{started_when}")):
        time.sleep(0.1)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return suite, out, first, second


def test_two_runs_on_one_folder_split_the_suite_and_end_with_one_row_per_run(tmp_path):
    _, out, first, second = start_two(tmp_path, "claim.json")
    logs = [process.communicate(timeout=600)[0] for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, logs
    assert "another process is running it; skipped" in logs[1] or "finished meanwhile" in logs[1]
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 4 and set(frame["status"]) == {"ok"}
    for run_id in frame["run_id"]:  # each run executed by exactly one of the two
        assert sum(f"{run_id}: ok" in log for log in logs) == 1, run_id
    assert not list((out / "runs").glob(".*"))
    assert_nothing_lost(out)


def test_a_killed_process_among_two_on_one_folder_is_resumed_with_one_ok_row_per_run(tmp_path):
    suite, out, first, second = start_two(tmp_path, "history.csv")
    os.killpg(first.pid, signal.SIGKILL)  # mid-run, holding its claim
    first.communicate()
    second.communicate(timeout=600)
    resumed = zoo("run", suite, "--out", out, "--no-report")
    assert second.returncode == 0 and resumed.returncode == 0, resumed.stdout[-2000:]
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 4 and frame["run_id"].is_unique and set(frame["status"]) == {"ok"}
    assert not list((out / "runs").glob(".*"))
    assert_nothing_lost(out)
