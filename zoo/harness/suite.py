"""Suite files: parsing, defaults, validation with precise errors, and expansion into runs.

Every key has a default (``SUITE_DEFAULTS``, ``TRAIN_DEFAULTS``); any ``train`` key given a
list is swept. Validation happens before any training, naming the key and allowed values.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import itertools
import json
import re
from pathlib import Path

import yaml

from zoo.errors import ConfigError, check_keys
from zoo.runspec import CACHE_MODES, RunSpec, TrainSettings, features_apply, preprocessing_steps
from zoo.runtime import PRECISIONS
from zoo.yamlfile import read_yaml

SUITE_DEFAULTS = {
    "name": None,              # required: names the output folder runs/<name>
    "description": "",
    "datasets": None,          # required: card names or inline entries (source: folder, path: ...)
    "backbones": ["baseline_cnn"],  # names or glob patterns
    "heads": ["linear"],
    "weights": "none",         # none | imagenet (= pretrained: each backbone's own pretraining; from-scratch
                               # baselines then stay none) | path to a weights file or keras-hub preset folder
    "trainable": "all",        # frozen | all | top:N (first phase when finetune is set)
    "backbone_options": {},    # extra builder arguments, e.g. {depth: 2} for unet
    "seeds": [0],              # initialisation, shuffling, augmentation
    "split_seed": 0,           # the carved validation/test split, the same for every run; a list sweeps it
    "train": {},
    "finetune": None,          # {trainable: "top:20", epochs: 4, learning_rate: 1e-5}
    "postprocess": None,       # track smoothing, for datasets with tracks
    "plugins": [],             # Python modules or .py files that register more backbones/heads
    "overrides": [],           # [{match: {backbone: glob, ...}, set: {weights: ..., train: {...}}}], in order
    "tracking": {},            # {mlflow: URI}: log every run to this MLflow tracking server
    "export": None,            # [tflite, onnx] or {formats: [...], quantize: none|float16|int8}: after each run,
                               # export its model and measure size, CPU latency and score after conversion
}
TRACKING_KEYS = {"mlflow": None}
TRAIN_DEFAULTS = TrainSettings.defaults()  # each key explained in zoo.runspec.TrainSettings
OVERRIDE_KEYS = {"match": None, "set": None}
OVERRIDE_MATCH_KEYS = {"dataset": None, "backbone": None, "head": None}
OVERRIDE_SET_KEYS = {"weights": None, "trainable": None, "finetune": None, "train": None, "backbone_options": None}
FINETUNE_DEFAULTS = {"trainable": "top:20", "epochs": 4, "learning_rate": 1e-5}
POSTPROCESS_DEFAULTS = {"method": "hmm", "window": 5, "switch_penalty": 4.0,
                        "transitions": None}  # None: switch_penalty; "estimate": counted on training tracks
TRACK_SOURCES = ("tracks", "synthetic_tracks")
CHOICES = {
    "optimizer": ("adam", "adamw", "sgd", "rmsprop", "nadam"),
    "lr_schedule": ("constant", "cosine", "plateau"),
    "loss": ("auto", "crossentropy", "focal"),
    "precision": PRECISIONS,
    "cache": CACHE_MODES,
    "cache_features": ("auto", True, False),
    "backend": (None, "tensorflow", "jax", "torch"),
}


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def apply_overrides(suite: dict, overrides: list[str]) -> dict:
    """Apply ``--set a.b=value`` overrides (values parsed as YAML)."""
    suite = copy.deepcopy(suite)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=1")
        key, raw = item.split("=", 1)
        target = suite
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if target.get(part) is None:
                target[part] = {}
            target = target[part]
            if not isinstance(target, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
        target[parts[-1]] = read_yaml(raw)
    return suite


def load_plugins(plugins) -> None:
    """Import modules (or .py files) that register extra backbones and heads."""
    for plugin in _as_list(plugins or []):
        path = Path(str(plugin)).expanduser()
        try:
            if path.suffix == ".py":
                spec = importlib.util.spec_from_file_location(f"zoo_plugin_{path.stem}", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            else:
                importlib.import_module(str(plugin))
        except ValueError as error:
            if "already registered" not in str(error):  # a plugin loaded twice in one process
                raise
        except (ImportError, FileNotFoundError) as error:
            raise ConfigError(f"plugins: cannot import {plugin!r}: {error}") from None


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(value)).strip("_")[:40]


def make_run_id(dataset, backbone, head, seed, swept, resolved) -> str:
    # Keys added with a default that changes nothing leave the identity (and finished runs) as they were.
    train = resolved.get("train")
    if isinstance(train, dict) and train.get("backend") is None:
        resolved = {**resolved, "train": {k: v for k, v in train.items() if k != "backend"}}
    digest = hashlib.sha1(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:6]
    sweep = "".join(f"-{_slug(k)}={_slug(v)}" for k, v in sorted(swept.items()))
    # A name of other letters only (柴犬) slugs to nothing: the id would begin with "-", which every
    # command line takes for an option (--only, zoo predict); a leading "." would hide the run's folder.
    name = _slug(dataset).lstrip(".") or "dataset"
    return f"{name}-{backbone}-{head}{sweep}-s{seed}-{digest}"


def _whole_number(value, at_least: int) -> bool:
    """An int of at least ``at_least``; YAML's ``true`` is a Python int (1), and is not one here."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= at_least


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def validate_train(train: dict, where: str) -> None:
    for key, choices in CHOICES.items():
        if key in train and train[key] not in choices:
            allowed = ', '.join('null' if c is None else str(c) for c in choices)
            raise ConfigError(f"{where}.{key}: {train[key]!r} is not allowed; use one of {allowed}")
    for key in ("image_size", "batch_size", "epochs"):
        if not _whole_number(train[key], at_least=1):
            raise ConfigError(f"{where}.{key} must be a positive whole number, got {train[key]!r}")
    steps = train["steps_per_epoch"]
    if steps is not None and not _whole_number(steps, at_least=1):
        raise ConfigError(f"{where}.steps_per_epoch caps each epoch's batches: a positive whole number, or null for "
                          f"the whole training split; got {steps!r}")
    for key in ("augment", "class_weights", "xla"):
        if not isinstance(train[key], bool):  # YAML's "false" in quotes is a string, and a string is true
            raise ConfigError(f"{where}.{key} must be true or false, got {train[key]!r}")
    if not _positive_number(train["learning_rate"]):
        raise ConfigError(f"{where}.learning_rate must be a positive number, got {train['learning_rate']!r}")
    memory = train["input_memory_gb"]
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, (int, float)) or memory < 0):
        raise ConfigError(f"{where}.input_memory_gb must be a number of gigabytes (0: read every batch from the "
                          f"disk cache) or null (a quarter of this machine's memory), got {memory!r}")
    momentum = train["batchnorm_momentum"]
    if momentum is not None and not (isinstance(momentum, (int, float)) and 0 < momentum < 1):
        raise ConfigError(f"{where}.batchnorm_momentum must be a number between 0 and 1 or null, got {momentum!r}")
    from zoo.data.splits import check_split_setting

    check_split_setting(train.get("split"), f"{where}.split")
    if not _whole_number(train["early_stopping"], at_least=0):
        raise ConfigError(f"{where}.early_stopping is a patience in epochs (0 = off), got {train['early_stopping']!r}")
    from zoo.data.prepare import EXTRA_PREPROCESSING

    bad = [s for s in preprocessing_steps(train["preprocessing"]) if s not in EXTRA_PREPROCESSING]
    if bad:
        raise ConfigError(f"{where}.preprocessing: unknown step(s) {bad}; use none or steps of "
                          f"{', '.join(EXTRA_PREPROCESSING)} joined with '+'")


