"""Per-example statistics, gradients and projections on a tiny GPT-2 (no training needed)."""
from __future__ import annotations

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tamis.models.build import build_model, train_tokenizer  # noqa: E402
from tamis.models.lm import encode_records, pad_batch, token_nll  # noqa: E402
from tamis.models.projection import RademacherProjector  # noqa: E402
from tamis.models.stats import (  # noqa: E402
    adam_precondition, grad_param_names, per_example_grad_norms, per_example_grads, sequence_stats)
from tamis.models.text import render_plain  # noqa: E402
from tamis.schemas.proxy import ProxyModelConfig  # noqa: E402

WORDS = "food bread fish apple dog cat horse bird run walk jump swim eat drink small large green red".split()


def make_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        word = rng.choice(WORDS)
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        if i % 5 == 4:
            out.append({"id": f"t{i}", "messages": None, "text": f"{word} is {answer}.", "extra": None})
        else:
            out.append({"id": f"m{i}", "text": None, "extra": None, "messages": [
                {"role": "user", "content": f"Define the word \"{word}\"."},
                {"role": "assistant", "content": answer.capitalize() + "."}]})
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    records = make_records(64)
    cfg = ProxyModelConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=300, context=64)
    tok = train_tokenizer((render_plain(r) for r in records), cfg.vocab_size, 1, cfg.context)
    model = build_model(cfg, tok).eval()
    return model, tok, encode_records(tok, records, 64)


def loop_grads(model, examples, names):
    """The reference: one backward pass per example, batch of one, no padding."""
    named = dict(model.named_parameters())
    rows = []
    for e in examples:
        model.zero_grad(set_to_none=True)
        ids, mask, labels = pad_batch([e], model.config.pad_token_id)
        nll, scored = token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
        (nll.sum() / scored.sum()).backward()
        rows.append(torch.cat([named[k].grad.reshape(-1) for k in names]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def test_el2n_and_loss_match_explicit_one_hot(tiny):
    model, _, examples = tiny
    stats = sequence_stats(model, examples, batch_tokens=256)
    with torch.no_grad():
        for i, e in enumerate(examples[:10]):
            ids, mask, labels = pad_batch([e], model.config.pad_token_id)
            logits = model(input_ids=ids).logits[0, :-1]
            y, keep = labels[0, 1:], labels[0, 1:] != -100
            probs = torch.softmax(logits, -1)[keep]
            one_hot = torch.nn.functional.one_hot(y[keep], probs.shape[-1]).float()
            assert stats["tokens"][i] == e.n_scored == int(keep.sum())
            assert stats["el2n"][i] == pytest.approx(float((probs - one_hot).norm(dim=-1).mean()), abs=1e-5)
            ce = torch.nn.functional.cross_entropy(logits[keep], y[keep])
            assert stats["loss"][i] == pytest.approx(float(ce), abs=1e-5)


def test_stats_do_not_depend_on_batching(tiny):
    model, _, examples = tiny
    together = sequence_stats(model, examples, batch_tokens=4096)
    alone = [sequence_stats(model, [e]) for e in examples[:12]]
    for key in ("loss", "el2n"):
        np.testing.assert_allclose(together[key][:12], [a[key][0] for a in alone], atol=1e-5)


def test_unscored_example_gets_nan_and_zero_count(tiny):
    model, tok, _ = tiny
    record = {"id": "x", "text": None, "extra": None, "messages": [{"role": "user", "content": "food " * 40}]}
    stats = sequence_stats(model, encode_records(tok, [record], 64))
    assert stats["tokens"][0] == 0 and np.isnan(stats["loss"][0]) and np.isnan(stats["el2n"][0])


def test_vmap_full_grads_equal_batch_one_backward(tiny):
    model, _, examples = tiny
    names = grad_param_names(model, "all")
    fast = per_example_grads(model, examples[:6], params="all", chunk_size=4)
    slow = loop_grads(model, examples[:6], names).numpy()
    assert fast.shape == slow.shape
    assert np.abs(fast - slow).max() < 1e-5
    norms = per_example_grad_norms(model, examples[:6], params="all", chunk_size=3)
    np.testing.assert_allclose(norms, np.linalg.norm(slow, axis=1), rtol=1e-5)


@pytest.fixture(scope="module")
def lora_model(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok, examples = tiny
    torch.manual_seed(1)
    lora = get_peft_model(build_model(ProxyModelConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=300, context=64), tok),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "attn.c_proj"], lora_dropout=0.1,
                                     fan_in_fan_out=True))
    with torch.no_grad():  # LoRA's B starts at zero, which would make A's gradient zero
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return lora.eval(), examples


@pytest.mark.parametrize("method", ["vmap", "linear"])
def test_lora_grads_equal_batch_one_backward(lora_model, method):
    model, examples = lora_model
    names = grad_param_names(model)
    assert names and all("lora_" in n for n in names)
    # Rows of different lengths in one chunk: padding must not leak into any example's gradient.
    assert len({len(e) for e in examples[:6]}) > 1
    fast = per_example_grads(model, examples[:6], chunk_size=8, method=method)
    slow = loop_grads(model, examples[:6], names).numpy()
    assert np.abs(fast - slow).max() < 1e-5
    assert np.abs(slow).max() > 1e-4  # the comparison is not between zeros
    assert not model.training and all(p.requires_grad for n, p in model.named_parameters() if n in names)


