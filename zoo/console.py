"""Quiet, honest terminal output: the known harmless start-up lines of TensorFlow, XLA and the CUDA stubs
(and LiteRT's notices while exporting) are dropped from what zoo's processes write to stderr, and nothing else.

TensorFlow 2.21 writes them from C++ straight to file descriptor 2 at import, before any Python logging
setting can act (``TF_CPP_MIN_LOG_LEVEL`` no longer silences them). So ``zoo``'s entry point routes its
descriptor 2, inherited by its worker processes, through a small filter process that copies every other
byte to the real stderr. A separate process rather than a thread: should zoo crash hard, the filter still
receives and prints everything written before the crash, and exits at end of input.

This file runs as a script (``python -I -S console.py``) with the standard library alone, so the filter
starts in milliseconds; ``zoo --verbose`` (or ``ZOO_VERBOSE=1``) leaves stderr untouched.
"""
from __future__ import annotations

import os
import re
import select
import subprocess
import sys

VERBOSE_ENV = "ZOO_VERBOSE"
_LOG = r"^[IWE]\d{4} [\d:.]+\s+\d+ "  # absl's prefix: severity, date, time, thread
# Harmless on every machine.
HARMLESS = [re.compile(pattern) for pattern in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    _LOG + r"port\.cc:\d+\] oneDNN custom operations are on\.",
    _LOG + r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .*, in other operations, rebuild TensorFlow with the appropriate "
    r"compiler flags\.$",
    # XLA:CPU reading an executable of its persistent cache (train.xla on TensorFlow) compiled on this very
    # machine (zoo keys the cache folder by processor): "prefer-no-gather/scatter" are tuning hints XLA
    # records, not processor features, yet it compares them with the host's.
    _LOG + r"cpu_aot_loader\.cc:\d+\] Loading XLA:CPU AOT result\. Target machine feature "
    r"\+prefer-no-(gather|scatter) is not\s+supported on the host machine\.",
    # TensorFlow's oneDNN build choosing its Eigen kernel for an int32 or float16 op (mixed precision on CPUs
    # without AVX-512): logged at error level, but only a choice of kernel; the results are the same.
    _LOG + r"util\.cc:\d+\] oneDNN supports DT_(INT32|HALF) only on platforms with AVX-512\. Falling back to the "
    r"default Eigen-based implementation if present\.$",
    # TensorFlow's notice when its first XLA program is compiled (zoo predict, train.xla): not actionable.
    _LOG + r"device_compiler\.h:\d+\] Compiled cluster using XLA!",
    # LiteRT (TensorFlow Lite) converting and loading an exported model (the suite key export, zoo export):
    # the int8 quantizer's settings and the interpreter's CPU delegate, printed from C++ every time.
    r"^fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+$",
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",
    # The LiteRT converter warning about flags that Keras's exporter always passes, and about metadata the
    # exporter then writes itself.
    _LOG + r"tf_tfl_flatbuffer_helpers\.cc:\d+\] Ignored (output_format|drop_control_dependency)\.$",
    _LOG + r"flatbuffer_export\.cc:\d+\] Skipping runtime version metadata in the model\. This will be generated "
    r"by the exporter\.$",
)]
# Harmless where there is no NVIDIA GPU: TensorFlow's CUDA build looking for one. Where a GPU is present
# they say it cannot be used, so they are kept and zoo adds what to check.
NO_GPU = [re.compile(pattern) for pattern in (
    _LOG + r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used\.$",
    _LOG + r"cuda_platform\.cc:\d+\] failed call to cuInit: .*",
    _LOG + r"cuda_executor\.cc:\d+\] .*kernel driver does not appear to be running on this host",
)]
NVIDIA_DEVICE_FILES = ("/dev/nvidia0", "/proc/driver/nvidia/version")


def nvidia_gpu_present() -> str | None:
    """The device file that shows an NVIDIA GPU and driver on this machine, if any."""
    return next((path for path in NVIDIA_DEVICE_FILES if os.path.exists(path)), None)


def unusable_gpu_line(device_file: str) -> str:
    return (f"zoo: warning: an NVIDIA GPU is present ({device_file}) but TensorFlow cannot use it (the lines above); "
            f"check the driver with nvidia-smi and that TensorFlow's CUDA build is installed (pip install -e "
            f"'.[gpu]'), or use train.backend: jax with jax[cuda12]. zoo runs on the CPU meanwhile.")


class StartupFilter:
    """Line by line: the harmless start-up lines dropped, every other line passed on unchanged."""

    def __init__(self, gpu_device_file: str | None):
        self.gpu_device_file = gpu_device_file
        self.warned = False

    def filter(self, line: str) -> list[str]:
        """The lines to print for one input ``line`` (without its end of line)."""
        if any(pattern.search(line) for pattern in HARMLESS):
            return []
        if any(pattern.search(line) for pattern in NO_GPU):
            if self.gpu_device_file is None:
                return []
            if not self.warned:
                self.warned = True
                return [line, unusable_gpu_line(self.gpu_device_file)]
        return [line]


def pump(source_fd: int, target_fd: int, line_filter: StartupFilter, idle_seconds: float = 0.2) -> None:
    """Copy ``source_fd`` to ``target_fd`` through ``line_filter`` until end of input. A partial line
    waiting longer than ``idle_seconds`` (a prompt, a progress bar) is passed on as it is."""
    pending = b""
    while True:
        ready, _, _ = select.select([source_fd], [], [], idle_seconds if pending else None)
        if not ready:
            os.write(target_fd, pending)  # no end of line is coming soon: not a start-up line
            pending = b""
            continue
        chunk = os.read(source_fd, 65536)
        if not chunk:
            if pending:
                os.write(target_fd, pending)
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = [out for line in lines for out in line_filter.filter(line.decode("utf-8", "replace"))]
        if kept:
            os.write(target_fd, ("\n".join(kept) + "\n").encode("utf-8", "replace"))


def quiet_native_stderr() -> None:
    """Route this process's descriptor 2 (and its children's) through the filter process; a no-op with
    ``ZOO_VERBOSE`` set. The original stderr comes back at exit, after the filter has printed everything."""
    if os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0") or not _stderr_is_file_descriptor():
        return
    import atexit

    try:
        # Its own session: a Ctrl-C or a signal to zoo's process group must not stop the filter before
        # zoo has said what it did; it ends when every process of zoo's has closed its stderr.
        filter_process = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__)],
                                          stdin=subprocess.PIPE, stdout=sys.stderr.fileno(), close_fds=True,
                                          start_new_session=True)
    except OSError:
        return  # no filter rather than no zoo
    original = os.dup(2)
    sys.stderr.flush()
    os.dup2(filter_process.stdin.fileno(), 2)
    filter_process.stdin.close()

    def restore():
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # the filter reads to its end once no process of ours writes to it
        try:
            filter_process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # a worker still writing: the filter goes on printing for it

    atexit.register(restore)


def _stderr_is_file_descriptor() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


if __name__ == "__main__":
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # the end of its input, not a signal, ends the filter
    pump(sys.stdin.fileno(), sys.stdout.fileno(), StartupFilter(nvidia_gpu_present()))
