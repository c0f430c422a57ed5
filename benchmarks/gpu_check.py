"""The one GPU check: what zoo does with a GPU, in one command that anyone with one runs.

    python benchmarks/gpu_check.py [--backends jax torch tensorflow] [--out-dir reports]
    python benchmarks/gpu_check.py --quick      # the same steps, tiny, to try the script on a CPU

Six measurements, each in its own processes, on the machine's first device:
1. ``vs_timm``: inference and training images/s of mobilenet_v2, resnet50, densenet121 and vgg16 at 224 px,
   batch 64, mixed precision, on every installed Keras backend, beside timm's (benchmarks/vs_timm.py);
   targets zoo / timm >= 1.0 for inference and >= 0.9 for training.
2. ``input``: the input path at 224 px against mobilenet_v2's mixed-precision training on the fastest
   backend of (1) (benchmarks/pipeline_throughput.py; target delivered >= 3x training).
3. ``profile``: where the inference time of the model furthest behind timm in (1) goes, zoo's JAX program
   beside timm's model, by each one's own profiler (benchmarks/profile_inference.py): device time per batch
   by category (convolution, concatenation, elementwise, layout...) against the wall time, the heaviest
   operations; its rows go to ``reports/profile-<model>-<device>.csv`` as well.
4. ``quickstart``: `zoo run benchmarks/quickstart.yaml` on that backend, whole-command wall time and each
   run's compile seconds (and the functions they went to), compilations and first and later epochs (target
   <= 60 s on an H200); ``--quickstart-workers N`` runs N at once (`zoo run --workers N`), one compiling while
   another trains.
5. ``evaluation``: a run's own evaluation loop of mobilenet_v2 (input pipeline, prediction, metrics) against
   `zoo speed`'s figure for the same model (benchmarks/eval_speed.py; target >= 0.9: a report's images/s is
   what a run sees).
6. ``bfloat16``: `zoo speed --precision mixed_bfloat16` of the first two models on the fastest backend against
   timm's figures of (1) (AMP float16) and zoo's own float16 figures: whether bfloat16, which needs no loss
   scaling and is as fast on Hopper's tensor cores, should be what ``mixed`` means on such a GPU.
Writes ``reports/gpu-<device>.csv`` (one row per figure: check, subject, backend, value, unit, target) and
``reports/gpu-<device>.md`` (a short summary with the device, versions and every figure against its target).
Meant to take at most 8 minutes on an H100/H200; TensorFlow is optional (JAX and/or PyTorch suffice). On an
H200 (2026-11-30) all but ``profile`` (not run there yet) needed about 13 minutes, most of it XLA compiling: run
them as two commands there, the second given the first's vs_timm table (``--vs-timm-csv``; the first writes it
as ``vs-timm-<device>.csv`` beside its summary).
``--budget`` (default 480 s; none with --quick) makes sure of it: each check gets its share of the seconds left
(SHARES: what one check leaves unspent goes to the checks after it), so one slow check (a compiler slower
than expected) cannot starve the others; a check still running at the end of its share is stopped, a check
not begun when the whole budget is spent is a row saying so, and both files are written again after every check, so a
command cut short by the machine's own limit leaves every figure measured until then.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # zoo from this checkout, installed or not (the GPU machine has it as files)

from budget import Budget  # noqa: E402
from zoo.results import write_atomic  # noqa: E402
BACKEND_MODULES = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}
MODELS = ["mobilenet_v2", "resnet50", "densenet121", "vgg16"]
COLUMNS = ["date", "device", "check", "subject", "backend", "value", "unit", "target", "detail"]
INPUT_SUBJECT = "delivered / mobilenet_v2 training"
# Each check's share of the seconds left when it starts, against the checks still to run, in the order they
# run; about what each took on an H200 (2026-11-30): vs_timm ~80 s a model (XLA compiling most of it), the
# quickstart 265 s, the input path ~15 s once vs_timm timed mobilenet_v2's training, a run's evaluation
# and bfloat16 about a minute a model; the profile (not measured there yet) compiles one inference program
# and times timm's. Two commands of about 400 s each (`--checks vs_timm input`, then `--checks profile
# quickstart evaluation bfloat16 --vs-timm-csv <the first one's vs-timm-<device>.csv>`) give each check about
# what it took there.
SHARES = {"vs_timm": 0.4, "input": 0.04, "profile": 0.1, "quickstart": 0.4, "evaluation": 0.08, "bfloat16": 0.08}
EVALUATION_SUBJECT = "run's evaluation / zoo speed, mobilenet_v2"


def load(name: str):
    """A sibling benchmark script as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "device"


