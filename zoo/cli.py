"""zoo: which CNN backbone, with which head, for my images?

Train every backbone x head x dataset of a suite file, measure accuracy and time honestly, and
write a comparison report that ends in a recommendation.

examples:
  zoo run benchmarks/quickstart.yaml     train the quickstart suite, write runs/ and reports/
  zoo plan benchmarks/quickstart.yaml    what a suite will run, whether it can start, how long
  zoo list backbones 'resnet*'           what the zoo holds
  zoo COMMAND --help                     each command's options, with an example

Known harmless start-up lines of TensorFlow and the CUDA stubs are left out of the output;
--verbose (or ZOO_VERBOSE=1) shows everything.
"""
from __future__ import annotations

import argparse
import json
import sys

from zoo.arguments import help_of, non_negative_number, port_number, positive_number, whole_number

# Commands that load models while a suite may be training on the same GPU ("try it" in zoo serve, zoo
# predict, zoo export): they take GPU memory as they need it instead of most of the device at once.
BESIDE_TRAINING = {"serve", "predict", "export", "evaluate"}

# One example per command (and sub-command), shown at the end of its --help.
EXAMPLES = {
    "list": "zoo list backbones 'resnet*' --long",
    "weights": "zoo weights fetch 'resnet*' --dest /media/usb/weights",
    "weights fetch": "zoo weights fetch 'dinov2*' --dest /media/usb/weights   (then ZOO_WEIGHTS_DIR=/media/usb/weights)",
    "weights check": "zoo weights check 'resnet*'   (where a run would look: ZOO_WEIGHTS_DIR, the Keras cache)",
    "run": "zoo run benchmarks/quickstart.yaml --set train.epochs=2 --only '*baseline_cnn*'",
    "plan": "zoo plan benchmarks/quickstart.yaml",
    "report": "zoo report runs/quickstart --latency-budget 5 --size-budget 10",
    "export": "zoo export runs/quickstart/runs/RUN_ID --format onnx --quantize int8 --measure",
    "compare": "zoo compare runs/quickstart RUN_A RUN_B --metric macro_f1",
    "predict": "zoo predict runs/quickstart/runs/RUN_ID photo.jpg more_photos/ --top-k 3",
    "evaluate": "zoo evaluate runs/shelter ~/photos/other_shelter   (every model of the study, on new photos)",
    "mlflow-sync": "zoo mlflow-sync runs/quickstart --mlflow http://127.0.0.1:5000",
    "serve": "zoo serve runs/quickstart   (then open http://127.0.0.1:8000)",
    "data": "zoo data info synthetic_terrain",
    "data info": "zoo data info ~/photos/breeds --json",
    "data prepare": "zoo data prepare eurosat_rgb",
    "speed": "zoo speed 'mobilenet*' resnet50 --size 224 --batch 64 --backend jax",
}


def cmd_list(args) -> int:
    from zoo.backbones import BACKBONES
    from zoo.heads import HEADS

    if args.what == "backbones":
        for name in BACKBONES.list(args.pattern):
            spec = BACKBONES.get(name)
            if args.long:
                print(json.dumps(spec.describe()))
            else:
                pretrained = ("no" if not spec.has_imagenet_weights else
                              spec.hub.pretraining if spec.hub else "ImageNet-1k")
                restricted = f"\tlicence: {spec.license}" if spec.license_restricts_use else ""
                print(f"{name}\t{spec.family}\tpreprocessing={spec.preprocessing}\tsize={spec.default_size}"
                      f"\tpretrained={pretrained}{restricted}")
    elif args.what == "heads":
        for name in HEADS.list(args.pattern):
            head = HEADS.get(name)
            print(f"{name}\t{head.task}\t{head.description}")
    elif args.what == "tasks":
        from zoo.tasks import TASKS

        for name in TASKS.list(args.pattern):
            task = TASKS.get(name)
            print(f"{name}\ttargets={task.target}\tcompared by: {', '.join(task.comparable_metrics)}"
                  f"\tintervals: {', '.join(task.interval_metrics)}\tlosses: {', '.join(task.losses)}"
                  f"{'' if task.class_weights_apply else ' (no class_weights)'}")
    else:
        from zoo.data import DATASETS

        for name in DATASETS.list(args.pattern):
            card = DATASETS.get(name)
            # A tensorflow-datasets card may leave its class names to the prepared data, not their number.
            classes = card.get("num_classes") or len(card.get("class_names", []))
            print(f"{name}\t{card['task']}\t{card.get('source', '')}\t{classes} classes")
    return 0


