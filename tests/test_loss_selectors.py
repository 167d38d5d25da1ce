"""CoLoR-Filter, EL2N and GraNd on real (tiny) proxies and real demo data, through the pipeline too."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

import tamis  # noqa: E402
from tamis.io.runfolder import RunFolder
from tamis.models.lm import encode_records  # noqa: E402
from tamis.models.stats import sequence_stats  # noqa: E402
from tamis.models.train import TrainedProxy  # noqa: E402
from tamis.pipeline.sources import read_targets  # noqa: E402
from tamis.selectors import PoolSample, RunContext, registry  # noqa: E402
from tamis.selectors.color import ColorFilterSelector  # noqa: E402
from tamis.models.heads import head_scores, train_heads  # noqa: E402
from tamis.selectors.el2n import EL2NSelector, GraNdSelector  # noqa: E402

from .conftest import DEMO, demo_records, write_jsonl  # noqa: E402

CONTEXT = RunContext(max_length=64, batch_tokens=4096)
TINY_COLOR = {"sample_size": 600, "prior_epochs": 2, "batch_size": 16, "n_layer": 1, "n_embd": 32, "n_head": 2,
              "vocab_size": 512, "positions": 64}
TINY_LM = {"runs": 2, "sample_size": 200, "batch_size": 16, "n_layer": 1, "n_embd": 16, "n_head": 2,
           "vocab_size": 300, "positions": 64}
CLASSES = ["noun.plant", "noun.animal", "noun.person", "noun.artifact"]


pytestmark = pytest.mark.usefixtures("one_thread")


def demo_labels() -> dict[str, str]:
    with gzip.open(DEMO / "labels.jsonl.gz", "rt", encoding="utf-8") as f:
        return {o["id"]: o["domain"] for o in map(json.loads, f)}


def read_shards(out) -> pa.Table:
    """Every row, shards joined with their selection (as tamis reads them)."""
    return RunFolder(str(out)).read_shards()


# -- CoLoR-Filter ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool():
    return demo_records(2006)


@pytest.fixture(scope="module")
def color(pool, targets_dir):
    targets = read_targets(targets_dir)
    selector = ColorFilterSelector(**TINY_COLOR)
    prepared = selector.prepare(PoolSample(lambda: pool), targets, CONTEXT)
    selector.setup(CONTEXT, prepared, targets)
    return selector, prepared, selector.score(pool)


def test_color_score_is_prior_loss_minus_conditional_loss(color, pool):
    selector, prepared, scores = color
    assert set(scores) == {"score_color_animal", "score_color_food"}
    prior, tok = TrainedProxy.open(prepared.prior["path"]).load()
    food = TrainedProxy.open(prepared.conditional["food"]["path"])
    # The conditional starts from the prior's final weights, with its own (fresh) schedule.
    inputs = json.loads((food.path / "inputs.json").read_text())
    assert inputs["kind"] == "finetune" and inputs["start"]["proxy"] == prepared.prior["key"]
    assert food.checkpoints[0].step == 4  # 32 targets / batch 8: counted from zero, not from the prior's steps
    cond, _ = food.load()
    some = pool[:12]
    examples = encode_records(tok, some, 64)
    expected = sequence_stats(prior, examples)["loss"] - sequence_stats(cond, examples)["loss"]
    np.testing.assert_allclose(scores["score_color_food"][:12], expected, atol=1e-5)
    assert not np.allclose(scores["score_color_food"], scores["score_color_animal"])


def test_color_ranks_each_target_domain_above_random(color, pool):
    from sklearn.metrics import roc_auc_score

    _, _, scores = color
    labels = demo_labels()
    for task, domain in (("food", "noun.food"), ("animal", "noun.animal")):
        truth = np.array([labels[r["id"]] == domain for r in pool])
        s = scores[f"score_color_{task}"]
        top = np.argsort(-s, kind="stable")[:50]
        # The conditional fits the task's domain: in-domain pool rows gain the most likelihood.
        assert truth[top].mean() > 3 * truth.mean(), (task, truth[top].mean(), truth.mean())
        assert roc_auc_score(truth, s) > 0.75


def test_color_budget_defaults_to_pool_over_tau_and_needs_targets():
    assert ColorFilterSelector(tau=16).default_budget == pytest.approx(1 / 16)
    assert ColorFilterSelector().default_budget == pytest.approx(1 / 7)
    with pytest.raises(ValueError, match="needs --target"):
        ColorFilterSelector(**TINY_COLOR).prepare(PoolSample(lambda: demo_records(50)), None, CONTEXT)
    with pytest.raises(ValueError, match="tau"):
        ColorFilterSelector(tau=0.5)


def test_color_end_to_end_through_the_pipeline(tmp_path, targets_dir):
    rows = demo_records(240)
    path = write_jsonl(tmp_path / "pool.jsonl", rows)
    params = dict(TINY_COLOR, sample_size=240, prior_epochs=1)
    summary = tamis.select(pool=[str(path)], target=targets_dir, selector=["color"], out=str(tmp_path / "out"),
                           shard_rows=100, max_length=64, param=params)
    table = read_shards(tmp_path / "out")
    assert {"score_color_food", "score_color_animal"} <= set(table.schema.names)
    assert np.isfinite(table.column("score_color_food").to_numpy()).all()
    # No budget: k = eligible rows / tau (7), taken round-robin over the two tasks.
    eligible = summary.counts["accepted"] - summary.counts["matches_target"]
    assert summary.counts["selected"] == eligible // 7
    models = summary.manifest["models"]
    assert {"color.prior", "color.conditional.food", "color.conditional.animal"} <= set(models)


# -- EL2N / GraNd: classification -------------------------------------------------------------------
def test_head_scores_match_the_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    y[3] = -1  # no label: NaN
    heads = train_heads(x, np.maximum(y, 0), 3, runs=2, epochs=3, hidden=0, batch_size=8)
    el2n, grand = head_scores(heads, x, y, "el2n"), head_scores(heads, x, y, "grand")
    expected_el2n, expected_grand = np.zeros(40), np.zeros(40)
    for state in heads:  # softmax regression: grad_W = (p - e_y) x^T, grad_b = p - e_y
        p = torch.softmax(torch.as_tensor(x) @ state["0.weight"].T + state["0.bias"], -1).numpy()
        err = np.linalg.norm(p - np.eye(3)[np.maximum(y, 0)], axis=1)
        expected_el2n += err / 2
        expected_grand += err * np.sqrt((x.astype(np.float64) ** 2).sum(1) + 1) / 2
    known = y >= 0
    np.testing.assert_allclose(el2n[known], expected_el2n[known], rtol=1e-5)
    np.testing.assert_allclose(grand[known], expected_grand[known], rtol=1e-4)
    assert np.isnan(el2n[3]) and np.isnan(grand[3])


@pytest.fixture(scope="module")
def labelled():
    """Definitions from four WordNet domains labelled with their domain, 10% relabelled at random."""
    labels = demo_labels()
    rows = [r for r in demo_records(2006) if labels[r["id"]] in CLASSES][:240]
    flipped = np.random.default_rng(0).random(len(rows)) < 0.1
    out = []
    for r, flip in zip(rows, flipped):
        label = labels[r["id"]]
        if flip:
            label = CLASSES[(CLASSES.index(label) + 1) % len(CLASSES)]
        out.append({"id": r["id"], "messages": r["messages"], "text": None, "extra": json.dumps({"label": label})})
    return out, flipped


@pytest.mark.parametrize("cls", [EL2NSelector, GraNdSelector])
def test_classification_scores_flag_mislabelled_records(cls, labelled):
    from sklearn.metrics import roc_auc_score

    records, flipped = labelled
    selector = cls(runs=2, head_hidden=32, head_epochs=10)
    prepared = selector.prepare(PoolSample(lambda: records), None, CONTEXT)
    assert prepared.data_kind == "classification" and prepared.examples == len(records)
    selector.setup(CONTEXT, prepared, None)
    unlabelled = {"id": "x", "messages": None, "text": "A plain record with no label.", "extra": None}
    scores = selector.score(records + [unlabelled])[f"score_{cls.name}"]
    assert scores.dtype == np.float32 and np.isnan(scores[-1]) and np.isfinite(scores[:-1]).all()
    # The classic claim: wrongly labelled examples are the hard ones early in training.
    assert roc_auc_score(flipped, scores[:-1]) > 0.75
    if cls is EL2NSelector:
        assert (scores[:-1] >= 0).all() and (scores[:-1] <= np.sqrt(2) + 1e-6).all()


# -- EL2N / GraNd: language models, end to end ------------------------------------------------------
def test_lm_el2n_averages_runs_of_sequence_stats():
    rows = demo_records(200)
    selector = EL2NSelector(**TINY_LM)
    prepared = selector.prepare(PoolSample(lambda: rows), None, CONTEXT)
    assert prepared.data_kind == "lm" and len(prepared.proxies) == 2
    assert prepared.proxies[0]["key"] != prepared.proxies[1]["key"]  # independent runs (seeds)
    selector.setup(CONTEXT, prepared, None)
    scores = selector.score(rows[:10])["score_el2n"]
    runs = []
    for spec in prepared.proxies:
        model, tok = TrainedProxy.open(spec["path"]).load()
        runs.append(sequence_stats(model, encode_records(tok, rows[:10], 64))["el2n"])
    np.testing.assert_allclose(scores, np.mean(runs, axis=0), atol=1e-6)
    assert not np.allclose(runs[0], runs[1])


def test_el2n_select_end_to_end_skips_the_hardest_fraction(tmp_path):
    rows = demo_records(200)
    path = write_jsonl(tmp_path / "pool.jsonl", rows)
    summary = tamis.select(pool=[str(path)], selector=["el2n"], out=str(tmp_path / "out"), budget=20, shard_rows=100,
                           max_length=64, param=dict(TINY_LM, skip_hardest=0.25))
    assert summary.counts["selected"] == 20
    assert summary.manifest["resolved"]["skip_top"] == 0.25
    table = read_shards(tmp_path / "out")
    scores = table.column("score_el2n").to_numpy()
    selected = table.column("selected").to_numpy(zero_copy_only=False)
    order = np.argsort(-scores, kind="stable")
    assert not selected[order[:50]].any()  # the hardest 25% of 200 rows are left out
    assert selected[order[50:70]].all()  # then the next 20 highest are kept
    assert "el2n" in registry.available() and "grand" in registry.available()


# -- a given model instead of a built proxy --------------------------------------------------------
def test_given_model_is_warmed_up_as_the_prior_and_as_lora_runs_for_grand(tiny_causal, targets_dir):
    rows = demo_records(120)
    targets = read_targets(targets_dir)
    color = ColorFilterSelector(model=tiny_causal, sample_size=120, prior_epochs=1, batch_size=16, finetune_epochs=1)
    prepared = color.prepare(PoolSample(lambda: rows), targets, CONTEXT)
    prior = json.loads((Path(prepared.prior["path"]) / "inputs.json").read_text())
    assert prior["kind"] == "warmup" and prior["base"] == tiny_causal and prior["n_examples"] == 120
    color.setup(CONTEXT, prepared, targets)
    assert np.isfinite(color.score(rows[:8])["score_color_food"]).all()

    grand = GraNdSelector(model=tiny_causal, mode="lora", runs=2, sample_size=60, batch_size=16)
    prepared = grand.prepare(PoolSample(lambda: rows), None, CONTEXT)
    grand.setup(CONTEXT, prepared, None)
    scores = grand.score(rows[:8])["score_grand"]
    assert np.isfinite(scores).all() and (scores > 0).all()
    model, _ = grand.proxies_[0]
    assert any("lora" in n for n, p in model.named_parameters() if p.requires_grad)
