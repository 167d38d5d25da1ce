"""The output schemas: shards (``OUT/shards``), the selection beside them, rejects.

Score columns are float32 and named ``score_<selector>_<task>`` (``score_<selector>`` for a
selector that takes no target); selectors may add further typed columns (a cluster id, a
difficulty). Everything else is fixed, whatever fields the input carried.
"""
from __future__ import annotations

import re

import pyarrow as pa

# A message's keys other than role and content (name, tool_calls, weight...), as JSON text in its
# own "extra" (null when it has none): kept beside the turn they belong to.
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("extra", pa.string())])

RECORD_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("messages", pa.list_(MESSAGE)),
    pa.field("text", pa.string()),
    pa.field("extra", pa.string()),  # every other input field, as JSON text
]

# True when the content exactly equals a target example: never selected by default.
MATCHES_TARGET = pa.field("matches_target", pa.bool_(), nullable=False)

# The selection, kept beside the shards (OUT/attributes/selection): one row per shard row, same order.
SELECTION_FIELDS = [
    pa.field("selected", pa.bool_(), nullable=False),
    pa.field("rank", pa.int64()),  # 1 = best, within the selection; null when not selected
    pa.field("selected_for", pa.list_(pa.string()), nullable=False),
]

REJECT_SCHEMA = pa.schema([
    pa.field("id", pa.string()),  # where it could be read
    pa.field("raw", pa.string(), nullable=False),  # the original line, bad bytes escaped
    pa.field("reason", pa.string(), nullable=False),
    pa.field("source", pa.string()),  # file and line number
])

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(name: str, what: str) -> str:
    """Selector and task names become column and file names: keep them plain (no path
    separators, no leading dot, no trailing newline, which ``$`` alone would let through)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} must be letters, digits, '_', '.' or '-' (and start with a letter or digit)")
    return name


def score_column(selector: str, task: str | None = None) -> str:
    return f"score_{selector}" if task is None else f"score_{selector}_{task}"


def output_schema(extra_fields: list[pa.Field]) -> pa.Schema:
    """A shard: record fields, then the selectors' columns (in order), then ``matches_target``."""
    names = [f.name for f in extra_fields]
    clash = {f.name for f in RECORD_FIELDS + SELECTION_FIELDS + [MATCHES_TARGET]} & set(names)
    if clash or len(set(names)) != len(names):
        raise ValueError(f"selector columns clash: {sorted(clash) or names}")
    return pa.schema(RECORD_FIELDS + list(extra_fields) + [MATCHES_TARGET])


def selection_schema(rule_fields: list[pa.Field] = ()) -> pa.Schema:
    """A selection attribute file: ``id``, the selection fields, then the rule's own fields."""
    return pa.schema([RECORD_FIELDS[0], *SELECTION_FIELDS, *rule_fields])