def cmd_weights(args) -> int:
    from pathlib import Path

    from zoo.backbones import BACKBONES
    from zoo.weights import download_weights, file_matches_hash

    dest = Path(args.dest).expanduser()
    failures = 0
    for name in BACKBONES.list(args.pattern):
        spec = BACKBONES.get(name)
        if spec.hub is not None:
            from zoo.errors import WeightsUnavailableError
            from zoo.weights import fetch_preset

            try:
                print(f"ok\t{name}\t{fetch_preset(spec, dest)}")
            except WeightsUnavailableError as error:  # every download failure, said in one line
                failures += 1
                print(f"failed\t{name}\tkeras-hub preset {spec.hub.preset}\t{error.reason}", file=sys.stderr)
            except OSError as error:  # the destination: full, read-only
                failures += 1
                print(f"failed\t{name}\t{dest}\t{type(error).__name__}: {error}", file=sys.stderr)
            continue
        files = [spec.imagenet_no_top] + ([spec.imagenet_top] if args.include_top else [])
        for weights in filter(None, files):
            target = dest / weights.file_name
            if target.is_file() and file_matches_hash(target, weights.file_hash):
                print(f"ok\t{name}\t{target} (already there)")
                continue
            try:
                print(f"ok\t{name}\t{download_weights(weights, dest)}")
            except Exception as error:
                failures += 1
                print(f"failed\t{name}\t{weights.url}\t{type(error).__name__}: {error}", file=sys.stderr)
    if failures:
        print(f"{failures} file(s) could not be fetched; nothing partial was left in {dest}", file=sys.stderr)
    return 1 if failures else 0


def cmd_weights_check(args) -> int:
    """Which backbones' pretrained weights this machine holds, checked as a run would find them (hashes,
    complete preset folders), with nothing downloaded: 1 when any is missing or damaged."""
    from zoo.backbones import BACKBONES
    from zoo.weights import weights_status

    names = [n for n in BACKBONES.list(args.pattern) if BACKBONES.get(n).has_imagenet_weights]
    if not names:
        print(f"no backbone with pretrained weights matches {args.pattern!r}", file=sys.stderr)
        return 1
    counts = {"here": 0, "missing": 0, "damaged": 0}
    for name in names:
        status, detail = weights_status(BACKBONES.get(name))
        counts[status] += 1
        print(f"{status}\t{name}\t{detail}")
    print(f"{counts['here']} of {len(names)} here" + (
        f"; {counts['missing']} missing, {counts['damaged']} damaged: on a machine with internet run `zoo weights "
        f"fetch '{args.pattern}' --dest DIR`, copy DIR here and set ZOO_WEIGHTS_DIR=DIR" if counts["here"] < len(names) else ""))
    return 0 if counts["here"] == len(names) else 1


