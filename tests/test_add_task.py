"""A new task without rescoring the pool, and a selection that never rewrites the shards (issue 17).

Real runs on the bundled demo pool with a tiny real encoder: a task added to a finished run must
score exactly as a fresh run with that task alone, and neither add-task nor reselect may touch
the bytes of a shard.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import tamis
from tamis.cli import app
from tamis.errors import ConfigError, RunFolderError, UnfinishedRunError
from tamis.io.runfolder import RunFolder

from .conftest import demo_records, write_jsonl

runner = CliRunner()


def shard_digests(out) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(out, "shards").glob("*.parquet"))}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    rows = demo_records(300)
    return str(write_jsonl(tmp_path_factory.mktemp("pool") / "pool.jsonl", rows))


def run(out, pool, targets, encoder, **kw):
    return tamis.select(pool=[pool], target=targets, out=str(out), budget=20, shard_rows=100,
                        param={"rds.model": encoder, "rds.per_query": True}, **kw)


def test_an_added_task_scores_bit_for_bit_as_a_fresh_run_and_no_shard_is_rewritten(tmp_path, pool, targets_dir,
                                                                                   tiny_encoder, one_thread):
    food = {"food": targets_dir["food"]}
    animal = {"animal": targets_dir["animal"]}
    run(tmp_path / "grown", pool, food, tiny_encoder)
    before = shard_digests(tmp_path / "grown")
    summary = tamis.add_task(str(tmp_path / "grown"), animal)
    assert summary.tasks == ["animal"]
    assert shard_digests(tmp_path / "grown") == before  # the pool's bytes were never rewritten

    run(tmp_path / "fresh", pool, animal, tiny_encoder)
    grown = tamis.read_run(str(tmp_path / "grown"))
    fresh = tamis.read_run(str(tmp_path / "fresh"))
    assert grown.column("id").equals(fresh.column("id"))
    for column in ("score_rds_animal", "queries_rds_animal"):
        assert grown.column(column).equals(fresh.column(column)), column  # bit for bit
    assert "score_rds_food" in grown.column_names

    manifest = json.loads((tmp_path / "grown" / "manifest.json").read_text())
    assert manifest["resolved"]["tasks"] == ["animal", "food"]
    assert manifest["tasks"]["food"]["made_by"] == "select" and manifest["tasks"]["animal"]["made_by"] == "add-task"
    assert manifest["tasks"]["animal"]["columns"] == ["score_rds_animal", "queries_rds_animal"]
    # The pool side came from the store the first run filled: only the targets were embedded.
    assert manifest["tasks"]["animal"]["store"] == {"rds_features_reused": 300}
    assert manifest["config"]["target"] == {**food, **animal}
    # The selection covers both tasks now, and a trainer reads the new task's picks.
    picked = tamis.load_selected(str(tmp_path / "grown"), task="animal")
    assert len(picked) > 0 and all("animal" in t for t in picked["selected_for"])
    assert manifest["counts"]["selected"] == 20
    shown = runner.invoke(app, ["inspect", str(tmp_path / "grown")])
    assert "tasks: animal (add-task, 32 targets), food (select, 32 targets)" in shown.output, shown.output


def test_reselect_writes_the_selection_beside_the_shards_only(tmp_path, pool, targets_dir, tiny_encoder, one_thread):
    out = tmp_path / "r"
    run(out, pool, targets_dir, tiny_encoder)
    before = shard_digests(out)
    selection = sorted((out / "attributes" / "selection").glob("*.parquet"))
    assert [p.name for p in selection] == sorted(before)
    tamis.reselect(str(out), 50)
    assert shard_digests(out) == before
    table = tamis.read_run(str(out))
    assert int(np.sum(table.column("selected").to_numpy(zero_copy_only=False))) == 50
    assert "selected" not in pq.read_schema(next((out / "shards").glob("*.parquet"))).names


def test_datasets_reads_the_shards_and_the_selection_side_by_side(tmp_path, pool, targets_dir, tiny_encoder, one_thread):
    import datasets

    out = tmp_path / "r"
    run(out, pool, targets_dir, tiny_encoder)
    cache = str(tmp_path / "hf")
    rows = datasets.load_dataset("parquet", data_files=f"{out}/shards/*.parquet", split="train", cache_dir=cache)
    picks = datasets.load_dataset("parquet", data_files=f"{out}/attributes/selection/*.parquet", split="train",
                                  cache_dir=cache)
    assert rows["id"] == picks["id"]  # row for row, in the same file order
    full = datasets.concatenate_datasets([rows, picks.remove_columns("id")], axis=1)
    chosen = full.filter(lambda r: r["selected"]).sort("rank")
    assert chosen["id"] == tamis.load_selected(str(out))["id"]


def test_a_task_the_run_has_is_refused_unless_replaced(tmp_path, pool, targets_dir, tiny_encoder, one_thread):
    out = tmp_path / "r"
    run(out, pool, {"food": targets_dir["food"]}, tiny_encoder)
    res = runner.invoke(app, ["add-task", str(out), "--target", f"food={targets_dir['animal']}"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "already in" in res.output, res.output
    res = runner.invoke(app, ["add-task", str(out), "--target", f"food={targets_dir['animal']}", "--replace"])
    assert res.exit_code == 0, res.output
    # "food" now means the animal examples: its scores are those of a fresh run with them.
    run(tmp_path / "fresh", pool, {"food": targets_dir["animal"]}, tiny_encoder)
    assert tamis.read_run(str(out)).column("score_rds_food").equals(
        tamis.read_run(str(tmp_path / "fresh")).column("score_rds_food"))


def test_a_changed_or_missing_pool_is_refused(tmp_path, targets_dir, tiny_encoder, one_thread):
    path = write_jsonl(tmp_path / "pool.jsonl", demo_records(120))
    out = tmp_path / "r"
    run(out, str(path), {"food": targets_dir["food"]}, tiny_encoder)
    write_jsonl(path, demo_records(121))
    with pytest.raises(RunFolderError, match="changed since it was scored"):
        tamis.add_task(str(out), {"animal": targets_dir["animal"]})
    path.unlink()
    with pytest.raises(RunFolderError, match="pool of .* is gone"):
        tamis.add_task(str(out), {"animal": targets_dir["animal"]})


def test_a_pool_row_equal_to_a_new_target_is_never_selected_for_it(tmp_path, targets_dir, tiny_encoder, one_thread):
    animal = [json.loads(line) for line in Path(targets_dir["animal"]).read_text().splitlines()]
    rows = demo_records(120) + [{"id": "leak", "messages": animal[0]["messages"]}]
    pool = str(write_jsonl(tmp_path / "pool.jsonl", rows))
    out = tmp_path / "r"
    run(out, pool, {"food": targets_dir["food"]}, tiny_encoder)
    summary = tamis.add_task(str(out), {"animal": targets_dir["animal"]})
    table = tamis.read_run(str(out))
    leak = next(r for r in table.to_pylist() if r["id"] == "leak")
    assert leak["matches_target_animal"] and not leak["matches_target"]
    assert leak["score_rds_animal"] == pytest.approx(1.0, abs=1e-4)  # it is the target itself
    assert not leak["selected"]
    assert summary.counts["matches_target"] == 1


def test_an_interrupted_add_task_is_never_served_and_finishes_when_rerun(tmp_path, pool, targets_dir, tiny_encoder,
                                                                         one_thread):
    out = tmp_path / "r"
    run(out, pool, {"food": targets_dir["food"]}, tiny_encoder)
    folder = RunFolder(str(out))
    # What a kill after the first chunk leaves: the state says adding, one chunk's task file is there.
    tamis.add_task(str(out), {"animal": targets_dir["animal"]}, reselect=False)
    done = sorted((out / "attributes" / "task-animal").glob("*.parquet"))
    for p in done[1:]:
        p.unlink()
    digest = json.loads((out / "manifest.json").read_text())["tasks"]["animal"]["target_digest"]
    folder.set_state("adding", by="add-task", tasks=["animal"], targets={"animal": digest}, chunks=3)
    with pytest.raises(UnfinishedRunError, match="animal being added.*tamis add-task"):
        tamis.load_selected(str(out))
    shown = runner.invoke(app, ["inspect", str(out)])
    assert "unfinished: task(s) animal being added" in shown.output and "tamis add-task" in shown.output, (shown.output, shown.exception)
    summary = tamis.add_task(str(out), {"animal": targets_dir["animal"]})
    assert summary.manifest["tasks"]["animal"]["chunks"] == {"planned": 3, "reused": 1, "computed": 2}
    assert len(tamis.load_selected(str(out), task="animal")) > 0


def test_add_task_refuses_an_unknown_task_on_reselect(tmp_path, pool, targets_dir, tiny_encoder, one_thread):
    out = tmp_path / "r"
    run(out, pool, {"food": targets_dir["food"]}, tiny_encoder)
    with pytest.raises(ConfigError, match="not in this run"):
        tamis.reselect(str(out), 10, tasks=["animal"])
    tamis.add_task(str(out), {"animal": targets_dir["animal"]})
    only = tamis.reselect(str(out), 10, tasks=["animal"])
    assert only.counts["selected"] == 10
    assert set(t for ts in tamis.read_run(str(out)).column("selected_for").to_pylist() for t in ts) == {"animal"}


def test_a_run_made_before_the_selection_moved_is_read_and_reselected(tmp_path, pool, targets_dir, tiny_encoder,
                                                                      one_thread):
    """Runs of manifest version 1 kept selected/rank/selected_for inside the shards: they are read
    as they are, and a reselect writes the selection beside them, which then wins."""
    import shutil

    import pyarrow as pa

    out = tmp_path / "old"
    run(out, pool, targets_dir, tiny_encoder)
    before = tamis.load_selected(str(out))["id"]
    folder = RunFolder(str(out))
    for chunk in folder.chunk_names():  # the version-1 layout: the selection columns inside each shard
        joined = folder.read_chunk(chunk)
        shard = pq.read_table(folder.shard_path(chunk))
        old = pa.table({**{n: shard.column(n) for n in shard.column_names},
                        **{n: joined.column(n) for n in ("selected", "rank", "selected_for")}})
        pq.write_table(old.replace_schema_metadata(shard.schema.metadata), folder.shard_path(chunk))
    shutil.rmtree(out / "attributes")
    assert tamis.load_selected(str(out))["id"] == before
    again = tamis.reselect(str(out), 7)
    assert again.counts["selected"] == 7 and len(tamis.load_selected(str(out))) == 7
    assert sorted(p.name for p in (out / "attributes" / "selection").glob("*.parquet")) == \
        sorted(p.name for p in (out / "shards").glob("*.parquet"))


def test_a_deleted_selection_file_is_refused_not_read_as_unselected(tmp_path, pool, targets_dir, tiny_encoder,
                                                                    one_thread):
    out = tmp_path / "r"
    run(out, pool, targets_dir, tiny_encoder)
    next((out / "attributes" / "selection").glob("*.parquet")).unlink()
    with pytest.raises(RunFolderError, match="selection of this shard was deleted.*tamis reselect"):
        tamis.load_selected(str(out))
    tamis.reselect(str(out), 20)  # writes it again
    assert len(tamis.load_selected(str(out))) == 20


def test_color_says_its_conditional_scored_the_pool_again(tmp_path, targets_dir, one_thread):
    from tamis.selectors import registry

    pool = str(write_jsonl(tmp_path / "pool.jsonl", demo_records(120)))
    params = {f"color.{k}": v for k, v in registry.get("color").test_params().items()}
    out = tmp_path / "r"
    tamis.select(pool=[pool], target={"food": targets_dir["food"]}, selector=["color"], param=params, budget=10,
                 shard_rows=60, out=str(out))
    added = tamis.add_task(str(out), {"animal": targets_dir["animal"]})
    assert added.notes == ["color: a model fitted to the new targets scored every row again (its other half came "
                           "from the feature store)"]
    task = added.manifest["tasks"]["animal"]
    assert task["store"] == {"color_features_reused": 120}  # the prior's loss, read back
    assert "scored every row" in task["pool_side"]["color"]
    run_fresh = tamis.select(pool=[pool], target={"animal": targets_dir["animal"]}, selector=["color"], param=params,
                             budget=10, shard_rows=60, out=str(tmp_path / "fresh"))
    assert run_fresh.counts["accepted"] == 120
    assert tamis.read_run(str(out)).column("score_color_animal").equals(
        tamis.read_run(str(tmp_path / "fresh")).column("score_color_animal"))
