"""Build a small GPT-2-style proxy from the pool itself, so every selector works offline on a CPU.

A byte-level BPE tokenizer is trained on a sample of the pool (rendered with the plain
"role: content" join, which is what the built model sees: it has no chat template), a
``GPT2LMHeadModel`` of the configured size is initialized from a seed, and the model is trained
with full parameters on the same sample. The result is a cached :class:`TrainedProxy` whose final
checkpoint is an ordinary Hugging Face model folder, usable wherever a model id is.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..schemas.proxy import ProxyModelConfig
from .text import render_plain
from .train import TrainedProxy, select_slice, train_cached

END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"
INIT_DIR = "init"


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, max_length: int = 1024):
    """A byte-level BPE ``PreTrainedTokenizerFast`` (every byte is in the vocabulary, so nothing is unknown)
    with ``<|endoftext|>`` as BOS/EOS and a separate ``<|pad|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=[END_OF_TEXT, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                                   pad_token=PAD, model_max_length=max_length)


def build_model(config: ProxyModelConfig, tokenizer):
    """A randomly initialized GPT-2 (seeded by ``config.seed``) sized by ``config``, eager attention."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(config.seed)
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer), n_positions=config.context, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    # transformers 5 rejects the attention choice as a constructor argument; eager, because
    # torch.func.vmap has no batching rule for SDPA.
    gpt2._attn_implementation = "eager"
    return GPT2LMHeadModel(gpt2)


def write_initial_model(folder: Path, config: ProxyModelConfig, records: list[dict]) -> None:
    """Tokenizer + initialized model, saved as a model folder (renamed into place when whole)."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = train_tokenizer((render_plain(r) for r in records), config.vocab_size,
                                config.tokenizer_min_frequency, config.context)
    model = build_model(config, tokenizer)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    os.replace(tmp, folder)


def build_proxy(records: Iterable[dict], config: ProxyModelConfig | None = None, *,
                cache_dir: str | os.PathLike | None = None, device: str = "cpu", progress: bool = True,
                stop_after_checkpoint: int | None = None, checkpoints_per_epoch: int = 1) -> TrainedProxy:
    """Build and train (full parameters) a small proxy on a sample of ``records``; cached by
    (sample, config). Its ``final_model_path`` is a model folder for :func:`train_proxy`.
    ``checkpoints_per_epoch`` above 1 saves more checkpoints along the way (IRT's crowd)."""
    config = config or ProxyModelConfig()
    train = config.pretrain_config().model_copy(update={"checkpoints_per_epoch": checkpoints_per_epoch})
    sample = select_slice(records, 1.0, config.sample_size, config.sample_seed)

    def prepare(run_dir: Path) -> str:
        if not (run_dir / INIT_DIR).is_dir():
            write_initial_model(run_dir / INIT_DIR, config, sample)
        return str(run_dir / INIT_DIR)

    return train_cached({"kind": "build", "model_config": config.model_dump(mode="json")}, base=None,
                        init_adapter=None, records=sample, config=train, cache_dir=cache_dir,
                        device=device, progress=progress, stop_after_checkpoint=stop_after_checkpoint,
                        prepare=prepare)
