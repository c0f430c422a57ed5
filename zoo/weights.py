"""Pretrained weights: resolving ImageNet files offline-first, and loading a 3-channel
weights file into a backbone with any number of input channels.

Resolution order for ``weights="imagenet"``: ``$ZOO_WEIGHTS_DIR/<file>``, then the Keras
cache (``$KERAS_HOME/models/<file>``, by default ``~/.keras/models``), then a download
into the Keras cache. Files are checked against the hash Keras publishes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from zoo.backbones import BackboneSpec, WeightsFile

WEIGHTS_DIR_ENV = "ZOO_WEIGHTS_DIR"


OFFLINE_ENV = "ZOO_OFFLINE"  # "1": never download (air-gapped machines, tests)


def downloads_allowed() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes")


class WeightsUnavailableError(RuntimeError):
    """The weights file is neither on disk nor downloadable."""


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded application weights."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


def file_matches_hash(path: Path, file_hash: str | None) -> bool:
    """True when ``path``'s md5 or sha256 (chosen by the hash's length, as Keras does) matches."""
    if not file_hash:
        return True
    digest = hashlib.sha256() if len(file_hash) == 64 else hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == file_hash


def weights_file(spec: BackboneSpec, include_top: bool = False) -> WeightsFile:
    weights = spec.imagenet_top if include_top else spec.imagenet_no_top
    if weights is None:
        raise WeightsUnavailableError(
            f"backbone {spec.name!r} has no ImageNet weights (it is trained from scratch); "
            f"use weights=None")
    return weights


def candidate_paths(weights: WeightsFile) -> list[Path]:
    paths = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        paths.append(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser() / weights.file_name)
    paths.append(keras_cache_dir() / weights.file_name)
    return paths


def resolve_imagenet_weights(spec: BackboneSpec, include_top: bool = False,
                             download: bool = True) -> Path:
    """Path of a hash-checked ImageNet weights file for ``spec``, downloading only if needed."""
    weights = weights_file(spec, include_top)
    rejected = []
    for path in candidate_paths(weights):
        if path.is_file():
            if file_matches_hash(path, weights.file_hash):
                return path
            rejected.append(f"{path} (hash differs from {weights.file_hash}: incomplete or a different file)")
    if download and downloads_allowed():
        try:
            return download_weights(weights, keras_cache_dir())
        except Exception as error:  # urllib, socket and SSL errors all mean "not reachable"
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    else:
        reason = "downloading was disabled" + (f" ({OFFLINE_ENV} is set)" if download else "")
    looked = "\n".join(f"  - {p}" for p in candidate_paths(weights))
    bad = "".join(f"\n  rejected {r}" for r in rejected)
    raise WeightsUnavailableError(
        f"ImageNet weights for {spec.name!r} are not available: {weights.file_name}\n"
        f"Looked in:\n{looked}{bad}\n"
        f"Download failed ({reason}) from {weights.url}\n"
        f"Fix: on a machine with internet run `zoo weights fetch {spec.name} --dest DIR` "
        f"(or download the URL above), copy the file into a folder here and set "
        f"{WEIGHTS_DIR_ENV}=that folder, or put it in {keras_cache_dir()}.")


def download_weights(weights: WeightsFile, dest: Path) -> Path:
    """Download ``weights`` into ``dest`` and check its hash; a partial file never remains."""
    import keras

    dest.mkdir(parents=True, exist_ok=True)
    path = keras.utils.get_file(weights.file_name, weights.url, file_hash=weights.file_hash,
                                cache_dir=str(dest.parent), cache_subdir=dest.name)
    path = Path(path)
    if path.parent.resolve() != dest.resolve():
        shutil.copy2(path, dest / weights.file_name)
        path = dest / weights.file_name
    return path


# --- N-channel adaptation -------------------------------------------------------------

def adapt_input_kernel(kernel: np.ndarray, channels: int) -> np.ndarray:
    """Adapt a (h, w, 3, out) convolution kernel to ``channels`` inputs, as timm does.

    One channel: the RGB kernels summed (a grey image gives the response of R=G=B).
    Otherwise the RGB kernel is repeated over the new channels and rescaled by 3/N, so an
    input whose channels repeat RGB gives exactly the 3-channel response.
    """
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise ValueError(f"expected a (h, w, 3, out) kernel, got shape {kernel.shape}")
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    repeats = -(-channels // 3)
    tiled = np.concatenate([kernel] * repeats, axis=2)[:, :, :channels, :]
    return tiled * (3.0 / channels)


def adapt_weight(value: np.ndarray, target_shape: tuple, where: str) -> np.ndarray:
    """One weight of a 3-channel model reshaped for the N-channel model, or an error."""
    if tuple(value.shape) == tuple(target_shape):
        return value
    channels = target_shape[2] if len(target_shape) == 4 else target_shape[-1]
    if value.ndim == 4 and value.shape[2] == 3 and value.shape[:2] + value.shape[3:] == target_shape[:2] + target_shape[3:]:
        return adapt_input_kernel(value, channels)
    if value.shape[-1] == 3 and value.shape[:-1] == tuple(target_shape[:-1]):
        # Per-channel input statistics (a Normalization layer inside the model): the new
        # channels get the RGB average, matching zoo.preprocessing.
        extended = np.repeat(value.mean(axis=-1, keepdims=True), channels, axis=-1)
        if channels >= 3:
            extended[..., :3] = value
        return extended
    raise ValueError(f"cannot adapt weight of {where} from shape {value.shape} to {tuple(target_shape)}")


def copy_weights_adapting_channels(source, target) -> None:
    """Copy every layer's weights from a 3-channel model into the same architecture with N channels."""
    if len(source.layers) != len(target.layers):
        raise ValueError("source and target models differ in architecture")
    for source_layer, target_layer in zip(source.layers, target.layers):
        values = source_layer.get_weights()
        if not values:
            continue
        shapes = [tuple(w.shape) for w in target_layer.weights]
        target_layer.set_weights([adapt_weight(v, s, target_layer.name) for v, s in zip(values, shapes)])
        if hasattr(target_layer, "finalize_state"):
            target_layer.finalize_state()  # Normalization derives its broadcast stats from its weights