def check_vs_timm(models, size, batch, backends, precision, folder: Path, budget: Budget) -> list[dict]:
    """Rows of benchmarks/vs_timm.py for ``models`` on ``backends``."""
    out = folder / "vs_timm.csv"
    load("vs_timm").main(["--models", *models, "--size", str(size), "--batch", str(batch), "--backends", *backends,
                          "--precision", precision, "--out", str(out), "--budget", str(budget.left() or 0)])
    return list(csv.DictReader(open(out))) if out.is_file() else []


def check_quickstart(backend: str, overrides: list[str], only, folder: Path,
                     budget: Budget, workers: int = 1) -> tuple[float, list[dict], bool]:
    """The quickstart's whole-command wall time, result rows on ``backend`` (``workers`` runs at once), and
    whether it was cut."""
    seconds, rows, tail, cut = load("quickstart_backends").run_quickstart(backend, overrides, only, folder, budget,
                                                                          workers)
    if not rows:
        print(f"quickstart on {backend}: no results\n{tail}", flush=True)
    return seconds, rows, cut


def script_row(script: str, arguments: list[str], backend: str, folder: Path, budget: Budget) -> tuple[dict, bool]:
    """The first CSV row that benchmarks/``script``.py writes with ``arguments`` on ``backend`` (empty where it
    wrote none), and whether the budget cut it."""
    rows, cut = script_rows(script, arguments, backend, folder, budget)
    return (rows[0] if rows else {}), cut


def script_rows(script: str, arguments: list[str], backend: str, folder: Path, budget: Budget) -> tuple[list, bool]:
    """Every CSV row that benchmarks/``script``.py writes with ``arguments`` on ``backend``, and whether the
    budget cut it."""
    out = folder / f"{script}.csv"
    done = budget.run([sys.executable, str(BENCHMARKS / f"{script}.py"), *arguments, "--csv", str(out)],
                      env={**environment(), "KERAS_BACKEND": backend})
    if not out.is_file():
        print(f"{script} on {backend}: {done.output[-1500:]}", flush=True)
        return [], done.cut
    return list(csv.DictReader(open(out))), done.cut


def profile_lines(rows: list[dict], top: int = 3) -> list[dict]:
    """benchmarks/profile_inference.py's rows as the summary's lines: the total (device time against wall
    time on each side) and each category zoo spends time in, beside timm's time in it and zoo's most
    expensive operations there."""
    totals = {row["side"]: row for row in rows if row["level"] == "total"}
    zoo, timm = totals.get("zoo", {}), totals.get("timm", {})

    def side(row: dict, name: str) -> str:
        device, wall = number(row.get("ms_per_batch")), number(row.get("wall_ms_per_batch"))
        if device is None or wall is None:
            return f"{name}: {row.get('error') or 'not measured'}"
        return f"{name} {device:.2f} ms of {row.get('name')} in {wall:.2f} ms wall ({100 * device / wall:.0f} % busy)"

    lines = [{"subject": "total", "value": number(zoo.get("ms_per_batch")),
              "detail": f"{side(zoo, 'zoo')}; {side(timm, 'timm')}"}]
    categories = {(row["side"], row["name"]): number(row["ms_per_batch"]) for row in rows if row["level"] == "category"}
    for category in dict.fromkeys(name for (who, name) in categories if who == "zoo"):
        heaviest = [row for row in rows if row["side"] == "zoo" and row["level"] == "operation"
                    and row["category"] == category][:top]
        lines.append({"subject": category, "value": categories[("zoo", category)],
                      "detail": f"timm {shown(categories.get(('timm', category)))} ms/batch; zoo's heaviest: "
                                + (", ".join(f"{row['name']} {float(row['ms_per_batch']):.2f}" for row in heaviest)
                                   or "-")})
    return lines


