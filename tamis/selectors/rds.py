"""RDS+ (Ivison et al., 2025): representation-based selection, no training needed.

Each record is embedded by a language model's last hidden layer, pooled and L2-normalized; a
record's score for a task is its highest cosine to any of that task's target examples (FAISS
exact inner product, or IVF for large target sets). With several tasks the pipeline's default
selection takes them round-robin with dedupe, as RDS+ does.

RDS+ proper embeds with the causal LM that will be fine-tuned (``model=`` its id or folder),
pooled by SGPT's position-weighted mean. The default model is all-MiniLM-L6-v2, a sentence
encoder, which is what the RDS+ paper calls an *embedding baseline*: cheap and often strong, but
not RDS+. ``pooling="auto"`` (the default) follows the model: the weighted mean for a causal LM,
the encoder's own plain mean for an encoder; the manifest records which was applied.

With ``per_query=True`` the selector also writes each row's cosine to every target example
(``queries_rds_<task>``, a list column) and the selection goes round-robin over the target
examples, each taking its best remaining row in turn: the RDS+ reference's main recipe. The
default, the global top-k by max cosine, stores one float per row and task instead.

The pool's embeddings are the selector's stored features (kind ``embedding``): a new task embeds
only its targets. ``kmeans`` with the same model, pooling, max_length and ``text="all"`` has the
same spec, so in one run the two embed each row once.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..models.embedder import POOLING_CHOICES, model_record, open_embedder, resolve_pooling
from ..models.features import embedding_spec
from ..models.loading import DEFAULT_EMBEDDER
from ..models.records import render
from .base import RunContext, Selector
from .rules import TopK, query_column


class RDSSelector(Selector):
    """Score = max cosine to the task's target examples in the model's pooled hidden states."""

    name = "rds"
    needs_target = True

    def __init__(self, model: str = DEFAULT_EMBEDDER, pooling: str = "auto",
                 index: str = "flat", nlist: int = 64, nprobe: int = 8, trust_remote_code: bool = False,
                 per_query: bool = False):
        self.model = model  # HF id, local folder, or "minilm" (the packaged all-MiniLM-L6-v2)
        self.pooling = pooling  # "auto" (by the model), "weighted_mean" (RDS+'s, for causal LMs) or "mean"
        self.index = index  # "flat" (exact) or "ivf" (approximate, for large target sets)
        self.nlist = nlist  # IVF cells
        self.nprobe = nprobe  # IVF cells searched per query
        self.trust_remote_code = trust_remote_code
        self.per_query = per_query  # select round-robin over the target examples (the RDS+ reference's recipe)
        if index not in ("flat", "ivf"):
            raise ValueError(f"index must be 'flat' or 'ivf', got {index!r}")
        if pooling not in POOLING_CHOICES:
            raise ValueError(f"pooling must be one of {', '.join(POOLING_CHOICES)}, got {pooling!r}")

    def _embed(self, records: list[dict]) -> np.ndarray:
        return self.embedder_.embed([render(r) for r in records])

    def _build_index(self, vectors: np.ndarray):
        import faiss

        dim = vectors.shape[1]
        if self.index == "ivf" and len(vectors) >= 4 * self.nlist:
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.nprobe = self.nprobe
        else:  # exact search; also the fallback when there are too few targets to train IVF
            index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index

    def setup(self, context: RunContext, prepared=None, targets=None) -> None:
        super().setup(context, prepared, targets)
        self.spec_ = None
        self.embedder_ = open_embedder(self.model, pooling=self.pooling, max_length=context.max_length,
                                       batch_tokens=context.batch_tokens, device=context.device, dtype=context.dtype,
                                       trust_remote_code=self.trust_remote_code)
        vectors = {task: self._embed(targets[task]) for task in self.tasks_}
        self.indexes_ = {task: self._build_index(v) for task, v in vectors.items()}
        # Exact search over every target example, so its best equals the flat index's max cosine.
        self.queries_ = {task: self._build_flat(v) for task, v in vectors.items()} if self.per_query else {}

    @staticmethod
    def _build_flat(vectors: np.ndarray):
        import faiss

        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return index

    def columns(self, tasks: list[str]) -> list[pa.Field]:
        extra = [pa.field(query_column(c), pa.list_(pa.float32())) for c in self.score_columns(tasks).values()]
        return super().columns(tasks) + (extra if self.per_query else [])

    def selection_rule(self) -> TopK:
        return TopK(over="queries" if self.per_query else "tasks")

    def feature_spec(self) -> dict:
        if getattr(self, "spec_", None) is None:
            self.spec_ = embedding_spec(self.model, self.pooling, "all", self.context_.max_length,
                                        self.context_.dtype, self.trust_remote_code)
        return self.spec_

    def featurize(self, records: list[dict]) -> dict[str, np.ndarray]:
        return {"embedding": self._embed(records)}

    def score_features(self, features: dict[str, np.ndarray], records: list[dict]) -> dict[str, np.ndarray]:
        vectors = np.ascontiguousarray(features["embedding"], dtype=np.float32)
        out = {}
        for task, column in self.score_columns(self.tasks_).items():
            best, _ = self.indexes_[task].search(vectors, 1)
            out[column] = best[:, 0].astype(np.float32)
            if self.per_query:
                index = self.queries_[task]
                found, which = index.search(vectors, index.ntotal)
                cosines = np.empty_like(found)
                np.put_along_axis(cosines, which, found, axis=1)  # back in target-example order
                out[query_column(column)] = np.array(list(cosines) + [None], dtype=object)[:-1]
        return out

    def model_info(self) -> dict[str, dict]:
        embedder = getattr(self, "embedder_", None)  # after setup: the copy this worker loaded
        applied = embedder.pooling if embedder else resolve_pooling(self.model, self.pooling, self.trust_remote_code)
        return {"rds.embedder": model_record(self.model, embedder.path if embedder else None, pooling=applied,
                                             pooling_requested=self.pooling)}
