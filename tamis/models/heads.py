"""Classifier heads on frozen features: the classification path of EL2N/GraNd and IRT's crowd.

A head is softmax regression or a one-hidden-layer ReLU MLP on sentence embeddings, trained
with Adam for a few epochs (an early checkpoint, as the EL2N paper scores). Trained heads are
cached under a hash of their inputs as one safetensors file.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .cache import cache_root, content_hash, key_lock, slice_digest
from .loading import fingerprint
from .records import label_key, render

KINDS = ("el2n", "grand")


def build_head(dim: int, n_classes: int, hidden: int):
    """Softmax regression (``hidden`` 0) or a one-hidden-layer ReLU MLP."""
    import torch

    if hidden <= 0:
        return torch.nn.Sequential(torch.nn.Linear(dim, n_classes))
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_classes))


def head_from_state(state: dict):
    """A head module rebuilt from its state dict (shape read from the weights), in eval mode."""
    weights = [v for k, v in state.items() if k.endswith("weight")]
    head = build_head(weights[0].shape[1], weights[-1].shape[0], weights[0].shape[0] if len(weights) > 1 else 0)
    head.load_state_dict(state)
    head.eval()
    return head


def label_indices(labels: Sequence, classes: Sequence[str]) -> np.ndarray:
    """Class index of each label in ``classes`` (JSON keys); -1 for no label or an unseen one."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(label_key(v), -1) if v is not None else -1 for v in labels], dtype=np.int64)


def train_heads(features: np.ndarray, labels: np.ndarray, n_classes: int, *, runs: int = 4, epochs: int = 10,
                hidden: int = 128, lr: float = 1e-3, batch_size: int = 64, seed: int = 0) -> list[dict]:
    """``runs`` heads, each initialized and shuffled by its own seed, trained with Adam on
    cross-entropy for ``epochs`` (an early checkpoint, not convergence). Returns their state dicts."""
    import torch

    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    heads = []
    for run in range(runs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + run)
            head = build_head(x.shape[1], n_classes, hidden)
        opt = torch.optim.Adam(head.parameters(), lr=lr)
        rng = np.random.default_rng([seed, run])
        for _ in range(epochs):
            order = torch.as_tensor(rng.permutation(len(x)))
            for start in range(0, len(x), batch_size):
                rows = order[start : start + batch_size]
                loss = torch.nn.functional.cross_entropy(head(x[rows]), y[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
        heads.append({k: v.detach().clone() for k, v in head.state_dict().items()})
    return heads


def head_scores(heads: Sequence[dict], features: np.ndarray, labels: np.ndarray, kind: str, *,
                chunk_size: int = 512) -> np.ndarray:
    """Mean over heads of EL2N (||softmax - onehot||_2) or GraNd (per-example gradient norm of the
    cross-entropy over all head parameters, by ``torch.func``). A label of -1 gives NaN."""
    import torch
    from torch.func import functional_call, grad, vmap

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    known = y >= 0
    total = np.zeros(len(x), dtype=np.float64)
    for state in heads:
        head = head_from_state(state)
        params = {k: v.detach() for k, v in head.named_parameters()}

        def example_loss(p, xi, yi):
            return torch.nn.functional.cross_entropy(functional_call(head, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

        per_example_grads = vmap(grad(example_loss), in_dims=(None, 0, 0))
        score = np.zeros(len(x), dtype=np.float64)
        for start in range(0, len(x), chunk_size):
            xs, ys = x[start : start + chunk_size], y[start : start + chunk_size].clamp_min(0)
            if kind == "el2n":
                with torch.no_grad():
                    probs = torch.softmax(head(xs), dim=-1)
                    err = probs - torch.nn.functional.one_hot(ys, probs.shape[-1]).float()
                    score[start : start + len(xs)] = err.norm(dim=-1).double().numpy()
            else:
                grads = per_example_grads(params, xs, ys)
                sq = sum(g.reshape(len(xs), -1).double().square().sum(1) for g in grads.values())
                score[start : start + len(xs)] = sq.sqrt().detach().numpy()
        total += score
    out = (total / max(1, len(heads))).astype(np.float32)
    out[~known.numpy()] = np.nan
    return out


def classifier_scores(features: np.ndarray, labels: Sequence, kind: str, *, runs: int = 4, epochs: int = 10,
                      hidden: int = 128, lr: float = 1e-3, batch_size: int = 64, seed: int = 0) -> np.ndarray:
    """EL2N or GraNd of labelled feature vectors: train ``runs`` heads on them, score them."""
    keys = [json.dumps(v.item() if isinstance(v, np.generic) else v) for v in labels]  # numpy ints too
    index = {c: i for i, c in enumerate(sorted(set(keys)))}
    y = np.array([index[k] for k in keys], dtype=np.int64)
    heads = train_heads(features, y, len(index), runs=runs, epochs=epochs, hidden=hidden, lr=lr,
                        batch_size=batch_size, seed=seed)
    return head_scores(heads, features, y, kind)


def save_heads(path, heads: list[dict], classes: list[str]) -> None:
    """Heads as one safetensors file (``run<i>.<param>``), classes in its metadata; atomic."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tensors = {f"run{i}.{k}": v.contiguous() for i, head in enumerate(heads) for k, v in head.items()}
    save_file(tensors, str(tmp), metadata={"classes": json.dumps(classes), "runs": str(len(heads))})
    os.replace(tmp, path)


def cached_heads(kind: str, kept: list[tuple[dict, object]], embed, *, embedder: str, pooling: str,
                 max_length: int, grid: list[tuple[int, int]], lr: float, batch_size: int, seed: int) -> tuple[str, str]:
    """Classifier heads on embeddings of labelled records, one per (hidden, epochs) in ``grid``,
    trained once and cached under a hash of their inputs. ``embed(texts)`` makes the features.
    Returns (path of the safetensors file, cache key). EL2N/GraNd and the IRT classifier crowd
    both use it."""
    classes = sorted({label_key(v) for _, v in kept})
    inputs = {"kind": kind, "slice": slice_digest(r for r, _ in kept), "labels": [label_key(v) for _, v in kept],
              "embedder": fingerprint(embedder) or embedder, "pooling": pooling, "max_length": max_length,
              "grid": [list(g) for g in grid], "lr": lr, "batch_size": batch_size, "seed": seed}
    key = content_hash(inputs)
    root = cache_root()
    path = root / f"{kind}-{key}.safetensors"
    with key_lock(root, key):
        if not path.is_file():
            features = embed([render(r) for r, _ in kept])
            index = {c: i for i, c in enumerate(classes)}
            y = np.array([index[label_key(v)] for _, v in kept], dtype=np.int64)
            heads = [train_heads(features, y, len(classes), runs=1, epochs=e, hidden=h, lr=lr,
                                 batch_size=batch_size, seed=seed + i)[0]
                     for i, (h, e) in enumerate(grid)]
            save_heads(path, heads, classes)
    return str(path), key


def load_heads(path) -> tuple[list[dict], list[str]]:
    """The head state dicts and the class names of a :func:`save_heads` file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        heads: list[dict] = [{} for _ in range(int(meta["runs"]))]
        for key in f.keys():
            run, _, name = key.partition(".")
            heads[int(run[3:])][name] = f.get_tensor(key)
    return heads, json.loads(meta["classes"])
