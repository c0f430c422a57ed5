"""Running a suite: resumable, with progress and ETA, every run in a worker process.

Each run works in ``OUT/runs/.<run_id>.partial`` and is renamed to ``OUT/runs/<run_id>``
once its result.json is written, so a folder without the dot is always complete. After
every run, results.csv is rebuilt atomically from the finished run folders. Where a run
executes is the executor's business (zoo.harness.executors); this module owns the folders,
the index, interrupts and storage faults.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import yaml

from zoo.errors import ConfigError, StorageError, storage_problem
from zoo.harness.claims import remove_dead_partials
from zoo.harness.executors import (EXECUTORS, InProcessExecutor, RunInterrupted, WorkerDied, WorkerExecutor,
                                   WorkerPool)
from zoo.harness.suite import RunSpec, expand_suite, suite_warnings
from zoo.results import older_score_notes, read_result, run_row, write_atomic, write_json, write_results_csv

SKIPPED_SHOWN = 3  # skipped files named in the log per dataset; dataset.json and the report list them all


class SuiteInterrupted(BaseException):
    """Ctrl-C or SIGTERM reached the driver; ``exit_code`` is the shell's (130 or 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def _interrupt(signum, frame):
    raise SuiteInterrupted(signum)


class _InterruptHandlers:
    """SIGINT and SIGTERM raise SuiteInterrupted while a suite runs (main thread only)."""

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.saved[signum] = signal.signal(signum, _interrupt)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)


def _task(run: RunSpec) -> str:
    from zoo.heads import HEADS

    return HEADS.get(run.head).task


def _record_without_worker(run: RunSpec, partial: Path, status: str, error: str) -> dict:
    """The row of a run whose process could not record it (died, stopped, disk full)."""
    row = run_row(run, _task(run), status, error)
    try:
        write_json(partial / "result.json", row)
    except OSError as write_error:
        if not storage_problem(write_error):
            raise
        # No room even for the row: the half-written run is worth nothing, its space is.
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
        write_json(partial / "run.json", run.to_dict())
        write_json(partial / "result.json", row)
    return row


def _move_into_place(partial: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)


def _run_megabytes(runs_dir: Path) -> float | None:
    """The size of the largest finished run folder: roughly what the next run needs."""
    sizes = [sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for d in runs_dir.iterdir()
             if d.is_dir() and not d.name.startswith(".")]
    return max(sizes) / 1e6 if sizes else None


def run_one(run: RunSpec, runs_dir: Path, executor) -> dict | None:
    """Claim a run, execute it into its partial folder, then move it into place; returns its row,
    or None when another live process holds the run (see zoo.harness.claims).

    Raises SuiteInterrupted (the run is recorded ``interrupted``) and StorageError (the run is
    recorded ``failed`` with the reason, space permitting); both stop the suite."""
    from zoo.harness.claims import claim

    final = runs_dir / run.run_id
    partial = claim(runs_dir, run.run_id)
    if partial is None:
        return None
    write_json(partial / "run.json", run.to_dict())
    try:
        row = executor.submit(partial)
    except WorkerDied as died:
        row = _record_without_worker(run, partial, "failed", str(died))
    except (SuiteInterrupted, RunInterrupted) as interrupt:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        executor.stop()
        _record_without_worker(run, partial, "interrupted", f"interrupted by {signal.Signals(interrupt.signum).name}")
        _move_into_place(partial, final)
        raise
    except OSError as error:
        problem = storage_problem(error)
        if not problem:
            raise
        executor.stop()
        _record_without_worker(run, partial, "failed", f"{problem} (Errno {error.errno}) while writing the run")
        _move_into_place(partial, final)
        size = _run_megabytes(runs_dir)
        need = f"; a finished run of this suite takes {size:.0f} MB" if size else ""
        raise StorageError(error.errno, f"{problem} under {runs_dir.parent} (Errno {error.errno}): run "
                           f"{run.run_id} failed and the suite stopped{need}. Free space and run the same "
                           f"command to resume; finished runs are kept") from None
    _move_into_place(partial, final)
    return row