def cmd_run(args) -> int:
    from pathlib import Path

    from zoo.harness.runner import run_suite
    from zoo.harness.suite import load_suite

    if args.dry_run:
        from zoo.harness.preflight import startup_seconds

        startup_seconds()  # measured before anything imports Keras: the plan's per-run start-up
    suite = load_suite(args.suite, args.set)
    out = Path(args.out) if args.out else Path("runs") / suite["name"]
    if args.dry_run:
        from zoo.harness.runner import plan_suite

        return plan_suite(suite, out, only=args.only, suite_path=args.suite, workers=args.workers)
    executor = "in-process" if args.in_process else args.executor
    options = {}
    if executor == "ray":
        options = dict(address=args.address, gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run,
                       max_retries=args.max_retries)
    elif args.address or args.gpus_per_run is not None:
        from zoo.errors import ConfigError

        raise ConfigError("--address and --gpus-per-run go with --executor ray")
    return run_suite(suite, out, only=args.only, force=args.force, executor=executor,
                     report=not args.no_report, prepare=args.prepare, suite_path=args.suite,
                     executor_options=options, mlflow=args.mlflow, workers=args.workers)


def cmd_mlflow_sync(args) -> int:
    import os

    from zoo.errors import ConfigError
    from zoo.tracking import sync

    uri = args.mlflow or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError("give the tracking server: --mlflow URI (or set MLFLOW_TRACKING_URI)")
    return sync(args.out, uri)


def cmd_serve(args) -> int:
    from zoo.serve import serve

    return serve(args.out, host=args.host, port=args.port, token=args.token, models=args.models)


def cmd_plan(args) -> int:
    from pathlib import Path

    from zoo.harness.preflight import startup_seconds

    startup_seconds()  # measured before anything imports Keras: the plan's per-run start-up
    from zoo.harness.runner import plan_suite
    from zoo.harness.suite import load_suite

    suite = load_suite(args.suite, args.set)
    return plan_suite(suite, Path(args.out) if args.out else Path("runs") / suite["name"], only=args.only,
                      record=args.record, suite_path=args.suite, workers=args.workers)


def cmd_report(args) -> int:
    from zoo.report import write_report

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    notes: list[str] = []
    for path in write_report(args.out, formats=formats, report_dir=args.o, latency_budget_ms=args.latency_budget,
                             notes=notes, size_budget_mb=args.size_budget, detailed_models=args.detailed_models):
        print(path)
    for note in notes:
        print(f"zoo: warning: {note}", file=sys.stderr)
    # A damaged run left out makes the report incomplete; ignored stray lines do not.
    return 1 if any(note.startswith("run ") for note in notes) else 0


def cmd_export(args) -> int:
    from pathlib import Path

    from zoo.errors import ConfigError
    from zoo.export import ExportFailed, check_export
    from zoo.harness.deploy import export_run, finished_runs, measure_finished
    from zoo.results import read_results, write_results_csv

    check_export([args.format], args.quantize, "zoo export")
    target = Path(args.run_dir)
    whole_folder = (target / "results.csv").is_file() and not (target / "model.keras").exists()
    if whole_folder and args.o:
        raise ConfigError("-o names one file: give one run folder (OUT/runs/<run_id>), or leave -o out to export "
                          "every run into its own folder")
    runs = finished_runs(target) if whole_folder else [target]
    failed = 0
    for run_dir in runs:
        try:
            if args.measure:
                figures = measure_finished(run_dir, {"formats": [args.format], "quantize": args.quantize})
                error = figures.get(f"{args.format}_error")
                if error:
                    raise ExportFailed(error)
                print(f"{run_dir.name}\t{args.format} {args.quantize}\t{figures[f'{args.format}_megabytes']:.2f} MB"
                      f"\t{figures[f'{args.format}_latency_ms']:.2f} ms\t{figures['export_metric']} "
                      f"{figures[f'{args.format}_accuracy']:.4f} (drop {figures[f'{args.format}_accuracy_drop']:+.4f})")
            else:
                exported = export_run(run_dir, args.format, args.quantize, output=args.o)
                print(f"{exported['path']}\t{exported['megabytes']:.2f} MB\t({exported['seconds']:.1f}s)")
        except ExportFailed as error:
            failed += 1
            print(f"zoo: error: {run_dir.name}: {error}", file=sys.stderr)
    if args.measure:
        out = target if whole_folder else target.parent.parent
        if (out / "results.csv").is_file():
            write_results_csv(out, list(read_results(out)["run_id"]))
    return 1 if failed else 0


