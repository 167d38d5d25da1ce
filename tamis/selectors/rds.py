"""RDS+ (Ivison et al., 2025): representation-based selection, no training needed.

Each record is embedded by a language model's last hidden layer with position-weighted mean
pooling, L2-normalized; a record's score for a task is its highest cosine to any of that
task's target examples (FAISS exact inner product, or IVF for large target sets). With several
tasks the pipeline's default selection takes them round-robin with dedupe, as RDS+ does.
"""
from __future__ import annotations

import numpy as np

from ..models.embedder import model_record, open_embedder
from ..models.loading import DEFAULT_EMBEDDER
from ..models.records import render
from .base import RunContext, Selector


class RDSSelector(Selector):
    """Score = max cosine to the task's target examples in the model's pooled hidden states."""

    name = "rds"
    needs_target = True

    def __init__(self, model: str = DEFAULT_EMBEDDER, pooling: str = "weighted_mean",
                 index: str = "flat", nlist: int = 64, nprobe: int = 8, trust_remote_code: bool = False):
        self.model = model  # HF id, local folder, or "minilm" (the packaged all-MiniLM-L6-v2)
        self.pooling = pooling  # "weighted_mean" (RDS+) or "mean"
        self.index = index  # "flat" (exact) or "ivf" (approximate, for large target sets)
        self.nlist = nlist  # IVF cells
        self.nprobe = nprobe  # IVF cells searched per query
        self.trust_remote_code = trust_remote_code
        if index not in ("flat", "ivf"):
            raise ValueError(f"index must be 'flat' or 'ivf', got {index!r}")
        if pooling not in ("weighted_mean", "mean"):
            raise ValueError(f"pooling must be 'weighted_mean' or 'mean', got {pooling!r}")


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
        self.embedder_ = open_embedder(self.model, pooling=self.pooling, max_length=context.max_length,
                                       batch_tokens=context.batch_tokens, device=context.device, dtype=context.dtype,
                                       trust_remote_code=self.trust_remote_code)
        self.indexes_ = {task: self._build_index(self._embed(targets[task])) for task in self.tasks_}

    def score(self, records: list[dict]) -> dict[str, np.ndarray]:
        vectors = self._embed(records)
        out = {}
        for task, column in self.score_columns(self.tasks_).items():
            best, _ = self.indexes_[task].search(vectors, 1)
            out[column] = best[:, 0].astype(np.float32)
        return out

    def model_info(self) -> dict[str, dict]:
        embedder = getattr(self, "embedder_", None)  # after setup: the copy this worker loaded
        return {"rds.embedder": model_record(self.model, embedder.path if embedder else None, pooling=self.pooling)}