def weights_identity(weights) -> str:
    """What names a backbone's weights for caches: ``none``, ``imagenet``, or a file's resolved
    path with its size and modification time (a file rewritten in place is another identity)."""
    if weights in (None, "none", "imagenet"):
        return weights or "none"
    stat = Path(weights).stat()
    return f"{Path(weights).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def build_backbone_with_weights(spec: BackboneSpec, input_shape, weights, **options):
    """Build ``spec`` at ``input_shape`` and load ``weights`` (None, "imagenet" or a file path).

    A weights file for 3 channels is adapted to any other channel count.
    """
    input_shape = tuple(input_shape)
    with warnings.catch_warnings():
        # keras.applications warns on channel counts other than 1 or 3, which zoo supports.
        warnings.filterwarnings("ignore", message=".*input channels.*")
        warnings.filterwarnings("ignore", message=".*input_shape. is undefined or non-square.*")
        return _build_and_load(spec, input_shape, weights, options)


def _build_and_load(spec, input_shape, weights, options):
    if weights is None or weights == "none":
        return spec.build(input_shape, **options)
    if spec.hub is not None:
        return build_from_preset(spec, input_shape, weights, options)
    imagenet = weights == "imagenet"
    if imagenet:
        if options:
            raise ValueError(f"ImageNet weights exist only for the default {spec.name}; drop {sorted(options)}")
        path = resolve_imagenet_weights(spec)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist; expected a backbone weights file "
                                    f"such as one saved from keras.applications with include_top=False")
    model = spec.build(input_shape, **options)
    key = (spec.name, input_shape, json.dumps(options, sort_keys=True, default=str), weights_identity(path))
    if key in _LOADED:
        from zoo.harness.precise_bn import walk_layers

        model.set_weights(_LOADED[key])
        for layer in walk_layers(model):
            if hasattr(layer, "finalize_state"):
                layer.finalize_state()  # as loading does: Normalization derives its broadcast stats
        return model
    channels = input_shape[-1]
    source = model if channels == 3 else spec.build(input_shape[:-1] + (3,), **options)
    source.load_weights(str(path))
    if imagenet and spec.after_imagenet_load is not None:
        spec.after_imagenet_load(source)
    if source is not model:
        copy_weights_adapting_channels(source, model)
    _LOADED.clear()  # one entry: a sweep reuses one backbone's weights; memory stays bounded
    _LOADED[key] = model.get_weights()
    return model


# The weights last loaded, as arrays: the runs of a sweep that a worker process executes one
# after another set them directly instead of parsing the same file again.
_LOADED: dict = {}


# --- keras-hub presets ----------------------------------------------------------------------

def kagglehub_cache_dir() -> Path:
    """Where keras-hub's downloads (through kagglehub) are cached."""
    return Path(os.environ.get("KAGGLEHUB_CACHE", Path.home() / ".cache" / "kagglehub")).expanduser()


