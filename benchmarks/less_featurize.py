"""LESS features: tamis's batched route against a batch-1 reference loop, same model, same data.

Prepares LESS as `tamis select --selector less` does (built proxy, LoRA warm-up on 5% of the
pool; both come from the proxy cache when a run already trained them), then on ``--rows`` pool
rows and the task's dev targets computes the scores twice:

* reference: the LESS reference code's way: one forward and backward per example, Adam
  preconditioning, projection in buffers of 16 (as TRAK's projector is fed), L2 normalization;
* tamis: :meth:`LessSelector.features` (batched per-example gradients, projection and
  normalization in the same step).

Prints the Spearman correlation of the two score vectors and featurization throughput
(examples x checkpoints per second) of each, and writes benchmarks/results/less_featurize.json.

    OMP_NUM_THREADS=1 python benchmarks/less_featurize.py --rows 200 [--proj-dim 8192]
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from tamis.models.lm import pad_batch, token_nll
from tamis.pipeline.sources import read_targets
from tamis.schemas.records import parse_record
from tamis.selectors import PoolSample, RunContext
from tamis.models.lm import encode_for_model
from tamis.selectors.less import LessSelector

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "wordnet"


def read_pool(path: Path, limit: int | None = None) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [parse_record(json.loads(line)) for line in itertools.islice(f, limit)]


def reference_features(selector: LessSelector, examples, ckpt: int, adam: bool, buffer: int = 16) -> np.ndarray:
    """One backward per example; precondition; project ``buffer`` gradients at a time; normalize."""
    model = selector.model_
    selector.use_checkpoint(ckpt)
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad]
    projector = selector.projector_
    if adam:
        moments = selector.proxy_.checkpoints[ckpt].adam_moments()
        m = torch.cat([moments[n][0].reshape(-1) for n in names])
        v = torch.cat([moments[n][1].reshape(-1) for n in names])
    pad = selector.tokenizer_.pad_token_id
    rows, pending = [], []
    model.eval()
    for e in examples:
        model.zero_grad(set_to_none=True)
        ids, mask, labels = pad_batch([e], pad)
        nll, scored = token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
        (nll.sum() / scored.sum().clamp_min(1)).backward()
        g = torch.cat([named[n].grad.reshape(-1) for n in names])
        if adam:
            g = (0.9 * m + 0.1 * g) / torch.sqrt(0.999 * v + 0.001 * g * g + 1e-8)
        pending.append(g)
        if len(pending) == buffer:
            rows.append(projector.project(torch.stack(pending)))
            pending.clear()
    if pending:
        rows.append(projector.project(torch.stack(pending)))
    return torch.nn.functional.normalize(torch.cat(rows), dim=1).detach().numpy()


def less_scores(pool_feats: list[np.ndarray], target_feats: list[np.ndarray], weights) -> np.ndarray:
    """One subtask: mean over targets of the lr-weighted sum of cosines over checkpoints."""
    return sum(w * (p @ t.T) for w, p, t in zip(weights, pool_feats, target_feats)).mean(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default=str(BENCH))
    ap.add_argument("--task", default="food")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--offset", type=int, default=50_000, help="first pool row measured (away from the file head)")
    ap.add_argument("--proj-dim", type=int, default=None, help="default: the preset's (small: 1024)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "less_featurize.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    bench = Path(a.bench)
    context = RunContext(max_length=512)
    pool = read_pool(bench / "pool.jsonl.gz")
    targets = read_targets({a.task: str(bench / "targets" / a.task / "dev.jsonl")})
    selector = LessSelector(proj_dim=a.proj_dim)
    t0 = time.perf_counter()
    prepared = selector.prepare(PoolSample(lambda: pool), targets, context)
    prepare_s = time.perf_counter() - t0
    selector.setup(context, prepared, targets)
    rows = pool[a.offset : a.offset + a.rows]
    examples = encode_for_model(selector.model_, selector.tokenizer_, rows, context.max_length)
    target_examples = encode_for_model(selector.model_, selector.tokenizer_, targets[a.task], context.max_length)
    n_ckpt = len(selector.proxy_.checkpoints)

    results = {}
    for route in ("reference", "tamis"):
        featurize = (lambda ex, c, adam: reference_features(selector, ex, c, adam)) if route == "reference" \
            else (lambda ex, c, adam: selector.features(ex, c, adam))
        featurize(examples[:8], 0, True)  # warm caches (projection matrix, kernels)
        start = time.perf_counter()
        pool_feats = [featurize(examples, c, True) for c in range(n_ckpt)]
        seconds = time.perf_counter() - start
        target_feats = [featurize(target_examples, c, False) for c in range(n_ckpt)]
        results[route] = {"seconds": seconds, "examples_per_s": len(rows) * n_ckpt / seconds,
                          "scores": less_scores(pool_feats, target_feats, selector.weights_)}
    from scipy.stats import spearmanr

    ref, ours = results["reference"]["scores"], results["tamis"]["scores"]
    rho = float(spearmanr(ref, ours).statistic)
    speedup = results["reference"]["seconds"] / results["tamis"]["seconds"]
    summary = {
        "rows": len(rows), "checkpoints": n_ckpt, "task": a.task, "threads": a.threads,
        "settings": selector.settings(), "grad_dim": selector.projector_.in_dim, "prepare_s": prepare_s,
        "mean_tokens": float(np.mean([len(e) for e in examples])),
        "spearman": rho, "max_abs_diff": float(np.abs(ref - ours).max()),
        "reference_examples_per_s": results["reference"]["examples_per_s"],
        "tamis_examples_per_s": results["tamis"]["examples_per_s"], "speedup": speedup,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
    }
    print(f"{len(rows)} rows x {n_ckpt} checkpoints, gradient dim {summary['grad_dim']:,} -> {selector.settings()['proj_dim']}")
    print(f"Spearman(reference, tamis) = {rho:.6f}; max |diff| = {summary['max_abs_diff']:.2e}")
    print(f"reference (batch-1) {summary['reference_examples_per_s']:.1f} ex/s; tamis {summary['tamis_examples_per_s']:.1f} "
          f"ex/s; x{speedup:.2f}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
