"""Reading pool and target files: JSONL, JSONL.gz and Parquet, on any Beam filesystem.

Files are read as raw lines (bytes), so a bad line can be rejected with its own bytes and
reason instead of failing the read. ``read_records`` is the plain-Python path for small inputs
(target sets, proxy training slices); the pipeline reads through ``iter_raw`` in its workers.
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterator

from ..schemas.records import RecordError, escape_raw, parse_line, parse_record, parse_target

FORMATS = ("jsonl", "parquet")


def file_format(path: str) -> str:
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz", ".jsonl.zst")):
        return "jsonl"
    raise ValueError(f"{path}: unknown file type (expected .jsonl, .jsonl.gz or .parquet)")


def expand(patterns: list[str]) -> list[str]:
    """Paths and globs (local or any Beam filesystem) to a sorted, de-duplicated file list."""
    from apache_beam.io.filesystems import FileSystems

    files: list[str] = []
    for pattern in patterns:
        matched = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
        if not matched:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        files.extend(sorted(matched))
    seen: set[str] = set()
    out = [f for f in files if not (f in seen or seen.add(f))]
    for f in out:
        file_format(f)
    return out


def _open(path: str):
    from apache_beam.io.filesystems import CompressionTypes, FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.AUTO)


def iter_raw(path: str) -> Iterator[tuple[int, bytes | dict]]:
    """(line number from 1, raw line bytes) for JSONL; (row number, row dict) for Parquet."""
    if file_format(path) == "parquet":
        import pyarrow.parquet as pq

        with _open(path) as f:
            table = pq.read_table(io.BytesIO(f.read()))
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
        return
    with _open(path) as f:
        i = 0
        while True:
            line = f.readline()
            if not line:
                break
            i += 1
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield i, line


def parse_raw(raw: bytes | dict) -> dict:
    """A record from a raw JSONL line or a Parquet row dict; raises RecordError."""
    if isinstance(raw, dict):
        return parse_record(raw)
    return parse_line(raw)


def raw_text(raw: bytes | dict) -> str:
    """The raw input as a string for the rejects (bad bytes escaped)."""
    if isinstance(raw, dict):
        return json.dumps(raw, ensure_ascii=False, default=str)
    return escape_raw(raw)


def read_records(patterns: list[str] | str, *, strict: bool = False) -> Iterator[dict]:
    """Valid records from small inputs, in file order; bad lines are skipped (or raise if strict)."""
    for path in expand([patterns] if isinstance(patterns, str) else patterns):
        for lineno, raw in iter_raw(path):
            try:
                yield parse_raw(raw)
            except RecordError as e:
                if strict:
                    raise RecordError(f"{path}:{lineno}: {e}") from None


def read_targets(targets: dict[str, str]) -> dict[str, list[dict]]:
    """Task -> target examples. A bad target line is an error (targets are small and hand-made)."""
    out: dict[str, list[dict]] = {}
    for task, pattern in targets.items():
        examples = []
        for path in expand([pattern]):
            for lineno, raw in iter_raw(path):
                try:
                    obj = raw if isinstance(raw, dict) else json.loads(raw.decode("utf-8"))
                    examples.append(parse_target(obj))
                except (RecordError, ValueError) as e:
                    raise RecordError(f"target {task!r}, {path}:{lineno}: {e}") from None
        if not examples:
            raise RecordError(f"target {task!r} has no examples ({pattern})")
        out[task] = examples
    return out
