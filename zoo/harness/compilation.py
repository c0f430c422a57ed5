"""Compilation across the runs of an output folder: the backend's persistent compilation cache under
OUT/cache/compilation (shared by every run, process and resumed suite of that folder), and what each run
compiled, counted by the backend itself.

On JAX: ``jax_compilation_cache_dir``, every executable cached whatever its compile time or size (a CPU run's
steps compile in well under JAX's default one second), and JAX's own monitoring events counted: XLA backend
compilations, the seconds spent tracing, lowering, compiling and reading the cache, and cache hits. A damaged
or foreign entry is JAX's to skip (it logs and compiles again); a full disk only loses the entry.

On TensorFlow: XLA's persistent cache (``TF_XLA_FLAGS=--tf_xla_persistent_cache_directory``) for runs with
``train.xla``, a subfolder per machine; an entry that is not a whole message is removed before a run
(TensorFlow would fail the run reading it) and compiled and written again. TensorFlow gives no
per-process count of its compilations or their time (the columns stay empty), nor does PyTorch, which has
no persistent cache here.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

CACHE_FOLDER = "compilation"
# JAX's events (jax/_src/dispatch.py, jax/_src/compiler.py, JAX 0.4.36 to 0.10).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
COMPILE_TIME_EVENTS = {"/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                       BACKEND_COMPILE_EVENT}  # the backend step includes reading the cache on a hit
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

_totals = {"compilations": 0, "compile_seconds": 0.0, "compile_cache_hits": 0}
_compiled: dict = {}  # function name -> XLA compilations in this process (cache hits not counted)
_seconds: dict = {}   # function name -> seconds tracing, lowering, compiling (or reading the cache) in this process
_lock = threading.Lock()
_pending_hit = threading.local()  # a cache hit is reported inside the backend step that it ends
_watching = False


def _on_duration(event: str, duration: float, fun_name: str | None = None, **_) -> None:
    if event not in COMPILE_TIME_EVENTS:
        return
    with _lock:
        _totals["compile_seconds"] += float(duration)
        _seconds[fun_name or "?"] = _seconds.get(fun_name or "?", 0.0) + float(duration)
        if event == BACKEND_COMPILE_EVENT:
            if getattr(_pending_hit, "value", False):
                _pending_hit.value = False
            else:
                _totals["compilations"] += 1
                _compiled[fun_name or "?"] = _compiled.get(fun_name or "?", 0) + 1


def _on_event(event: str, **_) -> None:
    if event == CACHE_HIT_EVENT:
        _pending_hit.value = True
        with _lock:
            _totals["compile_cache_hits"] += 1


def watch() -> bool:
    """Start counting this process's compilations (once); False where the backend gives no count."""
    global _watching
    from zoo.runtime import backend

    if backend() != "jax":
        return False
    if not _watching:
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        jax.monitoring.register_event_listener(_on_event)
        _watching = True
    return True


def snapshot() -> dict | None:
    """The process's totals so far (None where nothing is counted); :func:`since` gives a run's share."""
    if not watch():
        return None
    with _lock:
        return {**_totals, "functions": dict(_compiled), "seconds": dict(_seconds)}


def since(before: dict | None) -> dict:
    """results.csv's ``compilations``, ``compile_seconds`` and ``compile_cache_hits`` since ``before``, and
    metrics.json's ``compiled_functions`` (function name -> compilations) and ``compile_seconds_by_function``
    (function name -> seconds: where a run's compile time went, the train step's, the test step's, the
    inference's, precise BatchNorm's, the input preparation's)."""
    now = snapshot()
    if before is None or now is None:
        return {"compilations": None, "compile_seconds": None, "compile_cache_hits": None}
    compiled = {name: count - before["functions"].get(name, 0) for name, count in now["functions"].items()}
    seconds = {name: value - before["seconds"].get(name, 0.0) for name, value in now["seconds"].items()}
    return {**{key: now[key] - before[key] for key in _totals},
            "compiled_functions": {name: count for name, count in sorted(compiled.items()) if count},
            "compile_seconds_by_function": {name: round(value, 3) for name, value in
                                            sorted(seconds.items(), key=lambda item: -item[1]) if value >= 0.0005}}


class CompiledAhead:
    """Programs a run calls later (its evaluation's and speed measurement's inference, precise BatchNorm's
    forward), compiled in a background thread while the main thread goes on with Keras's train step: XLA
    compiles outside Python's lock, so on a machine with a core to spare (a GPU host's) their compile time
    leaves the run's wall time. ``lowerings``: functions that trace and lower one program each (a JAX
    ``Lowered``), called here on the caller's thread (Keras keeps its settings per thread), so that only
    XLA's compilation happens in the background; JAX keeps the executable with the lowering it cached, and
    the later call with arguments of the same shapes compiles nothing (counted: ``compiled_functions`` stays
    one per program). A program that cannot be lowered or compiled here is counted in ``failed`` and left
    to its call, which compiles it, and fails, in the run's own context: never the run's failure here."""

    def __init__(self, lowerings: list):
        self.programs, self.failed, self.seconds, self.waited_seconds = len(lowerings), 0, 0.0, 0.0
        lowered = []
        for lower in lowerings:
            try:
                lowered.append(lower())
            except Exception:  # noqa: BLE001 - see the class's docstring
                self.failed += 1
        self._thread = threading.Thread(target=self._compile, args=(list(lowered),), name="zoo-compile-ahead",
                                        daemon=True)  # a run that fails meanwhile does not wait for it
        self._thread.start()

    def _compile(self, lowered: list) -> None:
        start = time.perf_counter()
        for program in lowered:
            try:
                program.compile()
            except Exception:  # noqa: BLE001 - see the class's docstring
                self.failed += 1
        self.seconds = time.perf_counter() - start

    def wait(self) -> None:
        """Return once every program is compiled (before a program is first called, and before epochs
        that are timed: a compilation running beside them would slow them)."""
        if self._thread.is_alive():
            start = time.perf_counter()
            self._thread.join()
            self.waited_seconds += time.perf_counter() - start

    def summary(self) -> dict:
        """metrics.json's ``compiled_ahead``: programs, failures, the background thread's seconds, and the
        seconds the run waited for it."""
        return {"programs": self.programs, "failed": self.failed, "seconds": round(self.seconds, 3),
                "waited_seconds": round(self.waited_seconds, 3)}


