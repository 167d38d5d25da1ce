"""A store of computed feature arrays (projected gradients, embeddings), keyed by content hash.

Computing LESS's gradient features is the expensive part of a run; selecting for a new target
task, or finishing a run that was killed, should not compute them again. Each array is one
``.npy`` file named by a hash of everything that determines it (model and checkpoint, the rows'
ids and content, the projection), so a key can only ever name one value: a hit is always
safe to reuse, and a changed input simply misses. Files are written to a temporary name and
renamed, so a killed writer leaves no half file behind.

The root is the ``root`` argument, else ``$TAMIS_CACHE/features``, else
``~/.cache/tamis/features``. A root with a scheme (``gs://``, ``s3://``) goes through Beam's
filesystems (:mod:`tamis.io.filesystems`), so workers of a distributed run can share one store.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..io import filesystems
from .cache import ENV_VAR, content_hash


def default_root() -> str:
    if os.environ.get(ENV_VAR):
        return str(Path(os.environ[ENV_VAR]) / "features")
    return str(Path.home() / ".cache" / "tamis" / "features")


class FeatureStore:
    """``get``/``put`` of float arrays by key; counts hits and misses for the run's report."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = str(root) if root is not None else default_root()
        self.remote = "://" in self.root
        self.hits = 0
        self.misses = 0
        if not self.remote:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(**parts) -> str:
        """A content hash of the named parts (any JSON-able values)."""
        return content_hash({"store": "tamis-features-v1", **parts})

    def path(self, key: str) -> str:
        if not key.isalnum():
            raise ValueError(f"feature keys are hex digests, got {key!r}")
        return f"{self.root.rstrip('/')}/{key[:2]}/{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        if self.remote:
            if not filesystems.exists(path):
                self.misses += 1
                return None
            data = filesystems.read_bytes(path)
        else:
            try:
                data = Path(path).read_bytes()
            except FileNotFoundError:
                self.misses += 1
                return None
        self.hits += 1
        return np.load(io.BytesIO(data), allow_pickle=False)

    def put(self, key: str, array: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        filesystems.write_bytes(self.path(key), buf.getvalue())
