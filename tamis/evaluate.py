"""``tamis evaluate``: does the selection train a better model?

For each seed, one small proxy LM is trained for the same number of steps on each arm: the
run's selected rows, a random subset of the same size, and the whole (eligible) pool. Each is
scored by its mean token loss on every task's held-out eval set. All arms start from the same
initial model and tokenizer (trained on a pool sample), so only the data differs. Trainings go
through the proxy cache, so the random and full-pool arms are shared by every run on the same
pool and seed. Where the pool carries labels, precision at k of the score ranking is reported.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ARMS = ("selected", "random", "full")


@dataclass(frozen=True)
class EvalSettings:
    """How each arm is trained. Sized so one training takes about a minute on 2 CPU cores."""

    steps: int = 400
    batch_size: int = 16
    lr: float = 1e-3
    warmup_ratio: float = 0.05
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    vocab_size: int = 2048
    context: int = 128
    tokenizer_sample: int = 20_000


def _read_run(out: str):
    """A finished run's manifest and shards (an unfinished run fails with one line)."""
    from .io.runfolder import RunFolder

    folder = RunFolder(out)
    manifest = folder.require_finished("evaluate")
    return manifest, folder.read_shards()


def _records(table, mask: np.ndarray) -> list[dict]:
    rows = table.filter(mask).select(["id", "messages", "text", "extra"]).to_pylist()
    return rows


def training_stream(records: list[dict], n: int, seed: int) -> list[dict]:
    """Exactly ``n`` examples: the records shuffled by ``seed``, cycled as often as needed.

    Every arm sees the same number of examples (steps x batch), whatever its size.
    """
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    while len(out) < n:
        out.extend(records[i] for i in rng.permutation(len(records)))
    return out[:n]


def _initial_model(pool: list[dict], settings: EvalSettings, seed: int, cache_dir) -> str:
    """Tokenizer trained on a pool sample plus a freshly initialized GPT-2, cached by its inputs."""
    from .models.build import write_initial_model
    from .models.cache import cache_root
    from .schemas.proxy import ProxyModelConfig

    config = ProxyModelConfig(n_layer=settings.n_layer, n_embd=settings.n_embd, n_head=settings.n_head,
                              vocab_size=settings.vocab_size, context=settings.context, seed=seed,
                              sample_size=settings.tokenizer_sample)
    rng = np.random.default_rng(12345)
    sample_idx = np.sort(rng.choice(len(pool), size=min(len(pool), settings.tokenizer_sample), replace=False))
    sample = [pool[i] for i in sample_idx]
    digest = hashlib.sha256(json.dumps([config.model_dump(mode="json"), [r["id"] for r in sample]]).encode()).hexdigest()[:16]
    folder = cache_root(cache_dir) / f"eval-init-{digest}"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        write_initial_model(folder, config, sample)
    return str(folder)


def _train_arm(init: str, records: list[dict], settings: EvalSettings, seed: int, arm: str, cache_dir, progress: bool):
    from .models.train import train_cached
    from .schemas.proxy import TrainConfig

    config = TrainConfig(mode="full", fraction=1.0, epochs=1, batch_size=settings.batch_size, lr=settings.lr,
                         schedule="linear", warmup_ratio=settings.warmup_ratio, weight_decay=0.0,
                         max_length=settings.context, seed=seed)
    stream = training_stream(records, settings.steps * settings.batch_size, seed)
    return train_cached({"kind": f"evaluate-{arm}", "init": Path(init).name}, base=init, init_adapter=None,
                        records=stream, config=config, cache_dir=cache_dir, progress=progress)


def mean_token_loss(proxy, eval_records: list[dict], context: int) -> float:
    """Token-weighted mean loss over all scored tokens of the eval set."""
    from .models.lm import encode_records
    from .models.stats import sequence_stats

    model, tokenizer = proxy.load()
    stats = sequence_stats(model, encode_records(tokenizer, eval_records, context))
    ok = stats["tokens"] > 0
    return float((stats["loss"][ok] * stats["tokens"][ok]).sum() / stats["tokens"][ok].sum())


def load_labels(path: str, field: str = "domain") -> dict[str, str]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return {o["id"]: o[field] for o in map(json.loads, f) if field in o}


def precision_at_k(table, ranking_columns: dict[str, str], labels: dict[str, str], label_of: dict[str, str],
                   k: int) -> dict[str, dict]:
    """Share of the k top-scored eligible rows whose label is the task's, beside the base rate."""
    ids = np.array(table.column("id").to_pylist(), dtype=object)
    eligible = ~table.column("matches_target").to_numpy(zero_copy_only=False)
    out = {}
    for task, col in ranking_columns.items():
        if task not in label_of:
            continue
        scores = table.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
        scores = np.where(eligible & ~np.isnan(scores), scores, -np.inf)
        top = np.argsort(-scores, kind="stable")[:k]
        hits = np.array([labels.get(i) == label_of[task] for i in ids])
        out[task] = {"k": int(len(top)), "precision": float(hits[top].mean()) if len(top) else 0.0,
                     "base_rate": float(hits[eligible].mean()) if eligible.any() else 0.0}
        out[task]["lift"] = out[task]["precision"] / out[task]["base_rate"] if out[task]["base_rate"] else None
    return out


