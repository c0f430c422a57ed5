"""Every batch that reaches a compiled step has one shape (zoo.data.pipeline.ArrayBatches), and the
padding that completes an evaluation's last batch changes no number: a JAX run whose validation and
test splits are not multiples of the batch compiles its train, test and preparation steps once, and
its validation loss and accuracy, and every test metric, equal those of the same model scored on the
unpadded rows."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("jax")
pytestmark = pytest.mark.slow  # two whole runs; tests/test_input_path.py checks the batches in the fast tier

SUITE = {"name": "padding", "datasets": ["synthetic_terrain", "synthetic_landcover"], "backbones": ["baseline_cnn"],
         "heads": ["linear", "unet"], "seeds": [0],
         # 630/135/135 and 210/45/45 rows: no split a multiple of 16. One epoch and no precise BatchNorm,
         # so the saved model is the one that validation scored.
         "train": {"image_size": 32, "batch_size": 16, "epochs": 1, "backend": "jax", "precise_bn": False}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("padding")
    (root / "suite.yaml").write_text(json.dumps(SUITE))
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "run", str(root / "suite.yaml"), "--out",
                             str(root / "out"), "--no-report", "--isolate"], capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = pd.read_csv(root / "out" / "results.csv")
    assert (table["status"] == "ok").all()
    return root / "out", table.set_index("task")


def unpadded(batches, parts):
    """The split's own rows of an evaluation pipeline, as NumPy, the completion cut away."""
    import keras

    chunks = [[keras.ops.convert_to_numpy(part)[:rows] for part in batch[:parts]] for batch, rows in
              batches.with_rows()]
    return [np.concatenate(column) for column in zip(*chunks)]


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_each_step_compiles_once_whatever_the_split_sizes(runs, task):
    out, table = runs
    row = table.loc[task]
    sizes = json.loads((out / "runs" / row["run_id"] / "split.json").read_text())["sizes"]
    assert all(size % 16 for size in sizes.values())
    compiled = json.loads((out / "runs" / row["run_id"] / "metrics.json").read_text())["compiled_functions"]
    # The first run compiles; the second finds what the two share (the preparation) in the cache.
    for step in ("jit(train_step)", "jit(test_step)"):
        assert compiled[step] == 1, compiled
    assert compiled.get("jit(batch)", 0) <= 1
    # zoo's own jitted inference (outputs left on the device), not Keras's predict step: the test batch and
    # the batch-1 latency, or the latter alone where the other run compiled the former.
    assert 1 <= compiled["jit(inference)"] <= 2 and "jit(predict_step)" not in compiled, compiled
    # Initial weights and the optimizer's slots drawn on the host: no program compiled per weight shape, a
    # dozen programs in all (dozens more before).
    assert not {"jit(_uniform)", "jit(broadcast_in_dim)"} & set(compiled) and sum(compiled.values()) <= 16, compiled


def scored_without_padding(run_dir: str, task: str) -> dict:
    """What fit logged for validation and what the run recorded for test, beside the same model scored
    on the splits' rows alone (run in a JAX process, the run's backend: the same numbers, not close ones)."""
    import keras

    from zoo.harness.deploy import reopen_run
    from zoo.harness.stages import score

    run = reopen_run(run_dir)
    history = pd.read_csv(f"{run_dir}/history.csv").iloc[-1]
    predict = lambda images: np.asarray(run.model.predict_on_batch(images))  # noqa: E731
    if task == "classification":
        images, labels = unpadded(run.data.pipeline("val", False), 2)
        probabilities = predict(images)
        loss = float(keras.losses.SparseCategoricalCrossentropy()(labels, probabilities))
        accuracy = float((probabilities.argmax(-1) == labels).mean())
    else:
        images, masks, weights = unpadded(run.data.pipeline("val", False), 3)
        probabilities = predict(images)
        loss = float(keras.losses.SparseCategoricalCrossentropy()(masks, probabilities, sample_weight=weights))
        accuracy = float((weights * (probabilities.argmax(-1) == masks)).sum() / weights.sum())
    whole = unpadded(run.data.pipeline("test", False), 3)
    one_batch = type("OneBatch", (), {"with_rows": lambda self: iter([(tuple(whole), len(whole[0]))])})()
    again, _ = score(run.data, predict, one_batch)
    recorded = json.loads(open(f"{run_dir}/metrics.json").read())
    names = [name for name, value in again.items() if isinstance(value, float) and name != "eval_seconds"]
    return {"logged": [float(history["val_loss"]), float(history["val_accuracy"])], "unpadded": [loss, accuracy],
            "recorded": {name: recorded[name] for name in names}, "rescored": {name: again[name] for name in names}}


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_padding_changes_no_validation_or_test_number(runs, task):
    out, table = runs
    result = subprocess.run([sys.executable, __file__, str(out / "runs" / table.loc[task]["run_id"]), task],
                            capture_output=True, text=True,
                            env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    (logged_loss, logged_accuracy), (loss, accuracy) = found["logged"], found["unpadded"]
    assert logged_loss == pytest.approx(loss, rel=1e-5)  # fit's own float32 sums, batch by batch
    assert logged_accuracy == pytest.approx(accuracy, abs=1e-6)
    assert len(found["rescored"]) >= 4
    for name, value in found["rescored"].items():
        assert found["recorded"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


if __name__ == "__main__":
    print(json.dumps(scored_without_padding(sys.argv[1], sys.argv[2])))
