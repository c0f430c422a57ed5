"""Sweep overhead: a 5-seed sweep of a linear head on a frozen pretrained backbone, as the
whole `zoo run` command against a plain Keras script doing the same work in one process.

    python benchmarks/sweep_overhead.py [--backbone mobilenet_v2] [--size 64] [--epochs 8] [--examples 1800]

Both sides: the same frozen backbone (pretrained first on other synthetic tiles, as
benchmarks/feature_cache.py does, so the heads learn), the same 70/15/15 carving of
synthetic_terrain (1,800 tiles: 1,260 training images), features computed once, five seeds
of a linear head trained for the same epochs with the same optimizer and batch size, each
evaluated on the test images. Each side runs as its own fresh process (`python -m zoo.cli
run ...` and `python benchmarks/sweep_overhead.py --plain ...`) and is timed from outside:
the wall time a user waits, start-up and imports included. zoo also measures speed, saves
every model, writes predictions, intervals and the report: that is part of what it costs.
Target: zoo / plain <= 1.5.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
SEEDS = [0, 1, 2, 3, 4]


def plain_sweep(backbone: str, size: int, epochs: int, examples: int, weights: str) -> None:
    """What a user would write instead: one process, features once, five heads."""
    import keras
    import tensorflow as tf

    from zoo.backbones import BACKBONES
    from zoo.data import DATASETS
    from zoo.data.synthetic import make_synthetic_terrain
    from zoo.data.splits import plan_splits
    from zoo.preprocessing import preprocess

    card = DATASETS.get("synthetic_terrain")
    images, labels = make_synthetic_terrain(examples, card["image_size"], card["seed"])
    plan = plan_splits({"train": len(images)}, None, 0, {"train": labels})
    spec = BACKBONES.get(backbone)
    extractor = spec.build((size, size, 3))
    extractor.load_weights(weights)
    pooled = keras.Sequential([extractor, keras.layers.GlobalAveragePooling2D()])

    def features(indices):
        chosen = images if indices is None else images[indices]
        resized = tf.image.resize(chosen.astype("float32"), (size, size))
        return pooled.predict(preprocess(resized, spec.preprocessing), batch_size=32, verbose=0)

    data = {name: (features(indices), labels if indices is None else labels[indices])
            for name, (_, indices) in plan.items()}
    accuracies = []
    for seed in SEEDS:
        keras.utils.set_random_seed(seed)
        head = keras.Sequential([keras.Input(data["train"][0].shape[1:]),
                                 keras.layers.Dense(len(card["class_names"]), activation="softmax")])
        head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                     metrics=["accuracy"])
        head.fit(*data["train"], validation_data=data["val"], epochs=epochs, batch_size=32, verbose=0)
        accuracies.append(head.evaluate(*data["test"], verbose=0)[1])
    print(json.dumps({"accuracies": accuracies}))


def timed(command: list[str], cwd) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--examples", type=int, default=1800)
    parser.add_argument("--plain", metavar="WEIGHTS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain_sweep(args.backbone, args.size, args.epochs, args.examples, args.plain)
        return 0

    sys.path.insert(0, str(HERE))
    from feature_cache import pretrain_backbone

    import pandas as pd

    with tempfile.TemporaryDirectory() as folder:
        weights, pretrain_accuracy = pretrain_backbone(args.backbone, args.size, folder)
        suite = Path(folder) / "sweep.yaml"
        suite.write_text(json.dumps({
            "name": "sweep-overhead", "backbones": [args.backbone], "heads": ["linear"], "seeds": SEEDS,
            "datasets": [{"name": "synthetic_terrain", "num_examples": args.examples}],
            "weights": weights, "trainable": "frozen",
            "train": {"image_size": args.size, "batch_size": 32, "epochs": args.epochs, "learning_rate": 0.001}}))
        out = Path(folder) / "out"
        zoo_seconds, zoo_result = timed([sys.executable, "-m", "zoo.cli", "run", str(suite), "--out", str(out)],
                                        cwd=folder)
        plain_seconds, plain_result = timed([sys.executable, str(Path(__file__).resolve()), "--plain", weights,
                                             "--backbone", args.backbone, "--size", str(args.size),
                                             "--epochs", str(args.epochs), "--examples", str(args.examples)],
                                            cwd=folder)
        frame = pd.read_csv(out / "results.csv")
    plain = json.loads(plain_result.stdout.strip().splitlines()[-1])["accuracies"]
    print(f"device: {frame['device'].iloc[0]}; float32; frozen pretrained {args.backbone} (pretraining test "
          f"accuracy {pretrain_accuracy:.4f}) + linear head, {len(SEEDS)} seeds x {args.epochs} epochs, "
          f"synthetic_terrain {args.examples} tiles at {args.size} px")
    print(f"zoo run (worker, features {'/'.join(sorted(set(frame['features'])))}, speed measured "
          f"{int(frame['speed_measured_in'].isna().sum())}x, report written): {zoo_seconds:.1f} s; "
          f"per run: train {frame['train_seconds'].median():.2f} s, features {frame['feature_seconds'].max():.2f} s "
          f"once, accuracy {frame['accuracy'].mean():.4f} ± {frame['accuracy'].std():.4f}")
    print(f"plain Keras script: {plain_seconds:.1f} s; accuracy {pd.Series(plain).mean():.4f} ± "
          f"{pd.Series(plain).std():.4f}")
    print(f"ratio zoo / plain: {zoo_seconds / plain_seconds:.2f} (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
