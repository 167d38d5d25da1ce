"""tamis evaluate on a real (tiny) run: real trainings of a tiny proxy, real eval losses."""
import json

import pytest

import tamis
from tamis.evaluate import EvalSettings, evaluate_run, training_stream

from .conftest import DEMO, demo_records, write_jsonl

TINY = EvalSettings(steps=24, batch_size=8, lr=5e-3, n_layer=1, n_embd=32, n_head=2, vocab_size=300, context=64,
                    tokenizer_sample=400)


def test_training_stream_has_exactly_n_examples_and_cycles():
    rows = [{"id": str(i)} for i in range(5)]
    s = training_stream(rows, 12, seed=0)
    assert len(s) == 12 and {r["id"] for r in s[:5]} == {str(i) for i in range(5)}
    assert training_stream(rows, 12, seed=0) == s


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    rows = demo_records(300)
    pool = write_jsonl(tmp / "pool.jsonl", rows)
    tamis.select(pool=[str(pool)], target={"animal": str(DEMO / "animal_dev.jsonl")}, out=str(tmp / "out"), budget=30)
    return tmp / "out"


def test_evaluate_reports_every_arm_and_seed_and_reuses_trainings(run_dir, tmp_path):
    # The eval set is the selected rows themselves: training on them must give the lowest loss.
    selected = tamis.load_selected(str(run_dir))
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"id": r["id"], "messages": r["messages"]} for r in selected])
    cache = tmp_path / "cache"
    res = evaluate_run(str(run_dir), {"animal": str(eval_file)}, seeds=2, settings=TINY, cache_dir=cache,
                       labels=str(DEMO / "labels.jsonl.gz"), label_of={"animal": "noun.animal"}, k=20)
    summary = res["summary"]["animal"]
    assert set(summary) == {"selected", "random", "full"}
    assert all(len(summary[a]["values"]) == 2 for a in summary)
    assert summary["selected"]["mean"] < summary["random"]["mean"]
    assert res["precision_at_k"]["animal"]["k"] == 20 and res["precision_at_k"]["animal"]["precision"] > res["precision_at_k"]["animal"]["base_rate"]
    saved = json.loads((run_dir / "evaluate.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(res["summary"]))
    again = evaluate_run(str(run_dir), {"animal": str(eval_file)}, seeds=2, settings=TINY, cache_dir=cache)
    assert all(t["cached"] for arm in again["timings"].values() for t in arm)
    assert again["summary"] == res["summary"]


def test_evaluate_rejects_unknown_baselines(run_dir):
    with pytest.raises(ValueError, match="unknown baselines"):
        evaluate_run(str(run_dir), {}, baselines=("oracle",))


def test_report_embeds_plots_and_the_evaluate_table(run_dir):
    from tamis.report import write_report

    page = write_report(str(run_dir)).read_text()
    assert page.count("data:image/png;base64,") >= 1 and "score_rds_animal" in page
    assert "tamis evaluate" in page and "Held-out mean token loss" in page
    assert "input = accepted + rejected: <b>holds</b>" in page