def _eta(durations: dict[str, float], remaining: list[str], parallel: int = 1,
         planned: dict[str, float] | None = None) -> str:
    """The time left for the ``remaining`` run ids. With ``zoo plan --record``'s estimates for every one
    of them, their sum, scaled by how the finished runs compared with their own estimates (runs differ
    tenfold in cost: a mean of the first few says little about the rest); else the finished runs' mean."""
    from zoo.harness.preflight import format_duration as text

    planned = planned or {}
    if remaining and all(run_id in planned for run_id in remaining):
        compared = [run_id for run_id in durations if planned.get(run_id)]
        scale = (sum(durations[r] for r in compared) / sum(planned[r] for r in compared)) if compared else 1.0
        seconds = sum(planned[r] for r in remaining) * scale / parallel
        basis = (f"zoo plan's estimates x {scale:.2f}, as the finished runs went" if compared
                 else "zoo plan's estimates")
        return f"ETA {text(seconds)}, from {basis}"
    if not durations:
        return "ETA: after the first run"
    return f"ETA {text(sum(durations.values()) / len(durations) * -(-len(remaining) // parallel))}"


def finished_run_seconds(runs_dir: Path, run_ids) -> dict[str, float]:
    """The whole time (``run_seconds``) each finished run of ``run_ids`` took, by run id."""
    seconds = {}
    for run_id in run_ids:
        row = read_result(Path(runs_dir) / run_id) or {}
        value = row.get("run_seconds")
        if row.get("status") == "ok" and isinstance(value, (int, float)) and value > 0:
            seconds[run_id] = float(value)
    return seconds


def recorded_estimates(out_dir) -> dict[str, float]:
    """OUT/plan.json's estimates (``zoo plan --record``) in seconds by run id; {} when there is none or it
    cannot be read. zoo run's ETA, zoo serve and the next recorded plan read them here."""
    try:
        estimates = json.loads((Path(out_dir) / PLAN_FILE).read_text()).get("estimates", {})
        return {str(k): float(v) for k, v in estimates.items() if v}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _log(message):
    print(message, flush=True)


def _storage_guard(out_dir: Path, action):
    """Run ``action`` (the suite's first writes); a read-only or full output folder becomes
    one StorageError naming it."""
    try:
        return action()
    except OSError as error:
        problem = storage_problem(error)
        if not problem:
            raise
        raise StorageError(error.errno, f"cannot write to {out_dir}: {problem} (Errno {error.errno}); "
                           f"choose another --out or free it") from None


def log_skipped_files(sources: dict, log) -> None:
    """Each dataset's notes (settings the user may want), how many files it skipped at decode, and the first
    few with their reasons."""
    for source in sources.values():
        for note in source.info.notes or []:
            log(f"note: dataset {source.info.name}: {note}")
        skipped = source.info.skipped or []
        if skipped:
            shown = "; ".join(f"{Path(s['path']).name}: {s['reason']}" for s in skipped[:SKIPPED_SHOWN])
            more = f"; and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
            log(f"dataset {source.info.name}: {len(skipped)} file(s) skipped ({shown}{more}); "
                f"`zoo data info` lists them all")


def check_output_folder(out_dir: Path, suite: dict) -> None:
    """Refuse an output folder that holds another suite: results.csv and the report index the runs of the
    suite in OUT/suite.yaml, so the other suite's runs would drop out of both (their folders kept, unseen)."""
    from zoo.yamlfile import read_yaml

    try:
        held = read_yaml((Path(out_dir) / "suite.yaml").read_text()).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        return  # no suite yet, or a damaged file the run rewrites
    if held is not None and str(held) != str(suite["name"]):
        raise ConfigError(f"{out_dir} holds suite {held!r} (its suite.yaml), and this is suite {suite['name']!r}: "
                          f"results.csv and the report would then list this suite's runs only. Give --out another "
                          f"folder (the default is runs/{suite['name']}), or name this suite {held!r} to add to that "
                          f"study")


