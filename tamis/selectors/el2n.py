"""EL2N and GraNd (Paul, Ganguli & Dziugaite, NeurIPS 2021): keep the examples a model finds hard
early in training, averaged over independent runs.

* EL2N(x, y) = E_runs ||softmax(f(x)) - onehot(y)||_2 (needs only a forward pass);
* GraNd(x, y) = E_runs ||grad_w loss(f(x), y)||_2 (a backward per example).

Two kinds of records:

* **classification** (every sampled record has a ``label`` in its extra fields): a small head
  (softmax regression, or an MLP with ``head_hidden`` units) is trained for ``head_epochs`` on
  frozen sentence embeddings (``embedder``, MiniLM by default), once per run with its own seed;
  the classic definitions above apply, over all of the head's parameters;
* **language modelling** (anything else): ``runs`` small proxy LMs, each from its own seed, are
  trained briefly (``proxy_epochs``) on a pool slice, an early checkpoint as in the paper. Token
  EL2N is the mean over scored tokens of ||p_t - onehot(y_t)||_2; GraNd is the norm of the gradient
  of the mean token loss over every parameter.

What a score means depends on ``sample_size``. data_diet scores the examples the runs train on,
early in training. With ``sample_size=None`` every run trains on the whole pool, so every score is
that: the error on a row the proxy has seen, after ``proxy_epochs`` (one) pass. With the default
5,000-row slice, a pool row outside the slice gets an *out-of-sample* error (how hard the row is to
predict for models trained on similar data, a generalization difficulty); label noise and
memorized rows stand out less there than on training rows. The default keeps the slice because
every run trains on its rows: training ``runs`` proxies on a pool of millions is the whole cost
of a fine-tune, ten times. ``runs`` is 10, data_diet's recommendation ("at least 10").

Selection keeps the highest scores, but first leaves out the hardest ``skip_hardest`` fraction
(the paper's offset window): at the very top sit mislabeled and unlearnable examples. The budget
is still a fraction of all eligible rows (``tamis.selectors.rules.Budget``). 0.1 is the default because pools of web or
instruction data are noisy and their very top is mostly noise (Fayyaz et al. 2022; Marion et al.
2023 find a middle band best for LM pretraining data). On clean labels it costs: on sklearn's
digits the window loses about 2 points of accuracy with clean labels and gains about 5 with 10%
of labels flipped (benchmarks/pruning_curve.py); set ``skip_hardest=0`` for clean data.

The scores need no target, so they are the stored features (kind ``el2n`` or ``grand``, one
float32 per row): a second run on the same pool and settings loads no proxy.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from ..models.embedder import model_record, open_embedder
from ..models.features import model_identity, proxy_identity
from ..models.heads import KINDS, cached_heads, head_scores, label_indices, load_heads
from ..models.lm import encode_for_model
from ..models.proxies import ProxySpec, load_proxy, obtain_proxy, proxy_ref
from ..models.records import DATA_KINDS, data_kind, record_label, render
from ..models.stats import per_example_grad_norms, sequence_stats
from .base import PoolSample, Prepared, RunContext, Selector
from .rules import SkipWindow, TopK

__all__ = ["EL2NSelector", "GraNdSelector", "KINDS"]


@dataclass(frozen=True)
class DifficultyPrepared(Prepared):
    data_kind: str  # "lm", "classification", or "none" (an empty pool: nothing to score)
    proxies: list[dict] = field(default_factory=list)  # lm: one proxy (proxy_ref) per run
    heads: str | None = None  # classification: the heads file, its cache key, its training rows
    key: str | None = None
    examples: int = 0


# -- the selectors ------------------------------------------------------------------------------
class _DifficultySelector(Selector):
    """Shared by EL2N and GraNd: same proxies or heads, same offset window; ``kind`` picks the score."""

    kind = ""
    prepared_type = DifficultyPrepared

    def __init__(self, skip_hardest: float = 0.1, runs: int = 10, sample_size: int | None = 5000, data_kind: str = "auto",
                 model: str | None = None, mode: str = "full", proxy_epochs: int = 1, lr: float = 1e-3,
                 batch_size: int = 32, n_layer: int = 2, n_embd: int = 64, n_head: int = 2,
                 vocab_size: int = 2048, positions: int = 256, embedder: str = "minilm", pooling: str = "mean",
                 head_hidden: int = 128, head_epochs: int = 10, head_lr: float = 1e-3, head_batch_size: int = 64,
                 trust_remote_code: bool = False):
        self.skip_hardest = skip_hardest  # fraction of the highest-scored rows left out before the top-k
        self.runs = runs  # independent proxies (or heads) averaged over (data_diet: at least 10)
        # pool rows they train on; None: every pool row, so every scored row is a training row (data_diet's definition)
        self.sample_size = sample_size
        self.data_kind = data_kind  # "auto": classification when every sampled record has a label
        self.model = model  # LM path: HF id or folder to train briefly; None builds small GPT-2s
        self.mode = mode  # "full" or "lora" training of a given model
        self.proxy_epochs = proxy_epochs  # LM path: passes over the sample (an early checkpoint)
        self.lr = lr
        self.batch_size = batch_size
        self.n_layer = n_layer  # LM path: shape of the built proxies (small: each one scores the whole pool)
        self.n_embd = n_embd
        self.n_head = n_head
        self.vocab_size = vocab_size
        self.positions = positions
        self.embedder = embedder  # classification path: features of each record's text
        self.pooling = pooling
        self.head_hidden = head_hidden  # 0: softmax regression; else a one-hidden-layer MLP
        self.head_epochs = head_epochs
        self.head_lr = head_lr
        self.head_batch_size = head_batch_size
        self.trust_remote_code = trust_remote_code
        if not 0 <= skip_hardest < 1:
            raise ValueError(f"skip_hardest must be in [0, 1), got {skip_hardest!r}")
        if sample_size is not None and sample_size < 1:
            raise ValueError(f"sample_size must be at least 1 (or None for the whole pool), got {sample_size!r}")
        if runs < 1:
            raise ValueError(f"runs must be at least 1, got {runs!r}")
        if data_kind not in DATA_KINDS:
            raise ValueError(f"data_kind must be one of {DATA_KINDS}, got {data_kind!r}")
        if mode not in ("full", "lora"):
            raise ValueError(f"mode must be 'full' or 'lora', got {mode!r}")

    @classmethod
    def test_params(cls) -> dict:
        return {"runs": 2, "sample_size": 96, "batch_size": 16, "n_layer": 1, "n_embd": 16, "n_head": 2,
                "vocab_size": 300, "positions": 64, "head_hidden": 8, "head_epochs": 2}

    def selection_rule(self) -> TopK:
        """The top scores after the offset window: the hardest ``skip_hardest`` left out."""
        return TopK(skip=SkipWindow(self.skip_hardest))

    # -- training (once per run, on the driver) -----------------------------------------------------
    def prepare(self, pool: PoolSample, targets, context: RunContext) -> DifficultyPrepared:
        sample = pool.sample(1.0, self.sample_size)
        if not sample:  # an empty or all-rejected pool: no proxy to train, and nothing to score
            self.prepared_ = DifficultyPrepared("none")
            return self.prepared_
        labels = [record_label(r) for r in sample]
        if data_kind(self.data_kind, labels) == "classification":
            self.prepared_ = self.prepare_classification(sample, labels, context)
        else:
            self.prepared_ = self.prepare_lm(sample, context)
        return self.prepared_

    def proxy_spec(self, n_sample: int | None = None) -> ProxySpec:
        """Each run's proxy: a small GPT-2 built from the pool sample, or the given model trained briefly."""
        return ProxySpec(model=self.model, mode=self.mode, epochs=self.proxy_epochs, batch_size=self.batch_size,
                         lr=self.lr, n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                         vocab_size=self.vocab_size, positions=self.positions,
                         sample_size=n_sample or self.sample_size or 1, trust_remote_code=self.trust_remote_code)

    def prepare_lm(self, sample: list[dict], context: RunContext) -> DifficultyPrepared:
        spec = self.proxy_spec(len(sample))
        proxies = [proxy_ref(obtain_proxy(spec, sample, seed=context.seed + run, max_length=context.max_length,
                                          device=context.device, progress=sys.stderr.isatty()))
                   for run in range(self.runs)]
        return DifficultyPrepared("lm", proxies=proxies)

    def prepare_classification(self, sample: list[dict], labels: list, context: RunContext) -> DifficultyPrepared:
        kept = [(r, v) for r, v in zip(sample, labels) if v is not None]
        if not kept:
            raise ValueError(f"{self.name}: data_kind='classification' but no sampled record has a label in extra")
        grid = [(self.head_hidden, self.head_epochs)] * self.runs  # N runs, each its own seed
        path, key = cached_heads("el2n-heads", kept, self.make_embedder(context).embed, embedder=self.embedder,
                                 pooling=self.pooling, max_length=context.max_length, grid=grid, lr=self.head_lr,
                                 batch_size=self.head_batch_size, seed=context.seed)
        return DifficultyPrepared("classification", heads=path, key=key, examples=len(kept))

    def make_embedder(self, context: RunContext):
        return open_embedder(self.embedder, pooling=self.pooling, max_length=context.max_length,
                             batch_tokens=context.batch_tokens, device=context.device, dtype=context.dtype,
                             trust_remote_code=self.trust_remote_code)

    # -- scoring (per worker) -----------------------------------------------------------------------
    def setup(self, context: RunContext, prepared=None, targets=None) -> None:
        super().setup(context, prepared)  # no targets: the score is about the pool alone
        kind = prepared.data_kind if prepared is not None else None
        if kind not in ("classification", "lm", "none"):
            raise ValueError(f"{self.name}: nothing prepared (run prepare() first: it trains the proxies)")
        self.loaded_ = False  # the proxies or heads load at the first batch the feature store lacks
        self.spec_ = None

    def load(self) -> None:
        prepared = self.prepared_
        if prepared.data_kind == "classification":
            self.heads_, self.classes_ = load_heads(prepared.heads)
            self.embedder_ = self.make_embedder(self.context_)
        elif prepared.data_kind == "lm":
            self.proxies_ = [load_proxy(ref, device=self.context_.device, dtype=self.context_.dtype,
                                        trainable=self.grad_params() == "trainable")
                             for ref in prepared.proxies]
        self.loaded_ = True

    def feature_spec(self) -> dict | None:
        """The score itself (it needs no target), kind ``el2n`` or ``grand``; None for an empty pool."""
        prepared = self.prepared_
        if prepared.data_kind == "none" or getattr(self, "spec_", None) is not None:
            return self.spec_
        common = {"kind": self.name, "data_kind": prepared.data_kind, "max_length": self.context_.max_length,
                  "dtype": self.context_.dtype}
        if prepared.data_kind == "classification":
            self.spec_ = {**common, "heads": prepared.key, "embedder": model_identity(self.embedder),
                          "pooling": self.pooling}
        else:  # a given model's proxies are hashed once per worker
            self.spec_ = {**common, "proxies": [proxy_identity(ref) for ref in prepared.proxies],
                          "params": self.grad_params()}
        return self.spec_

    def score(self, records: list[dict]) -> dict[str, np.ndarray]:
        if self.prepared_.data_kind == "none":  # nothing was prepared: the pool had no valid row
            return {self.score_columns([])[None]: np.full(len(records), np.nan, dtype=np.float32)}
        return super().score(records)

    def featurize(self, records: list[dict]) -> dict[str, np.ndarray]:
        if not self.loaded_:
            self.load()
        if self.prepared_.data_kind == "classification":
            values = self.score_classification(records)
        else:
            values = np.mean([self.score_lm(model, tok, records) for model, tok in self.proxies_], axis=0)
        return {"score": values.astype(np.float32)}

    def score_features(self, features: dict[str, np.ndarray], records: list[dict]) -> dict[str, np.ndarray]:
        return {self.score_columns([])[None]: features["score"]}

    def score_classification(self, records: list[dict]) -> np.ndarray:
        # A record without a label, or with one the heads never saw, gets NaN (never selected).
        y = label_indices([record_label(r) for r in records], self.classes_)
        features = self.embedder_.embed([render(r) for r in records])
        return head_scores(self.heads_, features, y, self.kind)

    def score_lm(self, model, tokenizer, records: list[dict]) -> np.ndarray:
        examples = encode_for_model(model, tokenizer, records, self.context_.max_length)
        if self.kind == "el2n":
            return sequence_stats(model, examples, batch_tokens=self.context_.batch_tokens)["el2n"]
        return per_example_grad_norms(model, examples, params=self.grad_params(),
                                      batch_tokens=min(4096, self.context_.batch_tokens))

    def grad_params(self) -> str:
        """GraNd differentiates every parameter, or only the adapter of a LoRA-trained model."""
        return "trainable" if self.kind == "grand" and self.model is not None and self.mode == "lora" else "all"

    def model_info(self) -> dict[str, dict]:
        prepared = getattr(self, "prepared_", None) or DifficultyPrepared("")  # before prepare: nothing to say
        if prepared.data_kind == "classification":
            embedder = getattr(self, "embedder_", None)
            return {f"{self.name}.embedder": model_record(self.embedder, embedder.path if embedder else None,
                                                          pooling=self.pooling),
                    f"{self.name}.heads": {"path": prepared.heads, "key": prepared.key}}
        return {f"{self.name}.proxy{i}": dict(spec, model=self.model or "built")
                for i, spec in enumerate(prepared.proxies)}


class EL2NSelector(_DifficultySelector):
    """Score = mean over runs of the EL2N error norm early in training (higher = harder)."""

    name = "el2n"
    kind = "el2n"


class GraNdSelector(_DifficultySelector):
    """Score = mean over runs of the per-example gradient norm early in training (higher = harder)."""

    name = "grand"
    kind = "grand"
