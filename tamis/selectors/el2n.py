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

Selection keeps the highest scores, but first leaves out the hardest ``skip_hardest`` fraction
(the paper's offset window): at the very top sit mislabeled and unlearnable examples. The budget
then applies to the rows that remain (``skip_top``). 0.1 is the default because pools of web or
instruction data are noisy and their very top is mostly noise (Fayyaz et al. 2022; Marion et al.
2023 find a middle band best for LM pretraining data). On clean labels it costs: on sklearn's
digits the window loses about 2 points of accuracy with clean labels and gains about 5 with 10%
of labels flipped (benchmarks/pruning_curve.py); set ``skip_hardest=0`` for clean data.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import numpy as np

from .base import PoolSample, RunContext, Selector
from .color import encode_for, load_proxy, proxy_spec

KINDS = ("el2n", "grand")
DATA_KINDS = ("auto", "lm", "classification")


# -- classification: a small head on fixed features -------------------------------------------
def record_label(record: dict):
    """The record's ``label`` (int, str or bool) from its extra fields, or None."""
    extra = record.get("extra")
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            return None
    label = extra.get("label") if isinstance(extra, dict) else None
    return label if isinstance(label, (int, str, bool)) else None


def build_head(dim: int, n_classes: int, hidden: int):
    """Softmax regression (``hidden`` 0) or a one-hidden-layer ReLU MLP."""
    import torch

    if hidden <= 0:
        return torch.nn.Sequential(torch.nn.Linear(dim, n_classes))
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_classes))


