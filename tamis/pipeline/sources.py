"""Reading pool and target files: JSONL, JSONL.gz and Parquet, on any Beam filesystem.

Files are read as raw lines (bytes), so a bad line can be rejected with its own bytes and
reason instead of failing the read. ``read_records`` is the plain-Python path for small inputs
(target sets, proxy training slices); the pipeline reads through ``iter_raw`` in its workers.
"""
from __future__ import annotations

from collections.abc import Iterator

from ..errors import InputError
from ..io.files import Damage, count_lines, expand, file_format, iter_items
from ..schemas.records import (RecordError, escape_raw, load_json, parse_line, parse_record, parse_target,
                               to_json_text)

__all__ = ["Damage", "count_lines", "expand", "file_format", "iter_raw", "parse_raw", "raw_text", "read_records",
           "read_targets"]

FORMATS = ("jsonl", "parquet")


def iter_raw(path: str) -> Iterator[tuple[int, bytes | dict | Damage]]:
    """(line number from 1, raw line bytes) for JSONL, (row number, row dict) for Parquet, and a
    (number, Damage) item where a file is damaged (see :mod:`tamis.io.files`). Blank lines are
    not records: they are skipped, and their numbers with them."""
    for number, raw in iter_items(path):
        if isinstance(raw, bytes):
            raw = raw.rstrip(b"\r")
            if not raw.strip():
                continue
        yield number, raw


def parse_raw(raw: bytes | dict | Damage) -> dict:
    """A record from a raw JSONL line or a Parquet row dict; raises RecordError."""
    if isinstance(raw, Damage):
        raise RecordError(raw.reason)
    if isinstance(raw, dict):
        return parse_record(raw)
    return parse_line(raw)


def raw_text(raw: bytes | dict | Damage) -> str:
    """The raw input as a string for the rejects (bad bytes and lone surrogates escaped)."""
    if isinstance(raw, Damage):
        return escape_raw(raw.raw)
    if isinstance(raw, dict):
        return escape_raw(to_json_text(raw, strict=False))
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
                    if isinstance(raw, Damage):
                        raise RecordError(raw.reason)
                    obj = raw if isinstance(raw, dict) else load_json(raw)
                    examples.append(parse_target(obj))
                except RecordError as e:
                    raise InputError(f"target {task!r}, {path}:{lineno}: {e}") from None
        if not examples:
            raise InputError(f"target {task!r} has no examples ({pattern})")
        out[task] = examples
    return out
