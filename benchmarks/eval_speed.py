"""A run's own evaluation loop against ``zoo speed``'s figure for the same model, batch and size: the
images/s of a report (``images_per_second``, from zoo.harness.speed) should be what a run sees.

    python benchmarks/eval_speed.py [--backbone baseline_cnn] [--size 64] [--batch 64] [--precision float32]
                                    [--csv reports/eval_speed.csv] [--note TEXT]

One ``zoo run`` of the backbone with the linear head on synthetic_terrain (one training step; 70 % of the
900 tiles are the test split), reopened here on this process's backend, then:
- ``speed``: zoo.harness.speed.measure's inference images/s (one fixed batch on the device, after warm-up);
- ``evaluation``: the run's own scoring (zoo.harness.stages.score: the input pipeline from the decoded cache,
  prediction and metrics) over its test split, timed on a second pass (the first one traces), images/s;
and prints evaluation / speed with device, backend and precision.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="baseline_cnn")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the test split (median)")
    parser.add_argument("--precision", choices=["float32", "mixed", "mixed_float16", "mixed_bfloat16"], default="float32")
    parser.add_argument("--csv", help="append the row to this CSV file")
    parser.add_argument("--note", default="", help="what this row measures (the code's state), for the CSV")
    args = parser.parse_args()

    import statistics

    import keras

    from zoo.harness.deploy import reopen_run
    from zoo.harness.speed import measure
    from zoo.harness.stages import ModelPredict
    from zoo.runtime import backend

    suite = {"name": "eval_speed", "datasets": ["synthetic_terrain"], "backbones": [args.backbone],
             "heads": ["linear"], "seeds": [0],
             "train": {"image_size": args.size, "batch_size": args.batch, "epochs": 1, "steps_per_epoch": 1,
                       "precise_bn": False, "split": {"val": 0.1, "test": 0.7}, "backend": backend(),
                       "precision": args.precision}}
    with tempfile.TemporaryDirectory() as folder:
        suite_file = Path(folder) / "suite.json"
        suite_file.write_text(json.dumps(suite))
        subprocess.run([sys.executable, "-m", "zoo.cli", "run", str(suite_file), "--out", folder, "--no-report"],
                       check=True, capture_output=True, cwd=ROOT)
        run_dir = next((Path(folder) / "runs").iterdir())
        run = reopen_run(run_dir)
        predict = ModelPredict(run.model)
        test = run.data.pipelines["test"]
        run.score(predict, test)  # traces prediction and the preparation
        seconds = []
        for _ in range(args.passes):
            start = time.perf_counter()
            result, _ = run.score(predict, test)
            seconds.append(time.perf_counter() - start)
        examples = result["test_examples"] if "test_examples" in result else test.count
        evaluation = test.count / statistics.median(seconds)
        speed = measure(args.backbone, args.size, args.batch, args.precision, num_classes=run.data.info.num_classes,
                        training=False)  # its inference figure alone: no train step compiled for nothing
    row = {"date": datetime.now(timezone.utc).date().isoformat(), "backbone": args.backbone, "size": args.size,
           "batch": args.batch, "test_examples": examples, "evaluation_images_per_second": round(evaluation, 1),
           "speed_images_per_second": round(speed["infer_images_per_second"], 1),
           "ratio": round(evaluation / speed["infer_images_per_second"], 3), "device": speed["device"],
           "backend": f"{backend()} {speed['backend_version']}", "precision": speed["precision"],
           "keras": keras.__version__, "note": args.note}
    print(f"{args.backbone} at {args.size} px, batch {args.batch}, {row['backend']}, {row['device']}: "
          f"evaluation {evaluation:,.0f} images/s, zoo speed {speed['infer_images_per_second']:,.0f}: "
          f"ratio {row['ratio']:.2f}")
    if args.csv:
        new = not Path(args.csv).is_file()
        with open(args.csv, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
