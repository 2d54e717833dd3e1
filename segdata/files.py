"""Reading through pyarrow.fs, so a dataset on object storage (s3://, gs://) is a new URI, not a rewrite.

Plain paths go to the local filesystem; anything with a scheme goes to `pyarrow.fs.FileSystem.from_uri`,
cached per bucket/host so listing and reading thousands of files do not re-create clients.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import pyarrow.fs as pafs
from PIL import Image, ImageOps, UnidentifiedImageError

from segdata.meta import MAX_CHANNELS, MAX_LABEL_VALUE, DataError, DatasetMeta

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_LOCAL = pafs.LocalFileSystem()
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_EXIF_ORIENTATION = 0x0112


def is_uri(path: str) -> bool:
    return bool(_URI.match(path))


@lru_cache(maxsize=32)
def _remote_filesystem(prefix: str) -> tuple[pafs.FileSystem, str]:
    filesystem, base = pafs.FileSystem.from_uri(prefix)
    return filesystem, base.rstrip("/")


def locate(path_or_uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it."""
    if not is_uri(path_or_uri):
        return _LOCAL, os.path.abspath(path_or_uri)
    parts = urlsplit(path_or_uri)
    if parts.scheme == "file":
        return _LOCAL, unquote(parts.path)
    query = f"?{parts.query}" if parts.query else ""
    filesystem, base = _remote_filesystem(f"{parts.scheme}://{parts.netloc}/{query}")
    return filesystem, base + unquote(parts.path)


def join(root: str, *parts: str) -> str:
    """Join path parts; a URI's query string (s3://b/p?endpoint_override=...) stays at the end."""
    if is_uri(root):
        base, sep, query = root.partition("?")
        return "/".join([base.rstrip("/"), *parts]) + sep + query
    return os.path.join(root, *parts)


def normalize_root(root: str) -> str:
    if is_uri(root):
        base, sep, query = root.partition("?")
        return base.rstrip("/") + sep + query
    return os.path.abspath(root)


def path_kind(path_or_uri: str) -> str:
    """'file', 'dir' or 'missing'."""
    filesystem, path = locate(path_or_uri)
    kind = filesystem.get_file_info(path).type
    if kind == pafs.FileType.File:
        return "file"
    return "dir" if kind == pafs.FileType.Directory else "missing"


def list_files(folder: str) -> list[str]:
    """Base names of the files directly in `folder`, sorted (empty when it does not exist)."""
    filesystem, path = locate(folder)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(info.base_name for info in infos if info.type == pafs.FileType.File)


