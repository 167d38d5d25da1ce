"""A store of pool features (embeddings, projected gradients, per-row losses and scores), keyed by content.

Whatever a selector computes from the pool alone, before any target enters, is worth keeping:
a new task, another budget, a resumed run, or a second selector with the same model need it
again. Each entry is one ``.npz`` file (uncompressed, so its size is the arrays' bytes plus a
few hundred bytes) holding a batch of rows' arrays, named by a hash of everything that
determines them:

- the *spec* the selector declares (:meth:`tamis.selectors.base.Selector.feature_spec`: kind,
  the model's content hash, pooling, text rendering, max_length, compute dtype, ...),
- the store's float dtype (float32 by default, float16 to halve vectors),
- the rows in order: each id, its content (messages with every field, or text) and its extra fields.

A key can only ever name one value, so a hit is always safe to reuse, and a changed input
simply misses. Entries lie at ``ROOT/<kind>/<key[:2]>/<key>.npz``, so ``tamis store du`` and
``prune`` can sum sizes by kind from a listing alone; each file also carries its own record
(kind, spec, spec digest, rows, created) under the ``__meta__`` name. Files are written to a
temporary name and renamed, so a killed writer leaves no half entry; an entry that is damaged
anyway (a truncated copy, a full disk) reads as a miss and is written again.

The root is the ``root`` argument, else ``$TAMIS_CACHE/features``, else ``~/.cache/tamis/features``.
A root with a scheme (``gs://``, ``s3://``) goes through Beam's filesystems
(:mod:`tamis.io.filesystems`), so the workers of a distributed run share one store.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import filesystems
from .cache import ENV_VAR, content_hash

log = logging.getLogger("tamis.features")

STORE_VERSION = "tamis-features-v2"
FEATURE_DTYPES = ("float32", "float16")
META = "__meta__"
# ROOT/<kind>/<ab>/<key>.npz; LESS's first store wrote ROOT/<ab>/<key>.npy (kind "legacy").
ENTRY = re.compile(r"(?P<kind>[a-z0-9][a-z0-9_.-]*)/(?P<shard>[0-9a-f]{2})/(?P<key>[0-9a-f]{64})\.npz$")
LEGACY = re.compile(r"(?P<shard>[0-9a-f]{2})/(?P<key>[0-9a-f]{64})\.npy$")
KIND = re.compile(r"[a-z0-9][a-z0-9_.-]*")
DISABLED = "none"  # feature_store="none": compute every time, store nothing


def default_root() -> str:
    if os.environ.get(ENV_VAR):
        return str(Path(os.environ[ENV_VAR]) / "features")
    return str(Path.home() / ".cache" / "tamis" / "features")


def rows_digest(records: Iterable[Mapping]) -> str:
    """sha256 over the rows in order: id, content (every message field, or the text) and extra.

    A validated pool row (``tamis select``) and the same row read back from a run's shards
    (``messages`` as a list of {role, content, extra}, ``extra`` as JSON text) give the same digest.
    """
    h = hashlib.sha256()
    for r in records:
        messages = r.get("messages")
        content = ([[m.get("role"), m.get("content"), m.get("extra")] for m in messages] if messages is not None
                   else r.get("text"))
        h.update(json.dumps([r.get("id"), content, r.get("extra")], ensure_ascii=False,
                            separators=(",", ":")).encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


def spec_digest(spec: Mapping) -> str:
    """The hash of a selector's feature spec: equal specs share features."""
    return content_hash({"store": STORE_VERSION, **spec})


def stored_form(features: Mapping[str, np.ndarray], dtype: str = "float32") -> dict[str, np.ndarray]:
    """The arrays as the store keeps them, and as scores are computed from them: vectors (2-D and
    more) in ``dtype``, per-row floats in float32, anything else (masks, counts) as is. Casting
    a fresh result the same way makes a hit and a fresh computation give bit-for-bit equal scores."""
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"feature dtype must be one of {', '.join(FEATURE_DTYPES)}, got {dtype!r}")
    out = {}
    for name, value in features.items():
        array = np.asarray(value)
        if array.dtype.kind == "f":
            array = array.astype(dtype if array.ndim >= 2 else np.float32, copy=False)
        out[name] = np.ascontiguousarray(array)
    return out