def select_runs(suite: dict, only: str | None) -> tuple[list[RunSpec], list[RunSpec]]:
    """All runs of a validated suite, and those ``--only`` selects."""
    runs = expand_suite(suite)
    selected = [r for r in runs if not only or fnmatch.fnmatchcase(r.run_id, only)
                or fnmatch.fnmatchcase(r.run_id, f"*{only}*")]
    if only and not selected:
        raise ConfigError(f"--only {only!r} matches none of the {len(runs)} runs; `zoo plan SUITE` lists them")
    return runs, selected


def make_executor(name: str, workers: int = 1, **options):
    """The executor for ``zoo run --executor NAME`` (one of EXECUTORS); ``workers``: runs at once on this
    machine (worker and isolated); ``options`` are the Ray executor's (address, gpus_per_run,
    cpus_per_run, max_retries)."""
    if workers != 1 and name not in ("worker", "isolated"):
        raise ConfigError(f"--workers goes with the worker processes of this machine, not with --executor {name}"
                          + (" (a Ray cluster runs as many at once as it has slots)" if name == "ray" else ""))
    if name == "ray":
        from zoo.harness.ray_executor import RayExecutor

        return RayExecutor(**options)
    if name in ("worker", "isolated"):
        runs_per_worker = 1 if name == "isolated" else None
        return WorkerExecutor(runs_per_worker) if workers == 1 else WorkerPool(workers, runs_per_worker)
    if name == "in-process":
        return InProcessExecutor()
    raise ConfigError(f"executor {name!r} is not known; use one of {', '.join(EXECUTORS)}")


def pending_runs(selected: list[RunSpec], runs_dir: Path, force: bool) -> list[RunSpec]:
    return [r for r in selected if force or (read_result(runs_dir / r.run_id) or {}).get("status") != "ok"]


def _finished(selected: list[RunSpec], todo: list[RunSpec]) -> list[RunSpec]:
    pending = {r.run_id for r in todo}
    return [r for r in selected if r.run_id not in pending]


def run_suite(suite: dict, out_dir, only: str | None = None, force: bool = False, executor: str = "worker",
              report: bool = True, log=_log, prepare: bool = False, suite_path: str | None = None,
              executor_options: dict | None = None, mlflow: str | None = None, workers: int = 1) -> int:
    """Run every run of ``suite`` not yet finished; 0 if all succeeded, 1 if any failed, 130 or
    143 when interrupted by SIGINT or SIGTERM (the run under way is recorded ``interrupted``).

    Before anything is written, every pending run's data and weights are checked; any problem
    raises NotReadyError listing them all (``prepare=True`` first fetches what it can).
    ``executor``: worker (one long-lived process), isolated (one per run), in-process, or ray
    (several runs at once on a Ray cluster; ``executor_options`` are RayExecutor's); ``workers``: runs at
    once on this machine with worker or isolated (zoo.harness.sharing). ``mlflow``:
    a tracking URI (else the suite's ``tracking.mlflow``, else MLFLOW_TRACKING_URI) each finished
    run is logged to.
    """
    from zoo.harness.preflight import (NotReadyError, check_readiness, format_problems,
                                       prepare_missing, slow_backend_warnings, small_class_warnings)

    started = time.perf_counter()
    out_dir = Path(out_dir)
    check_output_folder(out_dir, suite)
    runs, selected = select_runs(suite, only)
    runs_dir = out_dir / "runs"
    todo = pending_runs(selected, runs_dir, force)
    _warn_about_finished(_finished(selected, todo), out_dir, suite_path, log)
    runner = make_executor(executor, workers, **(executor_options or {}))
    try:
        if todo and hasattr(runner, "check"):
            runner.check(todo)
        if todo:
            # The worker imports Keras and its backend while the driver checks the runs.
            runner.start(runs=len(todo), backend=todo[0].train.backend)
            # The folder-scan cache under OUT/cache is the one the runs read: no folder is probed twice.
            sources, problems = _storage_guard(out_dir, lambda: check_readiness(todo, cache_dir=out_dir / "cache"))
            if problems and prepare:
                prepare_missing(todo, problems, log)
                sources, problems = check_readiness(todo, cache_dir=out_dir / "cache")
            if problems:
                raise NotReadyError(format_problems(problems, None if prepare else suite_path))
            log_skipped_files(sources, log)
            for warning in small_class_warnings(todo, sources) + slow_backend_warnings(todo):
                log(warning)
        else:
            sources = {}
        from zoo.tracking import MlflowTracker, mlflow_uri

        uri = mlflow_uri(mlflow, suite)
        tracker = MlflowTracker(uri, suite["name"], warn=log) if uri and todo else None
        return _run_pending(suite, out_dir, runs, selected, todo, runner, report, log, sources, force, tracker,
                            started)
    finally:
        runner.stop()


