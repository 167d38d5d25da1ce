"""Causal language models: loading, and turning records into token ids with a loss mask.

The loss mask says which tokens an example is scored (and trained) on: for ``messages``
records the assistant tokens only, for ``text`` records every token. Masks are found on
characters, then mapped to tokens through the tokenizer's offsets, so the same rule serves
chat templates and the plain "role: content" join:

* with a chat template, assistant turn *i* spans from the end of the prompt rendered for it
  (``messages[:i]`` plus the generation prompt) to the end of ``messages[:i+1]`` rendered, so the
  template's end-of-turn marker is scored too; a template whose renderings are not prefixes of
  each other falls back to locating each assistant content in the rendered text;
* without one, the text is :func:`tamis.models.text.render_plain` and the tokenizer's EOS token
  is appended, scored when the example ends with scored text (so the model learns to stop).

A token is scored when its characters overlap a scored span (a word piece that carries the space
before the answer counts). The first token is never scored: nothing predicts it.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from .loading import load_pretrained, load_tokenizer, torch_dtype
from .text import clip_chars


@dataclass(frozen=True)
class Encoded:
    """One example as model input: token ids and, per token, whether the loss covers it."""

    input_ids: list[int]
    scored: list[bool]

    @property
    def n_scored(self) -> int:
        """Tokens the loss covers (position 0 is never predicted, so never counted)."""
        return sum(self.scored[1:])

    def __len__(self) -> int:
        return len(self.input_ids)


def load_causal_lm(name_or_path: str, *, device: str = "cpu", dtype: str = "float32",
                   trust_remote_code: bool = False, adapter: str | None = None, trainable: bool = False,
                   attn_implementation: str = "eager"):
    """(model, tokenizer) for a Hugging Face causal LM given by hub id or local folder.

    Safetensors only; remote code only when asked. ``adapter`` is a peft LoRA folder applied on
    top (``trainable`` keeps its weights trainable). Eager attention is the default because
    ``torch.func.vmap`` has no batching rule for SDPA; pass ``"sdpa"`` for forward-only speed.
    """
    import torch
    from transformers import AutoModelForCausalLM

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenizer = load_tokenizer(name_or_path, trust_remote_code)
    model = load_pretrained(AutoModelForCausalLM, name_or_path, trust_remote_code=trust_remote_code,
                            dtype=torch_dtype(dtype), attn_implementation=attn_implementation)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if adapter is not None:
        from peft import PeftModel

        with quiet_peft():
            model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    model.to(torch.device(device))
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def quiet_peft():
    """Hide the FutureWarning that peft's wrappers trigger in recent transformers
    (``is_gradient_checkpointing`` is deprecated): noise to a tamis user, who cannot act on it."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def context_limit(model) -> int | None:
    """The model's maximum positions, when its config says."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def positions(model, max_length: int) -> int:
    """Tokens an example keeps: the run's ``max_length``, cut to the model's positions when it
    has fewer. The one place this clamp is made (scoring, training and embedding all use it)."""
    limit = context_limit(model)
    return min(max_length, limit) if limit else max_length


def pad_token_id(model) -> int:
    """The id batches are padded with: the model's pad token, else its (first) EOS, else 0.
    Padding is masked out and right-aligned, so the choice never changes a result."""
    pad = getattr(model.config, "pad_token_id", None)
    if pad is None:
        pad = getattr(model.config, "eos_token_id", None)
    if isinstance(pad, (list, tuple)):
        pad = pad[0]
    return int(pad or 0)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def plain_spans(messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """:func:`tamis.models.text.render_plain`'s text, built piece by piece to know where each
    assistant content lies in it."""
    text, spans = "", []
    for i, m in enumerate(messages):
        if i:
            text += "\n"
        text += f"{m['role']}: "
        start = len(text)
        text += m["content"]
        if m["role"] == "assistant":
            spans.append((start, len(text)))
    return text, spans


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Chat-template text and the character spans of the assistant turns (see module docstring)."""
    text = _render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    try:
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            if i == 0:
                raise ValueError("assistant turn first: no prompt to render")
            prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
            through = _render(tokenizer, messages[: i + 1])
            if not (through.startswith(prompt) and text.startswith(through)):
                raise ValueError("template renderings are not prefixes of each other")
            spans.append((len(prompt), len(through)))
        return text, spans
    except Exception:  # noqa: BLE001 - any template quirk: fall back to finding the contents
        spans, cursor = [], 0
        for m in messages:
            at = text.find(m["content"], cursor) if m["content"] else -1
            if at < 0:
                continue
            cursor = at + len(m["content"])
            if m["role"] == "assistant":
                spans.append((at, cursor))
        return text, spans


