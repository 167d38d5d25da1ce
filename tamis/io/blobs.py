"""Whole files on any filesystem Beam knows (local paths, ``gs://``, ``s3://``): what the model
layer and the selectors keep outside a run's shards (centroids, feature arrays, response files,
copies of remote models). Reads and writes are whole-file; a write lands under a temporary name
and is renamed into place, so a reader never sees half a file.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import runfolder


def _fs():
    """Beam's filesystems, imported on first use: importing tamis.io stays cheap."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def is_remote(path: str) -> bool:
    """True for a URI on a filesystem other than this machine's disk (gs://, s3://, hdfs://)."""
    return "://" in path and not path.startswith("file://")


def exists(path: str) -> bool:
    return runfolder.exists(path)


def read_bytes(path: str, raw: bool = False) -> bytes:
    """The file's bytes; a name ending in a compression suffix (.gz, ...) is decompressed unless ``raw``."""
    from apache_beam.io.filesystem import CompressionTypes

    kind = CompressionTypes.UNCOMPRESSED if raw else CompressionTypes.AUTO
    with _fs().open(path, compression_type=kind) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a unique temporary name and one rename (parents created)."""
    runfolder.write_bytes(path, data)


def list_files(uri: str) -> list[tuple[str, int, float]]:
    """(path, size, modification time) of every file under a folder, or of the one file at ``uri``,
    sorted by path."""
    FileSystems = _fs()
    base = uri.rstrip("/")
    found = [m for r in FileSystems.match([base + "/**"]) for m in r.metadata_list]
    if not found:
        found = [m for r in FileSystems.match([base]) for m in r.metadata_list]
    return sorted(((m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in found), key=lambda t: t[0])


def copy_to_local(path: str, dest: str | os.PathLike) -> None:
    """Stream one file to a local path, in blocks (models can be large)."""
    from apache_beam.io.filesystem import CompressionTypes

    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    with _fs().open(path, compression_type=CompressionTypes.UNCOMPRESSED) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