def _run_pending(suite, out_dir: Path, runs, selected, todo, runner, report, log, sources, force, tracker=None,
                 started: float | None = None) -> int:
    runs_dir = out_dir / "runs"

    def set_up():
        runs_dir.mkdir(parents=True, exist_ok=True)
        for source in sources.values():
            if hasattr(source, "save_cache"):
                source.save_cache()
        remove_dead_partials(runs_dir)  # left by a killed suite; live ones are other processes' runs
        write_atomic(out_dir / "suite.yaml", yaml.safe_dump(suite, sort_keys=False))

    _storage_guard(out_dir, set_up)
    all_ids = [r.run_id for r in runs]

    # A resumed suite's ETA starts from the runs it finished before, not from "after the first run".
    durations = finished_run_seconds(runs_dir, [r.run_id for r in _finished(selected, todo)])
    planned = recorded_estimates(out_dir)
    log(f"suite {suite['name']}: {len(runs)} runs, {len(selected) - len(todo)} already finished, "
        f"{len(todo)} to run -> {out_dir}")
    for warning in suite_warnings(todo):
        log(warning)
    if report and todo:
        # The driver mostly waits on its worker: import the report's libraries meanwhile.
        threading.Thread(target=_import_report_modules, name="report-imports", daemon=True).start()
    slots = runner.slots() if todo else []
    lock = threading.Lock()
    finished = []

    def execute(index: int, run: RunSpec, slot) -> None:
        if not force and (read_result(runs_dir / run.run_id) or {}).get("status") == "ok":
            log(f"[{index}/{len(todo)}] {run.run_id}: finished meanwhile by another process")
            return
        with lock:
            eta = _eta(durations, [r.run_id for r in todo[index - 1:]], len(slots), planned)
        log(f"[{index}/{len(todo)}] {run.run_id}  ({eta})")
        start = time.perf_counter()
        row = run_one(run, runs_dir, slot)
        if row is None:
            log(f"[{index}/{len(todo)}] {run.run_id}: another process is running it; skipped")
            return
        seconds = time.perf_counter() - start
        with lock:
            durations[run.run_id] = seconds
            finished.append(run.run_id)
            _write_index(out_dir, all_ids)
        if tracker is not None:
            tracker.submit(runs_dir / run.run_id)
        status = "ok" if row["status"] == "ok" else f"FAILED: {row['error']}"
        # Runs spread over a cluster name their node; a pool's are all on this machine.
        where = f", on {row.get('host')}" if len(slots) > 1 and not isinstance(runner, WorkerPool) else ""
        log(f"[{index}/{len(todo)}] {run.run_id}: {status} ({seconds:.0f}s{where})")

    runs_started = time.perf_counter()
    try:
        with _InterruptHandlers():
            if len(slots) > 1:
                _run_in_parallel(todo, slots, execute, runner)
            else:
                for index, run in enumerate(todo, start=1):
                    execute(index, run, runner)
            runner.close()
        runs_seconds = time.perf_counter() - runs_started
    except SuiteInterrupted as interrupt:
        runner.stop()
        _write_index(out_dir, all_ids)
        log(f"interrupted after {len(finished)} of {len(todo)} runs; run the same command to resume")
        return interrupt.exit_code
    except StorageError as error:
        runner.stop()
        _write_index(out_dir, all_ids)
        log(f"zoo: error: {error.strerror}")
        return 1
    _write_index(out_dir, all_ids)
    if tracker is not None:
        unlogged = tracker.close()
        if unlogged:
            log(f"{unlogged} run(s) were not logged to MLflow; send them with `zoo mlflow-sync {out_dir} "
                f"--mlflow {tracker.uri}`")

    rows = [read_result(runs_dir / r.run_id) for r in selected]
    failed = [row for row in rows if row and row["status"] != "ok"]
    if suite.get("export"):
        _tell_missing_exports(suite["export"], [row for row in rows if row and row["status"] == "ok"], out_dir, log)
    if report:
        from zoo.report import write_report

        answers: list = []
        paths = write_report(out_dir, recommendations=answers)
        for dataset, sentences in answers:  # the suite's answer, where the user is looking
            log(f"{dataset}:\n" + "\n".join(f"  {sentence}" for sentence in sentences))
        log("report: " + ", ".join(str(p) for p in paths))
    if todo:  # what the user waited for, beside the runs' own times
        from zoo.harness.preflight import format_duration

        whole = time.perf_counter() - (started if started is not None else runs_started)
        log(f"{suite['name']}: {len(finished)} run(s) in {format_duration(runs_seconds)}; {format_duration(whole)} in "
            f"all (checks, worker start{' and report' if report else ''} included)")
    if failed:
        log(f"{len(failed)} of {len(selected)} runs failed:")
        for row in failed:
            log(f"  {row['run_id']}: {row['error']}")
    return 1 if failed else 0


