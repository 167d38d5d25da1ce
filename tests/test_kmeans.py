"""kMQ (k-means, quotas, quality-weighted draws) and its iterative refinement."""
import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tamis.io.runfolder import RunFolder
import tamis
from tamis.selectors import PoolSample, RunContext
from tamis.selectors.kmeans import KMeansSelector, default_k
from tamis.selectors.rules import allocate, draw, gumbel_keys, quality_logits, softmax
from tamis.selectors.rds import RDSSelector

from .conftest import DEMO, demo_records, write_jsonl

TINY_PROXY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 300, "context": 64, "sample_size": 120,
              "epochs": 1, "batch_size": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def pool(tmp_path):
    return write_jsonl(tmp_path / "pool.jsonl", demo_records(200))


def shards(out) -> pa.Table:
    return RunFolder(str(out)).read_shards()


def selection(out) -> list[tuple[str, int, int]]:
    t = shards(out)
    t = t.filter(t.column("selected")).sort_by("rank")
    return list(zip(t.column("id").to_pylist(), t.column("rank").to_pylist(), t.column("selection_round").to_pylist()))


def run(tmp_path, pool, encoder, name, **kw):
    own = {"k": 6, "sample_size": 200, "niter": 10, **kw.pop("param", {})}
    param = {"model": encoder, **{k if "." in k else f"kmeans.{k}": v for k, v in own.items()}}
    args = dict(pool=[str(pool)], out=str(tmp_path / name), selector=["kmeans"], budget=30, shard_rows=100,
                max_length=64, param=param)
    return tamis.select(**{**args, **kw})


# -- pure pieces -----------------------------------------------------------------------------
def test_quotas_redistribute_to_fill_the_budget_exactly():
    # Equal quotas of 3; cluster 0 has 1 row and cluster 2 none: their 5 go to the others.
    assert allocate(12, [1, 10, 0, 3, 10], [1, 1, 1, 1, 1]).tolist() == [1, 4, 0, 3, 4]
    assert allocate(10, [50, 50, 50], [0.7, 0.2, 0.1]).tolist() == [7, 2, 1]
    assert allocate(100, [3, 4, 5], [1, 1, 1]).tolist() == [3, 4, 5]  # budget above the pool: everything
    assert allocate(5, [2, 10], [1.0, 0.0]).tolist() == [2, 3]  # a zero weight takes rows only when it must
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 30))
        cap = rng.integers(0, 20, n)
        w = rng.random(n) * (rng.random(n) > 0.2)
        budget = int(rng.integers(0, 300))
        q = allocate(budget, cap, w)
        assert q.sum() == min(budget, cap.sum()) and (q <= cap).all() and (q >= 0).all()
        if w.sum() > 0 and (budget * w / w.sum() < cap).all():  # nobody runs out: within one of the share
            assert np.abs(q - budget * w / w.sum()).max() < 1


def test_sampling_is_proportional_to_exp_quality_over_temperature():
    ids = ["a", "b", "c", "d"]
    quality = np.array([0.0, 1.0, 2.0, 3.0])
    for temperature in (1.0, 2.0):
        logits = quality_logits(quality, temperature, standardize=False)
        first = [int(np.argmax(logits + gumbel_keys(ids, seed))) for seed in range(4000)]
        freq = np.bincount(first, minlength=4) / 4000
        np.testing.assert_allclose(freq, softmax(quality, temperature), atol=0.025)
    # Standardized quality: a shift or scale of the column changes nothing.
    np.testing.assert_allclose(quality_logits(quality * 10 + 3, 1.0), quality_logits(quality, 1.0))


def test_draw_takes_the_quota_from_each_cluster_round_robin():
    clusters = np.array([0, 0, 0, 0, 1, 1, 2])
    keys = np.array([0.1, 0.9, 0.5, 0.3, 0.2, 0.8, 0.0])
    taken = np.zeros(7, dtype=bool)
    picked, quotas = draw(clusters, keys, taken, 5, np.ones(3) / 3, 3)
    assert quotas.tolist() == [2, 2, 1]
    assert picked.tolist() == [1, 5, 6, 2, 4]  # best of each cluster, then the second best of each
    taken[picked] = True
    again, _ = draw(clusters, keys, taken, 2, np.ones(3) / 3, 3)
    assert again.tolist() == [3, 0]  # only cluster 0 has rows left: it takes the whole round


def test_default_k_rule():
    assert default_k(20_000, 10_000) == 100
    assert default_k(5_800_000, 10_000) == 500  # 20 sample rows per centroid
    assert default_k(10, 10) == 2
    # The paper's K: 1024 once the sample holds 20 rows per centroid (the default sample does).
    assert default_k(5_800_000, 20_480) == 1024
    assert default_k(20_000, 20_000, "paper") == 1000
    assert default_k(200_000, 20_480, "paper") == 1024 and default_k(200_000, 20_480) == 316


