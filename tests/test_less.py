"""LESS on a real (tiny) warm-up proxy and real demo data: the formulas against a batch-1
reference, the feature store, and the pipeline."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

import tamis  # noqa: E402
from tamis.io.runfolder import RunFolder
from tamis.models.lm import encode_records, pad_batch, token_nll  # noqa: E402
from tamis.models.projection import RademacherProjector  # noqa: E402
from tamis.models.train import TrainedProxy  # noqa: E402
from tamis.pipeline.sources import read_targets  # noqa: E402
from tamis.selectors import PoolSample, RunContext  # noqa: E402
from tamis.selectors.less import LessSelector  # noqa: E402

from .conftest import demo_records, write_jsonl  # noqa: E402

CONTEXT = RunContext(max_length=64, batch_tokens=4096)
TINY = {"lora_r": 4, "lora_alpha": 16.0, "proj_dim": 64, "fraction": 0.1, "epochs": 3, "batch_size": 16,
        "sample_size": 400, "build_epochs": 1, "n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 400,
        "positions": 64}

pytestmark = pytest.mark.usefixtures("one_thread")


def read_shards(out) -> pa.Table:
    """Every row, shards joined with their selection (as tamis reads them)."""
    return RunFolder(str(out)).read_shards()


@pytest.fixture(scope="module")
def pool():
    return demo_records(600)


@pytest.fixture(scope="module")
def targets(targets_dir):
    found = read_targets(targets_dir)
    # Two subtasks in "food", to exercise mean-within, max-across.
    found["food"] = [dict(r, subtask="a" if i % 2 else "b") for i, r in enumerate(found["food"])]
    return found


@pytest.fixture(scope="module")
def less(pool, targets, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("features"))
    selector = LessSelector(**TINY, feature_store=store)
    prepared = selector.prepare(PoolSample(lambda: pool), targets, CONTEXT)
    selector.setup(CONTEXT, prepared, targets)
    return selector, prepared, store


def reference_scores(prepared, pool_records, targets, tasks) -> dict[str, np.ndarray]:
    """LESS as the reference code does it: one backward per example, per checkpoint."""
    proxy = TrainedProxy.open(prepared.proxy)
    out = {task: 0.0 for task in tasks}
    for ckpt, weight in zip(proxy.checkpoints, prepared.weights):
        model, tok = proxy.load(ckpt.index - 1, trainable=True)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        projector = RademacherProjector(sum(dict(model.named_parameters())[n].numel() for n in names),
                                        prepared.proj_dim, seed=0)
        matrix = projector.dense()
        moments = ckpt.adam_moments()
        m = torch.cat([moments[n][0].reshape(-1) for n in names])
        v = torch.cat([moments[n][1].reshape(-1) for n in names])

        def grad_of(example, adam):
            model.zero_grad(set_to_none=True)
            ids, mask, labels = pad_batch([example], tok.pad_token_id)
            nll, scored = token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
            (nll.sum() / scored.sum()).backward()
            g = torch.cat([dict(model.named_parameters())[n].grad.reshape(-1) for n in names])
            if adam:
                g = (0.9 * m + 0.1 * g) / torch.sqrt(0.999 * v + 0.001 * g * g + 1e-8)
            return torch.nn.functional.normalize(g @ matrix, dim=0)

        pool_g = torch.stack([grad_of(e, True) for e in encode_records(tok, pool_records, 64)])
        for task in tasks:
            tgt = torch.stack([grad_of(e, False) for e in encode_records(tok, targets[task], 64)])
            out[task] = out[task] + weight * (pool_g @ tgt.T).detach().numpy()
    scores = {}
    for task in tasks:
        subtasks = sorted({r.get("subtask") or "" for r in targets[task]})
        cols = [[i for i, r in enumerate(targets[task]) if (r.get("subtask") or "") == s] for s in subtasks]
        scores[task] = np.stack([out[task][:, c].mean(axis=1) for c in cols], axis=1).max(axis=1)
    return scores


def test_scores_match_a_batch_one_reference(less, pool, targets):
    from scipy.stats import spearmanr

    selector, prepared, _ = less
    assert len(prepared.weights) == 3 and abs(sum(prepared.weights) - 1) < 1e-9
    assert prepared.weights[0] > prepared.weights[-1]  # linear decay: early epochs weigh more
    some = pool[:40]
    got = selector.score(some)
    expected = reference_scores(prepared, some, targets, ["animal", "food"])
    for task in ("animal", "food"):
        ours = got[f"score_less_{task}"]
        np.testing.assert_allclose(ours, expected[task], atol=2e-5)
        assert spearmanr(ours, expected[task]).statistic > 0.999
        assert np.ptp(ours) > 1e-3  # not a comparison of constants


def test_warmup_is_lora_on_a_slice_with_adam_moments(less, pool):
    _, prepared, _ = less
    proxy = TrainedProxy.open(prepared.proxy)
    assert proxy.mode == "lora" and proxy.complete
    inputs = json.loads((proxy.path / "inputs.json").read_text())
    assert 0 < inputs["n_examples"] < len(pool) * 0.2  # ~10% of the pool, drawn by id hash
    assert inputs["config"]["lora_r"] == 4
    moments = proxy.checkpoints[0].adam_moments()
    assert moments and all("lora_" in name for name in moments)


def test_feature_store_serves_a_new_task_without_recomputing(less, pool, targets, tmp_path):
    selector, prepared, store = less
    some = pool[100:140]
    first = selector.score(some)
    assert selector.feature_store_.root == store and selector.feature_store_.misses >= 1
    # A second worker, a new task: every pool feature (every checkpoint's) comes from the store.
    fresh = LessSelector(**TINY, feature_store=store)
    fresh.setup(CONTEXT, prepared, {"food": targets["food"]})
    again = fresh.score(some)
    assert fresh.counters() == {"features_reused": 40}
    assert fresh.feature_store_.hits == 1 and fresh.feature_store_.misses == 0
    np.testing.assert_array_equal(again["score_less_food"], first["score_less_food"])
    # Another projection is another feature: nothing is reused by mistake.
    other = LessSelector(**TINY, feature_store=store, proj_seed=1)
    other.setup(CONTEXT, prepared, {"food": targets["food"]})
    other.score(some)
    assert other.counters() == {"features_computed": 40} and other.feature_store_.hits == 0
    # A bf16 product is stored apart too, and scores within its rounding of fp32's.
    bf16 = LessSelector(**TINY, feature_store=store, proj_dtype="bfloat16")
    bf16.setup(CONTEXT, prepared, {"food": targets["food"]})
    rounded = bf16.score(some)["score_less_food"]
    assert bf16.counters() == {"features_computed": 40}
    np.testing.assert_allclose(rounded, first["score_less_food"], rtol=0, atol=0.01)
    assert not np.array_equal(rounded, first["score_less_food"])
    with pytest.raises(ValueError, match="proj_dtype"):
        LessSelector(proj_dtype="float16")


def test_unscorable_rows_get_nan_and_presets_resolve(less):
    selector, _, _ = less
    empty = {"id": "e", "messages": [{"role": "user", "content": "hi " * 200}, {"role": "assistant", "content": "ok"}],
             "text": None, "extra": None}  # the answer is cut away at 64 tokens
    assert np.isnan(selector.score([empty])["score_less_food"][0])
    assert LessSelector().settings() == {"preset": "small", "lora_r": 8, "lora_alpha": 32.0, "lr": 1e-3, "proj_dim": 1024}
    assert LessSelector(model="some/model").settings()["proj_dim"] == 8192
    assert LessSelector(model="x", preset="small", proj_dim=256).settings()["proj_dim"] == 256
    with pytest.raises(ValueError, match="preset"):
        LessSelector(preset="huge")


def test_pipeline_run_then_a_new_task_reuses_pool_features(pool, targets_dir, tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", pool[:300])
    params = dict(TINY, feature_store=str(tmp_path / "store"))
    first = tamis.select(pool=[str(path)], target={"food": targets_dir["food"]}, selector=["less"],
                         out=str(tmp_path / "a"), budget=30, shard_rows=100, max_length=64, param=params)
    assert first.counts["selected"] == 30
    metrics = first.manifest["metrics"]
    assert metrics["less_features_computed"] == 300 and metrics.get("less_features_reused", 0) == 0  # rows
    second = tamis.select(pool=[str(path)], target={"animal": targets_dir["animal"]}, selector=["less"],
                          out=str(tmp_path / "b"), budget=30, shard_rows=100, max_length=64, param=params)
    assert second.manifest["metrics"]["less_features_reused"] == 300
    assert "less_features_computed" not in second.manifest["metrics"]
    table = read_shards(tmp_path / "b")
    scores = table.column("score_less_animal").to_numpy()
    assert np.isfinite(scores).sum() >= 290 and table.column("selected").to_numpy(zero_copy_only=False).sum() == 30


def test_a_run_killed_with_the_feature_store_half_written_resumes_from_it(tmp_path, gate_plugin, targets_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    from typer.testing import CliRunner

    from tamis.cli import app

    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(60))  # 6 chunks of 10 rows
    store, gate, out = tmp_path / "store", tmp_path / "gate.open", tmp_path / "out"
    args = ["select", "--pool", str(pool), "--target", f"food={targets_dir['food']}", "--selector", "less",
            "--selector", "gate", "--param", f"gate.gate={gate}", "--param", "gate.free=3", "--budget", "6",
            "--shard-rows", "10", "--max-length", "64", "--no-progress"]
    args += [f"--param=less.{k}={v}" for k, v in dict(TINY, fraction=0.5, feature_store=store).items()]
    # LESS scores each chunk before the gate does: after 3 chunks the process stores the 4th chunk's
    # features (every checkpoint's, one entry), then waits at the closed gate, where it is killed.
    proc = subprocess.Popen([sys.executable, "-m", "tamis", *args, "--out", str(out)], env=gate_plugin,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list(store.glob("less-grads/*/*.npz"))) < 4 or len(list((out / "shards").glob("*.parquet"))) < 3:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the first run did not get to the gate in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(list((out / "shards").glob("*.parquet"))) == 3 and not (out / "manifest.json").exists()

    gate.touch()
    resumed = CliRunner().invoke(app, args + ["--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chunks"] == {"planned": 6, "reused": 3, "computed": 3}
    # Of the 3 chunks left, one had its features stored before the kill: 10 rows reused, 20 computed.
    assert manifest["metrics"]["less_features_reused"] == 10 and manifest["metrics"]["less_features_computed"] == 20
    # An uninterrupted run with its own empty store gives the same output, bit for bit.
    fresh = [a.replace(str(store), str(tmp_path / "store2")) for a in args]
    reference = CliRunner().invoke(app, fresh + ["--out", str(tmp_path / "ref")])
    assert reference.exit_code == 0, reference.output
    assert read_shards(out).equals(read_shards(tmp_path / "ref"))


def test_warm_up_of_a_given_local_model(tiny_causal, pool, targets, tmp_path):
    """A user's own causal LM (here a local folder, as a hub id would be resolved): LoRA warm-up on
    it with the paper preset's shape scaled down, then scores for every task."""
    selector = LessSelector(model=tiny_causal, lora_r=4, lora_alpha=16.0, lr=1e-3, proj_dim=128, fraction=0.1,
                            epochs=2, batch_size=16, feature_store=str(tmp_path / "store"))
    assert selector.settings()["preset"] == "paper" and selector.settings()["proj_dim"] == 128
    prepared = selector.prepare(PoolSample(lambda: pool), targets, CONTEXT)
    proxy = TrainedProxy.open(prepared.proxy)
    assert proxy.mode == "lora" and proxy.base == tiny_causal and len(proxy.checkpoints) == 2
    selector.setup(CONTEXT, prepared, targets)
    scores = selector.score(pool[:30])
    assert set(scores) == {"score_less_animal", "score_less_food"}
    assert np.isfinite(scores["score_less_food"]).all() and np.ptp(scores["score_less_food"]) > 0