def check_bfloat16(models, size, batch, backend: str, budget: Budget) -> dict:
    """``zoo speed`` rows of ``models`` in mixed_bfloat16 on ``backend``, by model."""
    zoo_speed = load("vs_timm").zoo_speed
    return {model: zoo_speed(model, size, batch, backend, "mixed_bfloat16", budget) for model in models}


def float16_figures(row: dict, backend: str) -> tuple:
    """(inference, training) images/s of ``backend`` in a vs_timm row's ``zoo_by_backend``, else (None, None)."""
    # "jax 0.11.2: 14543.7/5676.7 img/s (batch 64)"; tables written before versions were added: "jax: ...".
    found = re.search(rf"(?:^|; ){re.escape(backend)}(?: [^:;]*)?: ([0-9.]+)/([0-9.]+) img/s",
                      row.get("zoo_by_backend", ""))
    return (float(found.group(1)), float(found.group(2))) if found else (None, None)


def run_breakdown(run_dir: Path, shown: int = 5) -> str:
    """Where a run's time went, as text: its stages' seconds (metrics.json's stage_seconds), its largest
    compile times by function (compile_seconds_by_function) and what was compiled beside the train step
    (compiled_ahead: programs, the background's seconds, the run's wait for them)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return "stage s: -; compile s by function: -; compiled ahead: -"
    def listed(seconds: dict, most: int | None = None) -> str:
        return ", ".join(f"{name} {value:.1f}" for name, value in list(seconds.items())[:most]) or "-"

    ahead = metrics.get("compiled_ahead") or {}
    return (f"stage s: {listed(metrics.get('stage_seconds') or {})}; "
            f"compile s by function: {listed(metrics.get('compile_seconds_by_function') or {}, shown)}; "
            f"compiled ahead: " + (f"{ahead['programs']} programs in {ahead['seconds']:.1f} s, waited "
                                   f"{ahead['waited_seconds']:.1f} s" if ahead else "-"))


def device_named_outside() -> str:
    """The device's name where no measurement named it (the budget spent first): nvidia-smi's, else the CPU's."""
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30).stdout.split("\n")
        names = [name.strip() for name in names if name.strip()]
        if names:
            return f"{len(names)}x {names[0]}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
        return f"CPU {model} ({os.cpu_count()} cores)"
    except (OSError, StopIteration):
        return "unknown device"


def shown(value) -> str:
    """A figure for the summary's text: one decimal, or '-' where there is none."""
    found = number(value)
    return "-" if found is None else f"{found:.1f}"


