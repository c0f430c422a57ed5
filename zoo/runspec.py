"""What one run is: its settings (``RunSpec``, written once as the run folder's ``run.json`` and read back
with :meth:`RunSpec.load`), the input its model is fed (``InputDescription``) and the stages it goes
through (``RunStages``: the one place that decides them, for the worker and for ``zoo plan``'s estimate).

This module sits on the lowest floor: it imports nothing of zoo but its errors, so the driver, the worker,
predict, export, tracking and pre-flight all read a run folder the same way, without Keras.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from zoo.errors import DataError


# train.cache: the decoded-once image cache (zoo.data.decoded): held in memory within train.input_memory_gb
# (auto), always held (memory), always read from the cache file (disk), or decoded every epoch (none).
CACHE_MODES = ("auto", "memory", "disk", "none")


@dataclass(frozen=True)
class TrainSettings:
    """A run's ``train:`` settings, resolved (a suite's ``train:`` keys and their defaults)."""

    image_size: int = 64
    batch_size: int = 32
    epochs: int = 5
    optimizer: str = "adam"           # adam | adamw | sgd | rmsprop | nadam
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"     # constant | cosine | plateau
    loss: str = "auto"                # auto | crossentropy | focal (classification)
    early_stopping: int = 0           # patience in epochs on val_loss; 0 = off
    class_weights: bool = False       # balanced weights from training frequencies
    augment: bool = False             # rotation, zoom, contrast, flip (flips/rot90 for segmentation)
    preprocessing: str = "none"       # none | grayscale | equalize | whiten, joined with '+'
    precision: str = "float32"        # float32 | mixed (float16 on GPU, bfloat16 on CPU) | mixed_float16 | mixed_bfloat16
    xla: bool = False                 # XLA-compile the train step on TensorFlow (JAX always does)
    backend: str | None = None        # tensorflow | jax | torch: the Keras backend of the run's process;
                                      # None: the one zoo runs on (KERAS_BACKEND, else Keras's configured one)
    cache: str = "auto"               # auto | memory | disk | none: the decoded-once image cache (zoo.data.decoded)
    input_memory_gb: object = None    # decoded rows held in memory (auto) up to this many GB; None: a quarter of RAM
    cache_features: object = "auto"   # auto | true | false: train heads on cached frozen-backbone features
    steps_per_epoch: int | None = None  # cap batches per epoch (quick checks); None = whole split
    batchnorm_momentum: float | None = None  # None keeps each model's own
    precise_bn: object = field(default_factory=lambda: {"batches": 200})
    # ^ BatchNorm population statistics over N unaugmented training batches before evaluation (and a
    #   few before each validation): {"batches": N}, or False (off)
    split: dict | None = None         # per-run override of the dataset's split fractions

    @classmethod
    def defaults(cls) -> dict:
        """Every ``train:`` key with its default, as a suite file writes them."""
        return cls().to_dict()

    @classmethod
    def from_dict(cls, values: dict) -> "TrainSettings":
        """Settings from run.json's ``train``: keys a later zoo added take their defaults, keys an
        earlier zoo had and this one dropped are ignored (an old run folder still reads)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in known})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def precise_bn_batches(self) -> int:
        """Batches of precise BatchNorm statistics; 0 when off."""
        return int(self.precise_bn["batches"]) if self.precise_bn else 0

    @property
    def study_steps(self) -> tuple:
        """The study preprocessing steps (``preprocessing: grayscale+equalize``), in order."""
        return tuple(preprocessing_steps(self.preprocessing))


def preprocessing_steps(setting) -> list[str]:
    """The steps of a ``train.preprocessing`` setting such as ``"equalize+whiten"`` (none: [])."""
    return [step for step in str(setting).split("+") if step and step != "none"]


def features_apply(trainable: str, finetune, augment: bool) -> bool:
    """Whether a run's backbone features are the same every epoch: a frozen backbone (BatchNorm in
    inference mode), no fine-tuning phase that unfreezes it, no augmentation."""
    return trainable == "frozen" and not finetune and not augment


