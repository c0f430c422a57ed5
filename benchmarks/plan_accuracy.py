"""How good are `zoo plan`'s time estimates? The plan of a suite against its measured run.

    python benchmarks/plan_accuracy.py [--suite benchmarks/quickstart.yaml] [--out DIR]

Runs `zoo plan SUITE` in a fresh process (its wall time is what the user waits for), then
`zoo run SUITE` in another (its runs in one worker process, as usual), and compares each run's
estimate with its measured wall time (the runner prints it). Prints both per run, the
ratios (estimate / measured; targets: every run within a factor of 1.5, the suite within 1.25)
and the device. With --out the run's folder is kept (for a report); otherwise a temporary one.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DURATION = re.compile(r"^(?:(\d+)h)?(\d+)m(\d+)s$")


def seconds_of(text: str) -> float:
    hours, minutes, seconds = DURATION.match(text).groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)


def zoo(*args) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="benchmarks/quickstart.yaml")
    parser.add_argument("--out", help="keep the run folder here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        out = args.out or str(Path(temporary) / "out")
        plan, plan_seconds = zoo("plan", args.suite, "--out", out)
        if plan.returncode != 0:
            print(plan.stdout[-3000:], plan.stderr[-3000:])
            return 1
        estimates = {}
        for line in plan.stdout.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[-3] == "pending" and DURATION.match(fields[-1]):
                estimates[fields[0]] = seconds_of(fields[-1])
        device = re.search(r" on (.+?)(?: \(|$)", next(l for l in plan.stdout.splitlines() if l.startswith("suite:")))
        run, run_seconds = zoo("run", args.suite, "--out", out, "--no-report")
        measured = {match.group(1): float(match.group(2))
                    for match in re.finditer(r"^\[\d+/\d+\] (\S+): ok \((\d+)s\)$", run.stdout, re.MULTILINE)}
    print(f"device: {device.group(1) if device else '?'}; suite {args.suite}")
    print(f"zoo plan took {plan_seconds:.1f} s (wall, fresh process); zoo run took {run_seconds:.0f} s")
    print(f"{'run':60s} {'estimate s':>10s} {'measured s':>10s} {'ratio':>6s}")
    ratios = []
    for run_id, estimate in estimates.items():
        if run_id not in measured:
            print(f"{run_id:60s} {estimate:10.0f} {'failed':>10s}")
            continue
        ratio = estimate / max(measured[run_id], 1.0)
        ratios.append(ratio)
        print(f"{run_id:60s} {estimate:10.0f} {measured[run_id]:10.0f} {ratio:6.2f}")
    total_estimate = sum(estimates[r] for r in measured if r in estimates)
    total_measured = sum(measured[r] for r in measured if r in estimates)
    worst = max(ratios + [1 / r for r in ratios]) if ratios else float("nan")
    print(f"suite: estimate {total_estimate:.0f} s, measured {total_measured:.0f} s (sum of runs), ratio "
          f"{total_estimate / max(total_measured, 1):.2f} (target within 1.25); worst run off by a factor of "
          f"{worst:.2f} (target 1.5)")
    return 0 if run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
