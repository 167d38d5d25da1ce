"""Work units: the pool cut into fixed chunks of lines, read and validated.

A chunk is ``shard_rows`` consecutive lines of one input file. Its index is fixed by the
input alone, so it names the output shard, lets a rerun skip finished chunks, and fixes
which rows are batched together (bit-for-bit repeatable scores on any runner).
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.metrics import Metrics

from ..io.files import Damage, count_lines
from ..schemas.records import RecordError, content_key, escape_raw
from .sources import iter_raw, parse_raw, raw_text

__all__ = ["Chunk", "InputFile", "ReadChunks", "ValidChunk", "ValidateChunk", "count_lines"]

NAMESPACE = "tamis"


@dataclass(frozen=True)
class InputFile:
    """One pool file in the plan: its position fixes its chunks' names."""

    index: int
    path: str
    lines: int  # physical lines (JSONL) or rows (Parquet), +1 for a damaged file: see count_lines
    chunk_rows: int

    @property
    def n_chunks(self) -> int:
        return max(1, -(-self.lines // self.chunk_rows))

    def chunk_name(self, k: int) -> str:
        return f"part-{self.index:04d}-{k:05d}"


@dataclass
class Chunk:
    """Raw lines of one chunk: (line number, bytes, Parquet row dict, or a file's Damage)."""

    name: str
    path: str
    items: list = field(default_factory=list)


@dataclass
class ValidChunk:
    """A validated chunk: accepted records in input order, and rejects with reasons."""

    name: str
    lines: int
    records: list[dict]
    matches_target: list[bool]
    rejects: list[dict]
    read_seconds: float = 0.0


class ReadChunks(beam.DoFn):
    """Read one input file sequentially and emit its unfinished chunks.

    Every planned chunk is emitted, an empty one too (a chunk of blank lines, an empty file, the
    rows after a damaged part of a file): each gets its shard, so a run always ends with the
    chunks it planned.
    """

    def __init__(self, done: frozenset[str]):
        self.done = done
        self.lines_read = Metrics.counter(NAMESPACE, "lines_read")

    def process(self, file: InputFile) -> Iterator[Chunk]:
        current: Chunk | None = None
        emitted: set[str] = set()
        for lineno, raw in iter_raw(file.path):
            k = (lineno - 1) // file.chunk_rows
            name = file.chunk_name(k)
            if current is None or current.name != name:
                if current is not None and current.name not in self.done:
                    emitted.add(current.name)
                    yield current
                current = Chunk(name, file.path)
            if name not in self.done:
                current.items.append((lineno, raw))
                self.lines_read.inc()
        if current is not None and current.name not in self.done:
            emitted.add(current.name)
            yield current
        for k in range(file.n_chunks):
            name = file.chunk_name(k)
            if name not in self.done and name not in emitted:
                yield Chunk(name, file.path)


class ValidateChunk(beam.DoFn):
    """Parse every line; bad ones become rejects with a reason, none are dropped.

    Duplicate ids *within* a chunk are rejected here; duplicates across chunks are found
    by the selection pass, which sees every id.
    """

    def __init__(self, target_keys: frozenset[str]):
        self.target_keys = target_keys
        self.rejected = Metrics.counter(NAMESPACE, "rejected")
        self.accepted = Metrics.counter(NAMESPACE, "accepted")

    def process(self, chunk: Chunk) -> Iterator[ValidChunk]:
        start = time.perf_counter()
        records, flags, rejects, seen = [], [], [], {}
        for lineno, raw in chunk.items:
            where = f"{chunk.path}:{lineno}"
            try:
                record = parse_raw(raw)
                if record["id"] in seen:
                    raise RecordError(f"duplicate id (first at line {seen[record['id']]})")
            except RecordError as e:
                rid = None
                if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                    rid = raw["id"]
                elif isinstance(raw, Damage):
                    rid = raw.id
                elif str(e).startswith("duplicate id"):
                    rid = record["id"]
                # Every string of a reject must be storable: an id or path with a lone surrogate too.
                rejects.append({"id": None if rid is None else escape_raw(rid), "raw": raw_text(raw),
                                "reason": escape_raw(str(e)), "source": escape_raw(where)})
                continue
            seen[record["id"]] = lineno
            records.append(record)
            flags.append(content_key(record) in self.target_keys)
        self.rejected.inc(len(rejects))
        self.accepted.inc(len(records))
        yield ValidChunk(chunk.name, len(chunk.items), records, flags, rejects, time.perf_counter() - start)
