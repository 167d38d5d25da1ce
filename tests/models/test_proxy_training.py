"""Loading, building, training, caching and resuming proxy LMs, on tiny models and real files."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tamis.models.build import build_proxy  # noqa: E402
from tamis.models.cache import cache_root  # noqa: E402
from tamis.models.lm import (  # noqa: E402
    encode_record, encode_records, load_causal_lm, pad_batch, plain_spans, token_nll)
from tamis.models.stats import sequence_stats  # noqa: E402
from tamis.models.text import render_plain  # noqa: E402
from tamis.models.train import TrainedProxy, finetune_proxy, select_slice, train_proxy  # noqa: E402
from tamis.schemas.proxy import ProxyModelConfig, TrainConfig  # noqa: E402

ANIMALS = "dog cat horse bird fish cow sheep goat".split()
FOODS = "bread apple rice cheese soup cake bean plum".split()
VERBS = "run walk jump swim eat fly sing crawl".split()
TINY = ProxyModelConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=320, context=64, sample_size=240,
                        epochs=3, batch_size=16, lr=5e-3, warmup_ratio=0.1)
LORA = TrainConfig(mode="lora", fraction=0.5, epochs=2, batch_size=16, lr=5e-3, lora_r=4, lora_alpha=8,
                   max_length=64)


def make_pool(n: int = 300, seed: int = 0) -> list[dict]:
    """Definitions with a learnable pattern: the answer's words come from the asked word's group."""
    rng = random.Random(seed)
    groups = [("animal", ANIMALS), ("food", FOODS), ("verb", VERBS)]
    out = []
    for i in range(n):
        kind, words = groups[i % 3]
        word = rng.choice(words)
        answer = f"a {kind} like " + " and ".join(rng.sample(words, 3))
        if i % 10 == 9:
            out.append({"id": f"t{i:04d}", "messages": None, "text": f"{word}: {answer}.", "extra": None})
        else:
            out.append({"id": f"m{i:04d}", "text": None, "extra": None, "messages": [
                {"role": "user", "content": f"Define the {kind} \"{word}\"."},
                {"role": "assistant", "content": answer.capitalize() + "."}]})
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pool():
    return make_pool()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("proxies")


@pytest.fixture(scope="module")
def built(pool, cache):
    return build_proxy(pool, TINY, cache_dir=cache, progress=False)


def held_out_loss(model, tok, records) -> float:
    stats = sequence_stats(model, encode_records(tok, records, 64))
    return float(np.average(stats["loss"], weights=stats["tokens"]))


# -- building, loading ----------------------------------------------------------------------
def test_build_trains_and_loss_falls(built, pool):
    assert built.complete and not built.cached and built.mode == "full"
    assert [c.index for c in built.checkpoints] == [1, 2, 3]
    losses = [c.mean_loss for c in built.checkpoints]
    assert losses[0] > losses[1] > losses[2]
    held_out = make_pool(60, seed=1)
    untrained, tok = load_causal_lm(str(built.path / "init"))
    trained, _ = built.load()
    assert held_out_loss(trained, tok, held_out) < held_out_loss(untrained, tok, held_out) - 1.0


def test_saved_folder_loads_through_the_hub_loader(built, tmp_path):
    model, tok = load_causal_lm(str(built.final.path))
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.config._attn_implementation == "eager"
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert (built.final.path / "model.safetensors").is_file()
    # A folder holding pickled weights only is refused: safetensors or nothing.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    model.config.save_pretrained(pickled)
    tok.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(OSError):
        load_causal_lm(str(pickled))


def test_everything_saved_is_safetensors(built, cache):
    files = [p for p in Path(cache).rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]


def test_checkpoints_hold_adam_moments_and_average_lr(built):
    model, _ = built.load(trainable=True)
    named = dict(model.named_parameters())
    for ckpt in built.checkpoints:
        path = ckpt.path / "optimizer.safetensors"
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        state = json.loads((ckpt.path / "trainer_state.json").read_text())
        assert float(meta["avg_lr"]) == pytest.approx(state["avg_lr"]) == pytest.approx(ckpt.avg_lr)
        assert int(meta["step"]) == ckpt.step
        lrs = [s["lr"] for s in state["steps"]]
        assert ckpt.avg_lr == pytest.approx(sum(lrs) / len(lrs))
        moments = ckpt.adam_moments()
        assert set(moments) == set(named)
        for name, (m, v) in moments.items():
            assert m.shape == v.shape == named[name].shape
            assert (v >= 0).all()
    assert built.checkpoints[0].avg_lr > built.checkpoints[-1].avg_lr  # linear decay
    assert sum(built.lr_weights()) == pytest.approx(1.0)


def test_second_identical_build_is_a_cache_hit(built, pool, cache, caplog):
    caplog.set_level("INFO", logger="tamis.models")
    again = build_proxy(list(reversed(pool)), TINY, cache_dir=cache, progress=False)  # file order is irrelevant
    assert again.cached and again.path == built.path
    assert "reusing cached proxy" in caplog.text
    assert [c.avg_lr for c in again.checkpoints] == [c.avg_lr for c in built.checkpoints]
    other = TINY.model_copy(update={"seed": 1})
    assert not build_proxy(pool, other.model_copy(update={"epochs": 1}), cache_dir=cache, progress=False).cached


def test_cache_root_from_argument_env_and_default(tmp_path, monkeypatch):
    assert cache_root(tmp_path / "a") == tmp_path / "a"
    monkeypatch.setenv("TAMIS_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" / "proxies"
    monkeypatch.delenv("TAMIS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "tamis" / "proxies"


# -- loss masks -----------------------------------------------------------------------------
def scored_text(tok, encoded) -> str:
    return tok.decode([t for t, s in zip(encoded.input_ids, encoded.scored) if s])


def test_messages_score_assistant_tokens_only(built):
    _, tok = load_causal_lm(str(built.final.path))
    record = {"id": "x", "text": None, "extra": None, "messages": [
        {"role": "user", "content": "Define the food \"rice\"."},
        {"role": "assistant", "content": "A food like bread."},
        {"role": "user", "content": "And cake?"},
        {"role": "assistant", "content": "A food like plum."}]}
    enc = encode_record(tok, record, 64)
    assert plain_spans(record["messages"])[0] == render_plain(record)
    assert tok.decode(enc.input_ids) == ("user: Define the food \"rice\".\nassistant: A food like bread.\n"
                                         "user: And cake?\nassistant: A food like plum.<|endoftext|>")
    assert scored_text(tok, enc) == " A food like bread. A food like plum.<|endoftext|>"
    text = encode_record(tok, {"id": "t", "messages": None, "text": "a dog runs", "extra": None}, 64)
    assert all(text.scored) and text.input_ids[-1] == tok.eos_token_id
    short = encode_record(tok, record, 12)
    assert len(short) == 12 and short.n_scored == 0  # the answers were cut away


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_template_is_used_and_masks_assistant_turns(built, tmp_path):
    model, tok = load_causal_lm(str(built.final.path))
    tok.chat_template = CHATML
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    model.resize_token_embeddings(len(tok))
    folder = tmp_path / "chat-model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    _, tok = load_causal_lm(str(folder))
    record = {"id": "x", "text": None, "extra": None, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Define dog."},
        {"role": "assistant", "content": "An animal."}, {"role": "user", "content": "Cat?"},
        {"role": "assistant", "content": "Also one."}]}
    enc = encode_record(tok, record, 128)
    assert tok.decode(enc.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert scored_text(tok, enc) == "An animal.<|im_end|>\nAlso one.<|im_end|>\n"


# -- slices ---------------------------------------------------------------------------------
def test_slice_is_seeded_and_order_free(pool):
    half = select_slice(pool, 0.5, seed=42)
    assert 100 < len(half) < 200
    assert [r["id"] for r in select_slice(list(reversed(pool)), 0.5, seed=42)] == [r["id"] for r in half]
    assert [r["id"] for r in select_slice(pool, 0.5, seed=1)] != [r["id"] for r in half]
    capped = select_slice(pool, 0.5, max_examples=20, seed=42)
    assert [r["id"] for r in capped] == [r["id"] for r in half[:20]]


# -- warm-up, resume, fine-tune -------------------------------------------------------------
def test_lora_warmup_resumes_after_a_kill_to_the_same_weights(built, pool, tmp_path):
    first = train_proxy(built, pool, LORA, cache_dir=tmp_path / "a", progress=False, stop_after_checkpoint=1)
    assert not first.complete and len(first.checkpoints) == 1
    assert not (first.path / "manifest.json").exists()
    resumed = train_proxy(built, pool, LORA, cache_dir=tmp_path / "a", progress=False)
    assert resumed.complete and resumed.resumed_from == 1 and not resumed.cached
    straight = train_proxy(built, pool, LORA, cache_dir=tmp_path / "b", progress=False)
    assert straight.path.name == resumed.path.name  # same inputs, same key
    for name in ("adapter_model.safetensors", "optimizer.safetensors"):
        got, want = load_file(str(resumed.final.path / name)), load_file(str(straight.final.path / name))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in got)
    assert [c.mean_loss for c in resumed.checkpoints] == [c.mean_loss for c in straight.checkpoints]
    assert resumed.history == straight.history and len(resumed.history) == resumed.final.step
    # A LoRA checkpoint is an adapter over the built proxy, and its moments cover the LoRA weights only.
    model, _ = resumed.load(trainable=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert set(resumed.final.adam_moments()) == trainable
    assert train_proxy(built, pool, LORA, cache_dir=tmp_path / "b", progress=False).cached


def test_finetune_uses_a_fresh_optimizer_and_fits_the_targets(built, cache):
    targets = [r for r in make_pool(90, seed=7) if r["messages"] and "food" in r["messages"][0]["content"]]
    targets = [{**r, "id": None} for r in targets]  # target examples may come without ids
    config = TrainConfig(mode="full", epochs=2, batch_size=8, lr=3e-3, warmup_ratio=0.0, max_length=64)
    tuned = finetune_proxy(built, targets, config, cache_dir=cache, progress=False)
    steps_per_epoch = -(-len(targets) // 8)
    assert [c.step for c in tuned.checkpoints] == [steps_per_epoch, 2 * steps_per_epoch]
    with safe_open(str(tuned.checkpoints[0].path / "optimizer.safetensors"), "pt") as f:
        assert int(f.metadata()["step"]) == steps_per_epoch  # counted from zero, not from the prior's steps
    prior, tok = built.load()
    conditional, _ = tuned.load()
    assert held_out_loss(conditional, tok, targets) < held_out_loss(prior, tok, targets)
    assert TrainedProxy.open(tuned.path).final.path == tuned.final.path


# -- the command ----------------------------------------------------------------------------
def test_train_proxy_command_builds_warms_up_and_reuses(pool, tmp_path):
    from typer.testing import CliRunner

    from tamis.cli import app

    pool_file = tmp_path / "pool.jsonl"
    pool_file.write_text("\n".join(json.dumps({k: v for k, v in r.items() if v is not None}) for r in pool) + "\n")
    config = tmp_path / "proxy.yaml"
    config.write_text(json.dumps({"build": TINY.model_copy(update={"epochs": 1}).model_dump(),
                                  "train": {"lora_r": 4, "lora_alpha": 8, "batch_size": 16, "max_length": 64}}))
    args = ["train-proxy", str(pool_file), "--config", str(config), "--cache-dir", str(tmp_path / "cache"), "--epochs", "1",
            "--fraction", "0.3", "--no-progress", "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert not summary["built"]["cached"] and not summary["warmup"]["cached"]
    assert summary["warmup"]["mode"] == "lora" and len(summary["warmup"]["checkpoints"]) == 1
    again = CliRunner().invoke(app, args[:-1])
    assert again.exit_code == 0, again.output
    assert "built proxy:" in again.output and again.output.count("(reused from cache)") == 2
    bad = CliRunner().invoke(app, ["train-proxy", str(pool_file), "--mode", "half", "--cache-dir", str(tmp_path / "cache")])
    assert bad.exit_code == 2 and bad.output.startswith("tamis: bad value for 'mode'")


def test_llama_style_folder_with_chat_template_warms_up_with_lora(built, pool, tmp_path):
    """The path real users take: a local folder with another architecture and a chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tamis.models.stats import grad_param_names, per_example_grads

    _, tok = load_causal_lm(str(built.final.path))
    tok.chat_template = CHATML
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)

    config = LORA.model_copy(update={"fraction": 0.2, "epochs": 1, "max_length": 128})
    warmed = train_proxy(str(folder), pool, config, cache_dir=tmp_path / "cache", progress=False)
    adapter = json.loads((warmed.final.path / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    model, tok = warmed.load(trainable=True)
    examples = encode_records(tok, pool[:3], 128)
    assert tok.decode([t for t, s in zip(examples[0].input_ids, examples[0].scored) if s]).endswith(".<|im_end|>\n")
    names = grad_param_names(model)
    grads = per_example_grads(model, examples)
    named = dict(model.named_parameters())
    for i, e in enumerate(examples):
        model.zero_grad(set_to_none=True)
        ids, mask, labels = pad_batch([e], tok.pad_token_id)
        nll, scored = token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
        (nll.sum() / scored.sum()).backward()
        reference = torch.cat([named[k].grad.reshape(-1) for k in names]).numpy()
        assert np.abs(grads[i] - reference).max() < 1e-5


def test_a_one_step_finetune_moves_the_weights(built, cache):
    """A conditional model fit in one optimizer step (CoLoR-Filter's on a small target set) used to
    train at learning rate 0: the warm-up's first step has rate 0, and ceil(0.03 x 1) made it the
    only one. Every score was then prior minus prior, exactly 0."""
    targets = [{**r, "id": None} for r in make_pool(8, seed=3)]
    config = TrainConfig(mode="full", epochs=1, batch_size=8, lr=1e-3, warmup_ratio=0.03, max_length=64)
    tuned = finetune_proxy(built, targets, config, cache_dir=cache, progress=False)
    assert [c.step for c in tuned.checkpoints] == [1]
    prior = load_file(str(built.final.path / "model.safetensors"))
    after = load_file(str(tuned.final.path / "model.safetensors"))
    assert any(not np.array_equal(prior[k].numpy(), after[k].numpy()) for k in prior)
