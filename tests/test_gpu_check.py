"""benchmarks/gpu_check.py, the one command a GPU session runs (issue 31), tried on this CPU with --quick:
every check writes its rows, the summary names the device and each figure beside its target."""
import csv
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def gpu_check_quick(tmp_path, *args, timeout=900):
    """`gpu_check.py --quick --backends jax` on this CPU, its files in ``tmp_path``; returns the finished
    process and the rows of the CSV it wrote (empty where none)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--backends", "jax",
                           *args, "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    tables = list(tmp_path.glob("gpu-*-quick.csv"))
    return done, (list(csv.DictReader(open(tables[0]))) if tables else [])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_the_gpu_check_writes_every_figure_with_its_target(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--backends", "jax",
                           "--models", "mobilenet_v2", "--out-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [table] = list(tmp_path.glob("gpu-*-quick.csv"))
    rows = list(csv.DictReader(open(table)))
    checks = {(row["check"], row["subject"]) for row in rows}
    assert {("vs_timm", "mobilenet_v2"), ("quickstart", "whole command"),
            ("input", "delivered / mobilenet_v2 training"),
            ("evaluation", "run's evaluation / zoo speed, mobilenet_v2"), ("bfloat16", "mobilenet_v2 infer"),
            ("bfloat16", "mobilenet_v2 train")} <= checks
    # Where the inference time of the model profiled goes, by category, beside the wall time.
    profiled = {row["subject"]: row for row in rows if row["check"] == "profile"}
    assert float(profiled["mobilenet_v2 convolution"]["value"]) > 0, profiled
    assert re.search(r"^zoo [0-9.]+ ms of host XLA operations in [0-9.]+ ms wall \(\d+ % busy\); timm",
                     profiled["mobilenet_v2 total"]["detail"]), profiled
    assert list(tmp_path.glob("profile-mobilenet_v2-*-quick.csv")), list(tmp_path.iterdir())
    [table_for_later] = list(tmp_path.glob("vs-timm-*-quick.csv"))  # a later command's --vs-timm-csv
    assert [row["model"] for row in csv.DictReader(open(table_for_later))] == ["mobilenet_v2"]
    has_timm = importlib.util.find_spec("timm") is not None
    for row in rows:
        if row["check"] == "bfloat16":  # measured in bfloat16, set beside zoo's own other figure and timm's
            figures = re.search(r"zoo mixed_bfloat16 ([0-9.]+) img/s, zoo float32 ([0-9.]+) img/s", row["detail"])
            assert figures and float(figures.group(1)) > 0 and float(figures.group(2)) > 0, row
            assert bool(row["value"]) == has_timm, row  # the ratio to timm where timm is installed
    runs = [row for row in rows if row["check"] == "quickstart" and row["subject"] != "whole command"]
    assert len(runs) == 2 and all("status ok" in row["detail"] for row in runs)
    assert all(float(row["value"]) > 0 for row in runs)  # JAX compiled each run's steps: seconds measured
    assert all(re.search(r"compile s by function: .*jit\(train_step\) [0-9.]+", row["detail"]) for row in runs), runs
    # The inference programs (the evaluation's batch and speed's batch 1) compiled beside the train step.
    assert all(re.search(r"; compiled ahead: [23] programs in [0-9.]+ s, waited [0-9.]+ s", row["detail"])
               for row in runs), runs
    assert all(re.search(r"; run [0-9.]+ s;.*stage s: start [0-9.]+, data [0-9.]+, build [0-9.]+, train [0-9.]+, "
                         r"evaluate [0-9.]+, speed [0-9.]+, save [0-9.]+;", row["detail"]) for row in runs), runs
    whole = next(row for row in rows if row["subject"] == "whole command")
    assert float(whole["value"]) > 0 and whole["backend"] == "jax" and whole["target"] == "<= 60 on an H200"
    inside, outside = map(float, re.search(r"([0-9.]+) s in the runs, (-?[0-9.]+) s outside them", whole["detail"]).groups())
    assert inside > 0 and outside > 0 and abs(inside + outside - float(whole["value"])) < 0.2, whole
    summary = table.with_suffix(".md").read_text()
    assert summary.startswith("# GPU check: CPU") and "not a measurement of a GPU" in summary
    assert "| input | delivered / mobilenet_v2 training | jax |" in summary


def test_a_spent_budget_stops_a_child_politely_then_for_good(tmp_path):
    """The lent GPU machine cuts a command at its limit and returns only what was written: a check that
    runs past the budget is interrupted (SIGINT, so `zoo run` can keep the runs it finished), and killed
    when it does not stop."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from budget import Budget
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    polite = ("import sys, time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
              f"    open({str(tmp_path / 'interrupted')!r}, 'w').write('yes')\n    sys.exit(130)\n")
    # Started as a background job starts it (`cmd &` in a non-interactive shell: SIGINT ignored, and
    # inherited), the child must still get its interrupt. 8 s: time to start Python before the budget ends.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        done = Budget(8).run([sys.executable, "-c", polite])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert done.cut and done.returncode is None and (tmp_path / "interrupted").read_text() == "yes"
    stubborn = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('started', flush=True)\ntime.sleep(600)\n"
    import budget as budget_module

    budget_module.GRACE_SECONDS, grace = 1.0, budget_module.GRACE_SECONDS
    try:
        done = Budget(8).run([sys.executable, "-c", stubborn])
    finally:
        budget_module.GRACE_SECONDS = grace
    assert done.cut and "started" in done.output
    finished = Budget(30).run([sys.executable, "-c", "print('done')"])
    assert not finished.cut and finished.returncode == 0 and finished.output.strip() == "done"


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_the_gpu_check_ends_within_its_budget_and_says_what_it_did_not_run(tmp_path):
    """Each check ends at its share of the budget: one slow check (vs_timm here) cannot starve the rest."""
    import time

    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--backends", "jax",
                           "--models", "mobilenet_v2", "resnet50", "--out-dir", str(tmp_path), "--budget", "5"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert seconds < 5 + 30 + 30, seconds  # the budget, one interrupted child's grace, start-up
    [table] = list(tmp_path.glob("gpu-*-quick.csv"))
    rows = list(csv.DictReader(open(table)))
    assert not list(tmp_path.glob(".*.tmp"))  # every file whole (zoo.results.write_atomic's temporary names)
    resnet = [row for row in rows if row["check"] == "vs_timm" and row["subject"] == "resnet50"]
    assert resnet and all("time budget" in row["detail"] and not row["value"] for row in resnet), resnet
    later = {row["check"]: row for row in rows if row["check"] in ("quickstart", "input", "evaluation")}
    assert set(later) == {"quickstart", "input", "evaluation"}, rows
    assert all("time budget" in row["detail"] and not row["value"] for row in later.values()), rows
    # vs_timm stopped at its share, not at the whole budget: the quickstart after it was still begun.
    assert re.search(r"cut at its share \(\d+ s\) of the time budget after", later["quickstart"]["detail"]), rows
    summary = table.with_suffix(".md").read_text()
    assert "time budget 5 s" in summary and "had not ended" not in summary


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_a_gpu_check_killed_from_outside_leaves_the_figures_it_measured(tmp_path):
    """The lent machine kills a command at its limit without asking: the files must already hold every
    check finished by then (written after each one), the summary saying the command had not ended."""
    import signal
    import time

    process = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--backends",
                                "jax", "--models", "mobilenet_v2", "--out-dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"})
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and not list(tmp_path.glob("gpu-*-quick.md")):  # written after the CSV
            assert process.poll() is None, "the check ended before it was killed"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the check and the processes it started, as a machine's limit does
        process.wait()
    [table] = list(tmp_path.glob("gpu-*-quick.csv"))
    rows = list(csv.DictReader(open(table)))
    assert {row["check"] for row in rows} == {"vs_timm"} and all(row["value"] == "" or float(row["value"]) >= 0
                                                                 for row in rows), rows
    assert "zoo " in rows[0]["detail"] and "img/s" in rows[0]["detail"]
    assert "had not ended" in table.with_suffix(".md").read_text()


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_the_input_benchmark_reads_batches_as_fit_does_on_jax():
    """benchmarks/pipeline_throughput.py's 'delivered' figure is the input path a run's fit sees: on JAX the
    trainer's iterator leaves the prepared batches on the device. Read through NumPy's iterator instead, every
    batch is copied to the host (on a GPU, 38 MB a batch at 224 px), and the figure measures that copy: the
    first H200 figure (1,825 images/s) was read so."""
    script = (
        "import sys, numpy as np, jax\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "import pipeline_throughput as p\n"
        "from zoo.data.pipeline import ArrayBatches\n"
        "batches = ArrayBatches(8, 4, lambda positions, epoch, index: (jax.numpy.zeros((4, 2)), jax.numpy.zeros(4)),"
        " shuffle_seed=0)\n"
        "reader = p.fit_reader(batches)\n"
        "kinds = {type(part).__name__ for _ in range(3) for part in p.computed(next(reader))}\n"
        "assert all(isinstance(part, jax.Array) for part in p.computed(next(reader))), kinds\n"
        "print('device arrays', sorted(kinds))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
                               "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and "device arrays" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_the_gpu_check_runs_only_the_checks_asked_for(tmp_path):
    """A lent machine gives one command a few minutes: `--checks` splits the check over two commands. The
    input check without vs_timm times mobilenet_v2's training itself and says so."""
    done, rows = gpu_check_quick(tmp_path, "--models", "mobilenet_v2", "--checks", "input", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [row["check"] for row in rows] == ["input"], rows
    assert float(rows[0]["value"]) > 0 and "timed by the input script" in rows[0]["detail"], rows


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_a_second_command_takes_the_first_ones_vs_timm_figures(tmp_path):
    """Split over two commands, the second's checks still set zoo beside timm: given the first's vs_timm table
    (here the one committed from this CPU, where timm was installed), bfloat16 reads timm's and zoo's float32
    figures from it, and this command's summary does not restate the earlier command's rows. A path that is
    not such a table is refused before anything runs."""
    reference = ROOT / "reports" / "vs-timm-cpu-64px.csv"
    done, rows = gpu_check_quick(tmp_path, "--models", "mobilenet_v2", "--checks", "bfloat16", "--vs-timm-csv",
                                 str(reference), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {row["check"] for row in rows} == {"bfloat16"}, rows
    infer = next(row for row in rows if row["subject"] == "mobilenet_v2 infer")
    assert "zoo float32 71.7 img/s, timm 357.0 img/s" in infer["detail"] and float(infer["value"]) > 0, infer
    for wrong in (tmp_path / "missing.csv", ROOT / "reports" / "mutations.csv"):
        refused = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--checks",
                                  "bfloat16", "--vs-timm-csv", str(wrong), "--out-dir", str(tmp_path / "no")],
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and f"--vs-timm-csv {wrong}" in refused.stderr, refused.stderr
        assert not (tmp_path / "no").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_the_compile_time_benchmark_compiles_afresh_under_each_setting(tmp_path):
    """benchmarks/compile_time.py compares XLA settings by what compiling costs: a compilation cache shared
    between the settings would let the second one read what the first compiled and look free."""
    out = tmp_path / "compile.csv"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_time.py"), "--run",
                           "synthetic_terrain-baseline_cnn*", "--settings", "default", "autotune_level_0", "--csv",
                           str(out)], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = list(csv.DictReader(open(out)))
    assert [row["setting"] for row in rows] == ["default", "autotune_level_0"], rows
    assert rows[1]["xla_flags"] == "--xla_gpu_autotune_level=0"
    for row in rows:
        assert row["status"] == "ok" and row["backend"].startswith("jax"), row
        assert int(float(row["compilations"])) > 0 and float(row["compile_seconds"]) > 0, row
        assert "jit(train_step)" in row["compile_seconds_by_function"], row
        # Run under this setting's command, not a run finished under another one and read back.
        assert float(row["run_seconds"]) < float(row["command_seconds"]), row


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_the_gpu_check_times_the_quickstart_with_runs_at_once(tmp_path):
    """`--quickstart-workers N` times `zoo run --workers N`, the remedy for a GPU waiting on compilers, and
    still reads each run's breakdown from where that command wrote it."""
    done, rows = gpu_check_quick(tmp_path, "--checks", "quickstart", "--quickstart-workers", "2", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    whole = next(row for row in rows if row["subject"] == "whole command")
    assert float(whole["value"]) > 0 and "zoo run --workers 2; 2 of 2 runs ok" in whole["detail"], whole
    assert "up to 2 at once" in whole["detail"], whole
    runs = [row for row in rows if row["check"] == "quickstart" and row["subject"] != "whole command"]
    assert len(runs) == 2 and all(re.search(r"stage s: start [0-9.]+, .*speed [0-9.]+", row["detail"]) for row in runs)
