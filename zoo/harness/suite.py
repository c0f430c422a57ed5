"""Suite files: parsing, defaults, validation with precise errors, and expansion into runs.

Every key has a default (``SUITE_DEFAULTS``, ``TRAIN_DEFAULTS``); any ``train`` key given a
list is swept. Validation happens before any training, naming the key and allowed values.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import importlib.util
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from zoo.errors import ConfigError

SUITE_DEFAULTS = {
    "name": None,              # required: names the output folder runs/<name>
    "description": "",
    "datasets": None,          # required: card names or inline entries (source: folder, path: ...)
    "backbones": ["baseline_cnn"],  # names or glob patterns
    "heads": ["linear"],
    "weights": "none",         # none | imagenet (from-scratch baselines then stay none) | path to a weights file
    "trainable": "all",        # frozen | all | top:N (first phase when finetune is set)
    "backbone_options": {},    # extra builder arguments, e.g. {depth: 2} for unet
    "seeds": [0],
    "train": {},
    "finetune": None,          # {trainable: "top:20", epochs: 4, learning_rate: 1e-5}
    "postprocess": None,       # track smoothing, for datasets with tracks
    "plugins": [],             # Python modules or .py files that register more backbones/heads
}
TRAIN_DEFAULTS = {
    "image_size": 64,
    "batch_size": 32,
    "epochs": 5,
    "optimizer": "adam",           # adam | adamw | sgd | rmsprop | nadam
    "learning_rate": 1e-3,
    "lr_schedule": "constant",     # constant | cosine | plateau
    "loss": "auto",                # auto | crossentropy | focal (classification)
    "early_stopping": 0,           # patience in epochs on val_loss; 0 = off
    "class_weights": False,        # balanced weights from training frequencies
    "augment": False,              # rotation, zoom, contrast, flip (flips/rot90 for segmentation)
    "preprocessing": "none",       # none | grayscale | equalize | whiten, joined with '+'
    "precision": "float32",        # float32 | mixed (float16 on GPU, bfloat16 on CPU)
    "xla": False,                  # XLA-compile the train step
    "cache": "none",               # none | memory | disk: cache decoded, resized images
    "cache_features": "auto",      # auto | true | false: train heads on cached frozen-backbone features
    "steps_per_epoch": None,       # cap batches per epoch (quick checks); None = whole split
    "batchnorm_momentum": None,    # None keeps each model's own; 0.9 suits short from-scratch training
    "split": None,                 # per-run override of the dataset's split fractions
}
FINETUNE_DEFAULTS = {"trainable": "top:20", "epochs": 4, "learning_rate": 1e-5}
POSTPROCESS_DEFAULTS = {"method": "hmm", "window": 5, "switch_penalty": 4.0,
                        "transitions": None}  # None: switch_penalty; "estimate": counted on training tracks
TRACK_SOURCES = ("tracks", "synthetic_tracks")
CHOICES = {
    "optimizer": ("adam", "adamw", "sgd", "rmsprop", "nadam"),
    "lr_schedule": ("constant", "cosine", "plateau"),
    "loss": ("auto", "crossentropy", "focal"),
    "precision": ("float32", "mixed"),
    "cache": ("none", "memory", "disk"),
    "cache_features": ("auto", True, False),
}


def _unknown_keys(given: dict, allowed: dict, where: str) -> None:
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}")


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
        target[parts[-1]] = yaml.safe_load(raw)
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


@dataclass
class RunSpec:
    """One run: a dataset, backbone, head, seed and fully resolved training settings."""

    run_id: str
    suite: str
    dataset: dict
    backbone: str
    head: str
    weights: str
    trainable: str
    seed: int
    train: dict
    finetune: dict | None
    postprocess: dict | None
    backbone_options: dict
    plugins: list
    swept: dict

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(value)).strip("_")[:40]


def make_run_id(dataset, backbone, head, seed, swept, resolved) -> str:
    digest = hashlib.sha1(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:6]
    sweep = "".join(f"-{_slug(k)}={_slug(v)}" for k, v in sorted(swept.items()))
    return f"{_slug(dataset)}-{backbone}-{head}{sweep}-s{seed}-{digest}"


def validate_train(train: dict, where: str) -> None:
    for key, choices in CHOICES.items():
        if key in train and train[key] not in choices:
            raise ConfigError(f"{where}.{key}: {train[key]!r} is not allowed; use one of {', '.join(map(str, choices))}")
    for key in ("image_size", "batch_size", "epochs"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ConfigError(f"{where}.{key} must be a positive whole number, got {train[key]!r}")
    if not isinstance(train["learning_rate"], (int, float)) or train["learning_rate"] <= 0:
        raise ConfigError(f"{where}.learning_rate must be a positive number, got {train['learning_rate']!r}")
    momentum = train["batchnorm_momentum"]
    if momentum is not None and not (isinstance(momentum, (int, float)) and 0 < momentum < 1):
        raise ConfigError(f"{where}.batchnorm_momentum must be a number between 0 and 1 or null, got {momentum!r}")
    if not isinstance(train["early_stopping"], int) or train["early_stopping"] < 0:
        raise ConfigError(f"{where}.early_stopping is a patience in epochs (0 = off), got {train['early_stopping']!r}")
    from zoo.data.pipeline import EXTRA_PREPROCESSING, preprocessing_steps

    bad = [s for s in preprocessing_steps(train["preprocessing"]) if s not in EXTRA_PREPROCESSING]
    if bad:
        raise ConfigError(f"{where}.preprocessing: unknown step(s) {bad}; use none or steps of "
                          f"{', '.join(EXTRA_PREPROCESSING)} joined with '+'")


def load_suite(path_or_dict, overrides: list[str] | None = None) -> dict:
    """Read, override and validate a suite; returns it with defaults filled in."""
    if isinstance(path_or_dict, dict):
        raw = path_or_dict
    else:
        path = Path(path_or_dict)
        if not path.is_file():
            raise ConfigError(f"suite file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a suite is a mapping of keys (name, datasets, backbones, ...)")
    raw = apply_overrides(raw, overrides)
    _unknown_keys(raw, SUITE_DEFAULTS, "suite")
    suite = {**copy.deepcopy(SUITE_DEFAULTS), **raw}
    for key in ("name", "datasets"):
        if not suite[key]:
            raise ConfigError(f"suite: `{key}` is required")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(suite["name"])):
        raise ConfigError(f"suite.name {suite['name']!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    _unknown_keys(suite["train"] or {}, TRAIN_DEFAULTS, "train")
    suite["train"] = {**TRAIN_DEFAULTS, **(suite["train"] or {})}
    if suite["finetune"] is not None:
        _unknown_keys(suite["finetune"], FINETUNE_DEFAULTS, "finetune")
        suite["finetune"] = {**FINETUNE_DEFAULTS, **suite["finetune"]}
    if suite["postprocess"] is not None:
        _unknown_keys(suite["postprocess"], POSTPROCESS_DEFAULTS, "postprocess")
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
    from zoo.factory import IncompatibleError, check_compatible, check_input_shape, parse_trainable
    from zoo.heads import HEADS

    load_plugins(suite["plugins"])
    try:
        backbones = BACKBONES.expand([str(p) for p in _as_list(suite["backbones"])])
        heads = HEADS.expand([str(p) for p in _as_list(suite["heads"])])
    except KeyError as error:
        raise ConfigError(f"suite: {error}") from None
    for mode in [suite["trainable"]] + ([suite["finetune"]["trainable"]] if suite["finetune"] else []):
        try:
            parse_trainable(mode)
        except ValueError as error:
            raise ConfigError(f"trainable: {error}") from None
    weights = str(suite["weights"])
    if weights not in ("none", "imagenet") and not Path(weights).expanduser().is_file():
        raise ConfigError(f"weights: {weights!r} is neither none, imagenet nor an existing weights file")
    seeds = [int(s) for s in _as_list(suite["seeds"])]

    swept_keys = [k for k, v in suite["train"].items() if isinstance(v, (list, tuple)) and k != "split"]
    combos = list(itertools.product(*[suite["train"][k] for k in swept_keys])) or [()]
    runs = []
    used_heads: set[str] = set()
    for entry in _as_list(suite["datasets"]):
        dataset = resolve_dataset_config({"name": entry} if isinstance(entry, str) else entry)
        task = dataset.get("task") or _folder_task(dataset)
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
        for combo in combos:
            swept = dict(zip(swept_keys, combo))
            train = {**suite["train"], **swept}
            validate_train(train, "train")
            for backbone, head in itertools.product(backbones, fitting):
                try:
                    check_compatible(BACKBONES.get(backbone), HEADS.get(head))
                    check_input_shape(BACKBONES.get(backbone), (train["image_size"], train["image_size"], 3))
                except IncompatibleError as error:
                    raise ConfigError(f"suite: {error}") from None
                # From-scratch baselines have no ImageNet weights: with weights: imagenet they
                # train from scratch beside the pretrained backbones, and their rows say so.
                run_weights = "none" if weights == "imagenet" and not BACKBONES.get(backbone).has_imagenet_weights \
                    else weights
                if train["cache_features"] is True and not (suite["trainable"] == "frozen" and not suite["finetune"]
                                                             and not train["augment"]):
                    raise ConfigError("train.cache_features: true needs trainable: frozen, no finetune and "
                                      "augment: false (otherwise the backbone's features change every epoch); "
                                      "use auto to cache only where it applies")
                for seed in seeds:
                    resolved = {"dataset": dataset, "backbone": backbone, "head": head, "weights": run_weights,
                                "trainable": suite["trainable"], "seed": seed, "train": train,
                                "finetune": suite["finetune"], "postprocess": suite["postprocess"],
                                "backbone_options": suite["backbone_options"]}
                    run_id = make_run_id(dataset["name"], backbone, head, seed, swept, resolved)
                    runs.append(RunSpec(run_id=run_id, suite=suite["name"], dataset=dataset, backbone=backbone,
                                        head=head, weights=run_weights, trainable=suite["trainable"], seed=seed,
                                        train=train, finetune=suite["finetune"], postprocess=suite["postprocess"],
                                        backbone_options=suite["backbone_options"] or {},
                                        plugins=[str(Path(p).resolve()) if str(p).endswith(".py") else p
                                                 for p in _as_list(suite["plugins"] or [])],
                                        swept=swept))
    unused = [h for h in heads if h not in used_heads]
    if unused:
        raise ConfigError(f"heads {unused} fit none of the suite's datasets (their tasks: "
                          f"{', '.join(sorted({HEADS.get(h).task for h in unused}))})")
    return runs


def _folder_task(dataset: dict) -> str:
    from zoo.data.folder import detect_layout
    from zoo.errors import DataError

    if not dataset.get("path"):
        raise ConfigError(f"dataset {dataset['name']!r}: source 'folder' needs `path:`")
    try:
        return detect_layout(Path(dataset["path"]).expanduser())[0]
    except DataError as error:
        raise ConfigError(f"dataset {dataset['name']!r}: {error}") from None