@dataclass(frozen=True)
class InputDescription:
    """What a run's model is fed, from an image file to the model's input: read, scaled from the source's
    full scale (``max_pixel_value``: 255 for 8-bit images, 65535 or 10000 for 16-bit sources) to 0-255,
    resized to ``image_size``, the study steps, then the backbone's own preprocessing."""

    image_size: int
    channels: int
    max_pixel_value: float
    study_steps: tuple
    backbone_preprocessing: str

    @property
    def shape(self) -> tuple:
        return (self.image_size, self.image_size, self.channels)

    @property
    def bit_depth(self) -> int:
        """Bits per sample of the source: 8 up to a full scale of 255, 16 above."""
        return 8 if self.max_pixel_value <= 255 else 16


@dataclass(frozen=True)
class RunStages:
    """What a run does, decided once from its settings: the worker follows it and ``zoo plan`` prices
    it, so the estimate and the run cannot drift apart."""

    trains_on_features: bool   # a head on cached frozen-backbone features, never reading images per epoch
    epochs: int
    finetune_epochs: int       # a second phase with more layers trainable; 0 = none
    precise_bn_batches: int    # 0: off (it then also depends on the model having trained BatchNorm layers)
    smooths_tracks: bool
    export_formats: tuple


RUN_FILE = "run.json"


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
    split_seed: int
    train: TrainSettings
    finetune: dict | None
    postprocess: dict | None
    backbone_options: dict
    plugins: list
    swept: dict
    overrides: list = None  # the overrides applied, as "#index key=pattern,..."
    export: dict | None = None  # formats to export after training (not part of the run's identity)

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = TrainSettings.from_dict(self.train)

    def to_dict(self) -> dict:
        return {**self.__dict__, "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> "RunSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        defaults = {"finetune": None, "postprocess": None, "backbone_options": {}, "plugins": [], "swept": {},
                    "split_seed": 0}
        return cls(**{**defaults, **{k: v for k, v in values.items() if k in known}})

    @classmethod
    def load(cls, run_dir) -> "RunSpec":
        """The spec of a run folder (its run.json), or one DataError naming the file and what to do."""
        path = Path(run_dir) / RUN_FILE
        redo = f"run its suite again with `zoo run SUITE --only {Path(run_dir).name} --force`"
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path} is missing: {Path(run_dir)} is not a run folder (give runs/<suite>/runs/<run_id>)"
                            ) from None
        except (OSError, ValueError) as error:
            raise DataError(f"{path} cannot be read ({str(error).splitlines()[0]}): {redo}") from None
        try:
            if not isinstance(values, dict):
                raise TypeError(f"a JSON {type(values).__name__}, not an object")
            return cls.from_dict(values)
        except TypeError as error:  # a required key missing, or not an object at all
            raise DataError(f"{path} is not a run description ({error}): {redo}") from None

    @property
    def trains_on_features(self) -> bool:
        """Whether the head trains on cached frozen-backbone features (``train.cache_features``)."""
        mode = self.train.cache_features
        return mode is True or (mode == "auto" and features_apply(self.trainable, self.finetune, self.train.augment))

    def stages(self) -> RunStages:
        return RunStages(trains_on_features=self.trains_on_features, epochs=self.train.epochs,
                         finetune_epochs=int(self.finetune["epochs"]) if self.finetune else 0,
                         precise_bn_batches=self.train.precise_bn_batches, smooths_tracks=bool(self.postprocess),
                         export_formats=tuple((self.export or {}).get("formats") or ()))

    def input(self, info) -> InputDescription:
        """The model's input for this run over a dataset described by ``info`` (a DatasetInfo, or
        dataset.json's dict)."""
        from zoo.backbones import BACKBONES

        get = info.get if isinstance(info, dict) else lambda key: getattr(info, key)
        return InputDescription(image_size=self.train.image_size, channels=int(get("channels")),
                                max_pixel_value=float(get("max_pixel_value")), study_steps=self.train.study_steps,
                                backbone_preprocessing=BACKBONES.get(self.backbone).preprocessing)