def number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=list(BACKEND_MODULES), choices=list(BACKEND_MODULES))
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--out-dir", default=str(ROOT / "reports"))
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (32 px, batch 8, float32; the quickstart's baseline_cnn runs for two steps): "
                             "tries the script on a CPU")
    parser.add_argument("--checks", nargs="+", default=list(SHARES), choices=list(SHARES),
                        help="the checks to run (default all): a machine that gives one command a few minutes can "
                             "take `vs_timm input` in one command and `profile quickstart evaluation bfloat16` in "
                             "the next (each with its own --out-dir, the second with --vs-timm-csv)")
    parser.add_argument("--vs-timm-csv", metavar="PATH",
                        help="where vs_timm is not among --checks: the vs-timm-<device>.csv an earlier command wrote, "
                             "so that this command's input, profile and bfloat16 checks use its figures (the "
                             "fastest backend, mobilenet_v2's training speed, the model furthest behind, timm's "
                             "figures)")
    parser.add_argument("--profile-model", metavar="NAME",
                        help="the model the profile check profiles (default: the one furthest behind timm's inference "
                             "in this command's vs_timm, else the first of --models)")
    parser.add_argument("--quickstart-workers", type=int, default=1, metavar="N",
                        help="the quickstart's runs at once (`zoo run --workers N`, default 1): one compiles while "
                             "another trains")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="stop when this many seconds are spent, each check at the end of its share of them (SHARES): "
                             "a check cut there or not begun is a row saying so (default 480; none with --quick; 0: none)")
    args = parser.parse_args(argv)
    reference = []
    if args.vs_timm_csv and "vs_timm" not in args.checks:
        try:
            with open(args.vs_timm_csv) as handle:
                reference = list(csv.DictReader(handle))
        except OSError as error:
            parser.error(f"--vs-timm-csv {args.vs_timm_csv}: {error.strerror or error}; give the vs-timm-<device>.csv "
                         f"an earlier `--checks vs_timm` command wrote")
        if not reference or "zoo_by_backend" not in reference[0]:
            parser.error(f"--vs-timm-csv {args.vs_timm_csv}: not a table of benchmarks/vs_timm.py (no rows with "
                         f"zoo_by_backend); give the vs-timm-<device>.csv an earlier `--checks vs_timm` command wrote")
    started = time.perf_counter()
    budget = Budget(args.budget if args.budget is not None else (0 if args.quick else 480))
    backends = [b for b in args.backends if importlib.util.find_spec(BACKEND_MODULES[b])]
    size, batch, precision = (32, 8, "float32") if args.quick else (224, 64, "mixed")
    overrides = ["train.epochs=1", "train.steps_per_epoch=2"] if args.quick else []
    rows: list[dict] = []
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        def share(check: str) -> Budget:
            """``check``'s share of the seconds left, against the checks not yet run."""
            chosen = [name for name in SHARES if name in args.checks]
            later = chosen[chosen.index(check):]
            return budget.share(SHARES[check] / sum(SHARES[name] for name in later))

        measured_here = "vs_timm" in args.checks
        timm_rows = (check_vs_timm(args.models, size, batch, backends, precision, folder, share("vs_timm"))
                     if measured_here else reference)
        device = next((r["device"] for r in timm_rows if r.get("device")), None) or device_named_outside()
        suffix = "-quick" if args.quick else ""
        report = Summary(Path(args.out_dir), f"gpu-{slug(device)}{suffix}", device, date, args.quick, backends,
                         started, budget)
        if measured_here and timm_rows:  # whole, for a later command's --vs-timm-csv
            write_atomic(Path(args.out_dir) / f"vs-timm-{slug(device)}{suffix}.csv",
                         (folder / "vs_timm.csv").read_text())

        def add(check, subject, backend, value, unit, target="", detail=""):
            rows.append({"date": date, "device": device, "check": check, "subject": subject, "backend": backend,
                         "value": "" if value is None else round(value, 3), "unit": unit, "target": target,
                         "detail": detail})

        def not_run(check, subject, backend, why=""):
            add(check, subject, backend, None, "", "", why or f"not run: the time budget ({budget.seconds:.0f} s) "
                                                              f"was spent before this check")

        speeds = {}
        for row in timm_rows:
            for kind, target in (("infer", ">= 1.0"), ("train", ">= 0.9")):
                if measured_here:  # an earlier command's rows (--vs-timm-csv) are in its own summary
                    add("vs_timm", row["model"], row.get(f"best_{kind}_backend") or "",
                        number(row.get(f"{kind}_ratio")), f"zoo/timm {kind}", target,
                        f"zoo {shown(row.get(f'zoo_{kind}_images_per_second'))} img/s, timm "
                        f"{shown(row.get(f'timm_{kind}_images_per_second'))} img/s; {row.get('zoo_by_backend', '')}"
                        f"{'; ' + row['error'] if row.get('error') else ''}")
                backend = row.get(f"best_{kind}_backend")
                if kind == "train" and backend in backends:  # a reference may name backends not installed here
                    speeds[backend] = speeds.get(backend, 0.0) + (number(row.get("zoo_train_images_per_second")) or 0)
        report.write(rows)
        fastest = max(speeds, key=speeds.get) if speeds else (backends[0] if backends else None)

        def cut_at(part: Budget) -> str:
            return f"cut at its share ({part.seconds:.0f} s) of the time budget"

        def quickstart(part: Budget):
            workers = args.quickstart_workers
            seconds, runs, cut = check_quickstart(fastest, overrides, "*baseline_cnn*" if args.quick else None, folder,
                                                  part, workers)
            in_runs = sum(number(r.get("run_seconds")) or 0.0 for r in runs)
            add("quickstart", "whole command", fastest, None if cut else seconds, "s", "<= 60 on an H200",
                f"zoo run --workers {workers}; {sum(r['status'] == 'ok' for r in runs)} of {len(runs)} runs ok; "
                + (f"{in_runs:.1f} s in the runs, {seconds - in_runs:.1f} s outside them (start-up, checks, report)"
                   if workers == 1 else f"{in_runs:.1f} s in the runs, up to {workers} at once")
                + (f"; {cut_at(part)} after {seconds:.0f} s" if cut else ""))
            run_folders = load("quickstart_backends").quickstart_folder(folder, fastest, workers) / "runs"
            for run in runs:
                add("quickstart", run["run_id"], fastest, number(run.get("compile_seconds")), "compile s", "",
                    f"status {run['status']}; run {shown(run.get('run_seconds'))} s; compilations "
                    f"{run.get('compilations') or '-'}; first epoch {shown(run.get('first_epoch_seconds'))} s; later "
                    f"epochs {shown(run.get('epoch_seconds'))} s; {run_breakdown(run_folders / run['run_id'])}")

        def input_path(part: Budget):
            # mobilenet_v2's training images/s at this size, batch and precision on this backend: vs_timm's
            # `zoo speed` figure where it measured one (a model compiled again here would cost a GPU
            # session a minute), else the input script times it itself.
            timed = next((number(row.get("zoo_train_images_per_second")) for row in timm_rows
                          if row["model"] == "mobilenet_v2" and row.get("best_train_backend") == fastest), None)
            measured, cut = script_row("pipeline_throughput", [
                "synthetic_terrain", "--size", str(size), "--batch", str(batch), "--precision", precision,
                "--batches", str(5 if args.quick else 30), "--cache-dir", str(folder / "input-cache"),
                *([] if timed else ["--model", "mobilenet_v2"])], fastest, folder, part)
            if cut:
                not_run("input", INPUT_SUBJECT, fastest, cut_at(part))
            elif measured:
                delivered = number(measured.get("delivered_images_per_second"))
                training = timed or number(measured.get("model_train_images_per_second"))
                add("input", INPUT_SUBJECT, fastest,
                    delivered / training if delivered and training else None, "ratio", ">= 3",
                    f"host {measured.get('host_images_per_second')} img/s, delivered {delivered} img/s, training "
                    f"{training} img/s ({precision}; {'zoo speed, in vs_timm' if timed else 'timed by the input script'}"
                    f"), cache built in {measured.get('cache_build_seconds')} s, rows held on the device: "
                    f"{measured.get('rows_on_device') or '-'}")

        def evaluation(part: Budget):
            evaluated, cut = script_row("eval_speed", ["--backbone", "mobilenet_v2", "--size", str(size), "--batch",
                                                       str(batch), "--precision", precision], fastest, folder, part)
            if cut:
                not_run("evaluation", EVALUATION_SUBJECT, fastest, cut_at(part))
            elif evaluated:
                add("evaluation", EVALUATION_SUBJECT, fastest, number(evaluated.get("ratio")),
                    "ratio", ">= 0.9", f"evaluation {evaluated.get('evaluation_images_per_second')} img/s over "
                    f"{evaluated.get('test_examples')} test images, zoo speed {evaluated.get('speed_images_per_second')}"
                    f" img/s ({evaluated.get('precision')})")

        def bfloat16(part: Budget):
            by_model = {row["model"]: row for row in timm_rows}
            for model, measured in check_bfloat16(args.models[:2], size, batch, fastest, part).items():
                reference = by_model.get(model, {})
                half = float16_figures(reference, fastest)
                for index, kind in enumerate(("infer", "train")):
                    zoo = number(measured.get(f"{kind}_images_per_second"))
                    timm = number(reference.get(f"timm_{kind}_images_per_second"))
                    add("bfloat16", f"{model} {kind}", fastest, zoo / timm if zoo and timm else None,
                        "zoo bfloat16/timm", ">= 1.0" if kind == "infer" else ">= 0.9",
                        f"zoo mixed_bfloat16 {shown(zoo)} img/s, zoo {precision} {shown(half[index])} img/s, timm "
                        f"{shown(timm)} img/s ({reference.get('timm_precision') or '-'})"
                        f"{'; ' + measured['error'] if measured.get('error') else ''}")

        def profile(part: Budget):
            # The model furthest behind timm in inference (the first of --models where no ratio was measured).
            ratios = {row["model"]: number(row.get("infer_ratio")) for row in timm_rows}
            behind = [model for model in args.models if ratios.get(model) is not None]
            model = args.profile_model or (min(behind, key=ratios.get) if behind else args.models[0])
            table = Path(args.out_dir) / f"profile-{model}-{slug(device)}{suffix}.csv"
            profiled, cut = script_rows("profile_inference", [model, "--size", str(size), "--batch", str(batch),
                                                              "--precision", precision, "--steps", "3" if args.quick
                                                              else "10", "--budget", str(part.left() or 0)],
                                        fastest, folder, part)
            if cut or not profiled:
                not_run("profile", f"{model} total", "jax", cut_at(part) if cut else "no profile written")
                return
            write_atomic(table, Path(folder / "profile_inference.csv").read_text())
            for line in profile_lines(profiled):
                add("profile", f"{model} {line['subject']}", "jax", line["value"], "ms/batch zoo", "",
                    line["detail"] + f"; {table.name}")

        checks = [("input", INPUT_SUBJECT, input_path), ("profile", "the model furthest behind timm", profile),
                  ("quickstart", "whole command", quickstart),
                  ("evaluation", EVALUATION_SUBJECT, evaluation), ("bfloat16", ", ".join(args.models[:2]), bfloat16)]
        assert [name for name, _, _ in checks] == list(SHARES)[1:]  # shares are computed in this order
        for check, subject, measure in [check for check in checks if check[0] in args.checks] if fastest else []:
            if budget.spent():
                not_run(check, subject, fastest)
            else:
                measure(share(check))
            report.write(rows)
    paths = report.write(rows, final=True)
    print("\n".join(paths["text"].splitlines()[4:]))
    print(f"wrote {paths['csv']} and .md in {time.perf_counter() - started:.0f} s")
    return 0 if rows else 1


