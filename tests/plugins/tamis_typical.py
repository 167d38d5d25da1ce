"""A selector written as a plugin, outside tamis, on the model toolkit: keep the rows a small LM
trained on the pool itself finds most typical (lowest mean token loss)."""
import sys
from dataclasses import dataclass

import numpy as np

from tamis.models.lm import encode_for_model
from tamis.models.proxies import ProxySpec, load_proxy, obtain_proxy, proxy_ref
from tamis.models.stats import mean_token_loss
from tamis.selectors import Prepared, Selector


@dataclass(frozen=True)
class TypicalPrepared(Prepared):
    proxy: dict  # the proxy built from the pool (proxy_ref)


class TypicalSelector(Selector):
    """Score = minus the mean token loss under a proxy built from the pool (higher = more typical)."""

    name = "typical"
    prepared_type = TypicalPrepared

    def __init__(self, sample_size: int = 2000, epochs: int = 1, n_layer: int = 2, n_embd: int = 64,
                 vocab_size: int = 2048):
        self.sample_size = sample_size
        self.epochs = epochs
        self.n_layer = n_layer
        self.n_embd = n_embd
        self.vocab_size = vocab_size

    @classmethod
    def test_params(cls):
        return {"sample_size": 100, "n_layer": 1, "n_embd": 16, "vocab_size": 300}

    def prepare(self, pool, targets, context):
        spec = ProxySpec(epochs=self.epochs, n_layer=self.n_layer, n_embd=self.n_embd, n_head=2,
                         vocab_size=self.vocab_size, positions=context.max_length, sample_size=self.sample_size)
        proxy = obtain_proxy(spec, pool.sample(1.0, self.sample_size), seed=context.seed,
                             max_length=context.max_length, device=context.device, progress=sys.stderr.isatty())
        return TypicalPrepared(proxy_ref(proxy))

    def setup(self, context, prepared=None, targets=None):
        super().setup(context, prepared, targets)
        self.model_, self.tokenizer_ = load_proxy(prepared.proxy, device=context.device, dtype=context.dtype)

    def score(self, records):
        examples = encode_for_model(self.model_, self.tokenizer_, records, self.context_.max_length)
        loss = mean_token_loss(self.model_, examples, batch_tokens=self.context_.batch_tokens)
        return {"score_typical": -loss}
