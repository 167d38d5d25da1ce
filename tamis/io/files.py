"""Reading input files on any Beam filesystem: which files a ``--pool`` names, and their lines.

Compressed files are decompressed here, with Python's zlib (and zstandard), not by Beam's
``CompressedFile``: that one ends a truncated gzip quietly (a writer that died after line 120
reads as a 120-line file) and fails with a bare ``zlib.error`` on trailing data. Here every
damaged stream (truncated, bad header, corrupt data, trailing bytes) ends its file's lines with
one :class:`Damage` item that names the file and the line after which it was found: the
pipeline records it as a reject row, so ``input == accepted + rejected`` accounts for it.

``count_lines`` / ``scan`` (planning) and ``iter_lines`` (reading) walk the same decompressed
blocks, so they always agree on how many numbered items a file holds; ``scan`` can hash the
stored bytes in that same read. A line over the record limit is never held whole. Parquet is
read row group by row group: a group that cannot be decoded is one Damage item, not a failed run.
"""
from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import InputError
from .filesystems import _fs, match, open_read, storage_error
from ..schemas.records import MAX_RECORD_BYTES

GLOB_CHARS = frozenset("*?[")
# Compressed bytes fed to a decompressor at a time, and the most output taken from one call.
READ_BYTES = 1 << 16
BLOCK_BYTES = 1 << 22
ZSTD_FEED_BYTES = 1 << 13
# A damage row keeps at most this much of what could not be read (the reason gives the size).
DAMAGE_RAW_BYTES = 4096

_JSONL = (".jsonl", ".json", ".ndjson")
_COMPRESSION = {".gz": "gzip", ".zst": "zstd"}
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Damage:
    """What could not be read from a file: one reject row, with its reason.

    ``raw`` is the cut-off last line when a stream ends mid-line, else the first bytes that
    could not be decoded; ``id`` is set when a row (a Parquet row) had a readable id.
    """

    reason: str
    raw: bytes = b""
    id: str | None = None


def has_glob(path: str) -> bool:
    return any(c in GLOB_CHARS for c in path)


def file_format(path: str) -> str:
    """``jsonl`` or ``parquet``, from the name; an InputError for anything else."""
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    stem = lower[: -len(ext)] if (ext := _compression_suffix(lower)) else lower
    if stem.endswith(_JSONL):
        return "jsonl"
    raise InputError(f"{path}: unknown file type (expected .jsonl, .jsonl.gz, .jsonl.zst or .parquet)")


def _compression_suffix(lower: str) -> str | None:
    return next((ext for ext in _COMPRESSION if lower.endswith(ext)), None)


def compression(path: str) -> str | None:
    """``gzip``, ``zstd`` or None (plain), from the name."""
    ext = _compression_suffix(path.lower())
    return _COMPRESSION[ext] if ext else None


def exists(path: str) -> bool:
    """Beam's view of the path (local, gs://, s3://): a file or folder of that exact name."""
    try:
        return _fs(path).exists(path)
    except Exception as e:  # a filesystem that refuses (no credentials, no such bucket)
        raise storage_error("check", path, e) from e


def expand(patterns: list[str]) -> list[str]:
    """Pool paths to a de-duplicated file list, in the order given (each glob's matches sorted).

    A path is a glob only where it holds ``*``, ``?`` or ``[`` and no file of that exact name
    exists: an existing ``pool[1].jsonl`` is read as itself. Every other path is literal.
    """
    files: list[str] = []
    for pattern in patterns:
        if exists(pattern):
            if _is_dir(pattern):
                raise InputError(f"{pattern} is a folder: give its files, or a glob such as "
                                 f"{pattern.rstrip('/')}/*.jsonl")
            files.append(pattern)
        elif has_glob(pattern):
            matched = [p for p in match(pattern) if not _is_dir(p)]
            if not matched:
                raise InputError(f"no file matches {pattern!r}")
            files.extend(matched)
        else:
            raise InputError(f"no such file: {pattern}")
    seen: set[str] = set()
    out = [f for f in files if not (f in seen or seen.add(f))]
    for f in out:
        file_format(f)
    return out


def _is_dir(path: str) -> bool:
    return "://" not in path and os.path.isdir(path)


def open_raw(path: str):
    """The file's bytes as stored (no decompression), for reading."""
    return open_read(path)


# --- compressed streams ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Broken:
    """Damage found in the decompressed stream: ``what`` happened, ``detail`` says how."""

    what: str
    detail: str
    raw: bytes = b""
    complete: bool = False  # the stream before it ended properly: its last line is whole


