"""Reading through pyarrow.fs, so a dataset on object storage (s3://, gs://) is a new URI, not a rewrite.

Plain paths go to the local filesystem; anything with a scheme goes to `pyarrow.fs.FileSystem.from_uri`,
cached per bucket/host so listing and reading thousands of files do not re-create clients.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from functools import lru_cache
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import pyarrow.fs as pafs
from PIL import Image, UnidentifiedImageError

from segdata.meta import DataError, DatasetMeta

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_LOCAL = pafs.LocalFileSystem()
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


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


def mode_channels(mode: str) -> int:
    """Channels `read_image` returns for a Pillow mode: grey stays 1, everything else becomes RGB."""
    return 1 if mode in _GREY_MODES else 3


def image_array(picture: Image.Image) -> np.ndarray:
    """H x W x C uint8 with C = 1 (grey) or 3 (RGB; palette, alpha and CMYK images are converted)."""
    if mode_channels(picture.mode) == 3:
        rgb = picture if picture.mode == "RGB" else picture.convert("RGB")
        return np.asarray(rgb)
    if picture.mode.startswith("I;16"):
        grey = (np.asarray(picture).astype(np.uint16) >> 8).astype(np.uint8)
    else:
        grey = np.asarray(picture if picture.mode == "L" else picture.convert("L"))
    return grey[:, :, None]


def raw_label_array(picture: Image.Image, source: str) -> np.ndarray:
    """The stored label values as H x W uint8 (palette PNGs give their indices), before any label mode."""
    if picture.mode in ("L", "P"):
        return np.asarray(picture)
    if picture.mode in ("1", "LA"):
        return np.asarray(picture.convert("L"))
    if picture.mode.startswith("I") or picture.mode == "F":
        values = np.asarray(picture)
        if values.min() < 0 or values.max() > 255 or not np.array_equal(values, np.round(values)):
            raise DataError(f"{source}: label values outside 0..255; labels hold class ids "
                            "(at most 255 classes)")
        return values.astype(np.uint8)
    rgb = np.asarray(picture.convert("RGB"))
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise DataError(f"{source}: a colour label image; labels must be grey or palette PNGs holding "
                        "class ids")
    return np.ascontiguousarray(rgb[..., 0])


def read_image(path_or_uri: str) -> np.ndarray:
    """H x W x C uint8, C = 1 for grey and 3 for RGB."""
    return image_array(decode(read_bytes(path_or_uri), path_or_uri))


def read_raw_label(path_or_uri: str) -> np.ndarray:
    return raw_label_array(decode(read_bytes(path_or_uri), path_or_uri), path_or_uri)


def read_label(path_or_uri: str, meta: DatasetMeta) -> np.ndarray:
    """H x W uint8 class ids with IGNORE, after the dataset's label mode."""
    return meta.label_lut()[read_raw_label(path_or_uri)]


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Make a grey image RGB or an RGB image grey, for sets that mix both."""
    if image.shape[2] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
