"""Input integrity: damaged compressed files, literal pool paths that look like globs, message keys
and `extra` values that must survive, each through a real Beam run read back from Parquet."""
import base64
import datetime as dt
import decimal
import gzip
import json
import math
import os
import subprocess
import sys
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tamis.io.runfolder import RunFolder
import tamis
from tamis.io.files import Damage, count_lines, iter_lines
from tamis.schemas import content_key, parse_line, record_to_json

from .conftest import demo_records, install_plugin, write_jsonl

LENGTH = '''
import numpy as np
from tamis.selectors import Selector

class Length(Selector):
    """Score = characters of content: a cheap selector, so these tests exercise input handling."""
    name = "inlen"

    def score(self, records):
        n = [len(r["text"]) if r["text"] is not None else sum(len(m["content"]) for m in r["messages"]) for r in records]
        return {"score_inlen": np.array(n, dtype=np.float32)}
'''


@pytest.fixture
def inlen(tmp_path, monkeypatch):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    install_plugin(plugin, monkeypatch, "tamis_inlen_plugin", LENGTH, {"inlen": "Length"})
    yield str(plugin)
    sys.modules.pop("tamis_inlen_plugin", None)


def run(tmp_path, pool, name="out", shard_rows=50, budget=5):
    pools = pool if isinstance(pool, list) else [pool]
    return tamis.select(pool=[str(p) for p in pools], selector=["inlen"], budget=budget, shard_rows=shard_rows,
                        out=str(tmp_path / name))


def shard_rows(out) -> list[dict]:
    return RunFolder(str(out)).read_shards().to_pylist() if (out / "shards").is_dir() else []


