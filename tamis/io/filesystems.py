"""Paths and bytes on any Beam filesystem: the one place tamis talks to Beam's ``FileSystems``.

Local paths, ``gs://``, ``s3://`` and every other scheme Beam knows behave alike here:

- A path is literal. ``*``, ``?`` and ``[`` are plain characters unless a caller asks for a glob
  (:func:`match`); Beam's ``match`` and, on local and ``gs://`` paths, its ``delete`` treat them
  as patterns, so nothing here hands them a path unescaped.
- Every write is atomic: a unique temporary ``*.inprogress`` name beside the file, then one rename.
- A store's refusal (no credentials, no bucket, disk full, read-only) becomes one
  :class:`~tamis.errors.StorageError` or :class:`~tamis.errors.RunFolderError` line.

Beam hands a pipeline's options to ``FileSystems`` only when a pipeline is built (and, on a
worker, when the SDK harness starts). tamis reads before that: the targets, the pool's sizes,
the run folder's plan. Without the options Beam's S3 filesystem has no endpoint or credentials
("Must provide one of client or options"), and a reader that went through pyarrow's or fsspec's
own S3 client would talk to the default cloud endpoint instead of the one the user named. So
every command calls :func:`use_beam_options` first, and every read and write goes through here.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import RunFolderError, StorageError

TEMP_SUFFIX = ".inprogress"
GLOB_CHARS = "*?["
# Filesystems whose delete takes its argument literally; the others (local, gs://) match it.
LITERAL_DELETE_SCHEMES = {"s3", "azfs", "hdfs"}

# Set once a command has handed its options over; a later reader without options keeps them.
_configured = False


# -- Beam options ---------------------------------------------------------------------------------

def beam_option_args(options: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """Beam arguments from ``--name=value`` strings or a mapping ``{"s3_endpoint_url": ...}``."""
    if options is None:
        return []
    if isinstance(options, Mapping):
        args = []
        for name, value in options.items():
            flag = "--" + str(name).lstrip("-")
            if isinstance(value, bool):
                args += [flag] if value else []
            elif isinstance(value, (list, tuple)):
                args += [f"{flag}={v}" for v in value]
            else:
                args.append(f"{flag}={value}")
        return args
    if isinstance(options, str):
        return [options]
    return list(options)


def use_beam_options(options: Mapping[str, Any] | Sequence[str] | None = None) -> None:
    """Hand Beam options (``--s3_endpoint_url``, ``--s3_access_key_id``, ``--project``, ...) to
    ``FileSystems`` before the first read.

    ``None`` keeps what an earlier call set (``tamis.select`` then ``tamis.load_selected`` in one
    process), and otherwise sets empty options, so ``s3://`` falls back to boto3's own chain
    (environment, ``~/.aws``) rather than failing with Beam's "Must provide one of client or options".
    """
    global _configured
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    if options is None and (_configured or FileSystems._pipeline_options is not None):
        return  # set by an earlier call, or by Beam itself (a worker's SDK harness sets the job's options)
    FileSystems.set_options(PipelineOptions(beam_option_args(options)))
    _configured = True


def _fs(*paths: str):
    """Beam's FileSystems, configured; imported on first use so importing tamis.io stays cheap.
    Before an ``s3://`` path is handed over, boto3 must find credentials (:func:`_s3_credentials`)."""
    from apache_beam.io.filesystems import FileSystems

    use_beam_options()
    if any(p.startswith("s3://") for p in paths):
        _s3_credentials(FileSystems._pipeline_options)
    return FileSystems


_s3_checked: list = []  # the options object whose credentials were found (checked once per options)


def _s3_credentials(options) -> None:
    """Raise botocore's NoCredentialsError at once when boto3 finds no credentials for Beam's S3
    client: neither ``--s3_access_key_id`` nor its own chain (environment, ``~/.aws``, an instance
    or container role). Beam retries every refused S3 call with exponential backoff, about nine
    minutes in all, and no retry can make credentials appear."""
    if _s3_checked and _s3_checked[0] is options:
        return
    try:
        import boto3
        from apache_beam.options.pipeline_options import S3Options
    except ImportError:  # Beam itself says that its AWS dependencies are missing
        return
    given = options.view_as(S3Options).s3_access_key_id if options is not None else None
    if not given and boto3.session.Session().get_credentials() is None:
        from botocore.exceptions import NoCredentialsError

        raise NoCredentialsError()
    _s3_checked[:] = [options]


