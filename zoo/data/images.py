"""One image file read as zoo reads it: which files are images (and what reads those this machine cannot),
EXIF orientation, large JPEGs decoded at a reduced scale, bit depths, masks of class indices, and the scan's
probe of a file (shape, bit depth, orientation, digest). zoo.data.folder scans folders of them; the track
manifests (zoo.data.tracks), zoo predict and zoo serve read their files here too.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from zoo.errors import DataError


# What Pillow (or tifffile) reads without plug-ins: timm's and torchvision's ImageFolder formats and the
# JPEG names browsers save (.jfif); AVIF too where this Pillow was built with it (see is_image_file).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
HEIF_SUFFIXES = (".heic", ".heif")
# Formats a folder may hold that this machine may not read, with what reads them.
UNREADABLE_HERE = {".heic": "an iPhone (HEIC) photo, which needs the pillow-heif plug-in (pip install -e '.[heic]' "
                            "in zoo's folder); or convert it to JPEG (Photos' export, `heif-convert`, or `sips -s "
                            "format jpeg` on a Mac)",
                   ".heif": "a HEIF photo, which needs the pillow-heif plug-in (pip install -e '.[heic]' in zoo's "
                            "folder); or convert it to JPEG",
                   ".avif": "an AVIF image, which this machine's Pillow cannot read: upgrade Pillow (11.3 or later) "
                            "or convert it to PNG or JPEG"}


@functools.cache
def heif_readable() -> bool:
    """Whether HEIC/HEIF photos (an iPhone's) can be read here: the pillow-heif plug-in (zoo's ``heic`` extra) is
    installed, and is then registered with Pillow (libheif turns each photo upright as it decodes and resets its
    EXIF orientation, so nothing turns it twice)."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def open_image(path):
    """Pillow's ``Image.open``, with the HEIF plug-in registered first where it is installed."""
    from PIL import Image

    heif_readable()
    return Image.open(path)


def is_image_file(path) -> bool:
    """Whether zoo reads ``path`` as an image (by its suffix, case aside)."""
    suffix = Path(path).suffix.lower()
    if suffix in HEIF_SUFFIXES:
        return heif_readable()
    if suffix == ".avif":
        from PIL import features

        return bool(features.check("avif"))
    return suffix in IMAGE_SUFFIXES


def unreadable_here(path) -> str | None:
    """For an image in a format this machine cannot read (an iPhone's HEIC without zoo's heic extra): what
    reads it. None for any other file."""
    return None if is_image_file(path) else UNREADABLE_HERE.get(Path(path).suffix.lower())


def not_an_image(path) -> str:
    """Why a file in a dataset folder is skipped: not an image, or a format this machine cannot read."""
    hint = unreadable_here(path)
    return f"{hint}; it is left out" if hint else f"not an image file ({Path(path).suffix.lower() or 'no suffix'})"


# EXIF orientation (tag 274) -> the transpose that shows the stored pixels upright, as photo viewers,
# browsers and OpenCV show them (Pillow's ImageOps.exif_transpose, without copying the image's metadata).
EXIF_ORIENTATION_TAG = 0x0112


def exif_orientation(image) -> int:
    """An open Pillow image's EXIF orientation (1-8; 1, upright, when it has none or a damaged one).
    Phones store a portrait photo as landscape sensor rows with orientation 6 or 8."""
    try:
        value = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001  damaged EXIF: the pixels as stored
        return 1
    return value if 1 <= value <= 8 else 1


def upright(image, orientation: int):
    """``image`` turned as its EXIF ``orientation`` says (5-8 swap height and width)."""
    from PIL import Image

    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
              7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}.get(orientation)
    return image.transpose(method) if method is not None else image


# Images above this many pixels are refused at scan (skipped, named): decoding one takes
# gigabytes and the model sees a few hundred pixels of it. ZOO_MAX_IMAGE_PIXELS overrides it.
MAX_IMAGE_PIXELS = int(os.environ.get("ZOO_MAX_IMAGE_PIXELS", 64_000_000))
# Larger images are reduced on decode by a whole factor (a box filter) to about this long side:
# far more than any input size zoo trains at, and a fraction of the memory.
DECODE_LONG_SIDE = 2048
# A JPEG read for a model of side S is decoded at a reduced scale only while its short side stays at
# least this many times S: what the resize then interpolates is still finer than the model's input.
DRAFT_MARGIN = 2