def preset_candidates(spec: BackboneSpec) -> list[Path]:
    """Folders that may hold ``spec``'s keras-hub preset, in the order they are tried:
    ``$ZOO_WEIGHTS_DIR/<preset>``, then keras-hub's cache (newest version first)."""
    preset = spec.hub.preset
    paths = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        paths.append(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser() / preset)
    cached = kagglehub_cache_dir().glob(f"models/keras/*/keras/{preset}/*")
    paths += sorted((p for p in cached if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
    return paths


def find_local_preset(spec: BackboneSpec) -> Path | None:
    return next((p for p in preset_candidates(spec) if (p / "config.json").is_file()), None)


def resolve_preset(spec: BackboneSpec, download: bool = True) -> str:
    """A keras-hub preset folder holding ``spec``'s pretrained weights, or the preset's name for
    keras-hub to download; raises WeightsUnavailableError saying where to put it offline."""
    local = find_local_preset(spec)
    if local is not None:
        return str(local)
    if download and downloads_allowed():
        return spec.hub.preset
    looked = "\n".join(f"  - {p}" for p in preset_candidates(spec)) or f"  - (no {WEIGHTS_DIR_ENV} set)"
    raise WeightsUnavailableError(
        f"pretrained weights for {spec.name!r} are not available: keras-hub preset {spec.hub.preset!r} "
        f"(from Kaggle Models, keras/{spec.family})\nLooked in:\n{looked}\n"
        f"and downloading is off ({OFFLINE_ENV} is set)\n"
        f"Fix: on a machine with internet run `zoo weights fetch '{spec.name}' --dest DIR`, copy DIR here and "
        f"set {WEIGHTS_DIR_ENV}=DIR (the preset goes to DIR/{spec.hub.preset}/)")


def load_preset_model(spec: BackboneSpec, location: str):
    """The keras-hub model of a preset folder (or name): for an image-text preset, its vision encoder."""
    from zoo.backbones.hub import _keras_hub

    backbone = _keras_hub().models.Backbone.from_preset(location)
    return backbone.vision_encoder if spec.hub.vision_tower else backbone


def fetch_preset(spec: BackboneSpec, dest: Path) -> Path:
    """Download ``spec``'s preset and save it as DEST/<preset>/ (what ZOO_WEIGHTS_DIR=DEST finds)."""
    from zoo.backbones.hub import _keras_hub

    target = Path(dest) / spec.hub.preset
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    _keras_hub().models.Backbone.from_preset(spec.hub.preset).save_to_preset(str(partial))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def resample_position_embedding(value: np.ndarray, target_shape: tuple) -> np.ndarray | None:
    """Learned position embeddings of a (prefix + n*n)-token grid resampled bicubically to the
    target's grid, as timm's resample_abs_pos_embed does; None when ``value`` is not one."""
    source, target = tuple(value.shape), tuple(target_shape)
    if len(source) != len(target) or source[-1] != target[-1] or len(source) not in (2, 3):
        return None
    for prefix in (0, 1, 2):
        old, new = source[-2] - prefix, target[-2] - prefix
        if old > 0 and new > 0 and round(old ** 0.5) ** 2 == old and round(new ** 0.5) ** 2 == new:
            import keras

            rows, width = round(old ** 0.5), source[-1]
            tokens = value.reshape(-1, source[-2], width)
            grid = tokens[:, prefix:].reshape(-1, rows, rows, width)
            side = round(new ** 0.5)
            resized = np.asarray(keras.ops.image.resize(grid, (side, side), interpolation="bicubic"))
            joined = np.concatenate([tokens[:, :prefix], resized.reshape(-1, new, width)], axis=1)
            return joined.reshape(target).astype(value.dtype)
    return None


def copy_preset_weights(source, target) -> None:
    """Copy a preset's wrapped model (3 channels, its own input size) into the same architecture at
    another size and channel count: the patch embedding adapted to the channels, learned position
    embeddings resampled to the new grid."""
    source_layers = [layer for layer in source.layers if layer.weights]
    target_layers = [layer for layer in target.layers if layer.weights]
    if [type(layer).__name__ for layer in source_layers] != [type(layer).__name__ for layer in target_layers]:
        raise ValueError("the preset's architecture differs from zoo's configuration of this backbone")
    for source_layer, target_layer in zip(source_layers, target_layers):
        values = []
        for value, weight in zip(source_layer.get_weights(), target_layer.weights):
            shape = tuple(weight.shape)
            resampled = None if value.shape == shape else resample_position_embedding(value, shape)
            values.append(resampled if resampled is not None else adapt_weight(value, shape, target_layer.name))
        target_layer.set_weights(values)


def build_from_preset(spec: BackboneSpec, input_shape, weights, options):
    """``spec`` at ``input_shape`` with its keras-hub preset's weights (``weights`` "imagenet" or
    "pretrained": found as resolve_preset says; or a preset folder)."""
    from zoo.backbones.hub import wrap

    location = resolve_preset(spec) if weights in ("imagenet", "pretrained") else str(Path(weights).expanduser())
    model = spec.build(input_shape, **options)
    source_model = load_preset_model(spec, location)
    source = wrap(spec.hub, source_model, tuple(source_model.inputs[0].shape[1:]), options.get("pool"))
    copy_preset_weights(source, model)
    return model
