import json

import pyarrow as pa
import pytest

from tamis.schemas import RecordError, content_key, escape_raw, output_schema, parse_line, parse_target, record_to_json


def reason(raw: bytes) -> str:
    with pytest.raises(RecordError) as e:
        parse_line(raw)
    return str(e.value)


@pytest.mark.parametrize("raw, expected", [
    (b'{"id": "a", "text": "x"', "invalid JSON"),
    (b'[1, 2]', "must be a JSON object"),
    (b'{"text": "hello"}', "missing id"),
    (b'{"id": 7, "text": "hello"}', "id must be a string, got int"),
    (b'{"id": " ", "text": "hello"}', "id is empty"),
    (b'{"id": "a", "text": "   "}', "text is empty"),
    (b'{"id": "a"}', "neither messages nor text"),
    (b'{"id": "a", "text": "t", "messages": []}', "both messages and text"),
    (b'{"id": "a", "messages": "hi"}', "messages must be a list"),
    (b'{"id": "a", "messages": []}', "messages is empty"),
    (b'{"id": "a", "messages": [{"role": "user"}]}', "messages[0].content must be a string"),
    (b'{"id": "a", "messages": [{"role": "user", "content": " "}]}', "messages have no content"),
    (b'{"id": "a", "text": 5}', "text must be a string, got int"),
    (b'{"id": "a", "text": "caf\xe9"}', "invalid UTF-8 at byte 24"),
    (b'{"id": "a", "text": "\\ud800"}', "unpaired surrogate"),
])
def test_bad_lines_get_one_line_reasons(raw, expected):
    msg = reason(raw)
    assert expected in msg and "\n" not in msg


def test_valid_record_keeps_other_fields_as_json():
    rec = parse_line(json.dumps({"id": "a", "messages": [{"role": "user", "content": "hi"}], "source": "flan", "n": 3}).encode())
    assert rec["id"] == "a" and rec["text"] is None
    assert json.loads(rec["extra"]) == {"n": 3, "source": "flan"}
    assert json.loads(record_to_json(rec)) == {"id": "a", "messages": [{"role": "user", "content": "hi"}], "source": "flan", "n": 3}


def test_content_key_ignores_id_and_extra_but_not_content():
    a = parse_line(b'{"id": "a", "text": "same", "x": 1}')
    b = parse_line(b'{"id": "b", "text": "same"}')
    c = parse_line(b'{"id": "c", "text": "other"}')
    m = parse_line(b'{"id": "m", "messages": [{"role": "user", "content": "same"}]}')
    assert content_key(a) == content_key(b) != content_key(c)
    assert content_key(m) != content_key(a)


def test_targets_need_no_id_and_keep_subtask():
    t = parse_target({"text": "x", "subtask": "algebra"})
    assert t["id"] is None and t["subtask"] == "algebra" and t["extra"] is None
    with pytest.raises(RecordError, match="subtask must be a string"):
        parse_target({"text": "x", "subtask": 3})


def test_escape_raw_keeps_bad_bytes_visible():
    assert escape_raw(b"caf\xe9") == "caf\\xe9"


def test_output_schema_is_fixed_and_rejects_clashes():
    schema = output_schema([pa.field("score_rds_food", pa.float32())])
    assert schema.names == ["id", "messages", "text", "extra", "score_rds_food", "matches_target"]  # selection: beside
    assert schema.field("score_rds_food").type == pa.float32()
    with pytest.raises(ValueError, match="clash"):
        output_schema([pa.field("selected", pa.float32())])
    with pytest.raises(ValueError, match="clash"):
        output_schema([pa.field("matches_target", pa.float32())])