_GZIP_HEADER_ERRORS = ("incorrect header check", "unknown compression method", "unknown header flags set",
                       "header crc mismatch", "invalid window size")


def _gzip_error(e: zlib.error) -> _Broken:
    msg = str(e).split(": ", 1)[-1]
    if any(h in msg for h in _GZIP_HEADER_ERRORS):
        return _Broken("bad gzip header", msg)
    if msg == "incorrect data check":
        msg = "incorrect data check (CRC mismatch)"
    return _Broken("corrupt gzip data", msg)


class _Codec:
    """One compressed format: how a member starts, and a fresh decompressor per member."""

    def __init__(self, name: str):
        self.name = name
        if name == "zstd":
            try:
                import zstandard
            except ImportError:  # Beam depends on it, so this is rare
                raise InputError("reading .zst files needs the zstandard package (pip install zstandard)") from None
            self._zstd = zstandard

    def starts_member(self, data: bytes) -> bool | None:
        """Whether ``data`` begins a new member (None: too few bytes to tell)."""
        if self.name == "gzip":
            magic = (GZIP_MAGIC,)
        else:  # a frame, or a skippable frame (magic 0x184D2A50..5F, little-endian)
            if len(data) >= 4 and 0x50 <= data[0] <= 0x5F and data[1:4] == b"\x2a\x4d\x18":
                return True
            magic = (ZSTD_MAGIC,)
        need = max(len(m) for m in magic)
        if len(data) < need:
            return None if any(m.startswith(data) for m in magic) else False
        return any(data.startswith(m) for m in magic)

    def decompressor(self):
        if self.name == "gzip":
            return zlib.decompressobj(wbits=31)
        return self._zstd.ZstdDecompressor().decompressobj()

    def feed(self, d, data: bytes) -> tuple[bytes, bytes]:
        """(output, input not yet consumed); raises _DamageFound."""
        if self.name == "gzip":
            try:
                return d.decompress(data, BLOCK_BYTES), d.unconsumed_tail
            except zlib.error as e:
                raise _DamageFound(_gzip_error(e)) from None
        try:  # zstd has no output cap: feed small pieces, so a "bomb" cannot make one huge block
            return d.decompress(data[:ZSTD_FEED_BYTES]), data[ZSTD_FEED_BYTES:]
        except self._zstd.ZstdError as e:
            msg = str(e).split(": ", 1)[-1]
            what = "bad zstd header" if "frame descriptor" in msg or "header" in msg else "corrupt zstd data"
            raise _DamageFound(_Broken(what, msg)) from None

    def not_this_format(self) -> _Broken:
        magic = "gzip" if self.name == "gzip" else "zstd"
        return _Broken(f"not {magic} data", f"it does not begin with the {magic} magic bytes (a plain file named "
                       f".{'gz' if self.name == 'gzip' else 'zst'}?)")


class _DamageFound(Exception):
    def __init__(self, broken: _Broken):
        self.broken = broken


def _decompressed_blocks(f, codec: _Codec) -> Iterator[bytes | _Broken]:
    """Decompressed blocks of a (possibly multi-member) stream; a _Broken item ends it."""
    d = None  # the current member's decompressor; None between members
    pending = b""  # compressed bytes read but not yet fed
    at_end = started = False
    while True:
        if not pending and not at_end:
            pending = f.read(READ_BYTES)
            at_end = not pending
        if d is None:  # between members, or at the start
            if started and codec.name == "gzip":
                pending = pending.lstrip(b"\0")  # zero padding after a member: gzip(1) ignores it too
            if not pending:
                if at_end:
                    if not started:  # even an empty stream has a header: a 0-byte file was cut off
                        yield _Broken(f"truncated {codec.name}", f"the file is empty (no {codec.name} header)")
                    return
                continue
            starts = codec.starts_member(pending)
            if starts is None:  # too few bytes to tell
                more = b"" if at_end else f.read(READ_BYTES)
                if more:
                    pending += more
                    continue
                at_end, starts = True, False
            if not starts:
                yield _trailing(codec, pending, f) if started else _with_raw(codec.not_this_format(), pending)
                return
            d, started = codec.decompressor(), True
        if not pending:
            if at_end:
                break
            continue
        try:
            out, pending = codec.feed(d, pending)
        except _DamageFound as e:
            yield _with_raw(e.broken, pending)
            return
        if out:
            yield out
        if d.eof:  # the member ended inside what was fed: the rest starts the next member
            pending, d = d.unused_data + pending, None
    if codec.name == "gzip":
        try:
            out = d.flush()
        except zlib.error as e:
            yield _gzip_error(e)
            return
        if out:
            yield out
    if not d.eof:
        yield _Broken(f"truncated {codec.name}", "the file ends inside the compressed stream (no end-of-stream marker)")


