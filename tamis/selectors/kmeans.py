"""Diversify and Conquer (Yu et al., 2024): k-means clusters, quotas, and quality-weighted
sampling (kMQ), with optional iterative refinement.

* **Clusters.** Records are embedded as RDS+ embeds them (:class:`HiddenStateEmbedder`, MiniLM
  by default, any model). ``prepare`` fits faiss k-means on a pool sample and saves the centroids
  under the run's work folder; every worker then assigns each record to its nearest centroid
  while scoring (columns ``cluster``, ``cluster_distance``).
* **k.** When ``k`` is not given, ``k_rule`` decides. ``"sqrt"`` (the default):
  ``k = round(sqrt(N / 2))`` for a pool of N rows (the usual rule of thumb), so a small pool is
  not cut into clusters of a row or two. ``"paper"``: the paper's kMQ setting, 1024. Both are
  capped so every centroid has at least 20 sample rows (the default ``sample_size`` of 20,480
  leaves room for 1024) and at 1024; at least 2. Under ``"sqrt"`` k reaches 1024 from about
  2.1 M pool rows.
* **Text.** ``text="user"`` (the default, as the reference's ``tulu_user_only``) embeds the
  user turns only; ``text="all"`` embeds every turn as RDS+ renders a record.
* **kMQ.** The budget is split into equal cluster quotas. A cluster with fewer rows than its
  quota gives what it lacks to the others, so the selection always fills the budget (the
  reference code leaves it short). Within a cluster, rows are drawn without replacement with
  probability proportional to exp(quality / temperature), where quality is another selector's
  score column in the same run (``quality="score_el2n"``), z-scored first by default so one
  temperature suits any column, or uniform.
* **Refinement** (``rounds > 1``): round 1 takes budget/rounds rows with equal quotas. Before
  each later round a proxy LM is trained on everything selected so far, and each cluster's
  *loss gap* is the mean, over its selected rows, of the trained proxy's loss divided by the
  reference proxy's (the same proxy before training on the selection: a small GPT-2 built from
  the pool, or ``proxy_model`` as given). It is the fraction of loss that training left: near
  1, the cluster is not learned yet. Clusters with no selected row get the mean gap. Cluster weights are a max-shifted softmax of the gaps / ``gap_temperature``;
  quotas follow the weights (largest remainder, redistributed as above). This is the
  reference's ``ppl`` mode made relative, with expected counts instead of categorical draws,
  and the within-cluster draw stays quality-weighted (the reference's is uniform).

``score_kmeans`` is the row's sampling weight before quality: kMQ's inclusion rate relative to
random sampling under equal quotas, (1/k) / (the cluster's share of the sample); rows of small
clusters score high. The quality factor exp(q/T) is applied at selection, since other
selectors' columns exist only then. ``selection_round`` (1-based) is set by the selection pass
when kmeans drives it; it is null for rows not selected, and everywhere when another selector
drives the selection.

Randomness comes from a hash of (run seed, row id), so the same seed gives the same selection
whatever the sharding or row order.

The pool's embeddings are stored (kind ``embedding``): a second run on the same pool and settings
embeds nothing and loads no embedder. They are RDS+'s when the model, pooling, max_length and
rendering agree; RDS+ embeds every turn, so sharing them needs ``text="all"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
import sys

import numpy as np
import pyarrow as pa

from ..io import filesystems
from ..models.cache import content_hash, slice_digest
from ..models.embedder import POOLING_CHOICES, model_record, open_embedder, resolve_pooling
from ..models.features import embedding_spec
from ..models.lm import encode_for_model
from ..models.loading import DEFAULT_EMBEDDER, fingerprint
from ..models.proxies import ProxySpec, load_proxy, obtain_proxy, open_proxy, proxy_ref
from ..models.records import render, user_text
from ..models.stats import mean_token_loss
from ..models.train import train_proxy
from ..schemas.proxy import ProxyModelConfig, TrainConfig
from .base import PoolSample, Prepared, RunContext, Selector, open_feature_store, stored_features
from .rules import ClusterQuotas


@dataclass(frozen=True)
class KMeansPrepared(Prepared):
    k: int  # clusters fitted
    n_pool: int  # pool rows counted
    n_sample: int  # rows the centroids were fitted on
    centroids: str | list | None = None  # the centroid file, or the centroids inline (no work folder)
    counts: list[int] | None = None  # sample rows per cluster, inline with inline centroids
    proxy: dict | None = None  # the refinement's reference proxy (proxy_ref), rounds > 1


# -- pure pieces (unit-tested) -----------------------------------------------------------------
K_RULES = ("sqrt", "paper")
PAPER_K = 1024  # kMQ's K (the reference's KMenasRandomDeita.yaml)


def default_k(n_pool: int, n_sample: int, rule: str = "sqrt") -> int:
    """sqrt(N/2) clusters (``rule="paper"``: 1024), at least 20 sample rows per centroid, at most
    1024, at least 2."""
    wanted = PAPER_K if rule == "paper" else round(math.sqrt(n_pool / 2))
    k = min(wanted, n_sample // 20, PAPER_K)
    return int(max(2, min(k, n_sample)))


# -- the selector --------------------------------------------------------------------------------
class KMeansSelector(Selector):
    """kMQ: equal cluster quotas (redistributed), quality-weighted draws, optional refinement."""

    name = "kmeans"
    prepared_type = KMeansPrepared

    def __init__(self, model: str = DEFAULT_EMBEDDER, pooling: str = "auto", text: str = "user",
                 k: int | None = None, k_rule: str = "sqrt", sample_size: int = 20_480, niter: int = 50, nredo: int = 1,
                 quality: str = "uniform", temperature: float = 1.0, standardize: bool = True,
                 rounds: int = 1, gap_temperature: float = 0.1,
                 proxy_model: str | None = None, proxy_mode: str = "full", proxy: dict | None = None,
                 train_epochs: int = 2, train_lr: float = 1e-3, train_batch_size: int = 16,
                 trust_remote_code: bool = False):
        self.model = model  # the embedder: HF id, local folder, or "minilm" (as RDS+)
        self.pooling = pooling  # "auto": the encoder's mean (MiniLM) or a causal LM's weighted mean (RDS+'s)
        self.text = text  # what is embedded: "all" turns (RDS+'s rendering) or "user" turns (the reference)
        self.k = k  # clusters; None: by k_rule
        self.k_rule = k_rule  # "sqrt": round(sqrt(N/2)); "paper": 1024 (both capped, see the module docstring)
        self.sample_size = sample_size  # pool rows the centroids are fitted on
        self.niter = niter  # k-means iterations (the reference: 300)
        self.nredo = nredo  # k-means restarts, the best kept (the reference: 5)
        self.quality = quality  # a score column of this run (e.g. "score_el2n"), or "uniform"
        self.temperature = temperature  # p ∝ exp(quality / temperature) within a cluster
        self.standardize = standardize  # z-score the quality over eligible rows first
        self.rounds = rounds  # 1: plain kMQ; more: iterative refinement
        self.gap_temperature = gap_temperature  # cluster weights = softmax(loss gap / gap_temperature)
        self.proxy_model = proxy_model  # refinement's proxy LM (HF id or folder); None builds one from the pool
        self.proxy_mode = proxy_mode  # "full" or "lora" training of a given proxy_model
        self.proxy = proxy  # ProxyModelConfig fields of the built proxy (shape, sample, epochs)
        self.train_epochs = train_epochs  # passes over the selection so far, each refinement round
        self.train_lr = train_lr
        self.train_batch_size = train_batch_size
        self.trust_remote_code = trust_remote_code
        if pooling not in POOLING_CHOICES:
            raise ValueError(f"pooling must be one of {', '.join(POOLING_CHOICES)}, got {pooling!r}")
        if text not in ("all", "user"):
            raise ValueError(f"text must be 'all' or 'user', got {text!r}")
        if k_rule not in K_RULES:
            raise ValueError(f"k_rule must be one of {', '.join(K_RULES)}, got {k_rule!r}")
        if k is not None and k < 1:
            raise ValueError(f"k must be at least 1, got {k!r}")
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds!r}")
        if temperature <= 0 or gap_temperature <= 0:
            raise ValueError("temperature and gap_temperature must be positive")
        if proxy_mode not in ("full", "lora"):
            raise ValueError(f"proxy_mode must be 'full' or 'lora', got {proxy_mode!r}")
        self._proxy_config(0)  # a bad proxy field fails here, not after the embedding

    @classmethod
    def test_params(cls) -> dict:
        return {"k": 4, "sample_size": 100, "niter": 10}

    # -- declared output ----------------------------------------------------------------------
    def columns(self, tasks: list[str]) -> list[pa.Field]:
        return super().columns(tasks) + [pa.field("cluster", pa.int32()), pa.field("cluster_distance", pa.float32()),
                                         *ClusterQuotas.fields]

    # -- prepare: centroids (and the refinement proxy), once per run --------------------------------
    def _proxy_config(self, seed: int) -> ProxyModelConfig:
        return ProxyModelConfig(**{"seed": seed, **(self.proxy or {})})

    def proxy_spec(self) -> ProxySpec:
        """The refinement's reference proxy: ``proxy_model`` as it is, or a small GPT-2 built from the pool."""
        if self.proxy_model is not None:
            return ProxySpec(model=self.proxy_model, mode=self.proxy_mode, epochs=0,
                             trust_remote_code=self.trust_remote_code)
        return ProxySpec(build_options=dict(self.proxy or {}))  # ProxyModelConfig's fields and defaults

    def _embedder(self, context: RunContext):
        embedder = open_embedder(self.model, pooling=self.pooling, max_length=context.max_length,
                                 batch_tokens=context.batch_tokens, device=context.device, dtype=context.dtype,
                                 trust_remote_code=self.trust_remote_code)
        self.model_path_ = embedder.path
        return embedder

    def _embed(self, embedder, records: list[dict]) -> np.ndarray:
        text = render if self.text == "all" else user_text
        return embedder.embed([text(r) for r in records])

    def prepare(self, pool: PoolSample, targets, context: RunContext) -> KMeansPrepared:
        import faiss

        n_pool = 0

        def counted():
            nonlocal n_pool
            for record in pool:
                n_pool += 1
                yield record

        proxy_rows = self._proxy_config(context.seed).sample_size if self.rounds > 1 and self.proxy_model is None else 0
        sample = PoolSample(counted).sample(1.0, max(self.sample_size, proxy_rows), seed=42)
        fit_rows = sample[: self.sample_size]  # slices are nested: the lowest hashes of one draw
        if not fit_rows:  # an empty or all-rejected pool: nothing to cluster, and nothing to score
            self.prepared_ = KMeansPrepared(0, n_pool, 0)
            return self.prepared_
        k = min(self.k or default_k(n_pool, len(fit_rows), self.k_rule), len(fit_rows))
        prepared: dict = {}
        key = content_hash({"slice": slice_digest(fit_rows), "k": k, "seed": context.seed,
                            **{p: getattr(self, p) for p in ("model", "pooling", "text", "niter", "nredo")},
                            "model_sha256": fingerprint(self.model), "max_length": context.max_length,
                            # float16 features round the vectors the centroids are fitted on
                            **({"feature_dtype": context.feature_dtype} if context.feature_dtype != "float32" else {})
                            })[:16]
        path = f"{context.work_dir.rstrip('/')}/kmeans-{key}.safetensors" if context.work_dir else None
        if path is None or not filesystems.exists(path):  # a resumed run reuses its centroids
            spec = embedding_spec(self.model, self.pooling, self.text, context.max_length, context.dtype,
                                  self.trust_remote_code)
            embed = lambda rows: {"embedding": self._embed(self._embedder(context), rows)}  # noqa: E731
            found, _ = stored_features(open_feature_store(context), spec, fit_rows, embed, context.feature_dtype)
            vectors = np.ascontiguousarray(found["embedding"], dtype=np.float32)  # another run's sample embeddings
            km = faiss.Kmeans(vectors.shape[1], k, niter=self.niter, nredo=self.nredo, seed=context.seed,
                              verbose=False)
            km.train(vectors)
            _, assigned = km.index.search(vectors, 1)
            counts = np.bincount(assigned[:, 0], minlength=k).astype(np.int64)
            if path is None:  # no work folder (direct use): small enough to pass inline
                prepared.update(centroids=km.centroids.tolist(), counts=counts.tolist())
            else:
                filesystems.write_bytes(path, _to_safetensors(km.centroids, counts))
        if path is not None:
            prepared["centroids"] = path
        if self.rounds > 1:
            prepared["proxy"] = self._prepare_proxy(sample[:proxy_rows], context)
        self.prepared_ = KMeansPrepared(k, n_pool, len(fit_rows), **prepared)
        return self.prepared_

    def _prepare_proxy(self, rows: list[dict], context: RunContext) -> dict:
        """The refinement's reference proxy: a given model as is, or a small one built from the pool."""
        spec = self.proxy_spec()
        return proxy_ref(obtain_proxy(spec, rows, seed=context.seed, max_length=context.max_length,
                                      device=context.device, progress=sys.stderr.isatty()), spec)

    # -- scoring: nearest centroid, per worker ---------------------------------------------------
    def setup(self, context: RunContext, prepared=None, targets=None) -> None:
        import faiss

        super().setup(context, prepared, targets)
        self.spec_ = None
        self.embedder_ = None  # loaded at the first featurize(): a store hit and the selection pass never need it
        if prepared is not None and prepared.k == 0:  # no valid row in the pool: score() is never given one
            self.k_, self.index_, self.weight_ = 0, None, np.zeros(0, np.float32)
            return
        centroids = prepared.centroids if prepared is not None else None
        if centroids is None:
            raise ValueError("kmeans: nothing prepared (run prepare() first: it fits the centroids)")
        if isinstance(centroids, str):
            centroids, counts = _from_safetensors(filesystems.read_bytes(centroids))
        else:
            centroids, counts = np.asarray(centroids, np.float32), np.asarray(prepared.counts)
        self.k_ = len(centroids)
        self.index_ = faiss.IndexFlatL2(centroids.shape[1])
        self.index_.add(np.ascontiguousarray(centroids, dtype=np.float32))
        share = (counts + 1.0) / (counts.sum() + self.k_)  # smoothed: an empty cluster is rare, not impossible
        self.weight_ = ((1.0 / self.k_) / share).astype(np.float32)

    def feature_spec(self) -> dict:
        if getattr(self, "spec_", None) is None:
            self.spec_ = embedding_spec(self.model, self.pooling, self.text, self.context_.max_length,
                                        self.context_.dtype, self.trust_remote_code)
        return self.spec_

    def featurize(self, records: list[dict]) -> dict[str, np.ndarray]:
        if self.embedder_ is None:  # loaded at the first batch the store lacks
            self.embedder_ = self._embedder(self.context_)
        return {"embedding": self._embed(self.embedder_, records)}

    def score_features(self, features: dict[str, np.ndarray], records: list[dict]) -> dict[str, np.ndarray]:
        vectors = np.ascontiguousarray(features["embedding"], dtype=np.float32)
        dist2, nearest = self.index_.search(vectors, 1)
        cluster = nearest[:, 0].astype(np.int32)
        return {
            "score_kmeans": self.weight_[cluster],
            "cluster": cluster,
            "cluster_distance": np.sqrt(np.maximum(dist2[:, 0], 0)).astype(np.float32),
            "selection_round": np.full(len(records), None, dtype=object),  # null until the selection pass sets it
        }

    # -- selection: quotas, quality-weighted draws, refinement -------------------------------------
    def selection_rule(self) -> ClusterQuotas:
        """kMQ's quotas; with ``rounds > 1`` the refinement trains on the picks (after setup)."""
        return ClusterQuotas(quality=None if self.quality == "uniform" else self.quality,
                             temperature=self.temperature, standardize=self.standardize, rounds=self.rounds,
                             gap_temperature=self.gap_temperature, n_clusters=getattr(self, "k_", 0),
                             loss_ratios=self.loss_ratios if self.rounds > 1 else None)

    def loss_ratios(self, rows: list[dict]) -> np.ndarray:
        """Per selected row: the proxy's mean token loss after training on the selection so far,
        divided by its loss before (the reference proxy). After setup."""
        context = self.context_
        records = [{"id": r["id"], "messages": r["messages"], "text": r["text"], "extra": r.get("extra")}
                   for r in rows]
        ref = self.prepared_.proxy
        if ref is None:
            raise ValueError("kmeans: no refinement proxy prepared (prepare() with rounds > 1 makes one)")
        config = TrainConfig(mode="full" if "path" in ref else self.proxy_mode, fraction=1.0, seed=context.seed,
                             epochs=self.train_epochs, batch_size=self.train_batch_size, lr=self.train_lr,
                             max_length=context.max_length, warmup_ratio=0.0)
        trained = train_proxy(open_proxy(ref), records, config, device=context.device, progress=sys.stderr.isatty(),
                              trust_remote_code=self.trust_remote_code)
        before, tokenizer = load_proxy(ref, device=context.device, dtype=context.dtype)
        after, _ = trained.load(device=context.device, dtype=context.dtype)
        examples = encode_for_model(before, tokenizer, records, context.max_length)
        loss_before = mean_token_loss(before, examples, batch_tokens=context.batch_tokens)
        loss_after = mean_token_loss(after, examples, batch_tokens=context.batch_tokens)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = loss_after.astype(np.float64) / loss_before
        return np.where(loss_before > 0, ratio, np.nan)

    def model_info(self) -> dict[str, dict]:
        embedder = getattr(self, "embedder_", None)
        applied = embedder.pooling if embedder else resolve_pooling(self.model, self.pooling, self.trust_remote_code)
        info = {"kmeans.embedder": model_record(self.model, getattr(self, "model_path_", None), pooling=applied,
                                                pooling_requested=self.pooling, text=self.text)}
        proxy = getattr(getattr(self, "prepared_", None), "proxy", None)  # before prepare: none
        if proxy:
            info["kmeans.proxy"] = dict(proxy)
        return info


# -- centroid files (written and read through tamis.io.filesystems) ----------------------------------------------------------
def _to_safetensors(centroids: np.ndarray, counts: np.ndarray) -> bytes:
    from safetensors.numpy import save

    return save({"centroids": np.ascontiguousarray(centroids, dtype=np.float32),
                 "counts": np.ascontiguousarray(counts, dtype=np.int64)})


def _from_safetensors(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    from safetensors.numpy import load

    tensors = load(data)
    return tensors["centroids"], tensors["counts"]