def cmd_compare(args) -> int:
    from zoo.stats import SIGNIFICANCE, compare_runs

    result = compare_runs(args.out, args.run_a, args.run_b, args.metric)
    if args.json:
        print(json.dumps(result))
        return 0
    direction = "higher" if result["higher_is_better"] else "lower"
    print(f"{result['metric']} ({direction} is better) on {result['n']:,} paired test examples")
    print(f"  A {result['a']}: {result['value_a']:.4f}" + (f"  ({len(result['runs_a'])} seeds)" if len(result['runs_a']) > 1 else ""))
    print(f"  B {result['b']}: {result['value_b']:.4f}" + (f"  ({len(result['runs_b'])} seeds)" if len(result['runs_b']) > 1 else ""))
    print(f"  A - B = {result['difference']:+.4f}, 95 % interval [{result['ci_low']:+.4f}, {result['ci_high']:+.4f}], "
          f"p = {result['p_value']:.3g} ({result['test']})")
    verdict = "significant" if result["p_value"] < SIGNIFICANCE else "not significant"
    print(f"  the difference is {verdict} at {SIGNIFICANCE:g}")
    return 0


def cmd_evaluate(args) -> int:
    from zoo.harness.evaluate import evaluate, format_evaluation

    results = evaluate(args.run_or_out, args.folder, log=(lambda *_: None) if args.json else
                       (lambda line: print(line, file=sys.stderr, flush=True)))
    if args.json:
        print(json.dumps(results, default=str))
    else:
        print(format_evaluation(results))
    return 1 if any("error" in result for result in results) else 0