def encode_record(tokenizer, record: dict, max_length: int) -> Encoded:
    """Token ids and loss mask for one record, keeping its first ``max_length`` tokens."""
    messages = record.get("messages")
    templated = messages is not None and has_chat_template(tokenizer)
    if messages is None:
        text = record["text"]
        spans = [(0, len(text))]
    elif templated:
        text, spans = chat_spans(tokenizer, messages)
    else:
        text, spans = plain_spans(messages)
    clipped = clip_chars(text, max_length)
    enc = tokenizer(clipped, add_special_tokens=not templated, return_offsets_mapping=True, truncation=True,
                    max_length=max_length)
    ids = list(enc["input_ids"])
    scored = [any(s < end and e > start for start, end in spans) if e > s else False
              for s, e in enc["offset_mapping"]]
    eos = tokenizer.eos_token_id
    if not templated and eos is not None and len(clipped) == len(text) and (not ids or ids[-1] != eos):
        ids.append(eos)
        scored.append(bool(spans) and spans[-1][1] == len(text))
    return Encoded(ids[:max_length], scored[:max_length])


def encode_records(tokenizer, records: Sequence[dict], max_length: int) -> list[Encoded]:
    return [encode_record(tokenizer, r, max_length) for r in records]


def encode_for_model(model, tokenizer, records: Sequence[dict], max_length: int) -> list[Encoded]:
    """Records as token ids with loss masks, cut to :func:`positions` (the run's and the model's limit)."""
    return encode_records(tokenizer, records, positions(model, max_length))


def pad_batch(examples: Sequence[Encoded], pad_id: int, device=None):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 where not scored).

    Right padding keeps every real token's positions and causal context as if it were alone.
    """
    import torch

    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e)
        ids = torch.tensor(e.input_ids, dtype=torch.long)
        input_ids[row, :n] = ids
        attention_mask[row, :n] = 1
        keep = torch.tensor(e.scored, dtype=torch.bool)
        labels[row, :n] = torch.where(keep, ids, torch.full_like(ids, -100))
    if device is not None:
        input_ids, attention_mask, labels = input_ids.to(device), attention_mask.to(device), labels.to(device)
    return input_ids, attention_mask, labels


def token_nll(logits, labels):
    """Per-position negative log-likelihood [B, T-1] (fp32) and its mask; logits at t predict t+1."""
    import torch

    batch, width, vocab = logits.shape
    # Cross-entropy over the last dimension of a contiguous [B*T, V] view: the fast kernel (a
    # transposed [B, V, T] input is 2-3x slower on CPU). The last position predicts nothing.
    shifted = torch.full_like(labels, -100)
    shifted[:, :-1] = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(batch * width, vocab).float(), shifted.reshape(-1).clamp_min(0), reduction="none"
    ).view(batch, width)[:, :-1]
    mask = shifted[:, :-1] != -100
    return nll * mask, mask


def model_device(model):
    return next(model.parameters()).device


__all__ = [
    "Encoded", "load_causal_lm", "context_limit", "positions", "pad_token_id", "has_chat_template", "plain_spans",
    "chat_spans", "encode_record", "encode_records", "encode_for_model", "pad_batch", "token_nll", "model_device", "torch_dtype",
]
