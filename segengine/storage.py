"""Run storage as local folders or URIs (file://, s3://, gs://) through pyarrow.fs, the layer Ray Train uses.

Reading goes through the data layer's own functions (`segdata.files`: one implementation of reading a file or
listing a folder, whose errors name the file); this module adds what runs need besides: writing, sub-folders,
deleting, copying folders."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from segdata.files import is_uri, join, list_files, locate, read_bytes, read_text, write_atomically

__all__ = ["delete_dir", "download_dir", "exists", "filesystem", "is_dir", "is_uri", "join", "list_dirs", "list_files",
           "read_bytes", "read_text", "resolve", "upload_dir", "write_bytes"]


def resolve(path: str) -> str:
    """Absolute path for local folders (Ray workers run in their own working directory); URIs unchanged."""
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local folder or URI; the data layer's, so both cache the same way."""
    return locate(path if is_uri(path) else resolve(path))


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file; local files go through a temporary name and a rename so readers never see half."""
    if not is_uri(path):
        write_atomically(resolve(path), data)
        return
    fs, p = filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def _entries(path: str, kind: pafs.FileType) -> list[str]:
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    return sorted(i.base_name for i in infos if i.type == kind)


def list_dirs(path: str) -> list[str]:
    """Names of the sub-folders of a folder (empty if it does not exist)."""
    return _entries(path, pafs.FileType.Directory)


def is_dir(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def delete_file(path: str) -> None:
    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.File:
        fs.delete_file(p)


def delete_dir(path: str) -> None:
    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)


def upload_dir(local_dir: str, path: str) -> None:
    """Copy a local folder's files into a storage folder (used for run artefacts on object storage)."""
    fs, p = filesystem(path)
    fs.create_dir(p, recursive=True)
    pafs.copy_files(local_dir, p, destination_filesystem=fs)


def download_dir(path: str, local_dir: str) -> str:
    fs, p = filesystem(path)
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(p, local_dir, source_filesystem=fs)
    return local_dir
