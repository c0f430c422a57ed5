"""Compilation across the runs of an output folder: the backend's persistent compilation cache under
OUT/cache/compilation (shared by every run, process and resumed suite of that folder), and what each run
compiled, counted by the backend itself.

On JAX: ``jax_compilation_cache_dir``, every executable cached whatever its compile time or size (a CPU run's
steps compile in well under JAX's default one second), and JAX's own monitoring events counted: XLA backend
compilations, the seconds spent tracing, lowering, compiling and reading the cache, and cache hits. A damaged
or foreign entry is JAX's to skip (it logs and compiles again); a full disk only loses the entry. TensorFlow
and PyTorch: no persistent cache yet and no count (their columns stay empty).
"""
from __future__ import annotations

import threading
from pathlib import Path

CACHE_FOLDER = "compilation"
# JAX's events (jax/_src/dispatch.py, jax/_src/compiler.py, JAX 0.4.36 to 0.10).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
COMPILE_TIME_EVENTS = {"/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                       BACKEND_COMPILE_EVENT}  # the backend step includes reading the cache on a hit
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

_totals = {"compilations": 0, "compile_seconds": 0.0, "compile_cache_hits": 0}
_compiled: dict = {}  # function name -> XLA compilations in this process (cache hits not counted)
_lock = threading.Lock()
_pending_hit = threading.local()  # a cache hit is reported inside the backend step that it ends
_watching = False


def _on_duration(event: str, duration: float, fun_name: str | None = None, **_) -> None:
    if event not in COMPILE_TIME_EVENTS:
        return
    with _lock:
        _totals["compile_seconds"] += float(duration)
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
        return {**_totals, "functions": dict(_compiled)}


def since(before: dict | None) -> dict:
    """results.csv's ``compilations``, ``compile_seconds`` and ``compile_cache_hits`` since ``before``, and
    metrics.json's ``compiled_functions`` (function name -> compilations)."""
    now = snapshot()
    if before is None or now is None:
        return {"compilations": None, "compile_seconds": None, "compile_cache_hits": None}
    compiled = {name: count - before["functions"].get(name, 0) for name, count in now["functions"].items()}
    return {**{key: now[key] - before[key] for key in _totals},
            "compiled_functions": {name: count for name, count in sorted(compiled.items()) if count}}


def use_persistent_cache(cache_dir: Path) -> Path | None:
    """Point the backend's persistent compilation cache at ``cache_dir``/compilation (created here);
    the folder in use, or None on backends without one."""
    from zoo.runtime import backend

    if backend() != "jax":
        return None
    import jax

    folder = Path(cache_dir) / CACHE_FOLDER / "jax"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only or full output folder: compile as before
        import sys

        print(f"zoo worker: warning: the compilation cache {folder} cannot be used ({error.strerror or error}); "
              f"this run compiles without it", file=sys.stderr, flush=True)
        return None
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