def image_pixels(path) -> int | None:
    """Pixel count from the file's header, without decoding it (None when unknown)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                shape = tiff.series[0].shape
            return int(np.prod(sorted(shape)[-2:]))
        with open_image(path) as image:
            return image.size[0] * image.size[1]
    except Exception:  # unreadable: the decode that follows names the reason
        return None


def read_image(path, reduce: bool = True, suffix: str | None = None, size: int | None = None) -> np.ndarray:
    """An image file (a path, or an open binary file with its name's ``suffix``) as an (H, W, C)
    array in its own dtype (uint8, uint16 or float); with ``reduce``, images with a long side
    above 2 x DECODE_LONG_SIDE are reduced by a whole factor as they decode (never masks: their
    values are class indices). ``size``: the side it will be resized to (see :func:`decode_image`)."""
    return decode_image(path, reduce, suffix, size)[0]


def decode_image(path, reduce: bool = True, suffix: str | None = None,
                 size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image`'s array and the file's own (height, width). With ``size``, a JPEG is decoded at
    the smallest of libjpeg's scales (1/2, 1/4, 1/8) that keeps its short side at least DRAFT_MARGIN x
    ``size``: a 12-megapixel photo for a 224-px model decodes about 4x faster, and its DCT-domain reduction
    averages the pixels that a bilinear resize from full resolution would skip. A photo is read upright, as
    its EXIF orientation says (as viewers, browsers and labelling tools show it; the height and width given
    are then the upright ones)."""
    if suffix is None:
        path = Path(path)
        suffix = path.suffix
    if suffix.lower() in (".tif", ".tiff"):
        import tifffile

        array = tifffile.imread(path)
        if array.ndim == 3 and array.shape[0] < min(array.shape[1:]) and array.shape[0] <= 16:
            array = np.moveaxis(array, 0, -1)  # planar (bands, H, W) files
        original = tuple(array.shape[:2])
    else:
        with open_image(path) as image:
            orientation = exif_orientation(image)
            original = (image.size[1], image.size[0])[::-1 if orientation >= 5 else 1]
            factor = max(image.size) // DECODE_LONG_SIDE if reduce else 1
            if size and reduce:
                factor = max(factor, max((f for f in (2, 4, 8) if min(image.size) // f >= DRAFT_MARGIN * size),
                                         default=1))
            if factor >= 2 and image.format == "JPEG":
                image.draft(image.mode, (image.size[0] // factor, image.size[1] // factor))  # decodes at 1/2..1/8
            image.load()
            if image.mode in ("RGBA", "LA", "P", "CMYK", "YCbCr", "1"):
                image = image.convert("RGB" if image.mode != "LA" else "L")
            factor = max(image.size) // DECODE_LONG_SIDE if reduce else 1
            if factor >= 2 and image.mode in ("L", "RGB", "I;16", "I", "F"):
                image = image.reduce(factor)
            array = np.asarray(upright(image, orientation))
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"unexpected array shape {array.shape}")
    return array, original


def own_maximum(dtype, dataset_maximum: float) -> float:
    """The value that means "full scale" in a file of ``dtype`` within a dataset whose full scale
    is ``dataset_maximum``: 255 for 8-bit files, for 16-bit ones the dataset's (stated) maximum
    when it is above 8 bits, else 65535."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return float(dataset_maximum) if dataset_maximum > 255 else 65535.0
    return float(dataset_maximum)


def to_dataset_scale(array: np.ndarray, dataset_maximum: float) -> np.ndarray:
    """float32 pixels on the dataset's scale, each file scaled by its own bit depth: an 8-bit PNG
    among 16-bit ones (or the reverse) means the same brightness as its neighbours."""
    return array.astype(np.float32) * np.float32(float(dataset_maximum) / own_maximum(array.dtype, dataset_maximum))


def read_mask(path) -> np.ndarray:
    """A mask file as an (H, W) array of class indices. A palette PNG (Pascal VOC's format, and what most
    labelling tools export) holds its indices as they are, not the colours it shows; a bilevel image is 0
    and 1; a grey image saved with three equal channels is read as one. Raises DataError for a colour mask."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        mask = read_image(path, reduce=False)
    else:
        with open_image(path) as image:
            mode = image.mode
            mask = np.asarray(upright(image.convert("L") if mode == "1" else image, exif_orientation(image)))
        mask = (mask > 0).astype(np.uint8) if mode == "1" else mask
        mask = mask[..., None] if mask.ndim == 2 else mask
        if mode in ("RGBA", "LA"):
            mask = mask[..., :-1]  # the alpha band is no class
        if mask.shape[-1] > 1 and (mask == mask[..., :1]).all():
            mask = mask[..., :1]
    if mask.shape[-1] != 1:
        raise DataError(f"{path}: a mask must have one band of class indices (0, 1, 2 ...), this one has "
                        f"{mask.shape[-1]} with different values: a colour-coded mask? Save each pixel's class index "
                        f"as a one-band (greyscale or palette) PNG or TIFF")
    return mask[..., 0]


def probe_file(path: Path) -> dict:
    """What the folder scan records of one file, decoded once: its upright shape, dtype, brightest value (not
    for JPEGs, checked at 1/8 scale), EXIF orientation where it is turned, and its digest; or why it is unreadable
    or refused (above MAX_IMAGE_PIXELS)."""
    pixels = image_pixels(path)
    if pixels and pixels > MAX_IMAGE_PIXELS:
        return {"error": f"{pixels / 1e6:.0f} megapixels is above zoo's limit of {MAX_IMAGE_PIXELS / 1e6:.0f} "
                         f"(ZOO_MAX_IMAGE_PIXELS); downscale it or raise the limit"}
    try:
        if path.suffix.lower() in JPEG_SUFFIXES:
            probe = _probe_jpeg(path)
        else:
            array = read_image(path, reduce=False)
            brightest = int(array.max()) if array.dtype.kind in "ui" and array.size else None
            probe = {"shape": list(array.shape), "dtype": str(array.dtype), "max": brightest, **_turned(path)}
        return {**probe, "digest": content_digest(path)}
    except Exception as error:  # PIL, tifffile and OS errors all mean "unreadable"
        return {"error": f"{type(error).__name__}: {error}".splitlines()[0][:200]}


def content_digest(path: Path) -> str:
    """A file's bytes, hashed: two files with one digest are copies of each other."""
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _probe_jpeg(path: Path) -> dict:
    """A JPEG's shape, checked by decoding all of its data at libjpeg's 1/8 scale: a truncated or corrupt
    file fails as it would at full size (every block is still read), at a fraction of the time."""
    with open_image(path) as image:
        if image.format != "JPEG":  # a PNG named .jpg: read as any other file
            return {"shape": list(read_image(path, reduce=False).shape), "dtype": "uint8"}
        width, height = image.size
        channels = 1 if image.mode == "L" else 3  # CMYK and YCbCr are read as RGB
        orientation = exif_orientation(image)
        image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
        image.load()
    turned = {"orientation": orientation} if orientation != 1 else {}
    return {"shape": [width, height, channels] if orientation >= 5 else [height, width, channels],
            "dtype": "uint8", **turned}


def _turned(path: Path) -> dict:
    """``{"orientation": n}`` for a file stored turned (EXIF orientation n, 2-8), else nothing."""
    if path.suffix.lower() in (".tif", ".tiff"):
        return {}
    with open_image(path) as image:
        orientation = exif_orientation(image)
    return {"orientation": orientation} if orientation != 1 else {}


def read_example(path, channels: int, dataset_maximum: float, size: int | None = None) -> np.ndarray:
    """One image of a dataset as float32 on the dataset's scale, grey expanded to the dataset's RGB;
    ``size``: the side it will be stored at (a large JPEG then decodes at a reduced scale, see decode_image)."""
    array = read_image(str(path), size=size)
    if array.shape[-1] != channels:  # a grey photo among colour ones
        array = np.repeat(array, channels, axis=-1)
    return to_dataset_scale(array, dataset_maximum).astype(np.float32, copy=False)