class Summary:
    """reports/gpu-<device>.csv and .md, written again after every check (each file whole:
    zoo.results.write_atomic), so a command stopped from outside leaves what it had measured."""

    def __init__(self, out_dir: Path, name: str, device: str, date: str, quick: bool, backends, started: float,
                 budget: Budget):
        self.out_dir, self.name, self.device, self.date, self.quick = out_dir, name, device, date, quick
        self.backends, self.started, self.budget = backends, started, budget

    def write(self, rows: list[dict], final: bool = False) -> dict:
        from importlib.metadata import version

        table = self.out_dir / f"{self.name}.csv"
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(table, text.getvalue())
        versions = ", ".join(f"{module} {version(module)}" for module in
                             ("keras", "jax", "torch", "tensorflow", "timm") if importlib.util.find_spec(module))
        state = "" if final else " (so far: the command had not ended when this was written)"
        limit = f", time budget {self.budget.seconds:.0f} s" if self.budget.seconds else ""
        lines = [f"# GPU check: {self.device}", "",
                 f"{self.date}; `python benchmarks/gpu_check.py{' --quick' if self.quick else ''}` in "
                 f"{time.perf_counter() - self.started:.0f} s{state}{limit}; {versions}; backends measured: "
                 f"{', '.join(self.backends)}; "
                 f"{'float32, 32 px, batch 8 (--quick: a try of the script, not a measurement of a GPU)' if self.quick else 'mixed precision, 224 px, batch 64'}.",
                 "", "| check | subject | backend | value | target | detail |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['check']} | {r['subject']} | {r['backend']} | {r['value']} {r['unit']} | {r['target']} | "
                  f"{r['detail']} |" for r in rows]
        text = "\n".join(lines) + "\n"
        write_atomic(self.out_dir / f"{self.name}.md", text)
        return {"csv": table, "text": text}


if __name__ == "__main__":
    sys.exit(main())
