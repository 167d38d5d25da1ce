"""End-to-end runs of the real Beam pipeline on small real data, read back from Parquet."""
import gzip
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tamis
from tamis.io.runfolder import RunFolder
from tamis.errors import RunFolderError
from tamis.pipeline.run import count_outputs

from .conftest import DEMO, demo_records, write_jsonl

BROKEN = [
    b'{"id": "bad-json", "text": "unterminated}\n',
    b'{"text": "no id here"}\n',
    b'{"id": "empty", "text": "  "}\n',
    b'{"id": "bad-utf8", "text": "caf\xe9"}\n',
    b'{"id": 42, "text": "numeric id"}\n',
]


def read_shards(out) -> pa.Table:
    """Every row, shards joined with their selection (as tamis reads them)."""
    return RunFolder(str(out)).read_shards()


def read_rejects(out) -> list[dict]:
    files = sorted(Path(out, "rejects").glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


@pytest.fixture
def pool(tmp_path):
    rows = demo_records(240)
    lines = [r for r in rows[:120]] + BROKEN + rows[120:] + [rows[3]]  # last line repeats an id, in another chunk
    return write_jsonl(tmp_path / "pool.jsonl", lines), rows


def run(tmp_path, pool_path, targets, encoder, name="out", **kw):
    args = dict(pool=[str(pool_path)], target=targets, out=str(tmp_path / name), budget=20, shard_rows=100,
                param={"model": encoder})
    args.update(kw)
    return tamis.select(**args)


def test_end_to_end_outputs_schema_counts_and_rejects(tmp_path, pool, targets_dir, tiny_encoder):
    path, rows = pool
    summary = run(tmp_path, path, targets_dir, tiny_encoder)
    out = tmp_path / "out"
    c = summary.counts
    assert c == count_outputs(str(out))
    assert c["input"] == 246 and c["accepted"] == 240 and c["rejected"] == 6 and c["selected"] == 20
    assert c["input"] == c["accepted"] + c["rejected"]

    table = read_shards(out)
    assert table.schema.names == ["id", "messages", "text", "extra", "score_rds_animal", "score_rds_food",
                                  "matches_target", "selected", "rank", "selected_for"]
    assert table.schema.field("score_rds_food").type == pa.float32()
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)

    reasons = {r["source"].rsplit(":", 1)[-1] if ":" in r["source"] else r["source"]: r["reason"] for r in read_rejects(out)}
    joined = " | ".join(reasons.values())
    for expected in ("invalid JSON", "missing id", "text is empty", "invalid UTF-8", "id must be a string", "duplicate id"):
        assert expected in joined
    bad = [r for r in read_rejects(out) if "UTF-8" in r["reason"]][0]
    assert "\\xe9" in bad["raw"]

    selected = table.filter(table.column("selected")).sort_by("rank").to_pylist()
    assert [r["rank"] for r in selected] == list(range(1, 21))
    assert all(r["selected_for"] for r in selected)
    assert {t for r in selected for t in r["selected_for"]} == {"food", "animal"}
    # Round-robin: ranks alternate between the two tasks' picks.
    assert selected[0]["selected_for"][0] == "animal" and selected[1]["selected_for"][0] == "food"

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == c
    assert manifest["models"]["rds.embedder"]["sha256"]
    assert manifest["versions"]["apache-beam"]
    assert {"plan_s", "score_s", "select_s", "total_s"} <= set(manifest["timings"])

    ds = tamis.load_selected(str(out))
    assert isinstance(ds, datasets.Dataset) and len(ds) == 20 and ds["rank"] == list(range(1, 21))
    food = tamis.load_selected(str(out), task="food")
    assert 0 < len(food) < 20 and all("food" in t for t in food["selected_for"])
    everything = datasets.load_dataset("parquet", data_files=str(out / "shards" / "*.parquet"), split="train")
    assert len(everything) == 240


def test_scores_rank_the_target_domain_first(tmp_path, targets_dir):
    """With the real MiniLM, animal rows outrank the rest: P@10 far above the 7% base rate."""
    with gzip.open(DEMO / "labels.jsonl.gz", "rt") as f:
        labels = {o["id"]: o["domain"] for o in map(json.loads, f)}
    rows = demo_records(400)
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    summary = tamis.select(pool=[str(path)], target={"animal": targets_dir["animal"]}, out=str(tmp_path / "o"), budget=10)
    table = read_shards(tmp_path / "o")
    top = table.filter(table.column("selected")).column("id").to_pylist()
    base_rate = sum(labels[r["id"]] == "noun.animal" for r in rows) / len(rows)
    precision = sum(labels[i] == "noun.animal" for i in top) / len(top)
    assert summary.counts["selected"] == 10 and base_rate < 0.08 and precision >= 0.5