def normalize_precise_bn(value, where: str = "train.precise_bn"):
    """``train.precise_bn`` as ``{"batches": N}`` or False (``true`` means the default batches)."""
    if value is False or value is None:
        return False
    if value is True:
        return dict(TRAIN_DEFAULTS["precise_bn"])
    if isinstance(value, dict):
        check_keys(value, TRAIN_DEFAULTS["precise_bn"], where)
        batches = value.get("batches", TRAIN_DEFAULTS["precise_bn"]["batches"])
        if isinstance(batches, int) and not isinstance(batches, bool) and batches >= 1:
            return {"batches": batches}
    raise ConfigError(f"{where}: use false, true or {{batches: N}} with N a positive whole number, got {value!r}")


def load_suite(path_or_dict, overrides: list[str] | None = None) -> dict:
    """Read, override and validate a suite; returns it with defaults filled in."""
    if isinstance(path_or_dict, dict):
        raw = path_or_dict
    else:
        path = Path(path_or_dict)
        if path.is_dir():
            # `zoo run my_photos/`: the folder is a dataset, which a suite file names.
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.resolve().name).strip("._") or "my_images"
            where = str(path) if re.fullmatch(r"[A-Za-z0-9_./~-]+", str(path)) else json.dumps(str(path))
            raise ConfigError(f"{path} is a folder, not a suite file. To compare backbones on its images, write a "
                              f"suite file naming it, e.g. {name}.yaml:\n"
                              f"  name: {name}\n"
                              f"  datasets: [{{name: {name}, path: {where}}}]\n"
                              f"  backbones: [baseline_cnn, mobilenet_v3_small]\n"
                              f"then: zoo plan {name}.yaml, zoo run {name}.yaml (zoo data info {path} checks the "
                              f"folder first)")
        if not path.is_file():
            raise ConfigError(f"suite file {path} does not exist")
        try:
            raw = read_yaml(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a suite is a mapping of keys (name, datasets, backbones, ...)")
    raw = apply_overrides(raw, overrides)
    check_keys(raw, SUITE_DEFAULTS, "suite")
    suite = {**copy.deepcopy(SUITE_DEFAULTS), **raw}
    for key in ("name", "datasets"):
        if not suite[key]:
            raise ConfigError(f"suite: `{key}` is required")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(suite["name"])):
        raise ConfigError(f"suite.name {suite['name']!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    if not isinstance(suite["tracking"] or {}, dict):
        raise ConfigError("suite.tracking: a mapping such as {mlflow: http://127.0.0.1:5000}")
    check_keys(suite["tracking"] or {}, TRACKING_KEYS, "tracking")
    from zoo.export import normalize_export

    suite["export"] = normalize_export(suite["export"])
    check_keys(suite["train"] or {}, TRAIN_DEFAULTS, "train")
    suite["train"] = {**TRAIN_DEFAULTS, **(suite["train"] or {})}
    precise = suite["train"]["precise_bn"]
    suite["train"]["precise_bn"] = ([normalize_precise_bn(v) for v in precise] if isinstance(precise, list)
                                    else normalize_precise_bn(precise))
    if suite["finetune"] is not None:
        check_keys(suite["finetune"], FINETUNE_DEFAULTS, "finetune")
        suite["finetune"] = {**FINETUNE_DEFAULTS, **suite["finetune"]}
    if suite["postprocess"] is not None:
        check_keys(suite["postprocess"], POSTPROCESS_DEFAULTS, "postprocess")
        post = suite["postprocess"] = {**POSTPROCESS_DEFAULTS, **suite["postprocess"]}
        if post["method"] not in ("window", "hmm"):
            raise ConfigError(f"postprocess.method: {post['method']!r} is not allowed; use window or hmm")
        if not isinstance(post["window"], int) or post["window"] < 1 or post["window"] % 2 == 0:
            raise ConfigError(f"postprocess.window must be an odd whole number, got {post['window']!r}")
        if post["transitions"] not in (None, "estimate"):
            raise ConfigError("postprocess.transitions: use null (switch_penalty) or estimate (from training tracks)")
    return suite


def expand_suite(suite: dict) -> list[RunSpec]:
    """All runs of a validated suite; fails on any impossible combination before training."""
    from zoo.backbones import BACKBONES
    from zoo.data.sources import resolve_dataset_config
    from zoo.heads import HEADS

    load_plugins(suite["plugins"])
    try:
        backbones = BACKBONES.expand([str(p) for p in _as_list(suite["backbones"])])
        heads = HEADS.expand([str(p) for p in _as_list(suite["heads"])])
    except KeyError as error:
        raise ConfigError(f"suite: {error}") from None
    weights = pretrained_as_imagenet(str(suite["weights"]))
    overrides = _validated_overrides(suite.get("overrides"))
    matched = [False] * len(overrides)
    seeds = _whole_numbers(suite["seeds"], "seeds")
    split_seeds = _whole_numbers(suite["split_seed"], "split_seed")

    swept_keys = [k for k, v in suite["train"].items() if isinstance(v, (list, tuple)) and k != "split"]
    # A list of split seeds measures split variance on purpose: then it is a sweep axis.
    split_axis = isinstance(suite["split_seed"], (list, tuple))
    combos = [(dict(zip(swept_keys, combo)), split_seed)
              for combo in itertools.product(*[suite["train"][k] for k in swept_keys]) for split_seed in split_seeds]
    runs = []
    used_heads: set[str] = set()
    named = [entry if isinstance(entry, str) else entry.get("name") for entry in _as_list(suite["datasets"])]
    repeated = sorted({name for name in named if isinstance(name, str) and named.count(name) > 1})
    if repeated:  # runs, reports and zoo compare know a dataset by its name
        # Two entries of one name were leaderboard rows of one model: two carvings pooled as if two seeds.
        raise ConfigError(f"datasets: {', '.join(repeated)} listed more than once; a folder given twice with other "
                          f"settings needs another name for each entry, and a card's other carvings come from "
                          f"split_seed: [0, 1, 2]; or remove the repeat")
    for entry in _as_list(suite["datasets"]):
        dataset = resolve_dataset_config({"name": entry} if isinstance(entry, str) else entry)
        task = _folder_task(dataset) if dataset.get("source") == "folder" else dataset.get("task")
        if dataset.get("task") not in (None, task):
            raise ConfigError(f"dataset {dataset['name']!r}: task {dataset['task']!r}, but its folder's layout is "
                              f"{task} (images/ and masks/ make segmentation, class folders classification); "
                              f"remove task: or fix the folder")
        if suite["postprocess"] and dataset.get("source") not in TRACK_SOURCES:
            raise ConfigError(f"postprocess smooths predictions along tracks, but dataset {dataset['name']!r} has "
                              f"none; use synthetic_tracks or `source: tracks` with a track manifest")
        # A head goes with the datasets of its task: classification heads with classification
        # data; segmentation and distribution heads with segmentation masks.
        wanted = ("classification",) if task == "classification" else ("segmentation", "distribution")
        fitting = [h for h in heads if HEADS.get(h).task in wanted]
        if not fitting:
            raise ConfigError(f"none of the heads {heads} fits dataset {dataset['name']!r} ({task}); heads for "
                              f"{task}: {', '.join(n for n, h in HEADS.items() if h.task in wanted)}")
        used_heads.update(fitting)
        for train_swept, split_seed in combos:
            swept = {**train_swept, **({"split_seed": split_seed} if split_axis else {})}
            for backbone, head in itertools.product(backbones, fitting):
                # From-scratch baselines have no ImageNet weights: with weights: imagenet they
                # train from scratch beside the pretrained backbones, and their rows say so.
                run_weights = "none" if weights == "imagenet" and not BACKBONES.get(backbone).has_imagenet_weights \
                    else weights
                settings = {"weights": run_weights, "trainable": suite["trainable"], "finetune": suite["finetune"],
                            "train": {**suite["train"], **train_swept},
                            "backbone_options": suite["backbone_options"] or {}}
                applied = []
                for index, override in enumerate(overrides):
                    if _override_matches(override["match"], dataset["name"], backbone, head):
                        settings = _apply_override(settings, override["set"], f"overrides[{index}]")
                        matched[index] = True
                        applied.append(f"#{index} " + ",".join(f"{k}={v}" for k, v in override["match"].items()))
                _check_run_settings(settings, BACKBONES.get(backbone), HEADS.get(head),
                                    "train" if not applied else f"train (after {'; '.join(applied)})")
                train = settings["train"]
                for seed in seeds:
                    resolved = {"dataset": dataset, "backbone": backbone, "head": head, "weights": settings["weights"],
                                "trainable": settings["trainable"], "seed": seed, "split_seed": split_seed,
                                "train": train, "finetune": settings["finetune"], "postprocess": suite["postprocess"],
                                "backbone_options": settings["backbone_options"]}
                    run_id = make_run_id(dataset["name"], backbone, head, seed, swept, resolved)
                    runs.append(RunSpec(run_id=run_id, suite=suite["name"], dataset=dataset, backbone=backbone,
                                        head=head, weights=settings["weights"], trainable=settings["trainable"],
                                        seed=seed, split_seed=split_seed, train=train, finetune=settings["finetune"],
                                        postprocess=suite["postprocess"], backbone_options=settings["backbone_options"],
                                        plugins=[str(Path(p).resolve()) if str(p).endswith(".py") else p
                                                 for p in _as_list(suite["plugins"] or [])],
                                        swept=swept, overrides=applied, export=suite.get("export")))
    for index, hit in enumerate(matched):
        if not hit:
            raise ConfigError(f"overrides[{index}].match {overrides[index]['match']} matches none of the suite's "
                              f"runs (datasets, backbones and heads after expansion); check the names or remove it")
    unused = [h for h in heads if h not in used_heads]
    if unused:
        raise ConfigError(f"heads {unused} fit none of the suite's datasets (their tasks: "
                          f"{', '.join(sorted({HEADS.get(h).task for h in unused}))})")
    if not runs:
        empty = (["backbones"] if not _as_list(suite["backbones"]) else []) + \
            [f"train.{key}" for key, value in suite["train"].items() if isinstance(value, (list, tuple)) and not value]
        raise ConfigError(f"the suite makes no run: {', '.join(empty) or 'an empty list'} names nothing; give at "
                          f"least one value (zoo list backbones shows what there is)")
    seen = set()
    for run in runs:
        if run.run_id in seen:  # the same settings twice: one folder, trained twice or counted twice
            raise ConfigError(f"the suite lists run {run.run_id} twice: a value repeated in seeds, datasets, "
                              f"split_seed or a swept train key; remove the repeat")
        seen.add(run.run_id)
    return runs


def suite_warnings(runs: list[RunSpec]) -> list[str]:
    """Settings that are legal but almost never meant, as one line each."""
    random_frozen = sorted({r.backbone for r in runs if r.weights == "none" and r.trainable != "all"})
    if not random_frozen:
        return []
    # BatchNorm in inference mode over random weights gives near-constant features, and the
    # head then predicts one class.
    modes = sorted({r.trainable for r in runs if r.backbone in random_frozen and r.weights == "none"})
    return [f"warning: {', '.join(random_frozen)} will not train ({', '.join(modes)}) but have no pretrained "
            f"weights (weights: none); set weights: imagenet or a weights file, trainable: all, or an override "
            f"for {'them' if len(random_frozen) > 1 else 'it'} (overrides: [{{match: {{backbone: "
            f"{random_frozen[0]}}}, set: {{trainable: all}}}}])"]


def _validated_overrides(overrides) -> list[dict]:
    """The suite's ``overrides`` list with every key checked (values are checked per run)."""
    overrides = overrides or []
    if not isinstance(overrides, list):
        raise ConfigError("overrides: a list of {match: {...}, set: {...}} entries")
    result = []
    for index, override in enumerate(overrides):
        where = f"overrides[{index}]"
        if not isinstance(override, dict) or not isinstance(override.get("match"), dict) \
                or not isinstance(override.get("set"), dict) or not override["match"] or not override["set"]:
            raise ConfigError(f"{where}: give `match:` (any of dataset, backbone, head: names or glob patterns) and "
                              f"`set:` (any of {', '.join(OVERRIDE_SET_KEYS)})")
        check_keys(override, OVERRIDE_KEYS, where)
        check_keys(override["match"], OVERRIDE_MATCH_KEYS, f"{where}.match")
        check_keys(override["set"], OVERRIDE_SET_KEYS, f"{where}.set")
        if "train" in override["set"]:
            if not isinstance(override["set"]["train"], dict):
                raise ConfigError(f"{where}.set.train: a mapping of train keys, e.g. {{epochs: 30}}")
            check_keys(override["set"]["train"], TRAIN_DEFAULTS, f"{where}.set.train")
        if override["set"].get("finetune") is not None:
            if not isinstance(override["set"]["finetune"], dict):
                raise ConfigError(f"{where}.set.finetune: null or a mapping like {{trainable: 'top:20', epochs: 4}}")
            check_keys(override["set"]["finetune"], FINETUNE_DEFAULTS, f"{where}.set.finetune")
        result.append({"match": {k: str(v) for k, v in override["match"].items()}, "set": override["set"]})
    return result


def _override_matches(match: dict, dataset: str, backbone: str, head: str) -> bool:
    import fnmatch

    names = {"dataset": dataset, "backbone": backbone, "head": head}
    return all(fnmatch.fnmatchcase(names[key], pattern) for key, pattern in match.items())


def _apply_override(settings: dict, changes: dict, where: str) -> dict:
    settings = copy.deepcopy(settings)
    for key, value in changes.items():
        if key == "train":
            settings["train"] = {**settings["train"], **value}
            if "precise_bn" in value:
                settings["train"]["precise_bn"] = normalize_precise_bn(value["precise_bn"], f"{where}.set.train.precise_bn")
        elif key == "finetune":
            settings["finetune"] = None if value is None else {**FINETUNE_DEFAULTS, **value}
        elif key == "backbone_options":
            settings["backbone_options"] = dict(value or {})
        elif key == "weights":
            settings["weights"] = pretrained_as_imagenet(str(value))
        else:
            settings[key] = str(value)
    return settings


def pretrained_as_imagenet(weights: str) -> str:
    """``pretrained`` is another name for ``imagenet``: a backbone's own pretrained weights (ImageNet
    files for the CNNs, the keras-hub preset's pretraining for the others). One name in run ids."""
    return "imagenet" if weights == "pretrained" else weights


def _check_run_settings(settings: dict, backbone, head, where: str) -> None:
    """Everything about one run's settings that can fail before training."""
    from zoo.factory import IncompatibleError, check_compatible, check_input_shape, parse_trainable

    train = settings["train"]
    swept = [k for k, v in train.items() if isinstance(v, (list, tuple)) and k != "split"]
    if swept:
        raise ConfigError(f"{where}: {', '.join(swept)} must be single values in an override (sweep in `train:`)")
    validate_train(train, where)
    finetune = settings["finetune"]
    if finetune:
        if not _whole_number(finetune["epochs"], at_least=1):
            raise ConfigError(f"finetune.epochs must be a positive whole number, got {finetune['epochs']!r}")
        if not _positive_number(finetune["learning_rate"]):
            raise ConfigError(f"finetune.learning_rate must be a positive number such as 1.0e-5, "
                              f"got {finetune['learning_rate']!r}")
    for mode in [settings["trainable"]] + ([settings["finetune"]["trainable"]] if settings["finetune"] else []):
        try:
            parse_trainable(mode)
        except ValueError as error:
            raise ConfigError(f"trainable: {error}") from None
    weights = settings["weights"]
    preset_folder = backbone.hub is not None and (Path(weights).expanduser() / "config.json").is_file()
    if weights not in ("none", "imagenet") and not Path(weights).expanduser().is_file() and not preset_folder:
        raise ConfigError(f"weights: {weights!r} is neither none, imagenet nor an existing weights file"
                          + (" or keras-hub preset folder" if backbone.hub is not None else ""))
    if weights == "imagenet" and not backbone.has_imagenet_weights:
        raise ConfigError(f"weights: imagenet for {backbone.name}, which has no ImageNet weights (it trains from "
                          f"scratch); set weights: none for it")
    _check_backbone_options(settings["backbone_options"] or {}, backbone)
    from zoo.tasks import TASKS

    task = TASKS.get(head.task)
    if train["loss"] not in task.losses:
        raise ConfigError(f"{where}: loss {train['loss']!r} does not train the {head.name} head ({head.task}: "
                          f"{', '.join(task.losses)}); set loss for the heads of other tasks in overrides, e.g. "
                          f"{{match: {{head: {head.name}}}, set: {{train: {{loss: auto}}}}}}")
    if train["class_weights"] and not task.class_weights_apply:
        raise ConfigError(f"{where}: class_weights would change nothing for the {head.name} head ({head.task}: one "
                          f"target of class proportions per image); set it for the other heads in overrides, e.g. "
                          f"{{match: {{head: {head.name}}}, set: {{train: {{class_weights: false}}}}}}")
    try:
        check_compatible(backbone, head)
        check_input_shape(backbone, (train["image_size"], train["image_size"], 3))
    except IncompatibleError as error:
        raise ConfigError(f"suite: {error}") from None
    if train["cache_features"] is True and not features_apply(settings["trainable"], settings["finetune"],
                                                              train["augment"]):
        raise ConfigError("train.cache_features: true needs trainable: frozen, no finetune and "
                          "augment: false (otherwise the backbone's features change every epoch); "
                          "use auto to cache only where it applies")


def _check_backbone_options(options: dict, backbone) -> None:
    """backbone_options the backbone's builder takes, before any run trains (a misspelt option
    would fail each run in its builder, an option of another backbone every run of this one)."""
    if not options:
        return
    if not isinstance(options, dict):
        raise ConfigError(f"backbone_options: give a mapping of option to value, e.g. {{depth: 2}}; got {options!r}")
    known = backbone.option_names()
    only = ("; to give options to one backbone of the suite use overrides: [{match: {backbone: NAME}, "
            "set: {backbone_options: {...}}}]")
    if not known:
        raise ConfigError(f"backbone_options {options} for {backbone.name}, which takes none{only}")
    try:
        check_keys(options, known, f"backbone_options for {backbone.name}")
    except ConfigError as error:
        raise ConfigError(f"{error}{only}") from None
    if backbone.hub is not None and "pool" in options and options["pool"] not in backbone.hub.pools:
        raise ConfigError(f"backbone_options.pool for {backbone.name} must be one of "
                          f"{', '.join(backbone.hub.pools)}; got {options['pool']!r}")


def _whole_numbers(value, key: str) -> list[int]:
    values = _as_list(value)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{key}: give a whole number or a non-empty list of whole numbers, e.g. [0, 1, 2]; "
                          f"got {value!r}")
    return values


def _folder_task(dataset: dict) -> str:
    from zoo.data.folder import detect_layout
    from zoo.errors import DataError

    if not dataset.get("path"):
        raise ConfigError(f"dataset {dataset['name']!r}: source 'folder' needs `path:`")
    try:
        return detect_layout(Path(dataset["path"]).expanduser())[0]
    except DataError as error:
        raise ConfigError(f"dataset {dataset['name']!r}: {error}") from None