# -- end to end ------------------------------------------------------------------------------
def test_same_seed_same_selection_whatever_the_sharding(tmp_path, pool, tiny_encoder):
    summary = run(tmp_path, pool, tiny_encoder, "a")
    assert summary.counts["selected"] == 30
    first = selection(tmp_path / "a")
    assert [r for _, r, _ in first] == list(range(1, 31)) and {s for _, _, s in first} == {1}
    run(tmp_path, pool, tiny_encoder, "b", shard_rows=70)
    assert selection(tmp_path / "b") == first
    run(tmp_path, pool, tiny_encoder, "c", seed=1)
    assert selection(tmp_path / "c") != first
    t = shards(tmp_path / "a")
    assert t.schema.field("cluster").type == pa.int32() and t.schema.field("selection_round").type == pa.int32()
    assert t.filter(pa.compute.invert(t.column("selected"))).column("selection_round").null_count == 200 - 30
    report = json.loads(Path(tmp_path, "a", "manifest.json").read_text())["selection_report"]
    assert sum(report["rounds"][0]["quotas"]) == 30 and report["rounds"][0]["loss_gap"] is None
    # A smaller reselect leaves a shard without picks: its old rounds are cleared too.
    tamis.reselect(str(tmp_path / "a"), 1)
    t = shards(tmp_path / "a")
    assert t.column("selected").to_pylist().count(True) == 1
    assert t.column("selection_round").to_pylist().count(None) == 199


def test_three_refinement_rounds_record_weights_in_the_manifest(tmp_path, pool, tiny_encoder):
    params = {"rounds": 3, "proxy": TINY_PROXY, "train_epochs": 1, "train_batch_size": 8}
    run(tmp_path, pool, tiny_encoder, "r", param=params)
    picked = selection(tmp_path / "r")
    assert [s for _, _, s in picked] == [1] * 10 + [2] * 10 + [3] * 10
    manifest = json.loads(Path(tmp_path, "r", "manifest.json").read_text())
    rounds = manifest["selection_report"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3] and [r["selected"] for r in rounds] == [10, 10, 10]
    assert rounds[0]["cluster_weights"] == [1 / 6] * 6
    for r in rounds[1:]:
        gaps, weights = np.array(r["loss_gap"]), np.array(r["cluster_weights"])
        assert np.isfinite(gaps).all() and 0 < gaps.max() < 2  # trained loss over untrained loss
        np.testing.assert_allclose(weights, softmax(gaps, 0.1))
        assert sum(r["quotas"]) == 10
    assert manifest["prepared"]["kmeans"]["proxy"]["path"]
    # A reselect reruns the rule (the trained proxies come from the cache) and replaces the report.
    tamis.reselect(str(tmp_path / "r"), 12)
    manifest = json.loads(Path(tmp_path, "r", "manifest.json").read_text())
    assert [r["selected"] for r in manifest["selection_report"]["rounds"]] == [4, 4, 4]
    assert len(selection(tmp_path / "r")) == 12


def test_quality_from_another_selectors_column(tmp_path, pool, tiny_encoder, targets_dir):
    """With quality = another selector's score and a low temperature, each cluster's picks are
    its best-scored rows; with uniform quality they are not."""
    kw = dict(selector=["rds", "kmeans"], select_by="kmeans", target={"food": targets_dir["food"]})

    def mean_percentile(name, quality):
        run(tmp_path, pool, tiny_encoder, name, param={"kmeans.quality": quality, "kmeans.temperature": 0.1}, **kw)
        t = shards(tmp_path / name)
        food = t.column("score_rds_food").to_numpy()
        percentile = food.argsort().argsort() / (len(food) - 1)
        chosen = t.column("selected").to_numpy(zero_copy_only=False)
        assert chosen.sum() == 30
        return percentile[chosen].mean()

    weighted, uniform = mean_percentile("q", "score_rds_food"), mean_percentile("u", "uniform")
    assert weighted > uniform + 0.1, (weighted, uniform)
    assert json.loads(Path(tmp_path, "q", "manifest.json").read_text())["resolved"]["select_by"] == "kmeans"
    with pytest.raises(ValueError, match="score_rds_animal"):
        run(tmp_path, pool, tiny_encoder, "bad", param={"kmeans.quality": "score_rds_animal"}, **kw)


def test_covers_more_domains_than_rds_top_k_and_every_cluster():
    """Real MiniLM embeddings of 300 demo rows (WordNet, labelled by domain); 30 picked each way.

    (Against random selections the domain count is about even at this size: see
    benchmarks/kmeans_diversity.py for the measured comparison.)"""
    records = demo_records(300)
    with gzip.open(DEMO / "labels.jsonl.gz", "rt") as f:
        domain = {r["id"]: r["domain"] for r in map(json.loads, f)}
    context = RunContext(max_length=64, batch_tokens=4096)
    km = KMeansSelector(sample_size=300, k=15)
    km.setup(context, km.prepare(PoolSample(lambda: records), None, context), None)
    clusters = km.score(records)["cluster"]
    picked = km.selection_rule().choose(pa.table({"id": [r["id"] for r in records], "cluster": clusters}), 30,
                                        context.seed, records=None)
    assert len(picked.ids) == 30 and picked.report["k"] == 15
    rows = [i for i, r in enumerate(records) if r["id"] in set(picked.ids)]
    kmeans_domains = {domain[records[i]["id"]] for i in rows}

    rds = RDSSelector()
    with open(DEMO / "animal_dev.jsonl") as f:
        rds.setup(context, None, {"animal": [dict(json.loads(line), subtask=None) for line in f]})
    top = np.argsort(-rds.score(records)["score_rds_animal"], kind="stable")[:30]
    rds_domains = {domain[records[i]["id"]] for i in top}
    assert len(kmeans_domains) > len(rds_domains) + 3
    # Equal quotas reach every cluster; random selections of the same size miss some.
    rng = np.random.default_rng(0)
    random_clusters = [len(set(clusters[rng.choice(300, 30, replace=False)])) for _ in range(200)]
    assert len(set(clusters[rows])) == 15 > np.mean(random_clusters)