def _uncompressed():
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.UNCOMPRESSED


# -- errors ---------------------------------------------------------------------------------------

def reason(error: BaseException) -> str:
    """The innermost message of a Beam IO error (Beam nests the store's own exception in a dict)."""
    inner = getattr(error, "exception_details", None)
    if isinstance(inner, dict) and inner:
        error = next(iter(inner.values()))
    text = getattr(error, "strerror", None) or str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def storage_error(what: str, path: str, e: BaseException) -> Exception:
    """A one-line user error for a refused read or write of ``path``."""
    code = getattr(e, "errno", None)
    if code == errno.ENOSPC:
        return StorageError(f"disk full writing {path}: free some space and rerun the same command "
                            "(finished work is kept)")
    if code == errno.EROFS:
        return RunFolderError(f"read-only file system: {path} (choose a writable folder)")
    if code in (errno.EACCES, errno.EPERM):
        return RunFolderError(f"cannot {what} {path}: {reason(e)}")
    if code in (errno.ENOTDIR, errno.EEXIST):
        return RunFolderError(f"{path}: not a folder (a file is in its path)")
    return StorageError(f"cannot {what} {path}: {reason(e)}")


# -- paths ----------------------------------------------------------------------------------------

def is_remote(path: str) -> bool:
    """True for a URI (gs://, s3://, hdfs://, file://): read and written through Beam's filesystems."""
    return "://" in path


def has_glob(path: str) -> bool:
    return any(c in path for c in GLOB_CHARS)


def glob_escape(path: str) -> str:
    """``path`` as a Beam match pattern that matches only itself (``[*]`` matches a literal ``*``)."""
    scheme, sep, rest = path.partition("://") if "://" in path else ("", "", path)
    return scheme + sep + "".join(f"[{c}]" if c in GLOB_CHARS else c for c in rest)


def match(pattern: str) -> list[str]:
    """Paths that match a Beam glob, sorted (a pattern, so escape literal parts with glob_escape)."""
    try:
        with warnings.catch_warnings():  # "[[]" compiles with a FutureWarning ("possible nested set")
            warnings.simplefilter("ignore", FutureWarning)
            results = _fs(pattern).match([pattern])
    except Exception as e:
        raise storage_error("list", pattern, e) from e
    return sorted(m.path for r in results for m in r.metadata_list)


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.lexists(path)
    try:
        return _fs(path).exists(path)
    except Exception as e:
        raise storage_error("read", path, e) from e


