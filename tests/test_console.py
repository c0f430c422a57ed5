"""Quiet, honest output: TensorFlow's known harmless start-up lines are filtered from what zoo prints, every
other line still shows, --verbose shows everything, and the help reads as plain text with examples."""
import argparse
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

from zoo.cli import EXAMPLES, build_parser
from zoo.console import StartupFilter, pump
from zoo.runtime import installed

ROOT = Path(__file__).parent.parent
HERE = Path(__file__).parent
# Printed by TensorFlow 2.21 at import on a machine without a GPU (copied from a real start-up).
STARTUP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795904744.150110    3971 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. To turn "
    "them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1795904744.219943    3971 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
]
NO_GPU = [
    "I0000 00:00:1795904744.150530    3971 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "E0000 00:00:1795904749.101876    3971 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
]
KEPT = [
    "W0000 00:00:1795904749.1 3971 op_kernel.cc:1857] OP_REQUIRES failed at conv_ops.cc:12 : RESOURCE_EXHAUSTED",
    "E0000 00:00:1795904749.1 3971 cuda_dnn.cc:522] Could not create cudnn handle",
    "/site-packages/keras/src/trainers/epoch_iterator.py:74: UserWarning: `shuffle=True` was passed",
    "Traceback (most recent call last):",
    "",
]
# Printed by LiteRT 2.21 converting a model to int8 and loading it (copied from a real export).
EXPORT = [
    "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, output_inference_type: FLOAT32",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    # and by TensorFlow the first time it compiles with XLA (zoo predict, train.xla)
    "I0000 00:00:1795991228.234493   26531 device_compiler.h:208] Compiled cluster using XLA!  This line is logged "
    "at most once for the lifetime of the process.",
]
MARKERS = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard", "cudart_stub", "cuInit",
           "rebuild TensorFlow with the appropriate compiler flags", "fully_quantize", "XNNPACK delegate",
           "np.object", "Compiled cluster using XLA")


def test_only_the_known_harmless_start_up_lines_are_dropped():
    quiet = StartupFilter(gpu_device_file=None)
    assert [out for line in STARTUP + NO_GPU + EXPORT for out in quiet.filter(line)] == []
    assert [out for line in KEPT for out in quiet.filter(line)] == KEPT


def test_a_present_but_unusable_gpu_is_reported_once_with_what_to_check():
    with_gpu = StartupFilter(gpu_device_file="/dev/nvidia0")
    shown = [out for line in STARTUP + NO_GPU for out in with_gpu.filter(line)]
    assert shown[:2] == [NO_GPU[0], shown[1]] and shown[2:] == [NO_GPU[1]]
    assert "an NVIDIA GPU is present (/dev/nvidia0) but TensorFlow cannot use it" in shown[1]
    assert "nvidia-smi" in shown[1]


def test_the_filter_passes_everything_else_through_in_order_and_a_partial_line_after_a_pause():
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    thread = threading.Thread(target=pump, args=(read_in, write_out, StartupFilter(None), 0.05))
    thread.start()
    os.write(write_in, ("\n".join(STARTUP[:2] + KEPT[:2] + NO_GPU) + "\nprogress 10%").encode())
    import select

    assert select.select([read_out], [], [], 5)[0]
    received = b""
    while not received.endswith(b"progress 10%"):  # the partial line comes after the idle pause
        assert select.select([read_out], [], [], 5)[0], received
        received += os.read(read_out, 65536)
    os.write(write_in, b" done\n")
    os.close(write_in)
    thread.join(5)
    os.close(write_out)
    received += os.read(read_out, 65536)
    assert received.decode() == "\n".join(KEPT[:2]) + "\nprogress 10% done\n"


def zoo(*args, env=None):
    return subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.mark.skipif(not installed("tensorflow"), reason="the start-up lines are TensorFlow's")
def test_commands_print_none_of_tensorflows_start_up_lines_unless_verbose(tmp_path):
    for args in (["--help"], ["list", "backbones"],
                 ["plan", "benchmarks/quickstart.yaml", "--out", str(tmp_path), "--only", "*baseline_cnn-linear*"]):
        result = zoo(*args)
        assert result.returncode == 0, result.stderr[-3000:]
        assert not [m for m in MARKERS if m in result.stderr], (args, result.stderr[-3000:])
    assert "synthetic_terrain-baseline_cnn-linear" in result.stdout
    # The same plan with --verbose shows them: the lines exist, and the filter is what removes them.
    verbose = zoo("--verbose", "plan", "benchmarks/quickstart.yaml", "--out", str(tmp_path), "--only",
                  "*baseline_cnn-linear*")
    assert verbose.returncode == 0 and "absl::InitializeLog" in verbose.stderr


def test_a_warning_raised_during_a_run_still_reaches_the_user(tmp_path):
    from plugin_noisy import NATIVE_LINE, PYTHON_WARNING

    suite = tmp_path / "noisy.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "noisy", "datasets": ["synthetic_terrain"], "backbones": ["noisy_backbone"], "heads": ["linear"],
        "plugins": [str(HERE / "plugin_noisy.py")],
        "train": {"image_size": 32, "batch_size": 16, "epochs": 1, "steps_per_epoch": 2, "precise_bn": False},
        # The converters' notices (LiteRT's int8 settings and CPU delegate, NumPy's FutureWarning in Keras's
        # ONNX shim) are not shown either, while the plugin's own warning is.
        "export": {"formats": ["tflite", "onnx"], "quantize": "int8"}}))
    result = zoo("run", str(suite), "--out", str(tmp_path / "out"), "--no-report")
    assert result.returncode == 0, result.stderr[-3000:]
    assert PYTHON_WARNING in result.stderr and NATIVE_LINE in result.stderr  # from the worker process
    assert not [m for m in MARKERS if m in result.stderr], result.stderr[-3000:]
    row = pd.read_csv(tmp_path / "out" / "results.csv").iloc[0]
    assert row["tflite_megabytes"] > 0 and row["onnx_megabytes"] > 0, row.to_dict()


def subcommands(parser, prefix=""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield f"{prefix}{name}", command
                yield from subcommands(command, f"{prefix}{name} ")


def test_verbose_is_taken_before_or_after_the_command(capsys):
    from zoo.cli import main

    assert main(["--verbose", "list", "heads"]) == 0 and main(["list", "heads", "--verbose"]) == 0
    assert capsys.readouterr().out.count("linear\tclassification") == 2


def test_help_is_plain_text_with_an_example_for_every_command():
    parser = build_parser()
    commands = dict(subcommands(parser))
    assert set(commands) == set(EXAMPLES)
    for name, command in [("", parser), *commands.items()]:
        text = command.format_help()
        assert "``" not in text and ":func:" not in text and ":class:" not in text, name
        assert re.search(r"^examples?:\n  zoo ", text, re.MULTILINE), name
