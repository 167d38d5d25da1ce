"""Configuration of proxy language models: how a small one is built, and how any one is trained.

Both configs enter the proxy cache key (see ``tamis.models.cache``), so every field that changes
the trained weights belongs here, and nothing that does not (device, progress bars, paths).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

class TrainConfig(BaseModel):
    """Warm-up or fine-tuning of a causal LM. Defaults follow LESS's warm-up recipe
    (LoRA r=128, alpha=512, dropout 0.1, lr 2e-5, linear decay, warmup 0.03, 4 epochs, 5% of the pool)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["lora", "full"] = Field(default="lora", description="train LoRA adapters or all parameters")
    # Which pool rows: a row is in the slice when a hash of (sample_seed, id) falls under
    # ``fraction``, so the slice does not depend on file order or sharding.
    fraction: float = Field(default=0.05, gt=0, le=1, description="fraction of the pool to train on")
    max_examples: int | None = Field(default=None, ge=1, description="cap on the slice size (the lowest hashes are kept)")
    sample_seed: int = Field(default=42, description="seed of the slice draw (LESS's sample_data_seed)")
    seed: int = Field(default=0, description="seed of the shuffling, dropout and LoRA initialization")
    epochs: int = Field(default=4, ge=1)
    checkpoints_per_epoch: int = Field(default=1, ge=1, description="checkpoints saved per epoch, each with its Adam moments")
    batch_size: int = Field(default=32, ge=1, description="examples per optimizer step")
    micro_batch_tokens: int = Field(default=8192, ge=16, description="padded tokens per forward pass (memory bound only; no effect on the result beyond float rounding)")
    max_length: int = Field(default=512, ge=8, description="tokens per example; longer ones keep their first tokens")
    lr: float = Field(default=2e-5, gt=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    adam_beta2: float = Field(default=0.999, ge=0, lt=1)
    adam_eps: float = Field(default=1e-8, gt=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="gradient clipping; None turns it off")
    loss_weighting: Literal["token", "example"] = Field(
        default="token", description="a step's loss: the mean over all its scored tokens ('token'), or the mean of "
                                     "each example's own token mean, every example weighing the same ('example': "
                                     "LESS's warm-up, Hugging Face's batch 1 x gradient accumulation)")
    lora_r: int = Field(default=128, ge=1)
    lora_alpha: float = Field(default=512, gt=0)
    lora_dropout: float = Field(default=0.1, ge=0, lt=1)
    lora_targets: list[str] | None = Field(default=None, description="module name suffixes; None: the attention projections")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="autocast dtype for the forward pass (weights and Adam stay fp32); bfloat16 on GPUs")


class ProxyModelConfig(BaseModel):
    """A small GPT-2-style proxy built from scratch when no model is named, plus the full-parameter
    training it gets on a pool sample before any warm-up (so LoRA starts from a model that knows something)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_layer: int = Field(default=4, ge=1)
    n_embd: int = Field(default=128, ge=8)
    n_head: int = Field(default=4, ge=1)
    vocab_size: int = Field(default=4096, ge=260, description="byte-level BPE vocabulary (256 bytes + merges + specials)")
    context: int = Field(default=256, ge=8, description="positions; also the max tokens per example")
    tokenizer_min_frequency: int = Field(default=2, ge=1)
    sample_size: int = Field(default=10_000, ge=1, description="pool rows used to train the tokenizer and the model")
    sample_seed: int = 42
    seed: int = 0
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="float32", description="autocast dtype while training")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ProxyModelConfig":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self

    def pretrain_config(self) -> TrainConfig:
        """The full-parameter training a freshly built proxy gets on its whole sample."""
        return TrainConfig(
            mode="full", fraction=1.0, sample_seed=self.sample_seed, seed=self.seed, epochs=self.epochs,
            batch_size=self.batch_size, max_length=self.context, lr=self.lr, schedule="linear",
            warmup_ratio=self.warmup_ratio, weight_decay=self.weight_decay, dtype=self.dtype,
        )
