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
import socket
import warnings
from pathlib import Path

import numpy as np

from zoo.backbones import BackboneSpec, WeightsFile
from zoo.errors import WeightsUnavailableError
from zoo.layers import walk_layers

WEIGHTS_DIR_ENV = "ZOO_WEIGHTS_DIR"


OFFLINE_ENV = "ZOO_OFFLINE"  # "1": never download (air-gapped machines, tests)


def downloads_allowed() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes")


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


def weights_status(spec: BackboneSpec) -> tuple[str, str]:
    """Whether ``spec``'s pretrained weights are on this machine, without downloading or probing the network:
    ("here", where), ("damaged", why: a file of the right name with another hash, an incomplete preset
    folder) or ("missing", what to fetch)."""
    if spec.hub is not None:
        folder, rejected = locate_preset(spec)
        if folder is not None:
            return "here", str(folder)
        if rejected:
            return "damaged", "; ".join(rejected)
        return "missing", f"keras-hub preset {spec.hub.preset} ({preset_download_size(spec)})"
    weights = weights_file(spec)
    damaged = []
    for path in candidate_paths(weights):
        if path.is_file():
            if file_matches_hash(path, weights.file_hash):
                return "here", str(path)
            damaged.append(f"{path} (hash differs from {weights.file_hash}: incomplete or a different file)")
    if damaged:
        return "damaged", "; ".join(damaged)
    return "missing", f"{weights.file_name} (looked in {', '.join(str(p.parent) for p in candidate_paths(weights))})"