def test_linear_route_only_where_it_is_exact(lora_model, tiny):
    from tamis.models.stats import linear_weight_modules

    model, _ = lora_model
    assert linear_weight_modules(model, grad_param_names(model)) is not None
    full, _, examples = tiny
    assert linear_weight_modules(full, grad_param_names(full, "all")) is None  # embeddings, norms, biases
    with pytest.raises(ValueError, match="bias-free nn.Linear"):
        per_example_grads(full, examples[:2], params="all", method="linear")


def random_moments(model):
    """(names, Adam moments like a warm-up's, gradient dim) for the model's trainable parameters."""
    names = grad_param_names(model)
    named = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    moments = {k: (torch.randn(named[k].shape, generator=gen) * 1e-3, torch.rand(named[k].shape, generator=gen) * 1e-5)
               for k in names}
    return names, moments, sum(named[k].numel() for k in names)


def test_adam_preconditioned_projected_normalized_grads(lora_model):
    model, examples = lora_model
    names, moments, _ = random_moments(model)
    slow = loop_grads(model, examples[:5], names)
    m = torch.cat([moments[k][0].reshape(-1) for k in names])
    v = torch.cat([moments[k][1].reshape(-1) for k in names])
    expected = (0.9 * m + 0.1 * slow) / torch.sqrt(0.999 * v + 0.001 * slow**2 + 1e-8)
    assert torch.allclose(adam_precondition(slow, m, v), expected)
    got = per_example_grads(model, examples[:5], adam_moments=moments)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)

    projector = RademacherProjector(slow.shape[1], 16, seed=3)
    projected = per_example_grads(model, examples[:5], adam_moments=moments, projector=projector, normalize=True)
    reference = torch.nn.functional.normalize(expected @ projector.dense(), dim=1).numpy()
    np.testing.assert_allclose(projected, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-5)
    # Tiles made on the fly, projected chunk by chunk: the same vectors.
    tiled = RademacherProjector(slow.shape[1], 16, seed=3, cache_bytes=0)
    again = per_example_grads(model, examples[:5], adam_moments=moments, projector=tiled, normalize=True,
                              chunk_size=2, project_buffer_bytes=0)
    np.testing.assert_allclose(again, projected, atol=1e-5)


def test_projection_is_seeded_and_blocked_equals_dense():
    a, b = RademacherProjector(50, 8, seed=7, tile_rows=7), RademacherProjector(50, 8, seed=7, tile_rows=7)
    dense = a.dense()
    assert torch.equal(dense, b.dense())
    assert torch.equal(dense, RademacherProjector(50, 8, seed=7, tile_rows=16).dense())  # blocks do not matter
    assert not torch.equal(dense, RademacherProjector(50, 8, seed=8, tile_rows=7).dense())
    assert dense.abs().unique().tolist() == pytest.approx([8 ** -0.5])
    big = RademacherProjector(512, 256, seed=0).dense()
    assert abs(float((big > 0).float().mean()) - 0.5) < 0.01
    gram = (big.T @ big).numpy()  # columns nearly orthogonal: E[R^T R] = (in/out) I
    off = gram[~np.eye(256, dtype=bool)]
    assert abs(np.diag(gram).mean() - 2.0) < 1e-5 and np.abs(off).max() < 0.5
    x = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    blocked = RademacherProjector(50, 8, seed=7, tile_rows=7, cache_bytes=0).project(x)  # tile by tile
    assert torch.allclose(blocked, x @ dense, atol=1e-5)
    assert torch.allclose(a.project(x), x @ dense, atol=1e-5)  # cached whole matrix
    # Tiles are generated alone: a later tile does not depend on the earlier ones being made first.
    assert torch.equal(RademacherProjector(50, 8, seed=7, tile_rows=7).tile(3), dense[21:28])


def test_projection_signs_follow_their_integer_definition():
    """The signs are a fixed integer function of (seed, row, column), recomputed here in plain
    Python ints: a GPU's int64 arithmetic gives the same, so every device builds one matrix."""
    from tamis.models.projection import _seed32, rademacher_bits

    def mix(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    def bit(seed, row, col, out_dim):
        index = row * (-(-out_dim // 32)) + col // 32  # one hash per block of 32 columns
        x = ((index & 0xFFFFFFFF) * 0x9E3779B1 + (index >> 32) * 0x85EBCA77 + _seed32(seed)) & 0xFFFFFFFF
        return (mix(mix(x)) >> (col % 32)) & 1

    rows = [0, 1, 7, 123_456, 10**9, 3 * 10**11]  # indices past 2**32 use the high word too
    for out_dim in (8192, 1000):  # and a width that is not a multiple of 32
        got = rademacher_bits(rows, out_dim, seed=3)
        for r, row in enumerate(rows):
            for col in (0, 1, 31, 32, 999):
                assert int(got[r, col]) == bit(3, row, col, out_dim)
