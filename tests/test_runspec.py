"""RunSpec: the one reader of run.json. Run folders of earlier zoo versions still read; a damaged one is named."""
import json

import pytest

from zoo.errors import DataError
from zoo.runspec import RunSpec, TrainSettings

# run.json as zoo wrote it before train.backend, train.xla, precise BN, the feature cache's setting, overrides
# and exports existed, with a key this zoo no longer has.
EARLIER = {"run_id": "synthetic_terrain-baseline_cnn-linear-s0-abc123", "suite": "old", "dataset": {"name": "synthetic_terrain"},
           "backbone": "baseline_cnn", "head": "linear", "weights": "none", "trainable": "all", "seed": 0,
           "split_seed": 0, "train": {"image_size": 48, "batch_size": 16, "epochs": 3, "learning_rate": 0.01,
                                      "mixed_precision": False},
           "finetune": None, "postprocess": None, "backbone_options": {}, "plugins": [], "swept": {}}


def test_a_run_json_of_an_earlier_zoo_still_reads(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(EARLIER))
    spec = RunSpec.load(tmp_path)
    assert (spec.train.image_size, spec.train.batch_size, spec.train.learning_rate) == (48, 16, 0.01)
    assert spec.train.backend is None and spec.train.precise_bn == {"batches": 200} and spec.export is None
    assert spec.overrides is None and spec.stages().export_formats == ()
    assert spec.input({"channels": 3, "max_pixel_value": 255}).shape == (48, 48, 3)


def test_run_json_round_trips_through_the_typed_description(tmp_path):
    spec = RunSpec.from_dict({**EARLIER, "train": {**TrainSettings.defaults(), "image_size": 40,
                                                   "preprocessing": "grayscale+equalize"}})
    (tmp_path / "run.json").write_text(json.dumps(spec.to_dict()))
    again = RunSpec.load(tmp_path)
    assert again == spec and again.train.study_steps == ("grayscale", "equalize")
    assert again.input({"channels": 1, "max_pixel_value": 65535}).bit_depth == 16


@pytest.mark.parametrize("content, message", [
    (None, "is missing"), ("{broken", "cannot be read"), ("[1, 2]", "is not a run description"),
    (json.dumps({"run_id": "x"}), "is not a run description"),
])
def test_a_damaged_run_json_is_one_clear_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / "run.json").write_text(content)
    with pytest.raises(DataError, match=message) as raised:
        RunSpec.load(tmp_path)
    assert "run.json" in str(raised.value)


@pytest.mark.parametrize("trainable, finetune, augment, cache_features, expected", [
    ("frozen", None, False, "auto", True), ("all", None, False, "auto", False), ("frozen", {"epochs": 1}, False,
                                                                                 "auto", False),
    ("frozen", None, True, "auto", False), ("frozen", None, False, False, False), ("frozen", None, False, True, True),
])
def test_the_stages_decide_the_feature_cache_as_the_suite_rules_say(trainable, finetune, augment, cache_features,
                                                                    expected):
    spec = RunSpec.from_dict({**EARLIER, "trainable": trainable,
                              "finetune": finetune and {"trainable": "all", "epochs": 1, "learning_rate": 1e-5},
                              "train": {"augment": augment, "cache_features": cache_features}})
    assert spec.stages().trains_on_features is expected
    assert spec.stages().finetune_epochs == (1 if finetune else 0)