def download_weights(weights: WeightsFile, dest: Path) -> Path:
    """Download ``weights`` into ``dest`` and check its hash; a partial or mismatching file never
    remains there (it is downloaded into a staging folder and moved in only once checked)."""
    import tempfile

    import keras

    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{weights.file_name}.", suffix=".partial", dir=dest))
    try:
        path = keras.utils.get_file(weights.file_name, weights.url, file_hash=weights.file_hash,
                                    cache_dir=str(staging), cache_subdir="download")
        final = dest / weights.file_name
        os.replace(path, final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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

PRESET_CONFIG_FILE = "config.json"      # keras-hub's names inside a preset folder
PRESET_WEIGHTS_FILE = "model.weights.h5"
PRESET_SHARDS_FILE = "model.weights.json"  # the index of a preset saved in shards
# Where keras-hub's downloads come from, by the scheme of a preset's handle: a short TCP probe of
# the host tells a machine without internet in seconds, where keras-hub would retry for minutes.
PRESET_HOSTS = {"kaggle": "https://api.kaggle.com", "hf": "https://huggingface.co"}


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds (answered once
    per host and process)."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    key = (parsed.hostname, parsed.port or 443)
    if key not in _REACHABLE:
        try:
            with socket.create_connection(key, timeout=timeout):
                _REACHABLE[key] = True
        except OSError:  # no route, no name resolution, refused, timed out
            _REACHABLE[key] = False
    return _REACHABLE[key]


_REACHABLE: dict = {}


def kagglehub_cache_dir() -> Path:
    """Where keras-hub's downloads from Kaggle (through kagglehub) are cached."""
    return Path(os.environ.get("KAGGLEHUB_CACHE", Path.home() / ".cache" / "kagglehub")).expanduser()


def huggingface_cache_dir() -> Path:
    """Where keras-hub's downloads from Hugging Face are cached."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser() / "hub"


def preset_catalogue(spec: BackboneSpec) -> dict:
    """keras-hub's own entry for ``spec``'s preset (its handle and metadata), empty where keras-hub is
    not installed or does not list it."""
    try:
        import keras_hub
    except ImportError:
        return {}
    return keras_hub.models.Backbone.presets.get(spec.hub.preset, {})


def preset_handle(spec: BackboneSpec) -> str:
    """Where keras-hub downloads the preset from: ``kaggle://keras/<model>/keras/<preset>/<version>``
    or ``hf://<org>/<name>``."""
    entry = preset_catalogue(spec)
    return entry.get("kaggle_handle") or entry.get("hf_handle") or f"kaggle://keras/{spec.family}/keras/{spec.hub.preset}"


def preset_download_size(spec: BackboneSpec) -> str:
    """The preset's download, from the parameter count keras-hub publishes (float32 weights)."""
    params = preset_catalogue(spec).get("metadata", {}).get("params") or spec.hub.preset_params
    if not params:
        return "size unknown"
    return f"about {params * 4 / 1e6:,.0f} MB: {params / 1e6:.1f} M parameters"


def preset_candidates(spec: BackboneSpec) -> list[Path]:
    """Folders that may hold ``spec``'s keras-hub preset, in the order they are tried:
    ``$ZOO_WEIGHTS_DIR/<preset>``, then keras-hub's caches (Kaggle's, newest version first; Hugging
    Face's, for presets published there)."""
    preset = spec.hub.preset
    paths = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        paths.append(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser() / preset)
    cached = kagglehub_cache_dir().glob(f"models/keras/*/keras/{preset}/*")
    paths += sorted((p for p in cached if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
    handle = preset_handle(spec)
    if handle.startswith("hf://"):
        repo = handle[len("hf://"):].split("@")[0].replace("/", "--")
        paths += sorted((huggingface_cache_dir() / f"models--{repo}" / "snapshots").glob("*"))
    return paths


def _same_setting(stored, wanted) -> bool:
    """A configuration value as config.json holds it equals zoo's: tuples are lists there, and keras-hub
    stores some scalars expanded per axis (DeiT's patch_size 16 as [16, 16])."""
    stored, wanted = json.loads(json.dumps(stored)), json.loads(json.dumps(wanted))
    if isinstance(stored, list) and not isinstance(wanted, list):
        return stored == [wanted] * len(stored)
    return stored == wanted


def preset_folder_problem(spec: BackboneSpec, folder: Path, options: dict | None = None) -> str | None:
    """What makes ``folder`` unusable as ``spec``'s preset (with ``options`` overriding its configuration),
    naming the file; None when it is complete and holds this architecture."""
    config_path = folder / PRESET_CONFIG_FILE
    if not config_path.is_file():
        return f"{config_path} is missing"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{config_path} cannot be read ({type(error).__name__}: {str(error).splitlines()[0]})"
    if not isinstance(config, dict):
        return f"{config_path} is not a keras-hub configuration"
    if spec.hub.vision_tower and isinstance(config.get("config"), dict) \
            and isinstance(config["config"].get("vision_encoder"), dict):
        config = config["config"]["vision_encoder"]
    if config.get("class_name") != spec.hub.class_name:
        return (f"{config_path} describes a {config.get('class_name')!r}, not the {spec.hub.class_name} of "
                f"{spec.name}: another model's preset")
    expected = {k: v for k, v in {**spec.hub.config, **(options or {})}.items() if k != "pool"}
    stored = config.get("config", {})
    for key, value in expected.items():
        if key in stored and not _same_setting(stored[key], value):
            return (f"{config_path} has {key}={stored[key]!r} where {spec.name} has {value!r}: another "
                    f"model's preset, or other backbone_options")
    return _preset_weights_problem(folder)


def _preset_weights_problem(folder: Path) -> str | None:
    """The weights file (or every shard) present and readable as HDF5: a truncated download fails here."""
    index = folder / PRESET_SHARDS_FILE
    if index.is_file():
        try:
            files = sorted({name for name in json.loads(index.read_text()).get("weight_map", {}).values()})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
            return f"{index} cannot be read ({type(error).__name__})"
    else:
        files = [PRESET_WEIGHTS_FILE]
    import h5py

    for name in files:
        path = folder / name
        if not path.is_file():
            return f"{path} is missing (an incomplete copy of the preset)"
        try:
            with h5py.File(path, "r"):
                pass
        except OSError as error:
            return f"{path} is damaged or truncated ({str(error).splitlines()[0]})"
    return None


def locate_preset(spec: BackboneSpec, options: dict | None = None) -> tuple[Path | None, list[str]]:
    """The first complete folder holding ``spec``'s preset, and why each folder before it was rejected."""
    rejected = []
    for folder in preset_candidates(spec):
        if not folder.exists():
            continue
        problem = preset_folder_problem(spec, folder, options)
        if problem is None:
            return folder, rejected
        rejected.append(problem)
    return None, rejected


def preset_unavailable(spec: BackboneSpec, reason: str, rejected=()) -> WeightsUnavailableError:
    """The error for a preset that cannot be had here: what it is, where zoo looked, why it cannot be
    downloaded, and the two steps that fix it."""
    looked = "\n".join(f"  - {p}" for p in preset_candidates(spec)) or f"  - (no {WEIGHTS_DIR_ENV} set)"
    bad = "".join(f"\n  rejected {r}" for r in rejected)
    error = WeightsUnavailableError(
        f"pretrained weights for {spec.name!r} are not available: keras-hub preset {spec.hub.preset!r} "
        f"({preset_download_size(spec)}; {preset_handle(spec)})\nLooked in:\n{looked}{bad}\n"
        f"and it cannot be downloaded: {reason}\n"
        f"Fix: on a machine with internet run `zoo weights fetch '{spec.name}' --dest DIR`, copy DIR here and "
        f"set {WEIGHTS_DIR_ENV}=DIR (the preset goes to DIR/{spec.hub.preset}/)")
    error.reason = reason
    return error


def preset_download_blocker(spec: BackboneSpec, explicit: bool = False) -> str | None:
    """Why keras-hub could not download ``spec``'s preset from here, or None when it may. ``explicit``:
    the user asked for the download (``zoo weights fetch``), which ZOO_OFFLINE does not forbid."""
    if not downloads_allowed() and not explicit:
        return f"downloading is off ({OFFLINE_ENV} is set)"
    host = PRESET_HOSTS.get(preset_handle(spec).split("://")[0], PRESET_HOSTS["kaggle"])
    if not reachable(host):
        return f"{host.split('//')[1]} cannot be reached from this machine"
    return None


def preset_availability(spec: BackboneSpec, options: dict | None = None):
    """``(location, rejected, blocker)``: a complete preset folder on disk, or else the preset's name when
    keras-hub may download it (location None when neither); why each folder found was rejected; and why
    it cannot be downloaded (None when it can)."""
    local, rejected = locate_preset(spec, options)
    if local is not None:
        return str(local), rejected, None
    blocker = preset_download_blocker(spec)
    return (spec.hub.preset if blocker is None else None), rejected, blocker


def resolve_preset(spec: BackboneSpec, options: dict | None = None) -> str:
    """A complete keras-hub preset folder holding ``spec``'s pretrained weights, or the preset's name
    for keras-hub to download; raises WeightsUnavailableError saying where to put it offline."""
    location, rejected, blocker = preset_availability(spec, options)
    if location is None:
        raise preset_unavailable(spec, blocker, rejected)
    return location


def load_preset_model(spec: BackboneSpec, location: str):
    """The keras-hub model of a preset folder, or of the preset's name (downloaded by keras-hub into its
    cache): for an image-text preset, its vision encoder."""
    backbone = preset_backbone(spec, location)
    return backbone.vision_encoder if spec.hub.vision_tower else backbone


def preset_backbone(spec: BackboneSpec, location: str):
    """keras-hub's whole backbone of a preset folder or name. Any failure of a download (network, Kaggle,
    a partial file) becomes WeightsUnavailableError with the offline fix: no network library's exception
    reaches the user."""
    from zoo.backbones.hub import _keras_hub

    try:
        return _keras_hub().models.Backbone.from_preset(location)
    except Exception as error:  # requests, kagglehub, huggingface_hub, h5py: all mean "not downloadable"
        if location != spec.hub.preset:
            raise  # a folder on disk: its own error says what is wrong with it
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise preset_unavailable(spec, f"{type(error).__name__}: {first_line}") from None


def fetch_preset(spec: BackboneSpec, dest: Path) -> Path:
    """Download ``spec``'s preset and save it as DEST/<preset>/ (what ZOO_WEIGHTS_DIR=DEST finds)."""
    blocker = preset_download_blocker(spec, explicit=True)
    if blocker:
        raise preset_unavailable(spec, blocker)
    target = Path(dest) / spec.hub.preset
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    preset_backbone(spec, spec.hub.preset).save_to_preset(str(partial))
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
    "pretrained": found as resolve_preset says; or a preset folder, checked before it is loaded)."""
    from zoo.backbones.hub import wrap

    if weights in ("imagenet", "pretrained"):
        location = resolve_preset(spec, options)
    else:
        location = str(Path(weights).expanduser())
        problem = preset_folder_problem(spec, Path(location), options)
        if problem:
            raise WeightsUnavailableError(f"weights {location} is not a usable keras-hub preset of {spec.name!r}: "
                                          f"{problem}")
    model = spec.build(input_shape, **options)
    source_model = load_preset_model(spec, location)
    source = wrap(spec.hub, source_model, tuple(source_model.inputs[0].shape[1:]), options.get("pool"))
    copy_preset_weights(source, model)
    return model