def _tell_missing_exports(export: dict, rows: list[dict], out_dir: Path, log) -> None:
    """Runs finished before the suite asked for exports have no deployment figures: say so, and
    how to add them without training again."""
    from zoo.harness.deploy import missing_figures

    missing = sorted({name for row in rows for name in missing_figures(row, export)})
    count = sum(1 for row in rows if missing_figures(row, export))
    if count:
        quantize = f" --quantize {export['quantize']}" if export["quantize"] != "none" else ""
        log(f"{count} finished run(s) have no deployment figures for {', '.join(missing)}: measure them with "
            + "; ".join(f"`zoo export {out_dir} --format {name}{quantize} --measure`" for name in missing))


def _run_in_parallel(todo: list[RunSpec], slots: list, execute, runner) -> None:
    """Each slot's thread takes the next pending run until none is left. An interrupt reaches
    the main thread, which stops the executor: the runs under way are recorded ``interrupted``
    by their threads before SuiteInterrupted goes on. A storage fault in one thread stops them all."""
    queue = list(enumerate(todo, start=1))
    lock = threading.Lock()
    errors: list[BaseException] = []
    # Each thread says it has ended by its own event: CPython's Thread.join, interrupted by the signal
    # handler's exception, can mark a thread that still runs as ended (Python 3.11's handling of
    # bpo-45274), and a later join then returns before that thread has recorded its run.
    ended = [threading.Event() for _ in slots]

    def work(slot, done: threading.Event) -> None:
        try:
            while True:
                with lock:
                    if not queue or errors:
                        return
                    index, run = queue.pop(0)
                try:
                    execute(index, run, slot)
                except BaseException as error:  # noqa: B036  (handed to the main thread)
                    with lock:
                        errors.append(error)
                    return
        finally:
            done.set()

    def wait_for_all() -> None:
        for done in ended:
            while not done.wait(0.5):
                pass

    for n, (slot, done) in enumerate(zip(slots, ended)):
        threading.Thread(target=work, args=(slot, done), name=f"slot-{n}", daemon=True).start()
    try:
        wait_for_all()
    except SuiteInterrupted as interrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        runner.stop(signum=interrupt.signum)
        wait_for_all()
        raise
    if errors:
        raise next((e for e in errors if isinstance(e, StorageError)), errors[0])