def cmd_predict(args) -> int:
    from zoo.predict import list_inputs, predict_images, predict_to_file

    if args.output:
        summary = predict_to_file(args.run_dir, args.inputs, args.output, batch_size=args.batch_size,
                                  top_k=args.top_k, executor=args.executor, address=args.address,
                                  exported=args.exported)
        steady = summary["steady_images_per_second"]
        # The first batch pays for loading the model and compiling it: the rate after it is what more
        # images cost; the whole command's time stays the headline.
        print(f"{summary['images']} images -> {args.output} in {summary['seconds']:.1f}s (first batch, model loaded "
              f"and compiled: {summary['first_batch_seconds']:.1f}s"
              + (f"; then {steady:.1f} images/s)" if steady else ")"))
        if not summary["failed"]:
            return 0
        if args.output.endswith(".parquet"):
            print(f"zoo: {summary['failed']} of {summary['images']} input(s) could not be read; their rows say why "
                  f"(column error)", file=sys.stderr)
            return 0
        # A CSV has no column to say why, and a submission missing rows is not one: name them, and fail.
        print(f"zoo: {summary['failed']} of {summary['images']} input(s) could not be read and have no row in "
              f"{args.output}:", file=sys.stderr)
        shown = 20
        for path, why in summary["failures"][:shown]:
            print(f"  {path}: {why}", file=sys.stderr)
        if summary["failed"] > shown:
            print(f"  ... and {summary['failed'] - shown} more (--output FILE.parquet lists each with its "
                  f"error)", file=sys.stderr)
        return 1
    if args.executor != "local":
        from zoo.errors import ConfigError

        raise ConfigError("--executor ray writes its predictions to a file: add --output FILE.parquet (or FILE.csv)")
    images = list_inputs(args.inputs)
    failed = 0
    for answer in predict_images(args.run_dir, images, args.top_k, args.exported):
        if "error" in answer:
            failed += 1
            print(f"zoo: error: {answer['image']}: {answer['error']}", file=sys.stderr, flush=True)
            continue
        print(answer["image"])
        for name, probability in answer["top"]:
            print(f"  {probability:6.1%}  {name}", flush=True)
    if failed:
        print(f"zoo: {failed} of {len(images)} input(s) could not be classified", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true",
                        help="show every line the libraries print, TensorFlow's start-up lines included")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.set_defaults(func=help_of(parser))  # `zoo` alone, as `zoo data` alone: the help

    listing = commands.add_parser("list", help="list registered backbones, heads or datasets")
    listing.add_argument("what", choices=["backbones", "heads", "datasets", "tasks"])
    listing.add_argument("pattern", nargs="?", default="*", help="glob pattern, e.g. 'resnet*'")
    listing.add_argument("--long", action="store_true", help="all metadata, one JSON object per line")
    listing.set_defaults(func=cmd_list)

    weights = commands.add_parser("weights", help="pretrained weights for offline machines")
    weights_commands = weights.add_subparsers(dest="weights_command", metavar="COMMAND")
    weights.set_defaults(func=help_of(weights))
    fetch = weights_commands.add_parser("fetch", help="download and hash-check ImageNet weight files")
    fetch.add_argument("pattern", nargs="?", default="*")
    fetch.add_argument("--dest", required=True, help="folder to put the files in (then set ZOO_WEIGHTS_DIR to it)")
    fetch.add_argument("--include-top", action="store_true", help="also the files with the ImageNet classifier")
    fetch.set_defaults(func=cmd_weights)
    check = weights_commands.add_parser("check", help="which pretrained weights this machine holds (nothing "
                                                      "downloaded; exit 1 when any is missing or damaged)")
    check.add_argument("pattern", nargs="?", default="*")
    check.set_defaults(func=cmd_weights_check)

    run = commands.add_parser("run", help="train and evaluate every run of a suite file")
    run.add_argument("suite", help="suite YAML file, e.g. benchmarks/quickstart.yaml")
    run.add_argument("-o", "--out", help="output folder (default: runs/<suite name>)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a suite key, e.g. --set train.epochs=1 (repeatable)")
    run.add_argument("--only", metavar="PATTERN", help="run only the runs whose id matches this glob")
    run.add_argument("--force", action="store_true", help="redo finished runs too")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.add_argument("--executor", choices=["worker", "isolated", "ray"], default="worker",
                     help="worker (default): runs one after another in one long-lived worker process, which "
                          "pays start-up once; isolated: a new process for every run; ray: several runs at once "
                          "on a Ray cluster (the output folder must be on a file system every node shares)")
    run.add_argument("--mlflow", metavar="URI", help="log every run to this MLflow tracking server (default: the "
                                                     "suite's tracking.mlflow, else MLFLOW_TRACKING_URI)")
    run.add_argument("--address", help="Ray cluster: auto (default), HOST:PORT or ray://HOST:10001")
    run.add_argument("--gpus-per-run", type=non_negative_number, help="Ray: GPUs per run (default 1 where the cluster has GPUs)")
    run.add_argument("--cpus-per-run", type=positive_number, default=1, help="Ray: CPUs per run (default 1)")
    run.add_argument("--max-retries", type=whole_number(0), default=1,
                     help="Ray: times a run is retried when its worker or node dies (default 1)")
    run.add_argument("--workers", type=whole_number(1), default=1, metavar="N",
                     help="runs at once on this machine, each in its own worker process (default 1). On a GPU "
                          "one run compiles while another trains; their epoch times then include the sharing "
                          "(results.csv's runs_at_once), their images/s are measured with the others paused")
    run.add_argument("--isolate", dest="executor", action="store_const", const="isolated",
                     help="= --executor isolated")
    run.add_argument("--in-process", action="store_true",
                     help="run in this process (debugging; a hard crash then stops the suite)")
    run.add_argument("--prepare", action="store_true",
                     help="first download/build the datasets and weights the runs need")
    run.add_argument("--dry-run", action="store_true",
                     help="list every run with its status and an estimated time; train nothing (= zoo plan)")
    run.set_defaults(func=cmd_run)

    plan = commands.add_parser("plan", help="every run of a suite with its status, readiness and estimated time")
    plan.add_argument("suite")
    plan.add_argument("-o", "--out", help="output folder (default: runs/<suite name>)")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    plan.add_argument("--only", metavar="PATTERN")
    plan.add_argument("--record", action="store_true",
                      help="keep the estimates in OUT/plan.json, where zoo serve shows them beside the time each "
                           "run then takes (otherwise the plan writes nothing)")
    plan.add_argument("--workers", type=whole_number(1), default=1, metavar="N",
                      help="the runs shared by N workers, as zoo run --workers N runs them: the suite's time "
                           "also as if none slowed another")
    plan.set_defaults(func=cmd_plan)

    report = commands.add_parser("report", help="write markdown/HTML comparison reports from a results folder")
    report.add_argument("out", help="the folder `zoo run` wrote (holding results.csv)")
    report.add_argument("--format", default="md,html", help="md, html or both (default md,html)")
    report.add_argument("-o", "--out", dest="o", metavar="DIR", help="report folder (default: reports/<suite name>)")
    report.add_argument("--latency-budget", type=positive_number, metavar="MS", help="also name the best model within this latency")
    report.add_argument("--size-budget", type=positive_number, metavar="MB",
                        help="also name the best model whose file (exported, else .keras) fits this size")
    report.add_argument("--detailed-models", type=whole_number(0), default=None, metavar="N",
                        help="per-class tables, confusion matrices and training curves for each dataset's first N "
                             "models and those the recommendation names (default 20; every model keeps its "
                             "leaderboard row)")
    report.set_defaults(func=cmd_report)

    export = commands.add_parser("export", help="export a finished run's model (SavedModel, LiteRT, ONNX)")
    export.add_argument("run_dir", help="a run folder (OUT/runs/<run_id>), or a results folder for all its runs")
    export.add_argument("--format", required=True, choices=["saved_model", "tflite", "onnx"])
    export.add_argument("--quantize", default="none", choices=["none", "float16", "int8"],
                        help="tflite and onnx: float16 weights, or int8 calibrated on the run's training images")
    export.add_argument("-o", "--out", dest="o", metavar="PATH", help="where to write it (default: RUN/export/model[-QUANTIZE].EXT); "
                                                   "a JSON description of its input goes beside it")
    export.add_argument("--measure", action="store_true",
                        help="also measure it on the run's test split (size, CPU latency, score after "
                             "conversion) and add the figures to the run's row in results.csv")
    export.set_defaults(func=cmd_export)

    compare = commands.add_parser("compare", help="paired significance test of two runs (or two models' seeds)")
    compare.add_argument("out", help="the folder `zoo run` wrote")
    compare.add_argument("run_a", help="a run id, or a glob gathering the seeds of one model")
    compare.add_argument("run_b", help="a run id, or a glob gathering the seeds of one model")
    compare.add_argument("--metric", help="accuracy or macro_f1 (classification); kl_score, miou or accuracy "
                                          "(segmentation); default: the headline metric")
    compare.add_argument("--json", action="store_true", help="print one JSON object")
    compare.set_defaults(func=cmd_compare)

    evaluate = commands.add_parser("evaluate", help="score a finished run (or every run of a study) on a folder of "
                                                    "labelled images it has never seen")
    evaluate.add_argument("run_or_out", metavar="RUN_OR_OUT",
                          help="a run folder (OUT/runs/<run_id>) or a study (the folder zoo run wrote)")
    evaluate.add_argument("folder", metavar="FOLDER",
                          help="labelled images laid out as the training data was: class folders named as the "
                               "model's classes (a few of them will do), or images/ and masks/")
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="classify images with a finished run's model")
    predict.add_argument("run_dir", help="a run folder: OUT/runs/<run_id>")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image files, folders (searched recursively) or s3://bucket/prefix (endpoint and "
                              "credentials from the AWS variables, e.g. AWS_ENDPOINT_URL)")
    predict.add_argument("--top-k", type=whole_number(1), default=5)
    predict.add_argument("-o", "--output", metavar="FILE.parquet|FILE.csv",
                         help="FILE.parquet: one row per image (path, label, probability, top_k, probabilities, "
                              "error); FILE.csv: sample_id (file name without extension) and one column per class "
                              "(a segmentation run's class proportions: the land-cover challenge's submission); "
                              "segmentation masks go to FILE_masks/")
    predict.add_argument("--batch-size", type=whole_number(1), default=64, help="images per model call with --output")
    predict.add_argument("--executor", choices=["local", "ray"], default="local",
                         help="local (this process) or ray (Ray Data over an actor pool; needs --output)")
    predict.add_argument("--address", default="auto", help="Ray cluster address with --executor ray")
    predict.add_argument("--model", metavar="EXPORTED", dest="exported",
                         help="answer with an exported copy of the run's model (RUN/export/model-int8.tflite, "
                              "*.onnx or a SavedModel folder, as zoo export writes them) in its own runtime")
    predict.set_defaults(func=cmd_predict)

    sync = commands.add_parser("mlflow-sync", help="log a results folder's finished runs to MLflow (those not there yet)")
    sync.add_argument("out", help="the folder `zoo run` wrote")
    sync.add_argument("--mlflow", metavar="URI", help="tracking server (default: MLFLOW_TRACKING_URI)")
    sync.set_defaults(func=cmd_mlflow_sync)

    serve = commands.add_parser("serve", help="a local web page over output folders: the study live, leaderboards "
                                              "with budgets, comparisons, and trying a model on your images")
    serve.add_argument("out", nargs="+", help="folders `zoo run` wrote (runs/<suite>), each served read-only")
    serve.add_argument("--port", type=port_number, default=8000)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: this machine only); any other needs --token")
    serve.add_argument("--token", help="required on every request (default: ZOO_SERVE_TOKEN); open the printed "
                                       "address once, the browser keeps it")
    serve.add_argument("--models", type=whole_number(0), default=2, help="finished runs' models kept loaded for 'try it'")
    serve.set_defaults(func=cmd_serve)

    from zoo.data.commands import add_data_commands
    from zoo.harness.speed import add_speed_command

    add_data_commands(commands)
    add_speed_command(commands)
    _add_examples(commands)
    return parser