def train_heads(features: np.ndarray, labels: np.ndarray, n_classes: int, *, runs: int = 4, epochs: int = 10,
                hidden: int = 128, lr: float = 1e-3, batch_size: int = 64, seed: int = 0) -> list[dict]:
    """``runs`` heads, each initialized and shuffled by its own seed, trained with Adam on
    cross-entropy for ``epochs`` (an early checkpoint, not convergence). Returns their state dicts."""
    import torch

    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    heads = []
    for run in range(runs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + run)
            head = build_head(x.shape[1], n_classes, hidden)
        opt = torch.optim.Adam(head.parameters(), lr=lr)
        rng = np.random.default_rng([seed, run])
        for _ in range(epochs):
            order = torch.as_tensor(rng.permutation(len(x)))
            for start in range(0, len(x), batch_size):
                rows = order[start : start + batch_size]
                loss = torch.nn.functional.cross_entropy(head(x[rows]), y[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
        heads.append({k: v.detach().clone() for k, v in head.state_dict().items()})
    return heads


def head_scores(heads: Sequence[dict], features: np.ndarray, labels: np.ndarray, kind: str, *,
                chunk_size: int = 512) -> np.ndarray:
    """Mean over heads of EL2N (||softmax - onehot||_2) or GraNd (per-example gradient norm of the
    cross-entropy over all head parameters, by ``torch.func``). A label of -1 gives NaN."""
    import torch
    from torch.func import functional_call, grad, vmap

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    known = y >= 0
    total = np.zeros(len(x), dtype=np.float64)
    for state in heads:
        weights = [v for k, v in state.items() if k.endswith("weight")]
        hidden = weights[0].shape[0] if len(weights) > 1 else 0
        head = build_head(x.shape[1], weights[-1].shape[0], hidden)
        head.load_state_dict(state)
        head.eval()
        params = {k: v.detach() for k, v in head.named_parameters()}

        def example_loss(p, xi, yi):
            return torch.nn.functional.cross_entropy(functional_call(head, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

        per_example_grads = vmap(grad(example_loss), in_dims=(None, 0, 0))
        score = np.zeros(len(x), dtype=np.float64)
        for start in range(0, len(x), chunk_size):
            xs, ys = x[start : start + chunk_size], y[start : start + chunk_size].clamp_min(0)
            if kind == "el2n":
                with torch.no_grad():
                    probs = torch.softmax(head(xs), dim=-1)
                    err = probs - torch.nn.functional.one_hot(ys, probs.shape[-1]).float()
                    score[start : start + len(xs)] = err.norm(dim=-1).double().numpy()
            else:
                grads = per_example_grads(params, xs, ys)
                sq = sum(g.reshape(len(xs), -1).double().square().sum(1) for g in grads.values())
                score[start : start + len(xs)] = sq.sqrt().detach().numpy()
        total += score
    out = (total / max(1, len(heads))).astype(np.float32)
    out[~known.numpy()] = np.nan
    return out


def classifier_scores(features: np.ndarray, labels: Sequence, kind: str, *, runs: int = 4, epochs: int = 10,
                      hidden: int = 128, lr: float = 1e-3, batch_size: int = 64, seed: int = 0) -> np.ndarray:
    """EL2N or GraNd of labelled feature vectors: train ``runs`` heads on them, score them."""
    keys = [json.dumps(v.item() if isinstance(v, np.generic) else v) for v in labels]  # numpy ints too
    index = {c: i for i, c in enumerate(sorted(set(keys)))}
    y = np.array([index[k] for k in keys], dtype=np.int64)
    heads = train_heads(features, y, len(index), runs=runs, epochs=epochs, hidden=hidden, lr=lr,
                        batch_size=batch_size, seed=seed)
    return head_scores(heads, features, y, kind)


def save_heads(path, heads: list[dict], classes: list[str]) -> None:
    """Heads as one safetensors file (``run<i>.<param>``), classes in its metadata; atomic."""
    import os
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tensors = {f"run{i}.{k}": v.contiguous() for i, head in enumerate(heads) for k, v in head.items()}
    save_file(tensors, str(tmp), metadata={"classes": json.dumps(classes), "runs": str(len(heads))})
    os.replace(tmp, path)


def cached_heads(kind: str, kept: list[tuple[dict, object]], embed, *, embedder: str, pooling: str,
                 max_length: int, grid: list[tuple[int, int]], lr: float, batch_size: int, seed: int) -> tuple[str, str]:
    """Classifier heads on embeddings of labelled records, one per (hidden, epochs) in ``grid``,
    trained once and cached under a hash of their inputs. ``embed(texts)`` makes the features.
    Returns (path of the safetensors file, cache key). EL2N/GraNd and the IRT classifier crowd
    both use it."""
    from ..models.cache import cache_root, content_hash, key_lock, slice_digest
    from ..models.loading import fingerprint

    classes = sorted({json.dumps(v) for _, v in kept})
    inputs = {"kind": kind, "slice": slice_digest(r for r, _ in kept), "labels": [json.dumps(v) for _, v in kept],
              "embedder": fingerprint(embedder) or embedder, "pooling": pooling, "max_length": max_length,
              "grid": [list(g) for g in grid], "lr": lr, "batch_size": batch_size, "seed": seed}
    key = content_hash(inputs)
    root = cache_root()
    path = root / f"{kind}-{key}.safetensors"
    with key_lock(root, key):
        if not path.is_file():
            features = embed([render(r) for r, _ in kept])
            index = {c: i for i, c in enumerate(classes)}
            y = np.array([index[json.dumps(v)] for _, v in kept], dtype=np.int64)
            heads = [train_heads(features, y, len(classes), runs=1, epochs=e, hidden=h, lr=lr,
                                 batch_size=batch_size, seed=seed + i)[0]
                     for i, (h, e) in enumerate(grid)]
            save_heads(path, heads, classes)
    return str(path), key


def load_heads(path) -> tuple[list[dict], list[str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        heads: list[dict] = [{} for _ in range(int(meta["runs"]))]
        for key in f.keys():
            run, _, name = key.partition(".")
            heads[int(run[3:])][name] = f.get_tensor(key)
    return heads, json.loads(meta["classes"])


# -- the selectors ------------------------------------------------------------------------------
class _DifficultySelector(Selector):
    """Shared by EL2N and GraNd: same proxies or heads, same offset window; ``kind`` picks the score."""

    kind = ""

    def __init__(self, skip_hardest: float = 0.1, runs: int = 4, sample_size: int = 5000, data_kind: str = "auto",
                 model: str | None = None, mode: str = "full", proxy_epochs: int = 1, lr: float = 1e-3,
                 batch_size: int = 32, n_layer: int = 2, n_embd: int = 64, n_head: int = 2,
                 vocab_size: int = 2048, context: int = 256, embedder: str = "minilm", pooling: str = "mean",
                 head_hidden: int = 128, head_epochs: int = 10, head_lr: float = 1e-3, head_batch_size: int = 64,
                 trust_remote_code: bool = False):
        self.skip_hardest = skip_hardest  # fraction of the highest-scored rows left out before the top-k
        self.runs = runs  # independent proxies (or heads) averaged over
        self.sample_size = sample_size  # pool rows they train on
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
        self.context = context
        self.embedder = embedder  # classification path: features of each record's text
        self.pooling = pooling
        self.head_hidden = head_hidden  # 0: softmax regression; else a one-hidden-layer MLP
        self.head_epochs = head_epochs
        self.head_lr = head_lr
        self.head_batch_size = head_batch_size
        self.trust_remote_code = trust_remote_code
        if not 0 <= skip_hardest < 1:
            raise ValueError(f"skip_hardest must be in [0, 1), got {skip_hardest!r}")
        if runs < 1:
            raise ValueError(f"runs must be at least 1, got {runs!r}")
        if data_kind not in DATA_KINDS:
            raise ValueError(f"data_kind must be one of {DATA_KINDS}, got {data_kind!r}")
        if mode not in ("full", "lora"):
            raise ValueError(f"mode must be 'full' or 'lora', got {mode!r}")

    @classmethod
    def test_params(cls) -> dict:
        return {"runs": 2, "sample_size": 96, "batch_size": 16, "n_layer": 1, "n_embd": 16, "n_head": 2,
                "vocab_size": 300, "context": 64, "head_hidden": 8, "head_epochs": 2}

    def skip_top(self) -> float:
        return self.skip_hardest

    # -- training (once per run, on the driver) -----------------------------------------------------
    def prepare(self, pool: PoolSample, targets, context: RunContext) -> dict:
        sample = pool.sample(1.0, self.sample_size)
        if not sample:  # an empty or all-rejected pool: no proxy to train, and nothing to score
            self.prepared_ = {"data_kind": "none"}
            return self.prepared_
        labels = [record_label(r) for r in sample]
        labelled = bool(sample) and all(v is not None for v in labels) and len({json.dumps(v) for v in labels}) > 1
        if self.data_kind == "classification" or (self.data_kind == "auto" and labelled):
            self.prepared_ = self.prepare_classification(sample, labels, context)
        else:
            self.prepared_ = self.prepare_lm(sample, context)
        return self.prepared_

    def prepare_lm(self, sample: list[dict], context: RunContext) -> dict:
        from ..models.build import build_proxy
        from ..models.train import train_proxy
        from ..schemas.proxy import ProxyModelConfig, TrainConfig

        proxies = []
        for run in range(self.runs):
            seed = context.seed + run
            if self.model is None:
                config = ProxyModelConfig(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                                          vocab_size=self.vocab_size, context=self.context,
                                          sample_size=self.sample_size, seed=seed, epochs=self.proxy_epochs,
                                          batch_size=self.batch_size, lr=self.lr)
                proxy = build_proxy(sample, config, device=context.device, progress=sys.stderr.isatty())
            else:
                config = TrainConfig(mode=self.mode, fraction=1.0, seed=seed, epochs=self.proxy_epochs,
                                     batch_size=self.batch_size, lr=self.lr, max_length=context.max_length)
                proxy = train_proxy(self.model, sample, config, device=context.device, progress=sys.stderr.isatty(),
                                    trust_remote_code=self.trust_remote_code)
            proxies.append(proxy_spec(proxy))
        return {"data_kind": "lm", "proxies": proxies}

    def prepare_classification(self, sample: list[dict], labels: list, context: RunContext) -> dict:

        kept = [(r, v) for r, v in zip(sample, labels) if v is not None]
        if not kept:
            raise ValueError(f"{self.name}: data_kind='classification' but no sampled record has a label in extra")
        grid = [(self.head_hidden, self.head_epochs)] * self.runs  # N runs, each its own seed
        path, key = cached_heads("el2n-heads", kept, self.make_embedder(context).embed, embedder=self.embedder,
                                 pooling=self.pooling, max_length=context.max_length, grid=grid, lr=self.head_lr,
                                 batch_size=self.head_batch_size, seed=context.seed)
        return {"data_kind": "classification", "heads": path, "key": key, "examples": len(kept)}

    def make_embedder(self, context: RunContext):
        from ..models.embedder import HiddenStateEmbedder

        return HiddenStateEmbedder(self.embedder, pooling=self.pooling, max_length=context.max_length,
                                   batch_tokens=context.batch_tokens, device=context.device, dtype=context.dtype,
                                   trust_remote_code=self.trust_remote_code)

    # -- scoring (per worker) -----------------------------------------------------------------------
    def fit(self, targets, prepared=None):
        super().fit(None, prepared)  # no targets: the score is about the pool alone
        kind = self.prepared_.get("data_kind")
        if kind == "classification":
            self.heads_, self.classes_ = load_heads(self.prepared_["heads"])
            self.embedder_ = self.make_embedder(self.context_)
        elif kind == "lm":
            self.proxies_ = [load_proxy(spec, self.context_, trainable=self.grad_params() == "trainable")
                             for spec in self.prepared_["proxies"]]
        elif kind != "none":
            raise ValueError(f"{self.name}: nothing prepared (run prepare() first: it trains the proxies)")
        return self

    def score(self, records: list[dict]) -> dict[str, np.ndarray]:
        if self.prepared_["data_kind"] == "none":  # nothing was prepared: the pool had no valid row
            return {self.score_columns([])[None]: np.full(len(records), np.nan, dtype=np.float32)}
        if self.prepared_["data_kind"] == "classification":
            values = self.score_classification(records)
        else:
            values = np.mean([self.score_lm(model, tok, records) for model, tok in self.proxies_], axis=0)
        return {self.score_columns([])[None]: values.astype(np.float32)}

    def score_classification(self, records: list[dict]) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes_)}
        labels = [record_label(r) for r in records]
        # A record without a label, or with one the heads never saw, gets NaN (never selected).
        y = np.array([index.get(json.dumps(v), -1) if v is not None else -1 for v in labels], dtype=np.int64)
        features = self.embedder_.embed([render(r) for r in records])
        return head_scores(self.heads_, features, y, self.kind)

    def score_lm(self, model, tokenizer, records: list[dict]) -> np.ndarray:
        from ..models.stats import per_example_grad_norms, sequence_stats

        examples = encode_for(model, tokenizer, records, self.context_)
        if self.kind == "el2n":
            return sequence_stats(model, examples, batch_tokens=self.context_.batch_tokens)["el2n"]
        return per_example_grad_norms(model, examples, params=self.grad_params(),
                                      batch_tokens=min(4096, self.context_.batch_tokens))

    def grad_params(self) -> str:
        """GraNd differentiates every parameter, or only the adapter of a LoRA-trained model."""
        return "trainable" if self.kind == "grand" and self.model is not None and self.mode == "lora" else "all"

    def model_info(self) -> dict[str, dict]:
        prepared = getattr(self, "prepared_", {}) or {}
        if prepared.get("data_kind") == "classification":
            from ..models.loading import fingerprint, resolve_model

            return {f"{self.name}.embedder": {"model": self.embedder, "path": resolve_model(self.embedder),
                                              "sha256": fingerprint(self.embedder), "pooling": self.pooling},
                    f"{self.name}.heads": {"path": prepared["heads"], "key": prepared["key"]}}
        return {f"{self.name}.proxy{i}": dict(spec, model=self.model or "built")
                for i, spec in enumerate(prepared.get("proxies", []))}


def render(record: dict) -> str:
    from ..models.text import render_plain

    return render_plain(record)


class EL2NSelector(_DifficultySelector):
    """Score = mean over runs of the EL2N error norm early in training (higher = harder)."""

    name = "el2n"
    kind = "el2n"


class GraNdSelector(_DifficultySelector):
    """Score = mean over runs of the per-example gradient norm early in training (higher = harder)."""

    name = "grand"
    kind = "grand"
