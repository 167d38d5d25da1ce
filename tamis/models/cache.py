"""Where trained proxies live: one folder per content hash of everything that shapes the weights.

The key covers the training slice (ids and content), the starting model and the configs, so a
second run with the same inputs finds the folder and reuses it, and a run with any input changed
trains afresh. A file lock per key makes concurrent workers wait for one trainer instead of
training the same proxy side by side. Folders are written checkpoint by checkpoint (each renamed
into place when whole), so an interrupted run resumes from its last finished checkpoint.

The cache root is the ``cache_dir`` argument, else ``$TAMIS_CACHE/proxies``, else
``~/.cache/tamis/proxies``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..schemas.records import content_key

ENV_VAR = "TAMIS_CACHE"
COMPLETE_FILE = "manifest.json"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The proxy cache folder (see module docstring); created if missing."""
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get(ENV_VAR):
        root = Path(os.environ[ENV_VAR]) / "proxies"
    else:
        root = Path.home() / ".cache" / "tamis" / "proxies"
    root.mkdir(parents=True, exist_ok=True)
    return root


def content_hash(obj) -> str:
    """sha256 of canonical JSON: equal inputs give equal keys on every machine."""
    payload = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def record_key(record: dict) -> str:
    """A record's identity for slicing: its id, or its content when it has none (target examples)."""
    rid = record.get("id")
    return rid if rid is not None else "content:" + content_key(record)


def slice_digest(records: Iterable[dict]) -> str:
    """sha256 over (id, content) of a slice in order: the data part of a cache key."""
    h = hashlib.sha256()
    for r in records:
        h.update(record_key(r).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
        h.update(content_key(r).encode())
        h.update(b"\x01")
    return h.hexdigest()


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / COMPLETE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


@contextlib.contextmanager
def key_lock(root: Path, key: str) -> Iterator[None]:
    """Hold an exclusive lock on one cache key (POSIX flock; a no-op where there is none)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(root / f"{key}.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
