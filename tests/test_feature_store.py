"""Pool features stored once, keyed by content, for every selector: real pipelines on demo rows.

A second run on the same pool and settings, into a new folder, computes no pool feature and
gives the same scores to the bit; selectors with equal specs compute once per run; a changed
setting misses; a damaged entry is computed again; rows read back from a run's shards find the
entries their run stored; ``tamis store du`` and ``prune`` report and delete by kind.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import tamis
from tamis.cli import app
from tamis.models.features import FeatureStore, rows_digest
from tamis.schemas.records import parse_record
from tamis.selectors import registry

from .conftest import demo_records, install_plugin, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS, SHARD = 90, 30  # three chunks


def read_shards(out) -> pa.Table:
    table = pa.concat_tables(pq.read_table(p) for p in sorted(Path(out, "shards").glob("*.parquet")))
    return table.sort_by("id")


def score_columns(table: pa.Table) -> dict[str, np.ndarray]:
    skip = {"id", "messages", "text", "extra", "matches_target", "selected", "rank", "selected_for", "selection_round"}
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names if c not in skip}


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> str:
    rows = demo_records(ROWS)
    # Extra fields, on the row and on a message, are part of a row's content key too.
    rows[0] = dict(rows[0], source="wordnet", weight=2)
    rows[1] = dict(rows[1], messages=[dict(rows[1]["messages"][0], name="asker"), rows[1]["messages"][1]])
    return str(write_jsonl(tmp_path_factory.mktemp("pool") / "pool.jsonl", rows))


def run(pool, out, store, selectors, targets_dir, params=None, **options):
    params = dict(params or {})
    for name in selectors:  # tiny proxies and crowds; scoped so each selector gets its own
        params = {**{f"{name}.{k}": v for k, v in registry.get(name).test_params().items()}, **params}
    needs = any(registry.get(n).needs_target for n in selectors)
    settings = dict(budget=10, shard_rows=SHARD, max_length=64, batch_tokens=2048, feature_store=str(store))
    return tamis.select(pool=[pool], target={"food": targets_dir["food"]} if needs else {}, selector=list(selectors),
                        out=str(out), param=params, **{**settings, **options})


@pytest.mark.parametrize("name", ["rds", "kmeans", "color", "less", "el2n", "grand", "irt"])
def test_a_second_run_reuses_every_stored_feature_and_scores_the_same_bits(name, pool, targets_dir, tmp_path):
    store = tmp_path / "store"
    params = {"irt.sample_size": 50, "irt.calibration_size": 30} if name == "irt" else {}  # a crowd on 90 rows
    first = run(pool, tmp_path / "a", store, [name], targets_dir, params=params)
    rows = first.counts["accepted"]
    assert first.manifest["metrics"][f"{name}_features_computed"] == rows
    assert f"{name}_features_reused" not in first.manifest["metrics"]
    second = run(pool, tmp_path / "b", store, [name], targets_dir, params=params)  # a new folder: no shard to resume from
    assert second.manifest["metrics"][f"{name}_features_reused"] == rows
    assert f"{name}_features_computed" not in second.manifest["metrics"]
    a, b = score_columns(read_shards(tmp_path / "a")), score_columns(read_shards(tmp_path / "b"))
    assert a.keys() == b.keys() and any(k.startswith(f"score_{name}") for k in a)
    for column in a:
        np.testing.assert_array_equal(a[column], b[column], err_msg=column)
    assert np.isfinite(a[next(k for k in a if k.startswith("score_"))].astype(float)).sum() >= rows - 5


def test_rds_and_kmeans_with_one_rendering_embed_each_row_once(pool, targets_dir, tmp_path, tiny_encoder):
    store = tmp_path / "store"
    models = {"rds.model": tiny_encoder, "kmeans.model": tiny_encoder}
    both = run(pool, tmp_path / "a", store, ["rds", "kmeans"], targets_dir, params={**models, "kmeans.text": "all"})
    metrics, rows = both.manifest["metrics"], both.counts["accepted"]
    assert metrics["rds_features_computed"] == rows and metrics["kmeans_features_reused"] == rows
    assert "kmeans_features_computed" not in metrics and "rds_features_reused" not in metrics
    entries = FeatureStore(store).entries()
    assert {e.kind for e in entries} == {"embedding"}
    assert len(entries) == 4  # one per chunk, and kmeans's fitting sample (the whole small pool)
    # kmeans's default embeds the user turns only: another text, other features.
    apart = run(pool, tmp_path / "b", tmp_path / "store2", ["rds", "kmeans"], targets_dir, params=models)
    assert apart.manifest["metrics"]["kmeans_features_computed"] == rows
    # Sharing changes no score: rds alone writes the same column.
    alone = run(pool, tmp_path / "c", tmp_path / "store3", ["rds"], targets_dir, params={"rds.model": tiny_encoder})
    np.testing.assert_array_equal(read_shards(tmp_path / "a").column("score_rds_food").to_numpy(),
                                  read_shards(tmp_path / "c").column("score_rds_food").to_numpy())
    assert alone.manifest["metrics"]["rds_features_computed"] == rows


@pytest.mark.parametrize("change", [{"max_length": 48}, {"param": {"rds.pooling": "weighted_mean"}},
                                    {"feature_dtype": "float16"}])
def test_a_changed_model_setting_or_dtype_misses(change, pool, targets_dir, tmp_path, tiny_encoder):
    store = tmp_path / "store"
    base = {"rds.model": tiny_encoder}
    first = run(pool, tmp_path / "a", store, ["rds"], targets_dir, params=base)
    rows = first.counts["accepted"]
    params = {**base, **change.get("param", {})}
    options = {k: v for k, v in change.items() if k != "param"}
    changed = run(pool, tmp_path / "b", store, ["rds"], targets_dir, params=params, **options)
    assert changed.manifest["metrics"]["rds_features_computed"] == rows
    assert "rds_features_reused" not in changed.manifest["metrics"]


def test_a_changed_model_misses(pool, targets_dir, tmp_path, tiny_encoder):
    store = tmp_path / "store"
    first = run(pool, tmp_path / "a", store, ["el2n"], targets_dir, params={"el2n.runs": 1})
    rows = first.counts["accepted"]
    other = run(pool, tmp_path / "b", store, ["el2n"], targets_dir, params={"el2n.runs": 2})  # another crowd of proxies
    assert other.manifest["metrics"]["el2n_features_computed"] == rows


def test_float16_halves_the_vectors_and_a_hit_scores_as_the_fresh_run(pool, targets_dir, tmp_path, tiny_encoder):
    store = tmp_path / "store"
    params = {"rds.model": tiny_encoder}
    run(pool, tmp_path / "a", store, ["rds"], targets_dir, params=params)
    run(pool, tmp_path / "b", store, ["rds"], targets_dir, params=params, feature_dtype="float16")
    again = run(pool, tmp_path / "c", store, ["rds"], targets_dir, params=params, feature_dtype="float16")
    assert "rds_features_computed" not in again.manifest["metrics"]
    sizes = {}
    for e in FeatureStore(store).entries():
        with np.load(e.path) as npz:
            sizes.setdefault(str(npz["embedding"].dtype), []).append(npz["embedding"].nbytes)
    assert sorted(sizes) == ["float16", "float32"] and sum(sizes["float16"]) * 2 == sum(sizes["float32"])
    half, again_ = (read_shards(tmp_path / x).column("score_rds_food").to_numpy() for x in "bc")
    full = read_shards(tmp_path / "a").column("score_rds_food").to_numpy()
    np.testing.assert_array_equal(half, again_)
    assert not np.array_equal(half, full) and np.abs(half - full).max() < 1e-2  # rounded, not another feature


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_entry_is_a_miss_computed_again(damage, pool, targets_dir, tmp_path, tiny_encoder):
    store = tmp_path / "store"
    params = {"rds.model": tiny_encoder}
    first = run(pool, tmp_path / "a", store, ["rds"], targets_dir, params=params)
    rows = first.counts["accepted"]
    victim = Path(FeatureStore(store).entries()[0].path)
    data = victim.read_bytes()
    victim.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a zip" * 50, "empty": b""}[damage])
    second = run(pool, tmp_path / "b", store, ["rds"], targets_dir, params=params)
    metrics = second.manifest["metrics"]
    assert metrics["rds_features_computed"] == SHARD and metrics["rds_features_reused"] == rows - SHARD
    np.testing.assert_array_equal(read_shards(tmp_path / "a").column("score_rds_food").to_numpy(),
                                  read_shards(tmp_path / "b").column("score_rds_food").to_numpy())
    assert victim.read_bytes() != b"" and np.load(victim)["embedding"].shape[0] == SHARD  # written again


def test_rows_read_back_from_shards_find_their_run_s_entries(pool, targets_dir, tmp_path, tiny_encoder):
    """What ``add-task`` hands the selectors (a shard's rows) keys as the validated pool rows did."""
    from tamis.selectors import RunContext

    store = tmp_path / "store"
    run(pool, tmp_path / "a", store, ["rds"], targets_dir, params={"rds.model": tiny_encoder})
    validated = [parse_record(json.loads(line)) for line in Path(pool).read_text().splitlines()]
    shard_files = sorted(Path(tmp_path / "a", "shards").glob("*.parquet"))
    shards = [pq.read_table(p, columns=["id", "messages", "text", "extra"]).to_pylist() for p in shard_files]
    assert [r["id"] for r in shards[0]] == [r["id"] for r in validated[:SHARD]]
    assert rows_digest(shards[0]) == rows_digest(validated[:SHARD])
    assert json.loads(shards[0][0]["extra"]) == {"source": "wordnet", "weight": 2}  # extras survive the round trip
    selector = registry.create("rds", {"model": tiny_encoder})
    selector.setup(RunContext(max_length=64, batch_tokens=2048, feature_store=str(store)), None,
                   {"animal": demo_records(4)})
    for rows in shards:
        selector.pool_features(rows)
    assert selector.counters() == {"features_reused": sum(len(s) for s in shards)}
    # A row whose extra differs is another row: its chunk misses.
    changed = [dict(shards[0][0], extra=json.dumps({"source": "other"}))] + shards[0][1:]
    selector.pool_features(changed)
    assert selector.counters()["features_computed"] == SHARD


def test_store_du_and_prune(pool, targets_dir, tmp_path, tiny_encoder):
    store = tmp_path / "store"
    run(pool, tmp_path / "a", store, ["rds", "el2n"], targets_dir, params={"rds.model": tiny_encoder})
    foreign = store / "notes.txt"
    foreign.write_text("not the store's")
    (store / "embedding" / "readme.npz").write_bytes(b"also not an entry")
    runner = CliRunner()
    du = runner.invoke(app, ["store", "du", str(store)])
    assert du.exit_code == 0, du.output
    lines = {line.split()[1]: line for line in du.output.splitlines() if line.startswith("│")}
    assert "embedding" in lines and "el2n" in lines and "90" in lines["embedding"] and "90" in lines["el2n"]

    refused = runner.invoke(app, ["store", "prune", str(store)])
    assert refused.exit_code != 0 and "say what to prune" in refused.output
    dry = runner.invoke(app, ["store", "prune", str(store), "--older-than", "0"])
    assert dry.exit_code == 0 and "would delete 6 entries" in " ".join(dry.output.split()), dry.output
    assert len(FeatureStore(store).entries()) == 6  # a dry run deletes nothing

    el2n = runner.invoke(app, ["store", "prune", str(store), "--kind", "el2n", "--yes"])
    assert el2n.exit_code == 0 and "deleted 3 entries" in " ".join(el2n.output.split()), el2n.output
    assert {e.kind for e in FeatureStore(store).entries()} == {"embedding"}

    entries = FeatureStore(store).entries()
    os.utime(entries[0].path, (1, 1))  # the oldest
    fit = runner.invoke(app, ["store", "prune", str(store), "--max-size", str(sum(e.size for e in entries) - 1), "--yes"])
    assert fit.exit_code == 0 and "deleted 1 entries" in " ".join(fit.output.split()), fit.output
    assert entries[0].path not in {e.path for e in FeatureStore(store).entries()}

    everything = runner.invoke(app, ["store", "prune", str(store), "--older-than", "0", "--yes"])
    assert everything.exit_code == 0
    assert FeatureStore(store).entries() == [] and foreign.read_text() == "not the store's"
    assert (store / "embedding" / "readme.npz").exists()
    bad = runner.invoke(app, ["store", "prune", str(store), "--max-size", "lots"])
    assert bad.exit_code != 0 and "--max-size" in bad.output


def test_prune_deletes_only_the_store_s_entries(tmp_path):
    """LESS's first store (ROOT/ab/<key>.npy) is listed as kind legacy; nothing else is ever an entry."""
    from tamis.models.features import Entry

    store = FeatureStore(tmp_path / "store")
    legacy = tmp_path / "store" / "ab" / ("ab" + "0" * 62 + ".npy")
    legacy.parent.mkdir(parents=True)
    np.save(legacy, np.zeros((3, 4), np.float32))
    store.save("embedding", "cd" + "1" * 62, {"embedding": np.ones((2, 3), np.float32)}, {"kind": "embedding"}, 2)
    (tmp_path / "store" / "ab" / "notes.npy").write_bytes(b"")
    outside = tmp_path / "elsewhere" / "embedding" / "cd" / ("cd" + "1" * 62 + ".npz")
    outside.parent.mkdir(parents=True)
    outside.write_bytes(b"x")
    assert sorted(e.kind for e in store.entries()) == ["embedding", "legacy"]
    with pytest.raises(ValueError, match="not an entry"):
        store.delete([Entry(str(outside), "embedding", 1, 0.0)])
    result = CliRunner().invoke(app, ["store", "prune", str(tmp_path / "store"), "--kind", "legacy", "--yes"])
    assert result.exit_code == 0, result.output
    assert not legacy.exists() and outside.exists() and (tmp_path / "store" / "ab" / "notes.npy").exists()
    assert [e.kind for e in store.entries()] == ["embedding"]


POISONED = '''
import numpy as np
from tamis.selectors import Selector


class PoisonedLength(Selector):
    """Score = characters of text, through stored features; a 'poison' row cannot be featurized."""
    name = "poisoned_length"

    def feature_spec(self):
        return {"kind": "length"}

    def featurize(self, records):
        if any("poison" in (r["text"] or "") for r in records):
            raise ValueError("cannot featurize poison")
        return {"length": np.array([len(r["text"]) for r in records], dtype=np.float32)}

    def score_features(self, features, records):
        return {"score_poisoned_length": features["length"]}
'''


def test_a_chunk_scored_row_by_row_leaves_no_entry_per_row(tmp_path, monkeypatch):
    """A chunk that fails is scored one row at a time; those rows read the store but write none."""
    install_plugin(tmp_path, monkeypatch, "tamis_poisoned_plugin", POISONED, {"poisoned_length": "PoisonedLength"})
    rows = [{"id": r["id"], "text": r["messages"][1]["content"]} for r in demo_records(20)]
    rows[13]["text"] = "a poison pill"
    pool = write_jsonl(tmp_path / "p.jsonl", rows)
    store = tmp_path / "store"
    done = tamis.select(pool=[str(pool)], selector=["poisoned_length"], budget=5, out=str(tmp_path / "o"),
                        shard_rows=10, score_attempts=1, feature_store=str(store), param={})
    assert done.counts["accepted"] == 19 and done.counts["rejected"] == 1
    assert [e.kind for e in FeatureStore(store).entries()] == ["length"]  # the clean chunk's one entry
    assert done.manifest["metrics"]["poisoned_length_features_computed"] == 19
