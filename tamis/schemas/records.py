"""Input records: what a pool line or a target example must look like.

A record is a plain dict ``{"id", "messages", "text", "extra"}``:
``messages`` (a list of ``{"role", "content", "extra"}``) or ``text`` is set, never both. Every
other input field is kept as JSON text in the record's ``extra``, and every key of a message
other than ``role`` and ``content`` (``name``, ``tool_calls``, ``weight``...) in that message's
``extra``, so the output schema stays fixed whatever the input holds and nothing vanishes.

``extra`` is always strict JSON (RFC 8259), by these rules (see :func:`json_value`):
NaN and +-Infinity are written as ``null``; a date or time as its ISO 8601 string; a duration
as seconds (a number); a decimal as its exact string; bytes as base64 text. A string or key
holding a lone surrogate is not Unicode and cannot be stored: its row is rejected, naming the
field. A JSON line that repeats a key is rejected too (a JSON reader would keep only one value).

Parsing never raises anything but :class:`RecordError`, whose message is the one-line reason
written to the rejects.
"""
from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import json
import math
from typing import Any

CONTENT_FIELDS = ("messages", "text")
MESSAGE_FIELDS = ("role", "content")  # a message's other keys go to its own "extra"
# Lines above this size are rejected before JSON parsing (a runaway line must not take a worker
# down). Long *content* below it is kept whole and truncated only when tokenized.
MAX_RECORD_BYTES = 8 * 1024 * 1024


class RecordError(ValueError):
    """A record that cannot be used; ``str(err)`` is the reason written to the rejects."""


