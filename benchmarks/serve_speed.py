"""`zoo serve` as a user feels it: the leaderboard of a folder of 1,000 runs (first load the moment the
server answers, first load of a server started --wait seconds before, as when one opens the printed address,
then later loads with other budgets, against the 1 s target) and "try it" on one 224-px image once its model
is loaded (against the 0.5 s target), over a real `zoo serve` process on 127.0.0.1.

The 1,000-run folder is generated from one real finished run: each copy gets its own run id, sweep value
and test predictions (the template's with a share of answers changed at random), so that every row has
its own score, interval and paired test against the best, as in a real sweep.

    python benchmarks/serve_speed.py [--runs 1000] [--repeats 5]   -> reports/serve_speed.csv
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SUITE = {"name": "serve_speed", "datasets": ["synthetic_terrain"], "backbones": ["baseline_cnn"], "heads": ["linear"],
         "train": {"image_size": 224, "batch_size": 16, "epochs": 1, "steps_per_epoch": 2, "precise_bn": False}}


def zoo(*args):
    result = subprocess.run([sys.executable, "-m", "zoo.cli", *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"zoo {' '.join(map(str, args))} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result


def generate_folder(template_out: Path, target: Path, runs: int, seed: int = 0) -> None:
    """``runs`` run folders made from the one finished run of ``template_out``."""
    from zoo import metrics
    from zoo.results import write_json, write_results_csv

    template = next(p for p in (template_out / "runs").iterdir() if not p.name.startswith("."))
    rng = np.random.default_rng(seed)
    shutil.rmtree(target, ignore_errors=True)
    (target / "runs").mkdir(parents=True)
    shutil.copy(template_out / "suite.yaml", target / "suite.yaml")
    result = json.loads((template / "result.json").read_text())
    spec = json.loads((template / "run.json").read_text())
    info = json.loads((template / "dataset.json").read_text())
    with np.load(template / "predictions.npz") as loaded:
        predictions = {k: loaded[k] for k in loaded.files}
    ids = []
    for index in range(runs):
        run_id = f"{result['run_id']}-lr{index:04d}"
        folder = target / "runs" / run_id
        folder.mkdir()
        for name in ("dataset.json", "split.json", "history.csv", "claim.json", "environment.json"):
            if (template / name).is_file():
                shutil.copy(template / name, folder / name)
        changed = rng.random(len(predictions["y_true"])) < rng.uniform(0.0, 0.6)
        y_pred = np.where(changed, rng.integers(0, len(info["class_names"]), len(changed)), predictions["y_true"])
        probabilities = np.eye(len(info["class_names"]))[y_pred] * 0.9 + 0.1 / len(info["class_names"])
        np.savez_compressed(folder / "predictions.npz", **{**predictions, "y_pred": y_pred, "probabilities": probabilities})
        scores = metrics.classification_metrics(predictions["y_true"], probabilities, info["class_names"])
        write_json(folder / "metrics.json", scores)
        write_json(folder / "run.json", {**spec, "run_id": run_id, "swept": {"learning_rate": index}})
        write_json(folder / "result.json", {**result, "run_id": run_id, "swept": f"learning_rate={index}",
                                            "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
                                            "latency_ms": float(rng.uniform(0.5, 20.0)),
                                            "images_per_second": float(rng.uniform(100, 5000))})
        ids.append(run_id)
    write_results_csv(target, ids)


class Server:
    def __init__(self, folder: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen([sys.executable, "-m", "zoo.cli", "serve", str(folder), "--port", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    raise SystemExit("zoo serve did not start")
                time.sleep(0.3)

    def timed(self, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[float, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, headers=headers or {},
                                         method="POST" if body else "GET")
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:
            data = response.read()
        return time.perf_counter() - start, data

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


def multipart(name: str, content: bytes) -> tuple[bytes, dict]:
    boundary = "serve-speed"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--wait", type=float, default=10.0,
                        help="seconds between a server's start and the first load of the second measure")
    parser.add_argument("--csv", default=str(ROOT / "reports" / "serve_speed.csv"))
    args = parser.parse_args()
    import io

    from PIL import Image

    work = Path(tempfile.mkdtemp(prefix="serve-speed-"))
    try:
        (work / "suite.yaml").write_text(json.dumps(SUITE))
        zoo("run", work / "suite.yaml", "--out", work / "trained", "--no-report")
        generate_folder(work / "trained", work / "many", args.runs)

        server = Server(work / "many")
        try:
            first, page = server.timed("/s/0/leaderboard")
            rows = page.count(b"<tr data-family")
            later = [server.timed(f"/s/0/leaderboard?latency={budget}")[0]
                     for budget in np.linspace(1, 20, args.repeats)]
        finally:
            server.stop()
        server = Server(work / "many")
        try:
            time.sleep(args.wait)
            after_wait, _ = server.timed("/s/0/leaderboard")
        finally:
            server.stop()

        server = Server(work / "trained")
        try:
            run_id = next(p.name for p in (work / "trained" / "runs").iterdir() if not p.name.startswith("."))
            buffer = io.BytesIO()
            Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(buffer, "PNG")
            body, headers = multipart("photo.png", buffer.getvalue())
            path = f"/s/0/run/{urllib.request.quote(run_id)}/predict"
            loading, _ = server.timed(path, body, headers)
            predictions = [server.timed(path, body, headers)[0] for _ in range(args.repeats)]
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import pandas as pd

    leaderboard = statistics.median(later)
    predict = statistics.median(predictions)
    device = f"CPU {cpu_name()} ({os.cpu_count()} cores)"
    print(f"leaderboard of {args.runs} runs ({rows} rows): first load {first:.2f}s ({after_wait:.2f}s when the server "
          f"started {args.wait:g}s before), later loads median {leaderboard:.3f}s ({leaderboard / 1.0:.2f}x the 1 s target)")
    print(f"try it, one 224-px image: first (model loaded) {loading:.2f}s, then median {predict:.3f}s "
          f"({predict / 0.5:.2f}x the 0.5 s target)")
    frame = pd.DataFrame([
        {"measure": "leaderboard_first_load_seconds", "value": first, "runs": args.runs, "target": None},
        {"measure": f"leaderboard_first_load_{args.wait:g}s_after_start_seconds", "value": after_wait, "runs": args.runs,
         "target": None},
        {"measure": "leaderboard_later_load_seconds_median", "value": leaderboard, "runs": args.runs, "target": 1.0},
        {"measure": "predict_first_seconds_with_model_load", "value": loading, "runs": 1, "target": None},
        {"measure": "predict_224px_seconds_median", "value": predict, "runs": 1, "target": 0.5},
    ])
    frame["repeats"] = args.repeats
    frame["device"] = device
    frame["date"] = time.strftime("%Y-%m-%d")
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.csv, index=False)
    print(f"-> {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
