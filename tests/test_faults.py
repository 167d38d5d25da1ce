"""Faults while scoring: tamis retries a failed call itself (local runners do not retry
bundles); rows that fail every attempt go to the rejects with the error, nothing is lost."""
import pyarrow.parquet as pq
import pytest

from tamis.io.runfolder import RunFolder
import tamis

from .conftest import demo_records, install_plugin, write_jsonl

FLAKY = '''
import zlib
import numpy as np
from tamis.selectors import Selector

FAILED_ONCE = set()


class Flaky(Selector):
    """Score = a hash of the id; a call fails on its first attempt when its first id hashes odd,
    and always fails for records whose text says 'poison'."""
    name = "flaky"

    def __init__(self, poison: bool = False):
        self.poison = poison

    def score(self, records):
        key = records[0]["id"]
        if zlib.crc32(key.encode()) % 2 and key not in FAILED_ONCE:
            FAILED_ONCE.add(key)
            raise RuntimeError("transient fault")
        if self.poison and any("poison" in (r["text"] or "") for r in records):
            raise ValueError("cannot score poison")
        return {"score_flaky": np.array([zlib.crc32(r["id"].encode()) % 1000 for r in records], dtype=np.float32)}
'''


@pytest.fixture
def flaky(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "tamis_flaky_plugin", FLAKY, {"flaky": "Flaky"})
    yield
    import sys

    sys.modules.pop("tamis_flaky_plugin", None)


def shards(out):
    return RunFolder(str(out)).read_shards()


def test_transient_faults_are_retried_and_change_nothing(tmp_path, flaky):
    rows = [{"id": r["id"], "text": r["messages"][1]["content"]} for r in demo_records(120)]
    pool = write_jsonl(tmp_path / "p.jsonl", rows)
    import tamis_flaky_plugin

    kw = dict(pool=[str(pool)], selector=["flaky"], budget=10, shard_rows=10, param={})
    faulty = tamis.select(out=str(tmp_path / "faulty"), **kw)
    assert tamis_flaky_plugin.FAILED_ONCE, "some chunks must have failed once"
    assert faulty.manifest["metrics"].get("score_retries", 0) >= 1
    tamis.select(out=str(tmp_path / "clean"), **kw)  # every chunk has failed once already: no faults now
    a, b = shards(tmp_path / "faulty"), shards(tmp_path / "clean")
    assert a.equals(b)
    ids = a.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 120 and faulty.counts["rejected"] == 0


def test_rows_failing_every_attempt_are_rejected_with_the_error(tmp_path, flaky):
    rows = [{"id": r["id"], "text": r["messages"][1]["content"]} for r in demo_records(30)]
    rows[7]["text"] = "a poison pill"
    pool = write_jsonl(tmp_path / "p.jsonl", rows)
    s = tamis.select(pool=[str(pool)], selector=["flaky"], budget=5, out=str(tmp_path / "o"), score_attempts=2,
                     param={"poison": True})
    assert s.counts["accepted"] == 29 and s.counts["rejected"] == 1
    assert s.counts["input"] == s.counts["accepted"] + s.counts["rejected"]
    reject = pq.read_table(next((tmp_path / "o" / "rejects").glob("*.parquet"))).to_pylist()[0]
    assert reject["id"] == rows[7]["id"] and "cannot score poison" in reject["reason"] and "2 attempts" in reject["reason"]