def _with_raw(broken: _Broken, data: bytes) -> _Broken:
    return _Broken(broken.what, broken.detail, data[:DAMAGE_RAW_BYTES], broken.complete)


def _trailing(codec: _Codec, pending: bytes, f) -> _Broken:
    size = len(pending) + sum(len(b) for b in iter(lambda: f.read(READ_BYTES), b""))
    return _Broken("trailing data", f"{size} bytes after the end of the {codec.name} stream",
                   pending[:DAMAGE_RAW_BYTES], complete=True)


def iter_blocks(path: str, _reader=None) -> Iterator[bytes | _Broken]:
    """The file's decompressed bytes in blocks; a damaged stream ends with one _Broken item."""
    codec_name = compression(path)
    with open_raw(path) as raw:
        f = _reader(raw) if _reader else raw
        if codec_name is None:
            yield from iter(lambda: f.read(BLOCK_BYTES), b"")
            return
        yield from _decompressed_blocks(f, _Codec(codec_name))
        if _reader:
            for _ in iter(lambda: f.read(BLOCK_BYTES), b""):  # the bytes after a damage, for the digest
                pass


def _text_blocks(path: str, _reader=None) -> Iterator[bytes | _Broken]:
    """iter_blocks without a leading UTF-8 byte-order mark (Windows editors write one): it is
    not part of line 1."""
    first = True
    for block in iter_blocks(path, _reader):
        if first and isinstance(block, bytes):
            first = False
            if block.startswith(UTF8_BOM):
                block = block[len(UTF8_BOM):]
                if not block:
                    continue
        yield block


def _damage(path: str, broken: _Broken, lines: int, tail: bytes) -> Damage:
    where = f"after line {lines} of {path}" if lines else f"at the start of {path}"
    return Damage(f"{broken.what} {where}: {broken.detail}", (tail or broken.raw)[:DAMAGE_RAW_BYTES])


def iter_lines(path: str, max_line: int | None = None) -> Iterator[tuple[int, bytes | Damage]]:
    """(line number from 1, the line without its newline) for every physical line of a JSONL
    file, blank ones included. A damaged stream ends with (next number, Damage): the bytes after
    its last newline are not a line but part of the damage (a line cut off mid-way).

    A line longer than ``max_line`` bytes (the record limit) is not held in memory: it is a
    Damage item with its size and first bytes, so a file without newlines cannot exhaust a worker.
    """
    max_line = MAX_RECORD_BYTES if max_line is None else max_line
    lineno, tail = 0, b""
    over = 0  # bytes of the current, too long line dropped after the head kept in ``tail``
    for block in _text_blocks(path):
        if isinstance(block, _Broken):
            if block.complete and (tail or over):  # the stream's last line, whole but without a newline
                lineno += 1
                yield lineno, _line(tail, over, max_line)
                tail, over = b"", 0
            yield lineno + 1, _damage(path, block, lineno, tail)
            return
        if over:
            end = block.find(b"\n")
            if end < 0:
                over += len(block)
                continue
            lineno += 1
            yield lineno, _line(tail, over + end, max_line)
            tail, over, block = b"", 0, block[end + 1:]
        parts = (tail + block).split(b"\n") if tail else block.split(b"\n")
        tail = parts.pop()
        for line in parts:
            lineno += 1
            if len(line) > max_line:
                line = _line(line[:DAMAGE_RAW_BYTES], len(line) - DAMAGE_RAW_BYTES, max_line)
            yield lineno, line
        if len(tail) > max_line:
            tail, over = tail[:DAMAGE_RAW_BYTES], len(tail) - DAMAGE_RAW_BYTES
    if tail or over:
        yield lineno + 1, _line(tail, over, max_line)


def _line(head: bytes, dropped: int, max_line: int) -> bytes | Damage:
    if not dropped:
        return head
    return Damage(f"record is {len(head) + dropped} bytes, over the {max_line}-byte limit", head)


@dataclass(frozen=True)
class FileScan:
    """What planning needs of an input file, from one read: its numbered items and, when asked,
    the size and SHA-256 of its bytes as stored (a resume key that covers the content)."""

    path: str
    lines: int
    size: int | None = None
    sha256: str | None = None