def _import_report_modules() -> None:
    try:
        import zoo.report.figures  # noqa: F401  (matplotlib)
        import zoo.report.render  # noqa: F401  (jinja2, scipy, statsmodels)
    except Exception:  # the report imports them again and says what is wrong
        pass


def _write_index(out_dir: Path, all_ids) -> None:
    """Rebuild results.csv; on a full disk the previous one stays (atomic write) and is still right
    for every run it lists."""
    try:
        write_results_csv(out_dir, all_ids)
    except OSError as error:
        if not storage_problem(error):
            raise


def _warn_about_finished(finished, out_dir: Path, suite_path: str | None, log) -> None:
    """What `zoo run` and `zoo plan` say of a suite's finished runs before going on: those that saw other images
    than the data holds now (zoo.harness.preflight.changed_data_warnings), and those scored by an older zoo in a
    way that has changed since (zoo.results.older_score_notes)."""
    from zoo.harness.preflight import changed_data_warnings

    runs_dir, command = out_dir / "runs", f"zoo run {suite_path or 'SUITE'} --out {out_dir}"
    for warning in changed_data_warnings(finished, runs_dir, out_dir / "cache", command):
        log(warning)
    rows = [row for row in (read_result(runs_dir / run.run_id) for run in finished) if row]
    for note in older_score_notes(rows, command):
        log(f"warning: {note}")


PLAN_FILE = "plan.json"


def _record_plan(out_dir: Path, plan: dict) -> None:
    """The plan's estimates in OUT/plan.json, merged over earlier plans' (a plan of a few runs with
    --only keeps the others'); a folder that cannot be written only loses this record."""
    import datetime

    path = out_dir / PLAN_FILE
    estimates = {**recorded_estimates(out_dir), **{r["run_id"]: r["estimate_seconds"] for r in plan["rows"]
                               if r["estimate_seconds"] is not None}}
    try:
        write_json(path, {"device": plan["device"], "estimates": estimates,
                          "planned_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    except OSError:
        pass


def plan_suite(suite: dict, out_dir, only: str | None = None, log=_log, record: bool = False,
               suite_path: str | None = None, workers: int = 1) -> int:
    """``zoo plan`` / ``zoo run --dry-run``: every run with its status and readiness, and time
    estimates for the pending ones; trains nothing and writes nothing but the folder-scan cache
    the runs reuse, and with ``record`` OUT/plan.json (the estimates, which ``zoo serve`` shows beside
    the time each run then takes); ``workers``: zoo run --workers N's N, the suite's time also given as
    the runs spread over N workers. 2 if a run cannot start."""
    from zoo.harness.preflight import (check_readiness, format_plan, format_problems,
                                       make_plan, slow_backend_warnings)

    out_dir = Path(out_dir)
    check_output_folder(out_dir, suite)
    _, selected = select_runs(suite, only)
    todo = pending_runs(selected, out_dir / "runs", force=False)
    _warn_about_finished(_finished(selected, todo), out_dir, suite_path, log)
    sources, problems = check_readiness(todo, cache_dir=out_dir / "cache")
    log_skipped_files(sources, log)
    plan = make_plan(selected, out_dir, sources, problems, log=log)
    log(format_plan(plan, workers))
    for warning in slow_backend_warnings(todo):
        log(warning)
    if record:
        _record_plan(out_dir, plan)
    if problems:
        log(format_problems(problems))
        return 2
    return 0