def evaluate_run(out: str, evals: dict[str, str], *, baselines: tuple[str, ...] = ("random", "full"), seeds: int = 3,
                 settings: EvalSettings | None = None, labels: str | None = None, label_field: str = "domain",
                 label_of: dict[str, str] | None = None, k: int = 500, cache_dir=None,
                 progress: bool = False) -> dict[str, Any]:
    """Train every arm for every seed, score on the eval sets, write ``OUT/evaluate.json``."""
    from .pipeline.sources import read_records

    settings = settings or EvalSettings()
    unknown = set(baselines) - {"random", "full"}
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}: choose from random, full")
    if seeds < 1:
        raise ValueError("--seeds must be at least 1")
    manifest, table = _read_run(out)
    eval_sets = {task: list(read_records(path, strict=True)) for task, path in evals.items()}
    for task, rows in eval_sets.items():
        if not rows:
            raise ValueError(f"eval set {task!r} is empty")
    eligible = ~table.column("matches_target").to_numpy(zero_copy_only=False)
    selected = table.column("selected").to_numpy(zero_copy_only=False)
    if not selected.any():
        raise ValueError(f"{out} has no selected rows to evaluate")
    pool = _records(table, eligible)
    arms = {"selected": _records(table, selected)}
    results: dict[str, Any] = {"settings": settings.__dict__, "n_selected": int(selected.sum()),
                               "n_pool": int(eligible.sum()), "seeds": seeds, "loss": {}, "timings": {}}
    start = time.perf_counter()
    for seed in range(seeds):
        init = _initial_model(pool, settings, seed, cache_dir)
        rng = np.random.default_rng([seed, 7])
        if "random" in baselines:
            arms["random"] = [pool[i] for i in np.sort(rng.choice(len(pool), size=len(arms["selected"]), replace=False))]
        if "full" in baselines:
            arms["full"] = pool
        for arm in [a for a in ARMS if a in arms]:
            t0 = time.perf_counter()
            proxy = _train_arm(init, arms[arm], settings, seed, arm, cache_dir, progress)
            results["timings"].setdefault(arm, []).append({"seconds": time.perf_counter() - t0, "cached": proxy.cached})
            for task, rows in eval_sets.items():
                loss = mean_token_loss(proxy, rows, settings.context)
                results["loss"].setdefault(task, {}).setdefault(arm, []).append(loss)
    results["summary"] = {task: {arm: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                                       "values": v}
                                 for arm, v in arms_loss.items()}
                          for task, arms_loss in results["loss"].items()}
    if labels:
        lab = load_labels(labels, label_field)
        ranking = {t: c for t, c in manifest["resolved"]["ranking_columns"].items() if t != "None"}
        results["precision_at_k"] = precision_at_k(table, ranking, lab, label_of or {}, k)
    results["total_s"] = time.perf_counter() - start
    results["selectors"] = manifest["config"]["selector"]
    from .io.runfolder import EVALUATE, RunFolder

    RunFolder(out).write_json(EVALUATE, results)
    return results


def format_table(results: dict[str, Any]):
    """A rich table: one row per task, mean ± std of held-out loss per arm (lower is better)."""
    from rich.table import Table

    arms = [a for a in ARMS if any(a in v for v in results["summary"].values())]
    t = Table(title=f"held-out mean token loss ({results['seeds']} seeds; lower is better)", title_justify="left")
    t.add_column("task")
    for arm in arms:
        t.add_column(f"{arm} (n={results['n_selected'] if arm != 'full' else results['n_pool']})", justify="right")
    p_at_k = results.get("precision_at_k", {})
    if p_at_k:
        t.add_column("P@k (base rate)", justify="right")
    for task, by_arm in results["summary"].items():
        best = min(by_arm[a]["mean"] for a in arms)
        cells = []
        for arm in arms:
            m, s = by_arm[arm]["mean"], by_arm[arm]["std"]
            cell = f"{m:.4f} ± {s:.4f}"
            cells.append(f"[bold]{cell}[/]" if math.isclose(m, best) else cell)
        if p_at_k:
            p = p_at_k.get(task)
            cells.append(f"{p['precision']:.3f} ({p['base_rate']:.3f})" if p else "-")
        t.add_row(task, *cells)
    return t
