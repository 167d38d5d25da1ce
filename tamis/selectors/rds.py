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
"""
from __future__ import annotations

import numpy as np

from ..models.embedder import POOLING_CHOICES, model_record, open_embedder, resolve_pooling
from ..models.loading import DEFAULT_EMBEDDER
from ..models.records import render
from .base import RunContext, Selector


class RDSSelector(Selector):
    """Score = max cosine to the task's target examples in the model's pooled hidden states."""

    name = "rds"
    needs_target = True

    def __init__(self, model: str = DEFAULT_EMBEDDER, pooling: str = "auto",
                 index: str = "flat", nlist: int = 64, nprobe: int = 8, trust_remote_code: bool = False):
        self.model = model  # HF id, local folder, or "minilm" (the packaged all-MiniLM-L6-v2)
        self.pooling = pooling  # "auto" (by the model), "weighted_mean" (RDS+'s, for causal LMs) or "mean"
        self.index = index  # "flat" (exact) or "ivf" (approximate, for large target sets)
        self.nlist = nlist  # IVF cells
        self.nprobe = nprobe  # IVF cells searched per query
        self.trust_remote_code = trust_remote_code
        if index not in ("flat", "ivf"):
            raise ValueError(f"index must be 'flat' or 'ivf', got {index!r}")
        if pooling not in POOLING_CHOICES:
            raise ValueError(f"pooling must be one of {', '.join(POOLING_CHOICES)}, got {pooling!r}")

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        self.embedder_ = open_embedder(self.model, pooling=self.pooling, max_length=context.max_length,
                                       batch_tokens=context.batch_tokens, device=context.device, dtype=context.dtype,
                                       trust_remote_code=self.trust_remote_code)

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

    def fit(self, targets, prepared=None):
        super().fit(targets, prepared)
        self.indexes_ = {task: self._build_index(self._embed(targets[task])) for task in self.tasks_}
        return self

    def score(self, records: list[dict]) -> dict[str, np.ndarray]:
        vectors = self._embed(records)
        out = {}
        for task, column in self.score_columns(self.tasks_).items():
            best, _ = self.indexes_[task].search(vectors, 1)
            out[column] = best[:, 0].astype(np.float32)
        return out

    def model_info(self) -> dict[str, dict]:
        embedder = getattr(self, "embedder_", None)  # after setup: the copy this worker loaded
        applied = embedder.pooling if embedder else resolve_pooling(self.model, self.pooling, self.trust_remote_code)
        return {"rds.embedder": model_record(self.model, embedder.path if embedder else None, pooling=applied,
                                             pooling_requested=self.pooling)}