def read_bytes(path_or_uri: str) -> bytes:
    filesystem, path = locate(path_or_uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise DataError(f"{path_or_uri}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path_or_uri}: cannot read ({exc})") from None


def write_atomically(path: str, data: bytes) -> None:
    """Write a local file through a temporary sibling and a rename, so a reader never sees half of it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp) if os.path.exists(tmp) else None
        raise


def read_text(path_or_uri: str) -> str:
    return read_bytes(path_or_uri).decode("utf-8-sig")


def decode(data: bytes, source: str) -> Image.Image:
    """Fully decode (truncated or corrupt files fail here, not halfway through training)."""
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except UnidentifiedImageError:
        raise DataError(f"{source}: unreadable image (not a format Pillow can decode)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{source}: unreadable image ({exc})") from None
    return picture


@dataclass(frozen=True)
class StoredImage:
    """An image file's values as stored (uint8, uint16, int32 or float32), H x W x C channel-last, and what reading
    it changed (alpha dropped, channel-first stack transposed, EXIF rotation applied)."""

    values: np.ndarray
    notes: tuple[str, ...] = ()

    @property
    def bits(self) -> int:
        return self.values.dtype.itemsize * 8


def image_values(data: bytes, source: str, untrusted: bool = False) -> StoredImage:
    """Decode an image file: TIFF through tifffile (any depth, any channel count; imported here, as only TIFFs need
    it and it costs the CLI's start-up 0.14 s), the rest through Pillow. `untrusted` (bytes from outside, checked
    by `image_size` first): a compressed TIFF goes to Pillow, whose decoders stop at the declared size, while
    tifffile's fallback codecs (without imagecodecs) inflate whatever a strip holds."""
    if data[:4] in _TIFF_MAGIC and not (untrusted and _compressed_tiff(data)):
        import tifffile

        try:
            return _tiff_values(tifffile.imread(io.BytesIO(data)), source)
        except (ValueError, TypeError, KeyError, NotImplementedError, tifffile.TiffFileError):
            pass  # a TIFF tifffile cannot decode alone (e.g. LZW without imagecodecs): Pillow may
    picture = decode(data, source)
    notes = []
    if picture.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        picture = ImageOps.exif_transpose(picture)
        notes.append("EXIF orientation applied")
    mode = picture.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append(f"{mode} images: the alpha channel is dropped")
    if mode in ("1", "L", "LA", "La"):
        values = np.asarray(picture.convert("L"))
    elif mode.startswith("I;16"):
        values = np.asarray(picture).astype(np.uint16)
    elif mode in ("I", "F"):
        values = np.asarray(picture)
    else:
        values = np.asarray(picture if mode == "RGB" else picture.convert("RGB"))
    return StoredImage(values[:, :, None] if values.ndim == 2 else values, tuple(notes))


def _tiff_values(values: np.ndarray, source: str) -> StoredImage:
    notes = []
    if values.dtype == bool:
        values = values.astype(np.uint8) * 255
    if values.ndim == 2:
        values = values[:, :, None]
    elif values.ndim == 3 and values.shape[2] > MAX_CHANNELS and values.shape[0] <= MAX_CHANNELS:  # C x H x W
        values = np.ascontiguousarray(values.transpose(1, 2, 0))
        notes.append(f"channel-first TIFF ({values.shape[2]} x H x W), read as H x W x {values.shape[2]}")
    if values.ndim != 3 or values.shape[2] > MAX_CHANNELS:
        raise DataError(f"{source}: a stack of shape {' x '.join(map(str, values.shape))}; give one 2D image per "
                        f"file (at most {MAX_CHANNELS} channels)")
    if values.dtype.kind not in "uif" or values.dtype.itemsize > 4:
        values = values.astype(np.float32)
    return StoredImage(values, tuple(notes))


def to_8bit(values: np.ndarray, image_range: Sequence[tuple[float, float]] | None, source: str) -> np.ndarray:
    """8-bit images as they are; deeper ones mapped linearly from the dataset's intensity range (per channel, from
    its own percentiles) onto 0..255, so that everything downstream is one uint8 pipeline."""
    if values.dtype == np.uint8:
        return values
    if not image_range:
        raise DataError(f"{source}: a {values.dtype.itemsize * 8}-bit image, but the model's images were 8-bit, so "
                        "nothing says how to map its values; convert it to 8-bit")
    channels = values.shape[2]
    ranges = list(image_range) * channels if len(image_range) == 1 else list(image_range)
    if len(ranges) != channels:
        raise DataError(f"{source}: {channels} channel(s), but the dataset's images have {len(image_range)}")
    low = np.asarray([r[0] for r in ranges], np.float32)
    scale = 255 / np.maximum(np.asarray([r[1] for r in ranges], np.float32) - low, 1e-6)
    mapped = (values.astype(np.float32) - low) * scale
    return np.round(np.clip(mapped, 0, 255, out=mapped)).astype(np.uint8)


def raw_label_array(picture: Image.Image, source: str, color: bool = False) -> np.ndarray:
    """The stored label values before any label mode: H x W uint8 or uint16 (palette PNGs give their indices), or
    H x W x 3 colours when `color` (colour-coded labels). A colour file that is grey but for lossy-compression
    noise (JPEG masks saved as RGB) reads as grey."""
    if picture.mode == "P" and _grey_palette(picture):  # a mask saved with a palette of greys (GIF masks)
        return np.asarray(picture.convert("L"))
    if picture.mode in ("L", "P"):
        return np.asarray(picture)
    if picture.mode in ("1", "LA"):
        return np.asarray(picture.convert("L"))
    if picture.mode.startswith("I") or picture.mode == "F":
        values = np.asarray(picture)
        if values.min() < 0 or values.max() > MAX_LABEL_VALUE or not np.array_equal(values, np.round(values)):
            raise DataError(f"{source}: label values outside 0..{MAX_LABEL_VALUE} or not whole numbers; labels "
                            "hold class ids, mask levels or instance ids")
        return values.astype(np.uint16)
    rgb = np.asarray(picture.convert("RGB"))
    if color:
        return rgb
    grey = uncoloured(rgb)
    if grey is None:
        raise DataError(f"{source}: a colour label image; map its colours to classes with palette: in "
                        "dataset.yaml (docs/data.md)")
    return grey


def _grey_palette(picture: Image.Image) -> bool:
    """Whether the palette entries the picture uses are all grey and include more than indices 0/1 would say."""
    used = np.flatnonzero(np.bincount(np.asarray(picture).ravel(), minlength=256))
    colours = np.asarray(picture.getpalette() or [], np.int64).reshape(-1, 3)
    if not len(colours) or used.max() >= len(colours):
        return False
    chosen = colours[used]
    return bool((chosen == chosen[:, :1]).all() and not np.array_equal(chosen[:, 0], used))


def uncoloured(rgb: np.ndarray) -> np.ndarray | None:
    """The grey values of an RGB label whose channels agree (up to JPEG's colour noise: 99% of pixels within 24
    levels), else None: a colour-coded label."""
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
    if not spread.any():
        return np.ascontiguousarray(rgb[..., 0])
    if np.percentile(spread, 99) > 24:
        return None
    return np.round(rgb.mean(axis=2)).astype(np.uint8)


def read_image(path_or_uri: str, image_range: Sequence[tuple[float, float]] | None = None) -> np.ndarray:
    """H x W x C uint8 (C = 1 for grey, 3 for RGB, or what a TIFF holds); see `to_8bit` for deeper images."""
    return image_from_bytes(read_bytes(path_or_uri), path_or_uri, image_range)


def image_from_bytes(data: bytes, source: str, image_range: Sequence[tuple[float, float]] | None = None,
                     untrusted: bool = False) -> np.ndarray:
    """`read_image` of a file's bytes (an upload, a message): the same decoder training used."""
    return to_8bit(image_values(data, source, untrusted).values, image_range, source)


class ImageTooLarge(DataError):
    """An image refused for its size alone (from its header)."""


def _compressed_tiff(data: bytes) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            return any(page.compression != 1 for page in tif.pages[:MAX_CHANNELS + 1])
    except (ValueError, TypeError, KeyError, IndexError, tifffile.TiffFileError):
        return True  # whatever it is, not for tifffile's fallbacks


# formats an image from outside (an HTTP upload) may be in: Pillow's other plugins include ones that run external
# programs (EPS: Ghostscript) or are rarely meant as images
SAFE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF", "PPM")


def image_size(data: bytes, source: str, formats: Sequence[str] = SAFE_FORMATS) -> tuple[int, int]:
    """(width, height) from the header alone, before any pixel is decoded, so a decompression bomb is refused
    for its size; a file in none of `formats` is refused as not an image."""
    if data[:4] in _TIFF_MAGIC:
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                if len(tif.pages[:MAX_CHANNELS + 1]) > MAX_CHANNELS:  # a stack (read lazily: not a million IFDs)
                    raise DataError(f"{source}: a stack of more than {MAX_CHANNELS} pages; give one 2D image per "
                                    "file")
                page, shape = tif.pages[0], tif.series[0].shape
                width, height = int(page.imagewidth), int(page.imagelength)
                decoded = int(np.prod(shape)) * page.dtype.itemsize if page.dtype is not None else 0
        except (ValueError, TypeError, KeyError, IndexError, tifffile.TiffFileError) as exc:
            raise DataError(f"{source}: unreadable TIFF header ({exc})") from None
        if int(np.prod(shape)) > width * height * MAX_CHANNELS:  # what imread would decode: every page
            raise DataError(f"{source}: a stack of shape {' x '.join(map(str, shape))}; give one 2D image per file")
        if decoded > width * height * MAX_CHANNELS * 4:  # deeper than 32 bits per sample
            raise ImageTooLarge(f"{source}: {decoded} bytes once decoded for {width} x {height} pixels")
        return width, height
    try:
        with Image.open(io.BytesIO(data), formats=list(formats)) as picture:
            return picture.size
    except UnidentifiedImageError:
        raise DataError(f"{source}: not an image in a format this accepts ({', '.join(formats)})") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{source}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{source}: unreadable image header ({exc})") from None


def read_raw_label(path_or_uri: str, color: bool = False) -> np.ndarray:
    return raw_label_array(decode(read_bytes(path_or_uri), path_or_uri), path_or_uri, color)


def read_label(path_or_uri: str, meta: DatasetMeta) -> np.ndarray:
    """H x W uint8 class ids with IGNORE, after the dataset's label mode."""
    return meta.to_class_ids(read_raw_label(path_or_uri, meta.label_mode == "color"), path_or_uri)


def to_channels(image: np.ndarray, channels: int, source: str = "image") -> np.ndarray:
    """Make a grey image RGB or an RGB image grey, for sets that mix both; other counts cannot be converted."""
    if image.shape[2] == channels:
        return image
    if image.shape[2] == 1 and channels == 3:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 3 and channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    raise DataError(f"{source}: {image.shape[2]} channel(s), but the model takes {channels}; give images with "
                    f"{channels} channel(s)")
