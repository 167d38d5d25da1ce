"""How a record becomes model input text.

Without a chat template, a ``messages`` record is joined as one "role: content" line per
message (``"user: Define ...\\nassistant: Food ..."``); a ``text`` record is its text.
"""
from __future__ import annotations

# Characters kept before tokenizing: at most this many per token of ``max_length``. A 1 MB
# example is cut here first, so tokenizing it costs no more than a normal one; the tokenizer
# then keeps the first ``max_length`` tokens.
CHARS_PER_TOKEN_BOUND = 16


def render_plain(record: dict) -> str:
    """The documented plain join, used when a model has no chat template."""
    if record.get("messages") is not None:
        return "\n".join(f"{m['role']}: {m['content']}" for m in record["messages"])
    return record["text"]


def clip_chars(text: str, max_length: int) -> str:
    """Cut text to ``max_length * CHARS_PER_TOKEN_BOUND`` characters (see module docstring)."""
    limit = max_length * CHARS_PER_TOKEN_BOUND
    return text if len(text) <= limit else text[:limit]
