"""What selectors read from a pool record besides its tokens: its plain text, its user turns,
its label, and whether a pool sample is a labelled (classification) pool."""
from __future__ import annotations

import json
from collections.abc import Sequence

from .text import render_plain

DATA_KINDS = ("auto", "lm", "classification")  # a selector's data_kind parameter


def render(record: dict) -> str:
    """The text an embedder sees: :func:`~tamis.models.text.render_plain`'s "role: content" join."""
    return render_plain(record)


def user_text(record: dict) -> str:
    """Only the user turns (kMQ's reference embeds ``tulu_user_only``); a text record as is."""
    if record.get("messages") is not None:
        turns = [m["content"] for m in record["messages"] if m.get("role") == "user"]
        return "\n".join(turns) if turns else "\n".join(m["content"] for m in record["messages"])
    return record["text"]


def record_label(record: dict):
    """The record's ``label`` (int, str or bool) from its extra fields, or None."""
    extra = record.get("extra")
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            return None
    label = extra.get("label") if isinstance(extra, dict) else None
    return label if isinstance(label, (int, str, bool)) else None


def label_key(label) -> str:
    """A label as the string heads index classes by (JSON, so 1 and "1" stay apart)."""
    return json.dumps(label)


def is_labelled(labels: Sequence) -> bool:
    """True when every sampled record has a label and there are at least two classes: the test
    by which ``data_kind="auto"`` picks the classifier path over the language-model path."""
    return bool(labels) and all(v is not None for v in labels) and len({label_key(v) for v in labels}) > 1


def data_kind(choice: str, labels: Sequence) -> str:
    """``"classification"`` or ``"lm"`` for a selector's ``data_kind`` parameter ("auto", "lm",
    "classification") and the labels of its pool sample."""
    return "classification" if choice == "classification" or (choice == "auto" and is_labelled(labels)) else "lm"