def test_decontamination_flags_and_skips_target_copies(tmp_path, targets_dir, tiny_encoder):
    target = json.loads(Path(targets_dir["food"]).read_text().splitlines()[0])
    rows = demo_records(50) + [{"id": "leak", "messages": target["messages"], "source": "x"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    summary = run(tmp_path, path, {"food": targets_dir["food"]}, tiny_encoder, budget=51)
    table = read_shards(tmp_path / "out").to_pylist()
    leak = next(r for r in table if r["id"] == "leak")
    assert leak["matches_target"] and not leak["selected"]
    assert summary.counts["matches_target"] == 1 and summary.counts["selected"] == 50


def test_reselect_changes_budget_without_scoring(tmp_path, pool, targets_dir, tiny_encoder):
    path, _ = pool
    run(tmp_path, path, targets_dir, tiny_encoder)
    before = read_shards(tmp_path / "out")
    summary = tamis.reselect(str(tmp_path / "out"), 0.25)
    after = read_shards(tmp_path / "out")
    assert summary.counts["selected"] == 60  # floor(0.25 * 240)
    for col in ("score_rds_food", "score_rds_animal", "id"):
        assert before.column(col).equals(after.column(col))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["resolved"]["budget"] == 0.25 and manifest["counts"]["selected"] == 60
    food_only = tamis.reselect(str(tmp_path / "out"), 10, tasks=["food"])
    table = read_shards(tmp_path / "out")
    picked = table.filter(table.column("selected"))
    assert food_only.counts["selected"] == 10 and all(t == ["food"] for t in picked.column("selected_for").to_pylist())
    top10 = sorted(table.column("score_rds_food").to_pylist(), reverse=True)[9]
    assert min(picked.column("score_rds_food").to_pylist()) >= top10


def test_rerun_resumes_from_finished_shards(tmp_path, pool, targets_dir, tiny_encoder):
    path, _ = pool
    first = run(tmp_path, path, targets_dir, tiny_encoder)
    reference = read_shards(tmp_path / "out")
    victim = sorted((tmp_path / "out" / "shards").glob("part-*.parquet"))[1]
    victim.unlink()
    second = run(tmp_path, path, targets_dir, tiny_encoder)
    assert second.chunks == {"planned": 3, "reused": 2, "computed": 1}
    assert second.counts == first.counts
    assert read_shards(tmp_path / "out").equals(reference)


def test_another_config_in_the_same_folder_needs_overwrite(tmp_path, pool, targets_dir, tiny_encoder):
    path, _ = pool
    run(tmp_path, path, targets_dir, tiny_encoder)
    with pytest.raises(RunFolderError, match="another scoring config.*--overwrite"):
        run(tmp_path, path, targets_dir, tiny_encoder, max_length=64)
    run(tmp_path, path, targets_dir, tiny_encoder, max_length=64, overwrite=True)


def test_edge_cases_empty_pool_single_row_and_big_budget(tmp_path, targets_dir, tiny_encoder):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    s = run(tmp_path, empty, targets_dir, tiny_encoder, name="e")
    assert s.counts["input"] == 0 and s.counts["selected"] == 0
    one = write_jsonl(tmp_path / "one.jsonl", demo_records(1))
    s = run(tmp_path, one, targets_dir, tiny_encoder, name="o", budget=5000)
    assert s.counts == {**s.counts, "input": 1, "accepted": 1, "selected": 1}


def test_parquet_and_gzip_inputs_read_the_same(tmp_path, targets_dir, tiny_encoder):
    rows = demo_records(60)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    a = run(tmp_path, tmp_path / "p.parquet", targets_dir, tiny_encoder, name="a")
    b = run(tmp_path, tmp_path / "p.jsonl.gz", targets_dir, tiny_encoder, name="b")
    ta, tb = read_shards(tmp_path / "a"), read_shards(tmp_path / "b")
    assert a.counts == b.counts and ta.column("id").equals(tb.column("id"))
    assert ta.column("score_rds_food").equals(tb.column("score_rds_food"))


def test_portable_runner_selects_the_same_ids(tmp_path, pool, targets_dir, tiny_encoder):
    path, _ = pool
    run(tmp_path, path, targets_dir, tiny_encoder, name="direct")
    run(tmp_path, path, targets_dir, tiny_encoder, name="portable", runner="PortableRunner")
    a, b = read_shards(tmp_path / "direct"), read_shards(tmp_path / "portable")
    pick = lambda t: sorted((r["rank"], r["id"]) for r in t.filter(t.column("selected")).to_pylist())
    assert pick(a) == pick(b)
    assert a.column("score_rds_food").equals(b.column("score_rds_food"))