def decode_line(raw: bytes) -> str:
    """Decode one UTF-8 line or raise RecordError naming the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"invalid UTF-8 at byte {e.start}") from None


def escape_raw(raw: bytes | str) -> str:
    """The raw line as a string for the rejects: undecodable bytes escaped as \\xNN."""
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass").decode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise RecordError(f"invalid JSON: duplicate key {ascii(key)[1:-1]!r} in one object")
    return obj


def load_json(raw: bytes) -> Any:
    """One JSON line, decoded; a repeated key in an object is an error, not a silent overwrite."""
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError(f"record is {len(raw)} bytes, over the {MAX_RECORD_BYTES}-byte limit")
    text = decode_line(raw)
    try:
        return json.loads(text, object_pairs_hook=_no_repeated_keys)
    except json.JSONDecodeError as e:
        raise RecordError(f"invalid JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise RecordError("invalid JSON: nested too deeply") from None


def parse_line(raw: bytes) -> dict:
    """Parse one JSONL line into a record (see :func:`parse_record`)."""
    return parse_record(load_json(raw))


class _Unstorable(Exception):
    """A value with no JSON form; ``path`` is filled in while unwinding."""

    def __init__(self, what: str):
        self.what = what
        self.path: list[str] = []


def _storable_str(value: str) -> str:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Unstorable("holds an unpaired surrogate (not valid Unicode)") from None
    return value


def json_value(value: Any, strict: bool = True) -> Any:
    """``value`` as plain JSON data, by the rules in the module docstring.

    With ``strict`` a lone surrogate raises _Unstorable; without it (for the rejects' raw text,
    which is escaped afterwards) it is kept.
    """
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return _storable_str(value) if strict else value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = k if isinstance(k, str) else str(k)
            try:
                if strict:
                    try:
                        _storable_str(key)
                    except _Unstorable as e:
                        e.what = "has a name that " + e.what
                        raise
                out[key] = json_value(v, strict)
            except _Unstorable as e:
                e.path.insert(0, ascii(key)[1:-1])
                raise
        return out
    if isinstance(value, (list, tuple)):
        out_list = []
        for i, v in enumerate(value):
            try:
                out_list.append(json_value(v, strict))
            except _Unstorable as e:
                e.path.insert(0, f"[{i}]")
                raise
        return out_list
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.timedelta):  # before isoformat: pandas' Timedelta has one too
        return value.total_seconds()
    if isinstance(value, (dt.datetime, dt.date, dt.time)) or hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if hasattr(value, "item"):  # a NumPy scalar
        return json_value(value.item(), strict)
    return str(value)


def to_json_text(value: Any, *, strict: bool = True, where: str = "extra field") -> str:
    """Strict JSON text for ``value`` (keys sorted); RecordError naming the field when it
    cannot be stored."""
    try:
        data = json_value(value, strict)
        return json.dumps(data, ensure_ascii=False, sort_keys=True, allow_nan=False)
    except _Unstorable as e:
        name = "".join(p if p.startswith("[") else f".{p}" for p in e.path).lstrip(".")
        raise RecordError(f"{where} '{name}' {e.what}" if name else f"{where} {e.what}") from None
    except RecursionError:
        raise RecordError(f"{where}s are nested too deeply to store") from None


def _check_text(value: Any, where: str) -> str:
    if isinstance(value, bytes):  # a Parquet binary column: text when it is UTF-8
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(f"{where} is binary, not UTF-8 text (bad byte at {e.start})") from None
    if not isinstance(value, str):
        raise RecordError(f"{where} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(f"{where} holds an unpaired surrogate (not valid Unicode)") from None
    return value


def parse_record(obj: Any, *, require_id: bool = True) -> dict:
    """Validate a decoded JSON object and return the record dict, or raise RecordError."""
    if not isinstance(obj, dict):
        raise RecordError(f"record must be a JSON object, got {type(obj).__name__}")
    if require_id:
        if "id" not in obj or obj["id"] is None:
            raise RecordError("missing id")
        rid = obj["id"]
        if isinstance(rid, bytes):
            rid = _check_text(rid, "id")
        if not isinstance(rid, str):
            raise RecordError(f"id must be a string, got {type(rid).__name__}")
        if not rid.strip():
            raise RecordError("id is empty")
        _check_text(rid, "id")
    else:
        rid = obj.get("id")
        rid = None if rid is None else str(rid)
    has_messages = obj.get("messages") is not None
    has_text = obj.get("text") is not None
    if has_messages and has_text:
        raise RecordError("record has both messages and text; give one")
    if not has_messages and not has_text:
        raise RecordError("record has neither messages nor text")
    messages = text = None
    if has_text:
        text = _check_text(obj["text"], "text")
        if not text.strip():
            raise RecordError("text is empty")
    else:
        raw_messages = obj["messages"]
        if not isinstance(raw_messages, list):
            raise RecordError(f"messages must be a list, got {type(raw_messages).__name__}")
        if not raw_messages:
            raise RecordError("messages is empty")
        messages = []
        for i, m in enumerate(raw_messages):
            if not isinstance(m, dict):
                raise RecordError(f"messages[{i}] must be an object, got {type(m).__name__}")
            role = _check_text(m.get("role"), f"messages[{i}].role")
            content = _check_text(m.get("content"), f"messages[{i}].content")
            others = {k: v for k, v in m.items() if k not in MESSAGE_FIELDS}
            extra = to_json_text(others, where=f"messages[{i}] field") if others else None
            messages.append({"role": role, "content": content, "extra": extra})
        if not any(m["content"].strip() for m in messages):
            raise RecordError("messages have no content")
    rest = {k: v for k, v in obj.items() if k not in ("id", *CONTENT_FIELDS)}
    extra = to_json_text(rest) if rest else None
    return {"id": rid, "messages": messages, "text": text, "extra": extra}


def content_key(record: dict) -> str:
    """A hash of a record's content alone (not its id or extra fields).

    Two records with equal keys have exactly equal messages or text: this is what
    decontamination compares. A message's other keys (its ``extra``: a name, a weight, tool
    calls) are not content, so a pool row that repeats a target's turns still matches it.
    """
    if record.get("messages") is not None:
        payload = json.dumps([[m["role"], m["content"]] for m in record["messages"]], ensure_ascii=False)
    else:
        payload = "\x00text\x00" + record["text"]
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def record_to_json(record: dict) -> str:
    """The record back as one JSON line (its extra fields restored)."""
    obj = {"id": record["id"]}
    if record.get("messages") is not None:
        obj["messages"] = [{"role": m["role"], "content": m["content"], **json.loads(m.get("extra") or "{}")}
                           for m in record["messages"]]
    else:
        obj["text"] = record["text"]
    if record.get("extra"):
        obj.update(json.loads(record["extra"]))
    return json.dumps(obj, ensure_ascii=False)


def parse_target(obj: Any) -> dict:
    """A target example: a record whose id is optional, with an optional ``subtask``."""
    subtask = obj.get("subtask") if isinstance(obj, dict) else None
    if subtask is not None and not isinstance(subtask, str):
        raise RecordError(f"subtask must be a string, got {type(subtask).__name__}")
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k != "subtask"}
    record = parse_record(obj, require_id=False)
    record["subtask"] = subtask
    return record
