"""Exported models (SavedModel, LiteRT, ONNX; float16 and int8) and the deployment figures of a suite."""
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from zoo.backbones import BACKBONES
from zoo.cli import main
from zoo.errors import ConfigError
from zoo.export import FORMATS, load_exported
from zoo.harness.deploy import deployment_figures, reopen_run
from zoo.harness.runner import run_suite
from zoo.harness.suite import load_suite
from zoo.report import write_report

pytestmark = pytest.mark.xdist_group("export")  # one trained, exported run for the module

# Stated tolerances. Float formats compute the same function in another runtime: only float32
# rounding differs (float16 weights round to ~3 significant digits). int8 rounds weights and
# activations to 256 levels: on the test split it may lose a few points, never the model.
FLOAT_TOLERANCE = {"none": 1e-4, "float16": 5e-3}
INT8_MAX_DROP = 0.10
INT8_MIN_AGREEMENT = 0.85
TRAIN = {"image_size": 32, "batch_size": 16, "epochs": 2, "steps_per_epoch": 4}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One classification run of a suite that exports every format after training."""
    out = tmp_path_factory.mktemp("exported")
    suite = load_suite({"name": "deploy", "datasets": ["synthetic_terrain"], "train": TRAIN,
                        "export": ["saved_model", "tflite", "onnx"]})
    assert run_suite(suite, out, executor="in-process", report=False, log=lambda *_: None) == 0
    return out, next((out / "runs").iterdir())


def test_each_exported_format_is_measured_and_recorded_in_the_results_row(exported):
    out, run_dir = exported
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["status"] == "ok" and row["export_metric"] == "accuracy"
    for name in FORMATS:
        assert row[f"{name}_quantize"] == "none"
        assert pd.isna(row[f"{name}_error"]), row[f"{name}_error"]
        assert row[f"{name}_megabytes"] > 0 and row[f"{name}_latency_ms"] > 0
        # The same function in another runtime scores the same on the same test images.
        assert row[f"{name}_accuracy"] == pytest.approx(row["accuracy"], abs=0.005)
        assert row[f"{name}_accuracy_drop"] == pytest.approx(row["accuracy"] - row[f"{name}_accuracy"])
    files = {p.name for p in (run_dir / "export").iterdir()}
    assert files == {"model.tflite", "model.tflite.json", "model.onnx", "model.onnx.json",
                     "model-saved_model", "model-saved_model.json"}  # nothing half-written left beside them
    description = json.loads((run_dir / "export" / "model.tflite.json").read_text())
    assert description["input_shape"] == [None, 32, 32, 3]
    assert description["preprocessing"] == BACKBONES.get("baseline_cnn").preprocessing
    assert description["class_names"] == json.loads((run_dir / "dataset.json").read_text())["class_names"]


@pytest.fixture(scope="module")
def test_images(exported):
    """The run's own test images, preprocessed as in training, and the Keras model's outputs."""
    run = reopen_run(exported[1])
    images = np.concatenate([np.asarray(batch[0])[:rows] for batch, rows in run.data.pipelines["test"].with_rows()])
    return images, run.model.predict_on_batch(images)


@pytest.mark.parametrize("name,quantize", [("saved_model", "none"), ("tflite", "none"), ("onnx", "none"),
                                           ("tflite", "float16"), ("onnx", "float16")])
def test_float_exports_give_the_keras_models_predictions(exported, test_images, tmp_path, name, quantize):
    images, expected = test_images
    path = tmp_path / f"model.{name}"
    assert main(["export", str(exported[1]), "--format", name, "--quantize", quantize, "-o", str(path)]) == 0
    predict = load_exported(path, name)
    got = np.concatenate([predict(images[i:i + 7]) for i in range(0, len(images), 7)])  # batch sizes vary
    assert np.abs(got - expected).max() <= FLOAT_TOLERANCE[quantize]
    assert json.loads(path.with_name(path.name + ".json").read_text())["quantize"] == quantize


@pytest.mark.parametrize("name", ["tflite", "onnx"])
def test_int8_calibrated_on_training_images_keeps_the_model_and_is_recorded(exported, test_images, name, capsys,
                                                                          tmp_path, monkeypatch):
    out, run_dir = exported
    images, expected = test_images
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(run_dir), "--format", name, "--quantize", "int8", "--measure"]) == 0
    assert not list(tmp_path.iterdir())  # the converters' scratch files stay out of the working directory
    path = run_dir / "export" / f"model-int8.{name}"
    got = load_exported(path, name)(images)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= INT8_MIN_AGREEMENT
    row = json.loads((run_dir / "result.json").read_text())
    assert row[f"{name}_quantize"] == "int8" and 0 < row[f"{name}_megabytes"]
    assert row["saved_model_quantize"] == "none"  # the other formats keep their own figures
    assert row[f"{name}_accuracy_drop"] <= INT8_MAX_DROP
    # int8 stores a byte per weight where float32 stores four.
    float_size = row["model_megabytes"]
    assert row[f"{name}_megabytes"] < 0.5 * float_size
    table = pd.read_csv(out / "results.csv").set_index("run_id")
    assert table.loc[run_dir.name, f"{name}_megabytes"] == pytest.approx(row[f"{name}_megabytes"])
    assert f"{name} int8" in capsys.readouterr().out


def test_a_conversion_that_fails_is_recorded_and_never_raises(exported, monkeypatch):
    run_dir = exported[1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    monkeypatch.setitem(FORMATS, "onnx", replace(FORMATS["onnx"], modules=("onnx", "no_such_converter")))
    figures = deployment_figures(reopen_run(run_dir), {"formats": ["onnx", "tflite"], "quantize": "none"}, metrics)
    assert "no_such_converter" in figures["onnx_error"] and "pip install 'zoo[export]'" in figures["onnx_error"]
    assert "onnx_megabytes" not in figures
    assert figures["tflite_error"] is None and figures["tflite_megabytes"] > 0  # the others still measured


def test_report_has_a_deployment_table_and_answers_a_size_budget(exported, tmp_path):
    out, run_dir = exported
    row = pd.read_csv(out / "results.csv").iloc[0]
    budget = (row["tflite_megabytes"] + row["model_megabytes"]) / 2  # the .keras file does not fit, tflite does
    assert row["tflite_megabytes"] < budget < row["model_megabytes"]
    (markdown,) = write_report(out, formats=("md",), report_dir=tmp_path / "fits", size_budget_mb=budget)
    text = markdown.read_text()
    assert "### Deployment" in text and "| LiteRT |" in text and "| ONNX Runtime |" in text
    assert f"Best within the {budget:g} MB size budget" in text and ("MB as tflite" in text or "MB as onnx" in text)
    (markdown,) = write_report(out, formats=("md",), report_dir=tmp_path / "none", size_budget_mb=0.001)
    assert "No model fits the 0.001 MB size budget" in markdown.read_text()


def test_export_settings_are_checked_before_training():
    base = {"name": "x", "datasets": ["synthetic_terrain"]}
    with pytest.raises(ConfigError, match="export: unknown format 'pdf'; use saved_model, tflite, onnx"):
        load_suite({**base, "export": ["tflite", "pdf"]})
    with pytest.raises(ConfigError, match="saved_model keeps float32"):
        load_suite({**base, "export": {"formats": ["saved_model"], "quantize": "int8"}})
    with pytest.raises(ConfigError, match="unknown quantize 'int4'"):
        load_suite({**base, "export": {"formats": ["onnx"], "quantize": "int4"}})
    assert load_suite({**base, "export": "onnx"})["export"] == {"formats": ["onnx"], "quantize": "none"}


def test_a_finished_suite_asked_for_new_exports_says_how_to_measure_them(exported):
    out, _ = exported
    lines = []
    suite = load_suite({"name": "deploy", "datasets": ["synthetic_terrain"], "train": TRAIN,
                        "export": {"formats": ["tflite"], "quantize": "float16"}})
    assert run_suite(suite, out, executor="in-process", report=False, log=lines.append) == 0
    assert any(f"zoo export {out} --format tflite --quantize float16 --measure" in line for line in lines), lines


def test_predict_answers_with_an_exported_copy_as_the_keras_model_does(exported, tmp_path, capsys):
    """`zoo predict RUN photo --model RUN/export/model.tflite`: what the deployed file answers, in its own
    runtime from the same prepared input; an export of other classes, or no export at all, is refused."""
    from PIL import Image

    from zoo.data.synthetic import make_synthetic_terrain

    _, run_dir = exported
    images, _ = make_synthetic_terrain(3, 32, seed=11)
    paths = []
    for index, image in enumerate(images):
        paths.append(str(tmp_path / f"tile{index}.png"))
        Image.fromarray(image).save(paths[-1])

    def answers(*extra):
        assert main(["predict", str(run_dir), *paths, "--top-k", "2", *extra]) == 0
        lines = capsys.readouterr().out.splitlines()
        return [(line.split()[1], float(line.split()[0].rstrip("%"))) for line in lines if "%" in line]

    keras_answers = answers()
    for name in ("tflite", "onnx"):
        deployed = answers("--model", str(run_dir / "export" / f"model.{name}"))
        assert [label for label, _ in deployed] == [label for label, _ in keras_answers], name
        assert np.allclose([p for _, p in deployed], [p for _, p in keras_answers], atol=0.11), name  # printed 0.1 %
    # The file is what answers: a copy whose classifier was zeroed gives every class the same probability.
    from zoo.export import export_model
    from zoo.results import load_run_model

    model = load_run_model(run_dir)[2]
    logits = model.get_layer("head_logits")
    logits.set_weights([np.zeros_like(weight) for weight in logits.get_weights()])
    flat = export_model(model, "onnx", tmp_path / "flat.onnx")
    classes = len(json.loads((run_dir / "dataset.json").read_text())["class_names"])
    assert {p for _, p in answers("--model", str(flat))} == {round(100 / classes, 1)}
    other = tmp_path / "other.onnx"
    other.write_bytes((run_dir / "export" / "model.onnx").read_bytes())
    description = json.loads((run_dir / "export" / "model.onnx.json").read_text())
    (tmp_path / "other.onnx.json").write_text(json.dumps({**description, "class_names": ["cats", "dogs"]}))
    assert main(["predict", str(run_dir), paths[0], "--model", str(other)]) == 2
    assert "is the export of a model of other classes (cats, dogs) than" in capsys.readouterr().err
    assert main(["predict", str(run_dir), paths[0], "--model", str(tmp_path / "missing.tflite")]) == 2
    assert "is not an exported model: give a .tflite or .onnx file or a SavedModel folder" in capsys.readouterr().err
