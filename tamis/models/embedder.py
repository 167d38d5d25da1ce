"""Embeddings from a language model's last hidden layer, pooled and L2-normalized.

``weighted_mean`` is RDS+'s pooling (SGPT's position-weighted mean): token i of L real tokens
gets weight i / (1 + ... + L). Positions and weights are counted over non-padding tokens only,
so a row's embedding does not depend on what it was batched with (the reference code ignores
the mask and breaks at batch > 1). ``mean`` is the plain masked mean.

``auto`` picks by the model: the weighted mean for a causal LM (under causal attention only the
last tokens have seen the whole text, which is why SGPT weights them up) and the plain mean for
a bidirectional encoder (every token has seen everything; it is how sentence encoders such as
MiniLM are trained to be pooled, and a position weighting would mostly weight up ``[SEP]``).
The choice made is :attr:`HiddenStateEmbedder.pooling` and goes into the run manifest.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .batching import token_batches
from .lm import positions
from .loading import fingerprint, load_backbone, load_tokenizer, localize, resolve_model
from .text import clip_chars

POOLINGS = ("weighted_mean", "mean")
POOLING_CHOICES = ("auto", *POOLINGS)


def is_causal_lm(config) -> bool:
    """True for a decoder-only LM: its family has a causal-LM head and no masked-LM head (BERT and
    RoBERTa have both, and are encoders), or the config says it is a decoder."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    kind = getattr(config, "model_type", None)
    return bool(getattr(config, "is_decoder", False)) or (
        kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def auto_pooling(config) -> str:
    """The pooling that fits the model: RDS+'s weighted mean for a causal LM, the mean for an encoder."""
    return "weighted_mean" if is_causal_lm(config) else "mean"


def pool_hidden(hidden, mask, pooling: str):
    """Pool ``hidden`` [B, T, H] under ``mask`` [B, T] (1 = real token) to [B, H], L2-normalized."""
    import torch

    mask = mask.to(hidden.dtype)
    if pooling == "weighted_mean":
        weights = torch.cumsum(mask, dim=1) * mask  # 1..L on real tokens, 0 on padding
    elif pooling == "mean":
        weights = mask
    else:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
    pooled = torch.einsum("bt,bth->bh", weights, hidden).float()
    return torch.nn.functional.normalize(pooled, dim=-1)


class HiddenStateEmbedder:
    """Embed texts with any HF encoder or causal LM (by id or local folder)."""

    def __init__(self, model: str, pooling: str = "auto", max_length: int = 512,
                 batch_tokens: int = 16_384, device: str = "cpu", dtype: str = "float32",
                 trust_remote_code: bool = False):
        if pooling not in POOLING_CHOICES:
            raise ValueError(f"pooling must be one of {POOLING_CHOICES}, got {pooling!r}")
        self.max_length, self.batch_tokens = max_length, batch_tokens
        self.path = model  # what was loaded (a local folder, a hub id or an alias)
        self.tokenizer = load_tokenizer(model, trust_remote_code)
        self.model = load_backbone(model, device, dtype, trust_remote_code)
        self.causal = is_causal_lm(self.model.config)
        self.pooling = auto_pooling(self.model.config) if pooling == "auto" else pooling  # what is applied
        self.max_length = positions(self.model, max_length)
        self.device = device
        self.dim = int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] float32 unit vectors, in input order."""
        import torch

        texts = [clip_chars(t, self.max_length) for t in texts]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, add_special_tokens=True)
        ids = enc["input_ids"]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for batch in token_batches([len(x) for x in ids], self.batch_tokens):
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                hidden = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
                out[batch] = pool_hidden(hidden, mask.to(hidden.device), self.pooling).cpu().numpy()
        return out


def open_embedder(model: str, *, pooling: str, max_length: int, batch_tokens: int, device: str = "cpu",
                  dtype: str = "float32", trust_remote_code: bool = False) -> HiddenStateEmbedder:
    """The one way selectors get an embedder: a remote model (``gs://``, ``s3://``) is first
    copied to this machine (:func:`~tamis.models.loading.localize`, once per machine)."""
    return HiddenStateEmbedder(localize(model), pooling=pooling, max_length=max_length, batch_tokens=batch_tokens,
                               device=device, dtype=dtype, trust_remote_code=trust_remote_code)


def resolve_pooling(model: str, pooling: str, trust_remote_code: bool = False) -> str:
    """The pooling ``auto`` stands for with ``model``, from its config alone (no weights loaded);
    ``auto`` itself when the config cannot be read here (a remote model not yet copied)."""
    if pooling != "auto":
        return pooling
    from transformers import AutoConfig

    try:
        return auto_pooling(AutoConfig.from_pretrained(resolve_model(model), trust_remote_code=trust_remote_code))
    except (OSError, ValueError):
        return "auto"


def model_record(model: str, loaded: str | None = None, **extra) -> dict:
    """A model's entry in the run manifest: the name given, the folder loaded (a remote model's
    local copy once a worker has made it) and its file hash."""
    path = loaded or model
    return {"model": model, "path": resolve_model(path), "sha256": fingerprint(path), **extra}