def _add_examples(commands, prefix: str = "") -> None:
    """Each sub-command's --help ends with its example from EXAMPLES."""
    for name, command in commands.choices.items():
        example = EXAMPLES[f"{prefix}{name}"]
        command.epilog = f"example:\n  {example}"
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_examples(action, f"{prefix}{name} ")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:  # zoo's own option, wherever it was typed (zoo run SUITE --verbose)
        argv = ["--verbose"] + [a for a in argv if a != "--verbose"]
    args = build_parser().parse_args(argv)
    if args.command in BESIDE_TRAINING:
        from zoo.runtime import take_gpu_memory_on_demand

        take_gpu_memory_on_demand()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `zoo list backbones | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:
        from zoo.errors import USER_ERRORS

        if isinstance(error, USER_ERRORS):
            print(f"zoo: error: {error}", file=sys.stderr)
            return 2
        raise


def entry() -> None:
    """The ``zoo`` console script: the native start-up noise filtered (unless --verbose), then main."""
    argv = sys.argv[1:]
    if "--verbose" not in argv:
        import os

        from zoo.console import quiet_native_stderr

        # TensorFlow's C++ INFO and WARNING lines after start-up (its converters' "Reading SavedModel from",
        # grappler's "Starting new session", on every `zoo export`), as zoo's workers already set it: its
        # errors still show.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        quiet_native_stderr()
    sys.exit(main(argv))


if __name__ == "__main__":
    entry()