class _Digesting:
    """A file reader that hashes and counts what passes through it."""

    def __init__(self, f):
        import hashlib

        self.f, self.hash, self.size = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data


def scan(path: str, digest: bool = False) -> FileScan:
    """Count a file's items (see ``count_lines``), and with ``digest`` hash its stored bytes in the
    same read (a Parquet file is then read whole; without it only its footer is read)."""
    if file_format(path) == "parquet":
        try:
            with parquet_file(path) as pf:
                lines = pf.metadata.num_rows
        except _ParquetUnreadable:
            lines = 1
        if not digest:
            return FileScan(path, lines)
        with open_raw(path) as raw:
            f = _Digesting(raw)
            for _ in iter(lambda: f.read(BLOCK_BYTES), b""):
                pass
        return FileScan(path, lines, f.size, f.hash.hexdigest())
    reader: list[_Digesting] = []

    def wrap(raw):
        reader.append(_Digesting(raw))
        return reader[0]

    n, last, lines = 0, b"\n", None
    for block in _text_blocks(path, wrap if digest else None):
        if isinstance(block, _Broken):
            lines = n + (2 if block.complete and last != b"\n" else 1)
            continue  # the reader drains the rest of the file for the digest
        n += block.count(b"\n")
        last = block[-1:]
    if lines is None:
        lines = n + (0 if last == b"\n" else 1)
    if not digest:
        return FileScan(path, lines)
    return FileScan(path, lines, reader[0].size, reader[0].hash.hexdigest())


def count_lines(path: str) -> int:
    """How many numbered items ``iter_lines`` (or ``iter_rows``) yields: physical lines (a last
    line without newline counts), plus one for a damaged stream's Damage; or Parquet rows."""
    return scan(path).lines


# --- Parquet -----------------------------------------------------------------------------------

class _ParquetUnreadable(Exception):
    pass


@contextmanager
def parquet_file(path: str):
    """An open ``pyarrow.parquet.ParquetFile`` (only the footer is read to open it);
    _ParquetUnreadable when the bytes are not Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_raw(path) as f:
        source = f if f.seekable() else io.BytesIO(f.read())
        try:
            pf = pq.ParquetFile(source)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise _ParquetUnreadable(_first_line(e)) from None
        yield pf


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def iter_rows(path: str, batch_rows: int = 1024) -> Iterator[tuple[int, dict | Damage]]:
    """(row number from 1, row as a dict) for a Parquet file.

    A row holding a value Python cannot represent (a timestamp past year 9999) is one Damage
    item naming the column. A row group that cannot be decoded gives one Damage item for its
    unread rows, and reading goes on with the next group (row numbers stay those of the file).
    A file that is not Parquet is one Damage item.
    """
    import pyarrow as pa

    try:
        with parquet_file(path) as pf:
            start = 0  # rows before this row group
            for group in range(pf.num_row_groups):
                size = pf.metadata.row_group(group).num_rows
                n = start
                try:
                    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group]):
                        try:
                            rows = batch.to_pylist()
                        except (pa.ArrowException, ValueError, OverflowError):
                            rows = [_row_or_damage(batch, i, path, n + i + 1) for i in range(batch.num_rows)]
                        for row in rows:
                            n += 1
                            yield n, row
                except (pa.ArrowException, OSError) as e:
                    yield n + 1, Damage(f"corrupt Parquet data in row group {group} of {path}: {_first_line(e)} "
                                        f"(rows {n + 1} to {start + size}, {start + size - n} rows, could not be read)")
                start += size
    except _ParquetUnreadable as e:
        yield 1, Damage(f"unreadable Parquet file {path}: {e}")


def _row_or_damage(batch, i: int, path: str, rowno: int) -> dict | Damage:
    row, bad = {}, []
    for name, column in zip(batch.schema.names, batch.columns):
        try:
            row[name] = column[i].as_py()
        except (ValueError, OverflowError, TypeError) as e:
            bad.append(f"column {name!r}: {e}")
    if not bad:
        return row
    rid = row.get("id") if isinstance(row.get("id"), str) else None
    raw = repr({k: v for k, v in row.items()}).encode("utf-8", "backslashreplace")
    return Damage(f"row {rowno} of {path} holds a value Python cannot represent ({'; '.join(bad)})",
                  raw[:DAMAGE_RAW_BYTES], rid)


def iter_items(path: str) -> Iterator[tuple[int, bytes | dict | Damage]]:
    """Every numbered item of an input file: JSONL lines (blank ones included) or Parquet rows."""
    return iter_rows(path) if file_format(path) == "parquet" else iter_lines(path)