def use_persistent_cache(cache_dir: Path) -> Path | None:
    """Point the backend's persistent compilation cache at ``cache_dir``/compilation (created here);
    the folder in use, or None on backends without one."""
    from zoo.runtime import backend

    name = backend()
    if name not in ("jax", "tensorflow"):
        return None
    folder = Path(cache_dir) / CACHE_FOLDER / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only or full output folder: compile as before
        import sys

        print(f"zoo worker: warning: the compilation cache {folder} cannot be used ({error.strerror or error}); "
              f"this run compiles without it", file=sys.stderr, flush=True)
        return None
    if name == "tensorflow":
        return _tensorflow_xla_cache(folder)
    import jax

    if jax.config.jax_compilation_cache_dir != str(folder):
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # every entry, however small
        try:  # another output folder earlier in this process: JAX opens its cache once unless reset
            from jax._src import compilation_cache

            compilation_cache.reset_cache()
        except (ImportError, AttributeError):
            pass
    return folder


TF_CACHE_FLAG = "--tf_xla_persistent_cache_directory="
TF_CACHE_SET_BY_ZOO = "ZOO_TF_XLA_CACHE"  # the folder zoo named in TF_XLA_FLAGS (a user's own is kept)


def _tensorflow_xla_cache(folder: Path) -> Path | None:
    """TensorFlow's XLA executables (``train.xla``) kept under ``folder``, in a subfolder per machine
    (XLA:CPU stores code for this CPU's instructions; an output folder on a shared disk may serve others).
    TF_XLA_FLAGS is read once per process, at its first XLA compilation, so the first output folder of a
    process is the one its XLA runs share (a worker serves one suite). A folder the user already named
    there is kept."""
    import os
    import re

    flags = os.environ.get("TF_XLA_FLAGS", "")
    named = re.search(re.escape(TF_CACHE_FLAG) + r"(\S+)", flags)
    if named and named.group(1) != os.environ.get(TF_CACHE_SET_BY_ZOO):
        return Path(named.group(1))  # the user's own
    if named:  # zoo's, for another output folder, inherited from a parent process or set here before
        flags = (flags[:named.start()] + flags[named.end():]).strip()
    folder = folder / machine_key()
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return None
    os.environ["TF_XLA_FLAGS"] = f"{flags} {TF_CACHE_FLAG}{folder}".strip()
    os.environ[TF_CACHE_SET_BY_ZOO] = str(folder)
    remove_damaged_entries(folder)
    return folder


_checked: dict = {}  # entry path -> (size, mtime) found whole in this process


def remove_damaged_entries(folder: Path) -> list[Path]:
    """Delete the entries of a TensorFlow XLA cache folder that are not whole serialized messages (a run
    killed while writing one, a damaged disk): TensorFlow fails the run that reads such an entry
    (DataLossError) where it should compile again, so zoo removes them first and TensorFlow compiles and
    writes them anew. Returns what was removed."""
    removed = []
    for entry in Path(folder).glob("*.pb"):
        try:
            stat = entry.stat()
            if _checked.get(entry) == (stat.st_size, stat.st_mtime_ns):
                continue
            if whole_protobuf(entry.read_bytes()):
                _checked[entry] = (stat.st_size, stat.st_mtime_ns)
                continue
            entry.unlink()
            removed.append(entry)
        except OSError:  # gone meanwhile (another process), or unreadable: TensorFlow's own checks remain
            continue
    return removed


def whole_protobuf(data: bytes) -> bool:
    """Whether ``data`` is a well-formed binary protobuf message: a sequence of fields whose tags, lengths
    and values end exactly at its end (a truncated or foreign file is not)."""
    position, end = 0, len(data)

    def varint() -> int | None:
        nonlocal position
        value = shift = 0
        while position < end and shift < 64:
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        return None

    if not data:
        return False
    while position < end:
        tag = varint()
        if tag is None or tag >> 3 == 0:
            return False
        kind = tag & 7
        if kind == 0:
            if varint() is None:
                return False
        elif kind in (1, 5):
            position += 8 if kind == 1 else 4
        elif kind == 2:
            length = varint()
            if length is None:
                return False
            position += length
        else:  # groups (3, 4) and the unused wire types
            return False
        if position > end:
            return False
    return True


def machine_key() -> str:
    """This machine's processor and NVIDIA GPUs, as a short key: compiled code for one runs on it alone."""
    import glob
    import hashlib
    import platform

    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo") as info:
            parts += sorted({line.strip() for line in info if line.startswith(("model name", "flags"))})
    except OSError:
        parts.append(platform.processor())
    for path in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            with open(path) as info:
                parts += [line.strip() for line in info if line.startswith("Model:")]
        except OSError:
            pass
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]
