"""Fuzzing the whole pipeline with malformed input: it never crashes, every bad line lands in
the rejects with a reason, and input == accepted + rejected."""
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tamis

from .conftest import install_plugin

LENGTH = '''
import numpy as np
from tamis.selectors import Selector

class Length(Selector):
    """Score = characters of content (cheap, for fuzzing the pipeline around it)."""
    name = "fuzzlen"

    def score(self, records):
        n = [len(r["text"]) if r["text"] is not None else sum(len(m["content"]) for m in r["messages"]) for r in records]
        return {"score_fuzzlen": np.array(n, dtype=np.float32)}
'''

text = st.text(max_size=40)
ident = st.one_of(text, st.integers(), st.none(), st.lists(st.integers(), max_size=2), st.sampled_from(["dup", "dup2"]))
good = st.builds(lambda i, t: {"id": i, "text": t}, st.text(min_size=1, max_size=12), st.text(min_size=1, max_size=60))
chat = st.builds(lambda i, c, r: {"id": i, "messages": [{"role": r, "content": c}]},
                 st.text(min_size=1, max_size=12), text, st.one_of(st.just("user"), st.integers()))
odd = st.fixed_dictionaries({"id": ident}, optional={"text": st.one_of(text, st.integers(), st.none()),
                                                     "messages": st.one_of(st.lists(st.dictionaries(text, text, max_size=2), max_size=2), text)})
as_line = lambda obj: (json.dumps(obj) + "\n").encode()
lines = st.lists(st.one_of(
    good.map(as_line), chat.map(as_line), odd.map(as_line),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ") + b"\n"),          # random bytes, often not UTF-8
    st.text(max_size=30).map(lambda t: (t.replace("\n", " ") + "\n").encode()),     # not JSON
    st.just(b'{"id": "huge", "text": "' + b"x" * 200_000 + b'"}\n'),                # a huge field
    st.just(b"\n"),                                                                  # blank line (not a record)
    st.just(b"[1, 2, 3]\n"),
), max_size=40)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    install_plugin(tmp_path_factory.mktemp("plugin"), mp, "tamis_fuzz_plugin", LENGTH, {"fuzzlen": "Length"})
    yield
    mp.undo()
    sys.modules.pop("tamis_fuzz_plugin", None)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(lines, min_size=1, max_size=3))
def test_malformed_pools_never_crash_and_account_for_every_line(files, tmp_path_factory, plugin):
    tmp = tmp_path_factory.mktemp("fuzz")
    paths, nonblank = [], 0
    for i, content in enumerate(files):
        path = tmp / f"part{i}.jsonl"
        path.write_bytes(b"".join(content))
        paths.append(str(path))
        nonblank += sum(1 for line in b"".join(content).split(b"\n") if line.strip())
    s = tamis.select(pool=paths, selector=["fuzzlen"], budget=3, shard_rows=7, out=str(tmp / "out"))
    c = s.counts
    assert c["input"] == nonblank
    assert c["input"] == c["accepted"] + c["rejected"] and c["selected"] <= c["accepted"]
    assert c["selected"] == min(3, c["accepted"])
    rejects = [r for f in sorted((tmp / "out" / "rejects").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rejects) == c["rejected"] and all(r["reason"] and r["raw"] is not None for r in rejects)
    shard_files = sorted((tmp / "out" / "shards").glob("*.parquet"))
    ids = pa.concat_tables(pq.read_table(f) for f in shard_files).column("id").to_pylist() if shard_files else []
    assert len(ids) == len(set(ids)) == c["accepted"]