@dataclass(frozen=True)
class Entry:
    """One stored file as a listing sees it."""

    path: str
    kind: str
    size: int
    mtime: float


class FeatureStore:
    """``load``/``save`` of a batch's feature arrays by (kind, key); counts hits and misses."""

    def __init__(self, root: str | os.PathLike | None = None, dtype: str = "float32"):
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature dtype must be one of {', '.join(FEATURE_DTYPES)}, got {dtype!r}")
        self.root = str(root) if root is not None else default_root()
        self.dtype = dtype
        self.remote = filesystems.is_remote(self.root)
        self.hits = 0
        self.misses = 0
        self.damaged = 0

    def key(self, spec: Mapping, records: Iterable[Mapping]) -> str:
        """The entry's name: the spec's digest, the store dtype and the rows' digest."""
        return content_hash({"spec": spec_digest(spec), "dtype": self.dtype, "rows": rows_digest(records)})

    def path(self, kind: str, key: str) -> str:
        if not KIND.fullmatch(kind):
            raise ValueError(f"feature kinds are lowercase words, got {kind!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ValueError(f"feature keys are sha256 hex digests, got {key!r}")
        return f"{self.root.rstrip('/')}/{kind}/{key[:2]}/{key}.npz"

    def load(self, kind: str, key: str, rows: int) -> dict[str, np.ndarray] | None:
        """The stored arrays, or None (a miss) when there is no entry or it is damaged."""
        path = self.path(kind, key)
        data = filesystems.read_bytes(path, missing_ok=True) if self.remote else _read_local(path)
        if data is None:
            self.misses += 1
            return None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            meta = json.loads(str(arrays.pop(META)))
            if meta.get("rows") != rows or any(len(a) != rows for a in arrays.values()):
                raise ValueError(f"{meta.get('rows')} rows stored, {rows} expected")
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            log.warning("feature store: %s is damaged (%s); computing it again", path, e)
            self.misses += 1
            self.damaged += 1
            return None
        self.hits += 1
        return arrays

    def save(self, kind: str, key: str, arrays: Mapping[str, np.ndarray], spec: Mapping, rows: int) -> None:
        meta = {"kind": kind, "spec": dict(spec), "spec_digest": spec_digest(spec), "dtype": self.dtype,
                "rows": rows, "created": time.time(), "store": STORE_VERSION}
        buf = io.BytesIO()
        np.savez(buf, **{META: np.array(json.dumps(meta, sort_keys=True, default=str))}, **arrays)
        filesystems.write_bytes(self.path(kind, key), buf.getvalue())

    # -- size and pruning -------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Every entry under the root (and LESS's older ``.npy`` files, as kind ``legacy``);
        anything else under it is not the store's and is never listed."""
        root = self.root.rstrip("/")
        if self.remote:
            if not filesystems.match(filesystems.glob_escape(root) + "/**"):
                return []
            files = filesystems.list_files(root)
        else:
            files = []
            for folder, _, names in os.walk(root):
                for name in names:
                    path = os.path.join(folder, name)
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:
                        continue
                    files.append((path, st.st_size, st.st_mtime))
        found = []
        for path, size, mtime in files:
            rel = path[len(root):].lstrip("/") if path.startswith(root) else None
            if rel is None:
                continue
            m = ENTRY.fullmatch(rel)
            if m is not None:
                found.append(Entry(path, m["kind"], int(size or 0), float(mtime or 0)))
            elif LEGACY.fullmatch(rel):
                found.append(Entry(path, "legacy", int(size or 0), float(mtime or 0)))
        return sorted(found, key=lambda e: e.path)

    def delete(self, entries: Iterable[Entry]) -> int:
        """Delete exactly these entries (each checked to be the store's, under its root)."""
        root = self.root.rstrip("/") + "/"
        paths = []
        for e in entries:
            rel = e.path[len(root):] if e.path.startswith(root) else ""
            if not (ENTRY.fullmatch(rel) or LEGACY.fullmatch(rel)):
                raise ValueError(f"not an entry of the store at {self.root}: {e.path}")
            paths.append(e.path)
        filesystems.delete_files(paths)
        return len(paths)


def _read_local(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


# -- identities for specs: what a model is, by content, never by where it lies ---------------------
def model_identity(name: str) -> dict:
    """``{"model_sha256": ...}`` for a model folder (a remote one is copied here first, as it
    would be to load it), else ``{"model": name}`` (a hub id that is not on this machine)."""
    from .loading import fingerprint, localize

    digest = fingerprint(localize(name))
    return {"model_sha256": digest} if digest else {"model": name}


def proxy_identity(ref: Mapping) -> dict:
    """A :func:`~tamis.models.proxies.proxy_ref` by content: a trained proxy's cache key and
    checkpoint, or the untrained model's identity."""
    if "key" in ref:
        return {"proxy": ref["key"], "checkpoint": ref.get("checkpoint")}
    return model_identity(ref["model"])


def embedding_spec(model: str, pooling: str, text: str, max_length: int, dtype: str,
                   trust_remote_code: bool = False) -> dict:
    """The spec of sentence embeddings (``rds``, ``kmeans``): equal for equal model content,
    applied pooling, text rendering ("all" turns or "user" turns), max_length and compute dtype."""
    from .embedder import resolve_pooling
    from .loading import localize

    local = localize(model)
    return {"kind": "embedding", **model_identity(model), "pooling": resolve_pooling(local, pooling, trust_remote_code),
            "text": text, "max_length": max_length, "dtype": dtype}


# -- size and pruning, for ``tamis store`` ---------------------------------------------------------
def entry_meta(path: str) -> dict | None:
    """The record an entry carries (kind, spec, spec digest, rows, created), read without its
    arrays; None for a damaged or legacy file."""
    try:
        with filesystems.open_read(path) as f, zipfile.ZipFile(f) as z:
            return json.loads(str(np.load(io.BytesIO(z.read(META + ".npy")), allow_pickle=False)))
    except Exception:  # noqa: BLE001 - a file that cannot be read is reported, never a crash
        return None


def usage(store: FeatureStore, rows: bool = True) -> dict[str, dict]:
    """Per kind: entries, bytes, rows (from each entry's record, with ``rows``), oldest and newest."""
    out: dict[str, dict] = {}
    for e in store.entries():
        kind = out.setdefault(e.kind, {"entries": 0, "bytes": 0, "rows": 0, "unreadable": 0,
                                       "oldest": e.mtime, "newest": e.mtime})
        kind["entries"] += 1
        kind["bytes"] += e.size
        kind["oldest"], kind["newest"] = min(kind["oldest"], e.mtime), max(kind["newest"], e.mtime)
        if rows and e.kind != "legacy":
            meta = entry_meta(e.path)
            if meta is None:
                kind["unreadable"] += 1
            else:
                kind["rows"] += int(meta.get("rows", 0))
    return dict(sorted(out.items()))


def prune_plan(store: FeatureStore, *, older_than_days: float | None = None, kinds: Iterable[str] = (),
               max_bytes: int | None = None, now: float | None = None) -> list[Entry]:
    """The entries to delete: of the given kinds (all when none is given), those written more than
    ``older_than_days`` ago, then the oldest of the rest until the store fits ``max_bytes``."""
    now = time.time() if now is None else now
    kinds = set(kinds)
    entries = store.entries()
    chosen = [e for e in entries if not kinds or e.kind in kinds]
    doomed = [e for e in chosen if older_than_days is not None and now - e.mtime > older_than_days * 86400]
    if older_than_days is None and max_bytes is None:
        doomed = list(chosen)  # --kind alone: the whole kind
    if max_bytes is not None:
        gone = {e.path for e in doomed}
        total = sum(e.size for e in entries if e.path not in gone)
        for e in sorted((e for e in chosen if e.path not in gone), key=lambda e: (e.mtime, e.path)):
            if total <= max_bytes:
                break
            doomed.append(e)
            total -= e.size
    return sorted(doomed, key=lambda e: e.path)
