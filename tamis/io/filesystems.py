"""Beam's FileSystems, configured from the run's own Beam options, for every read and write.

Beam hands a pipeline's options to ``FileSystems`` only when a pipeline is built (and, on a
worker, when the SDK harness starts). tamis reads before that: the targets, the pool's sizes,
the run folder's plan. Without the options Beam's S3 filesystem has no endpoint or credentials
("Must provide one of client or options"), and a reader that goes through pyarrow's or fsspec's
own S3 client would talk to the default cloud endpoint instead of the one the user named.
So every command calls :func:`use_beam_options` first, and readers open files here, never by
path through another library.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

from ..errors import StorageError

# Set once a command has handed its options over; a later reader without options keeps them.
_configured = False


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

    if options is None and _configured:
        return
    FileSystems.set_options(PipelineOptions(beam_option_args(options)))
    _configured = True


def open_read(path: str) -> BinaryIO:
    """A seekable binary stream of ``path`` on any Beam filesystem, bytes as stored (no decompression)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    use_beam_options()
    try:
        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception as e:  # BeamIOError wraps the store's own refusal (no credentials, no bucket)
        raise StorageError(f"cannot read {path}: {_reason(e)}") from e


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    use_beam_options()
    try:
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(data)
    except Exception as e:
        raise StorageError(f"cannot write {path}: {_reason(e)}") from e


def read_parquet(path: str, columns: list[str] | None = None):
    """A Parquet file as a pyarrow Table, read through Beam's filesystems (pyarrow seeks the stream
    for the footer and the columns it needs)."""
    import pyarrow.parquet as pq

    with open_read(path) as f:
        return pq.read_table(f, columns=columns)


def match(pattern: str) -> list[str]:
    """Paths that match a Beam glob, sorted."""
    from apache_beam.io.filesystems import FileSystems

    use_beam_options()
    try:
        return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
    except Exception as e:
        raise StorageError(f"cannot list {pattern}: {_reason(e)}") from e


def _reason(error: Exception) -> str:
    """The innermost message of a Beam IO error (Beam nests the store's own exception in a dict)."""
    inner = getattr(error, "exception_details", None)
    if isinstance(inner, dict) and inner:
        error = next(iter(inner.values()))
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
