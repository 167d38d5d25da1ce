"""RDS+ pooling: weights over real tokens only, so batching and padding change nothing."""
import numpy as np
import pytest
import torch

from tamis.models.embedder import HiddenStateEmbedder, pool_hidden

TEXTS = ["a short one", "a considerably longer sentence about food and cooking and dinner", "mid length text here"]


def test_weighted_mean_matches_the_formula_and_ignores_padding():
    torch.manual_seed(0)
    hidden = torch.randn(1, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    got = pool_hidden(hidden, mask, "weighted_mean")[0]
    w = torch.tensor([1.0, 2.0, 3.0]) / 6.0  # w_i = i / sum_j j over the 3 real tokens
    want = (w[:, None] * hidden[0, :3]).sum(0)
    assert torch.allclose(got, want / want.norm(), atol=1e-6)


@pytest.mark.parametrize("fixture", ["tiny_encoder", "tiny_causal"])
def test_local_folder_models_embed_the_same_alone_or_batched(fixture, request):
    path = request.getfixturevalue(fixture)
    emb = HiddenStateEmbedder(path, batch_tokens=4096)
    batched = emb.embed(TEXTS)
    alone = np.stack([emb.embed([t])[0] for t in TEXTS])
    assert batched.shape == (3, emb.dim)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_packaged_minilm_loads_offline_and_separates_topics():
    emb = HiddenStateEmbedder("minilm")
    v = emb.embed(["a recipe for tomato soup", "soup made from tomatoes", "the migration of whales"])
    assert emb.dim == 384
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_long_text_is_truncated_not_rejected():
    emb = HiddenStateEmbedder("minilm", max_length=32)
    v = emb.embed(["word " * 200_000])  # about 1 MB
    assert v.shape == (1, 384) and np.isfinite(v).all()


@pytest.mark.parametrize("fixture, expected", [("tiny_encoder", "mean"), ("tiny_causal", "weighted_mean")])
def test_auto_pooling_follows_the_model(fixture, expected, request):
    """A causal LM gets RDS+'s position-weighted mean, an encoder its own plain mean; the config
    alone gives the same answer as the loaded model (the manifest reads it without loading)."""
    from tamis.models.embedder import resolve_pooling

    path = request.getfixturevalue(fixture)
    emb = HiddenStateEmbedder(path, batch_tokens=4096)
    assert emb.pooling == expected
    assert resolve_pooling(path, "auto") == expected
    explicit = HiddenStateEmbedder(path, pooling=expected, batch_tokens=4096)
    np.testing.assert_array_equal(emb.embed(TEXTS), explicit.embed(TEXTS))


def test_minilm_default_is_mean_pooled():
    assert HiddenStateEmbedder("minilm").pooling == "mean"


def test_smollm2_is_pooled_as_a_causal_lm(smollm2):
    from tamis.models.embedder import resolve_pooling

    assert resolve_pooling(smollm2, "auto") == "weighted_mean"
