"""Input records: what a pool line or a target example must look like.

A record is a plain dict ``{"id", "messages", "text", "extra"}``:
``messages`` (a list of ``{"role", "content"}``) or ``text`` is set, never both; every other
input field is kept as JSON text in ``extra`` so the output schema stays fixed whatever the
input holds. Parsing never raises anything but :class:`RecordError`, whose message is the
one-line reason written to the rejects.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

CONTENT_FIELDS = ("messages", "text")
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


def parse_line(raw: bytes) -> dict:
    """Parse one JSONL line into a record (see :func:`parse_record`)."""
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError(f"record is {len(raw)} bytes, over the {MAX_RECORD_BYTES}-byte limit")
    text = decode_line(raw)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"invalid JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise RecordError("invalid JSON: nested too deeply") from None
    return parse_record(obj)


def _check_text(value: Any, where: str) -> str:
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
            messages.append({"role": role, "content": content})
        if not any(m["content"].strip() for m in messages):
            raise RecordError("messages have no content")
    rest = {k: v for k, v in obj.items() if k not in ("id", *CONTENT_FIELDS)}
    extra = json.dumps(rest, ensure_ascii=False, sort_keys=True) if rest else None
    return {"id": rid, "messages": messages, "text": text, "extra": extra}


def content_key(record: dict) -> str:
    """A hash of a record's content alone (not its id or extra fields).

    Two records with equal keys have exactly equal messages or text: this is what
    decontamination compares.
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
        obj["messages"] = record["messages"]
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