def list_files(uri: str) -> list[tuple[str, int, float]]:
    """(path, size, modification time) of every file under a folder, or of the one file at ``uri``,
    sorted by path."""
    base = glob_escape(uri.rstrip("/"))
    try:
        found = [m for r in _fs(uri).match([base + "/**"]) for m in r.metadata_list]
        if not found:
            found = [m for r in _fs(base).match([base]) for m in r.metadata_list]
    except Exception as e:
        raise storage_error("list", uri, e) from e
    return sorted(((m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in found), key=lambda t: t[0])


# -- bytes ----------------------------------------------------------------------------------------

def open_read(path: str, decompress: bool = False) -> BinaryIO:
    """A binary stream of ``path``: bytes as stored, or decompressed by the name's suffix (.gz, ...)."""
    if not is_remote(path) and not decompress:
        return open(path, "rb")
    from apache_beam.io.filesystem import CompressionTypes

    kind = CompressionTypes.AUTO if decompress else CompressionTypes.UNCOMPRESSED
    try:
        return _fs(path).open(path, compression_type=kind)
    except FileNotFoundError:
        raise
    except Exception as e:  # BeamIOError wraps the store's own refusal (no credentials, no bucket)
        raise storage_error("read", path, e) from e


def read_bytes(path: str, *, missing_ok: bool = False, decompress: bool = False) -> bytes | None:
    """The whole file; None when there is none and ``missing_ok``."""
    if missing_ok and not exists(path):
        return None
    try:
        with open_read(path, decompress) as f:
            return f.read()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Write ``path`` atomically: a unique temporary name beside it, then one rename."""
    _write_atomically(path, lambda f: f.write(data))


def copy_from_local(src: str | os.PathLike, dest: str) -> None:
    """Stream a local file to ``dest`` (any filesystem) in blocks, atomically as :func:`write_bytes`."""
    def fill(out):
        with open(src, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 22)

    _write_atomically(dest, fill)


def _write_atomically(path: str, fill) -> None:
    """``fill(file)`` writes the content to a temporary name beside ``path``, then one rename puts
    it in place: a reader never sees half a file, and a killed writer leaves only ``*.inprogress``."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}"
    if not is_remote(path):
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(tmp, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise storage_error("write to", path, e) from e
        return
    try:
        fs = _fs(path)
        with fs.create(tmp, compression_type=_uncompressed()) as f:
            fill(f)
        try:
            fs.rename([tmp], [path])  # gs:// and s3:// copy over an existing object
        except Exception:
            if not fs.exists(path):
                raise
            delete_files([path])  # a filesystem whose rename will not replace
            fs.rename([tmp], [path])
    except Exception as e:
        raise storage_error("write to", path, e) from e


def delete_files(paths: Iterable[str]) -> None:
    """Delete exactly these files (never a pattern)."""
    paths = list(paths)
    for p in paths:
        if not is_remote(p):
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
    remote = [p for p in paths if is_remote(p)]
    if remote:
        # GCS's delete (like the local one) matches its argument as a pattern; S3's, Azure's and
        # HDFS's take it literally. Any other filesystem is assumed to match, as Beam's base does.
        fs = _fs(*remote)
        fs.delete([p if fs.get_scheme(p) in LITERAL_DELETE_SCHEMES else glob_escape(p) for p in remote])


def copy_to_local(path: str, dest: str | os.PathLike) -> None:
    """Stream one file to a local path, in blocks (models can be large)."""
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    with open_read(path) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)


def file_digest(path: str, block: int = 1 << 22) -> dict:
    """What a file holds, for a resume key: its size and the sha256 of its bytes as stored.

    A content hash rather than the modification time: an edit that keeps the size and the mtime
    is still seen, a ``touch`` or a copy of the same bytes is not a change, and object stores
    report no mtime that survives a copy. Compressed files are hashed compressed (cheaper).
    """
    digest = hashlib.sha256()
    size = 0
    with open_read(path) as f:
        while True:
            data = f.read(block)
            if not data:
                break
            size += len(data)
            digest.update(data)
    return {"path": path, "bytes": size, "sha256": digest.hexdigest()}


# -- Parquet --------------------------------------------------------------------------------------

def read_parquet(path: str, columns: list[str] | None = None):
    """A Parquet file as a pyarrow Table, read through Beam's filesystems (pyarrow seeks the stream
    for the footer and the columns it needs)."""
    import pyarrow.parquet as pq

    with open_read(path) as f:
        return pq.read_table(f, columns=columns)


def read_parquet_metadata(path: str):
    """A Parquet file's footer, without reading its data."""
    import pyarrow.parquet as pq

    with open_read(path) as f:
        return pq.read_metadata(f)


# -- artifacts: local files a run's workers need, published where they can reach them -------------

def tree_digest(local: str | os.PathLike) -> tuple[str, int]:
    """(sha256, bytes) of a local file, or of a folder's files by relative name and content.

    It names a published artifact, so a worker that copies one can check that it got exactly
    what the launcher published.
    """
    root = Path(local)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    total = 0
    for path in files:
        h.update((path.name if path == root else str(path.relative_to(root))).encode("utf-8", "surrogateescape"))
        h.update(b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
                total += len(block)
        h.update(b"\0")
    return h.hexdigest(), total


def publish(local: str | os.PathLike, dest_root: str) -> dict:
    """Copy a local file or folder to ``dest_root/<sha16>/<name>`` (once: a published copy with the
    same digest is kept), and describe it: ``{"uri", "from", "sha256", "bytes"}``."""
    src = Path(local)
    digest, size = tree_digest(src)
    uri = f"{dest_root.rstrip('/')}/{digest[:16]}/{src.name}"
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    marker = f"{dest_root.rstrip('/')}/{digest[:16]}/.complete"
    if not exists(marker):
        for path in files:
            target = uri if path == src else f"{uri}/{path.relative_to(src).as_posix()}"
            copy_from_local(path, target)
        write_bytes(marker, digest.encode())
    return {"uri": uri, "from": str(src), "sha256": digest, "bytes": size}