def rejects(out) -> list[dict]:
    return [r for f in sorted((out / "rejects").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def lines_of(n: int, start: int = 0) -> list[bytes]:
    return [(json.dumps(r) + "\n").encode() for r in demo_records(start + n)[start:]]


def gzip_parts(lines: list[bytes], cut: int) -> tuple[bytes, bytes]:
    """A gzip stream of ``lines`` as (the bytes a writer had flushed after line ``cut``, the rest)."""
    c = zlib.compressobj(wbits=31)
    head = c.compress(b"".join(lines[:cut])) + c.flush(zlib.Z_SYNC_FLUSH)
    return head, c.compress(b"".join(lines[cut:])) + c.flush()


def strict_json(text: str):
    """Parse as a strict JSON reader does: NaN and Infinity are not JSON."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def check_accounting(s, out):
    c = s.counts
    assert c["input"] == c["accepted"] + c["rejected"]
    assert len(rejects(out)) == c["rejected"] and len(shard_rows(out)) == c["accepted"]


# --- damaged compressed files ---------------------------------------------------------------

def test_truncated_gzip_keeps_its_lines_and_records_the_damage(tmp_path, inlen):
    lines = lines_of(200)
    head, _ = gzip_parts(lines, 120)
    pool = tmp_path / "pool.jsonl.gz"
    pool.write_bytes(head)  # the writer died after line 120: no end-of-stream marker, no trailer
    s = run(tmp_path, pool, shard_rows=60)
    out = tmp_path / "out"
    assert s.counts["accepted"] == 120 and s.counts["rejected"] == 1 and s.counts["input"] == 121
    check_accounting(s, out)
    (damage,) = rejects(out)
    assert "truncated gzip after line 120" in damage["reason"] and "pool.jsonl.gz" in damage["reason"]
    assert damage["source"].endswith("pool.jsonl.gz:121") and damage["id"] is None
    # Planning and reading agree: the damage row is a planned unit (line 121, chunk 2), so a rerun
    # finds every chunk done.
    assert s.manifest["chunks"] == {"planned": 3, "reused": 0, "computed": 3}
    again = run(tmp_path, pool, shard_rows=60)
    assert again.manifest["chunks"]["reused"] == 3 and again.counts == s.counts


def test_gzip_cut_mid_line_puts_the_partial_line_in_the_damage_row(tmp_path, inlen):
    lines = lines_of(200)
    full = gzip.compress(b"".join(lines))
    pool = tmp_path / "cut.jsonl.gz"
    pool.write_bytes(full[: len(full) // 2])
    s = run(tmp_path, pool)
    out = tmp_path / "out"
    check_accounting(s, out)
    (damage,) = rejects(out)
    n = s.counts["accepted"]
    assert 0 < n < 200 and s.counts["input"] == n + 1
    assert f"truncated gzip after line {n}" in damage["reason"]
    whole = lines[n].rstrip(b"\n").decode()
    assert damage["raw"] and whole.startswith(damage["raw"]) and damage["raw"] != whole  # the cut-off line
    assert [r["id"] for r in shard_rows(out)] == [json.loads(line)["id"] for line in lines[:n]]


def test_gzip_with_trailing_garbage_is_read_and_the_garbage_recorded(tmp_path, inlen):
    pool = tmp_path / "trail.jsonl.gz"
    pool.write_bytes(gzip.compress(b"".join(lines_of(200))) + b"garbage after the stream")
    s = run(tmp_path, pool)
    check_accounting(s, tmp_path / "out")
    assert s.counts["accepted"] == 200 and s.counts["rejected"] == 1
    (damage,) = rejects(tmp_path / "out")
    assert "trailing data" in damage["reason"] and "after line 200" in damage["reason"]
    assert "trail.jsonl.gz" in damage["reason"] and "garbage after the stream" in damage["raw"]


def test_plain_text_named_gz_is_named_without_a_traceback(tmp_path, inlen):
    pool = tmp_path / "plain.jsonl.gz"
    pool.write_bytes(b"".join(lines_of(30)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([inlen, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "tamis", "select", "--pool", str(pool), "--selector", "inlen",
                           "--budget", "3", "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "zlib" not in proc.stderr
    (damage,) = rejects(tmp_path / "out")
    assert "not gzip" in damage["reason"] and "plain.jsonl.gz" in damage["reason"]
    assert damage["raw"].startswith('{"id"')


@pytest.mark.parametrize("damage, expected", [
    (lambda b: b[:3] + b"\xe0" + b[4:], "bad gzip header"),             # reserved flag bits set
    (lambda b: b[:2] + b"\x07" + b[3:], "bad gzip header"),             # unknown compression method
    (lambda b: b[:10] + bytes(x ^ 0x55 for x in b[10:40]) + b[40:], "corrupt gzip data"),
    (lambda b: b[:-8] + bytes(x ^ 0xFF for x in b[-8:-4]) + b[-4:], "corrupt gzip data"),  # CRC mismatch
])
def test_damaged_gzip_streams_are_named_and_recorded(tmp_path, inlen, damage, expected):
    pool = tmp_path / "bad.jsonl.gz"
    pool.write_bytes(damage(gzip.compress(b"".join(lines_of(40)))))
    s = run(tmp_path, pool)
    check_accounting(s, tmp_path / "out")
    damaged = [r for r in rejects(tmp_path / "out") if "gzip" in r["reason"]]
    assert len(damaged) == 1 and expected in damaged[0]["reason"] and "bad.jsonl.gz" in damaged[0]["reason"]


def test_empty_compressed_files(tmp_path):
    (tmp_path / "zero.jsonl.gz").write_bytes(b"")  # a writer that died before its first byte
    (tmp_path / "none.jsonl.gz").write_bytes(gzip.compress(b""))  # a valid stream of no lines
    ((_, damage),) = list(iter_lines(str(tmp_path / "zero.jsonl.gz")))
    assert damage.reason.startswith("truncated gzip at the start of") and "empty" in damage.reason
    assert count_lines(str(tmp_path / "zero.jsonl.gz")) == 1
    assert list(iter_lines(str(tmp_path / "none.jsonl.gz"))) == [] and count_lines(str(tmp_path / "none.jsonl.gz")) == 0


def test_concatenated_and_zero_padded_gzip_are_whole_files(tmp_path, inlen):
    lines = lines_of(60)
    pool = tmp_path / "multi.jsonl.gz"
    pool.write_bytes(gzip.compress(b"".join(lines[:25])) + gzip.compress(b"".join(lines[25:])) + b"\0" * 512)
    s = run(tmp_path, pool)
    assert s.counts == {**s.counts, "input": 60, "accepted": 60, "rejected": 0}


def test_zstd_truncated_and_trailing_data_are_recorded(tmp_path, inlen):
    zstandard = pytest.importorskip("zstandard")
    whole = [zstandard.ZstdCompressor().compress(b"".join(lines_of(100, start=100 * k))) for k in range(3)]
    (tmp_path / "a.jsonl.zst").write_bytes(whole[0][: len(whole[0]) // 2])
    (tmp_path / "b.jsonl.zst").write_bytes(whole[1] + b"trailing!")
    (tmp_path / "c.jsonl.zst").write_bytes(whole[2])
    s = run(tmp_path, [tmp_path / "a.jsonl.zst", tmp_path / "b.jsonl.zst", tmp_path / "c.jsonl.zst"])
    check_accounting(s, tmp_path / "out")
    reasons = [r["reason"] for r in sorted(rejects(tmp_path / "out"), key=lambda r: r["source"])]
    assert len(reasons) == 2, reasons
    assert "truncated zstd" in reasons[0] and "a.jsonl.zst" in reasons[0]
    assert "trailing data" in reasons[1] and "b.jsonl.zst" in reasons[1]
    assert 200 <= s.counts["accepted"] < 300


def test_unreadable_parquet_is_one_reject_not_a_failed_run(tmp_path, inlen):
    good = tmp_path / "good.jsonl"
    write_jsonl(good, demo_records(10))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    s = run(tmp_path, [good, bad])
    check_accounting(s, tmp_path / "out")
    (damage,) = rejects(tmp_path / "out")
    assert s.counts["accepted"] == 10 and "bad.parquet" in damage["reason"] and "Parquet" in damage["reason"]


def test_damaged_target_file_fails_with_one_line(tmp_path, inlen):
    target = tmp_path / "t.jsonl.gz"
    head, _ = gzip_parts(lines_of(10), 6)
    target.write_bytes(head)
    with pytest.raises(ValueError, match=r"truncated gzip after line 6"):
        tamis.select(pool=[str(write_jsonl(tmp_path / "p.jsonl", demo_records(10)))], selector=["inlen"],
                     target={"t": str(target)}, out=str(tmp_path / "o"))


# --- pool paths --------------------------------------------------------------------------------

def test_existing_file_with_glob_characters_is_read_literally(tmp_path, inlen):
    rows = demo_records(20)
    write_jsonl(tmp_path / "pool[1].jsonl", rows[:12])
    write_jsonl(tmp_path / "pool1.jsonl", rows[12:])  # what the name would match as a glob
    s = run(tmp_path, tmp_path / "pool[1].jsonl")
    assert s.counts["input"] == 12 and s.manifest["resolved"]["files"] == [str(tmp_path / "pool[1].jsonl")]
    g = run(tmp_path, tmp_path / "pool[0-9].jsonl", name="globbed")  # no such file: a glob
    assert g.counts["input"] == 8
    both = run(tmp_path, tmp_path / "pool*.jsonl", name="star")
    assert both.counts["input"] == 20


def test_missing_pool_is_one_clear_error(tmp_path, inlen):
    from tamis.errors import InputError

    with pytest.raises(InputError, match="no file matches"):
        run(tmp_path, tmp_path / "nope*.jsonl")
    with pytest.raises(InputError, match="no such file"):
        run(tmp_path, tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="is a folder"):
        run(tmp_path, tmp_path)
    with pytest.raises(InputError, match="unknown file type"):
        run(tmp_path, write_jsonl(tmp_path / "pool.txt", demo_records(2)))


def test_expand_keeps_order_and_drops_repeats(tmp_path):
    from tamis.io.files import expand

    a, b = (str(write_jsonl(tmp_path / f"{n}.jsonl", demo_records(1))) for n in ("b", "a"))
    assert expand([a, str(tmp_path / "*.jsonl"), a]) == [a, b]


# --- what a record keeps -----------------------------------------------------------------------

def test_every_key_of_a_message_is_kept(tmp_path, inlen):
    messages = [
        {"role": "system", "content": "be brief", "name": "sys", "weight": 0},
        {"role": "user", "content": "what is 2+2?"},
        {"role": "assistant", "content": "4", "weight": 1.5,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
    ]
    pool = write_jsonl(tmp_path / "p.jsonl", [{"id": "chat", "messages": messages, "source": "s"}] + demo_records(5))
    s = run(tmp_path, pool)
    check_accounting(s, tmp_path / "out")
    row = next(r for r in shard_rows(tmp_path / "out") if r["id"] == "chat")
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert json.loads(row["messages"][0]["extra"]) == {"name": "sys", "weight": 0}
    assert row["messages"][1]["extra"] is None
    assert json.loads(row["messages"][2]["extra"]) == {k: v for k, v in messages[2].items() if k not in ("role", "content")}
    assert json.loads(row["extra"]) == {"source": "s"}
    # the record round-trips, and decontamination still compares role and content only
    rec = parse_line(json.dumps({"id": "chat", "messages": messages}).encode())
    assert json.loads(record_to_json(rec))["messages"] == messages
    plain = parse_line(json.dumps({"id": "x", "messages": [{k: m[k] for k in ("role", "content")} for m in messages]}).encode())
    assert content_key(rec) == content_key(plain)


def test_extra_is_always_strict_json(tmp_path, inlen):
    rows = demo_records(6)
    raw = [
        b'{"id": "nan", "text": "a", "score": NaN, "nested": {"v": [Infinity, -Infinity, 1.5]}}\n',
        b'{"id": "msg", "messages": [{"role": "user", "content": "hi", "w": NaN}]}\n',
    ]
    pool = write_jsonl(tmp_path / "p.jsonl", rows + raw)
    s = run(tmp_path, pool)
    check_accounting(s, tmp_path / "out")
    got = {r["id"]: r for r in shard_rows(tmp_path / "out")}
    assert s.counts["accepted"] == 8
    assert strict_json(got["nan"]["extra"]) == {"score": None, "nested": {"v": [None, None, 1.5]}}
    assert strict_json(got["msg"]["messages"][0]["extra"]) == {"w": None}
    for r in got.values():
        if r["extra"] is not None:
            strict_json(r["extra"])


def test_lone_surrogates_are_rejected_per_row(tmp_path, inlen):
    rows = demo_records(6)
    raw = [
        b'{"id": "s1", "text": "ok", "meta": "\\ud800"}\n',
        b'{"id": "s2", "text": "ok", "\\udfff": 1}\n',
        b'{"id": "s3", "messages": [{"role": "user", "content": "hi", "name": "\\ud83d"}]}\n',
        b'{"id": "fine", "text": "ok", "meta": "\\ud83d\\ude00"}\n',  # a proper pair is one emoji
    ]
    pool = write_jsonl(tmp_path / "p.jsonl", rows + raw)
    s = run(tmp_path, pool)
    check_accounting(s, tmp_path / "out")
    bad = {r["raw"]: r["reason"] for r in rejects(tmp_path / "out")}
    assert s.counts["accepted"] == 7 and s.counts["rejected"] == 3
    assert all("surrogate" in reason for reason in bad.values())
    fine = next(r for r in shard_rows(tmp_path / "out") if r["id"] == "fine")
    assert json.loads(fine["extra"]) == {"meta": "\U0001F600"}


def test_duplicate_keys_in_a_line_are_rejected_not_dropped(tmp_path, inlen):
    pool = write_jsonl(tmp_path / "p.jsonl", demo_records(4) + [b'{"id": "d", "text": "a", "k": 1, "k": 2}\n'])
    s = run(tmp_path, pool)
    check_accounting(s, tmp_path / "out")
    (r,) = rejects(tmp_path / "out")
    assert "duplicate key 'k'" in r["reason"]


def test_parquet_values_json_cannot_hold_are_converted(tmp_path, inlen):
    recs = demo_records(4)
    table = pa.table({
        "id": [r["id"] for r in recs],
        "text": [r["messages"][1]["content"] for r in recs],
        "at": pa.array([dt.datetime(2024, 5, 1, 12, 30, 15, 250000)] * 3 + [None], pa.timestamp("us")),
        "at_utc": pa.array([dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)] * 4, pa.timestamp("ms", tz="UTC")),
        "day": pa.array([dt.date(2024, 5, 1)] * 4, pa.date32()),
        "blob": pa.array([b"\x00\xffbin", b"", None, b"text"], pa.binary()),
        "price": pa.array([decimal.Decimal("1.10")] * 4, pa.decimal128(5, 2)),
        "took": pa.array([dt.timedelta(seconds=1.5)] * 4, pa.duration("ms")),
        "ratio": pa.array([math.nan, math.inf, 1.0, None], pa.float64()),
    })
    pool = tmp_path / "p.parquet"
    pq.write_table(table, pool)
    s = run(tmp_path, pool)
    check_accounting(s, tmp_path / "out")
    assert s.counts["accepted"] == 4
    extras = {r["id"]: strict_json(r["extra"]) for r in shard_rows(tmp_path / "out")}
    first = extras[recs[0]["id"]]
    assert first["at"] == "2024-05-01T12:30:15.250000" and first["at_utc"] == "2024-05-01T12:00:00+00:00"
    assert first["day"] == "2024-05-01" and first["price"] == "1.10" and first["took"] == 1.5
    assert base64.b64decode(first["blob"]) == b"\x00\xffbin" and first["ratio"] is None
    assert extras[recs[3]["id"]]["at"] is None and extras[recs[2]["id"]]["blob"] is None
    assert extras[recs[2]["id"]]["ratio"] == 1.0


def test_parquet_value_out_of_python_range_is_one_reject(tmp_path, inlen):
    recs = demo_records(3)
    table = pa.table({
        "id": [r["id"] for r in recs],
        "text": ["a", "b", "c"],
        "at": pa.array([0, 400_000_000_000, 1], pa.timestamp("s")),  # year ~14645: no Python datetime
        "meta": ["ok", "ok", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")],
    })
    pool = tmp_path / "p.parquet"
    pq.write_table(table, pool)
    s = run(tmp_path, pool)
    check_accounting(s, tmp_path / "out")
    assert s.counts["accepted"] == 2 and s.counts["rejected"] == 1
    (r,) = rejects(tmp_path / "out")
    assert r["id"] == recs[1]["id"] and "at" in r["reason"]


def test_corrupt_parquet_row_group_is_one_reject_and_the_rest_is_read(tmp_path, inlen):
    recs = demo_records(90)
    table = pa.table({"id": [r["id"] for r in recs], "text": [r["messages"][1]["content"] * 5 for r in recs]})
    pool = tmp_path / "p.parquet"
    pq.write_table(table, pool, row_group_size=30, compression="zstd")
    data = bytearray(pool.read_bytes())
    column = pq.ParquetFile(pool).metadata.row_group(1).column(1)
    start = column.dictionary_page_offset or column.data_page_offset
    data[start + 20: start + column.total_compressed_size - 4] = bytes(column.total_compressed_size - 24)
    pool.write_bytes(bytes(data))
    s = run(tmp_path, pool, shard_rows=20)
    check_accounting(s, tmp_path / "out")
    (damage,) = rejects(tmp_path / "out")
    assert "row group 1" in damage["reason"] and "rows 31 to 60" in damage["reason"] and damage["source"].endswith(":31")
    assert s.counts["accepted"] == 60 and s.counts["input"] == 61
    assert s.manifest["chunks"] == {"planned": 5, "reused": 0, "computed": 5}  # planned by the footer's 90 rows
    assert len(list((tmp_path / "out" / "shards").glob("*.parquet"))) == 5


def test_parquet_binary_text_is_read_as_utf8(tmp_path, inlen):
    table = pa.table({"id": pa.array([b"a", b"b", b"c"], pa.binary()),
                      "text": pa.array(["caf\u00e9".encode(), b"\xff\xfe", b"plain"], pa.binary())})
    pool = tmp_path / "p.parquet"
    pq.write_table(table, pool)
    s = run(tmp_path, pool)
    check_accounting(s, tmp_path / "out")
    assert {r["id"]: r["text"] for r in shard_rows(tmp_path / "out")} == {"a": "caf\u00e9", "c": "plain"}
    (r,) = rejects(tmp_path / "out")
    assert "text is binary, not UTF-8" in r["reason"] and r["id"] is None


def test_byte_order_mark_and_blank_chunks(tmp_path, inlen):
    rows = demo_records(30)
    lines = [(json.dumps(r) + "\n").encode() for r in rows]
    body = b"\xef\xbb\xbf" + b"".join(lines[:10]) + b"\n" * 25 + b"".join(lines[10:])  # lines 11-35 blank
    pool = tmp_path / "bom.jsonl"
    pool.write_bytes(body)
    s = run(tmp_path, pool, shard_rows=10)
    check_accounting(s, tmp_path / "out")
    assert s.counts["input"] == 30 and s.counts["accepted"] == 30
    # chunk 2 holds only blank lines: it still gets its (empty) shard, so a rerun has nothing to do
    assert s.manifest["chunks"] == {"planned": 6, "reused": 0, "computed": 6}
    again = run(tmp_path, pool, shard_rows=10)
    assert again.manifest["chunks"] == {"planned": 6, "reused": 6, "computed": 0}


# --- the reader itself, over every way a compressed file can be cut or damaged ------------------


ORIGINAL = [f'{{"id": "r{i}", "text": "{"w" * (i % 17)}"}}'.encode() for i in range(300)]


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["gzip", "zstd"]), cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=3),
       padding=st.sampled_from([b"", b"\0" * 7, b"tail", b"\x1f", b"\x1f\x8b"]))
def test_any_damage_is_read_without_error_and_counted_as_planned(tmp_path, kind, cut, flips, padding):
    data = bytearray(_compress(kind, b"\n".join(ORIGINAL) + b"\n"))
    for where, mask in flips:
        data[int(where * (len(data) - 1))] ^= mask
    kept = int(cut * len(data)) if cut < 0.999 else len(data)
    whole = kept == len(data)
    data = bytes(data[:kept]) + padding
    path = tmp_path / f"f.jsonl.{'gz' if kind == 'gzip' else 'zst'}"
    path.write_bytes(data)
    items = list(iter_lines(str(path)))
    assert count_lines(str(path)) == len(items)
    assert [n for n, _ in items] == list(range(1, len(items) + 1))
    damage = [i for i, (_, item) in enumerate(items) if isinstance(item, Damage)]
    assert damage in ([], [len(items) - 1])
    if damage:
        reason = items[-1][1].reason
        assert str(path) in reason and "\n" not in reason
    if not flips and (whole or not padding):  # a cut, or a whole stream padded: every line read is exact
        lines = [item for _, item in items if not isinstance(item, Damage)]
        assert lines == ORIGINAL[: len(lines)]
        if whole and (padding == b"" or (padding == b"\0" * 7 and kind == "gzip")):
            assert not damage and len(lines) == 300
        elif kept or padding:
            assert damage


def test_an_over_long_line_is_never_held_whole(tmp_path):
    path = tmp_path / "long.jsonl.gz"
    body = b'{"id": "a", "text": "ok"}\n' + b"x" * 50_000 + b'\n{"id": "b", "text": "ok"}\n' + b"y" * 30_000
    path.write_bytes(gzip.compress(body))
    items = list(iter_lines(str(path), max_line=1000))
    assert [n for n, _ in items] == [1, 2, 3, 4] and count_lines(str(path)) == 4
    assert items[0][1] == b'{"id": "a", "text": "ok"}' and items[2][1] == b'{"id": "b", "text": "ok"}'
    for (_, item), size in ((items[1], 50_000), (items[3], 30_000)):
        assert isinstance(item, Damage) and item.reason == f"record is {size} bytes, over the 1000-byte limit"
        assert len(item.raw) <= 4096


def test_an_over_long_line_is_a_reject_with_its_size(tmp_path, inlen):
    pool = tmp_path / "p.jsonl"
    big = b'{"id": "big", "text": "' + b"z" * (9 << 20) + b'"}\n'
    write_jsonl(pool, demo_records(3) + [big])
    s = run(tmp_path, pool)
    check_accounting(s, tmp_path / "out")
    (r,) = rejects(tmp_path / "out")
    assert r["reason"] == f"record is {len(big) - 1} bytes, over the {8 << 20}-byte limit" and len(r["raw"]) <= 4096


def test_scan_counts_and_hashes_in_one_read(tmp_path):
    import hashlib

    from tamis.io.files import scan

    lines = lines_of(50)
    head, _ = gzip_parts(lines, 30)
    cases = {"plain.jsonl": b"".join(lines), "whole.jsonl.gz": gzip.compress(b"".join(lines)),
             "cut.jsonl.gz": head, "trail.jsonl.gz": gzip.compress(b"".join(lines)) + b"junk" * 1000,
             "bad.jsonl.gz": b"\x1f\x8b\x08\x00" + b"\xff" * 70_000}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        got = scan(str(path), digest=True)
        assert got.lines == count_lines(str(path)) == len(list(iter_lines(str(path)))), name
        assert got.size == len(data) and got.sha256 == hashlib.sha256(data).hexdigest(), name
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"]}), tmp_path / "p.parquet")
    got = scan(str(tmp_path / "p.parquet"), digest=True)
    assert got.lines == 2 and got.sha256 == hashlib.sha256((tmp_path / "p.parquet").read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_many_large_members_are_read_whole(tmp_path, kind):
    import random

    rng = random.Random(0)
    lines = [json.dumps({"id": f"r{i}", "text": "".join(rng.choice("abcdefgh ") for _ in range(200))}).encode()
             for i in range(3000)]
    data = b"".join(_compress(kind, b"\n".join(lines[k:k + 1000]) + b"\n") for k in range(0, 3000, 1000))
    assert len(data) > 3 * (1 << 16)  # members larger than one read and than one zstd feed
    path = tmp_path / f"m.jsonl.{'gz' if kind == 'gzip' else 'zst'}"
    path.write_bytes(data)
    assert [item for _, item in iter_lines(str(path))] == lines and count_lines(str(path)) == 3000
