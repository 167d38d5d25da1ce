"""Does ``less.proj_dtype=bfloat16`` change LESS's scores? fp32 against bf16 on the same warm-up.

Takes a finished LESS warm-up of SmolLM2 with the paper preset (the folder a ``tamis select``
left in ``$TAMIS_CACHE/proxies``, e.g. from ``benchmarks/less_memory.py``) and, at its last
checkpoint (one of LESS's four: the comparison is per checkpoint, and a quarter of the time),
computes the pool rows' Adam-preconditioned and the targets' plain gradients, projected to 8192
and normalized, once with each projection dtype (tamis's own ``per_example_grads``, as LESS's
featurization calls it). Prints how far the features, the scores (mean cosine to the targets)
and their ranking move: the largest differences, Spearman's rank correlation, the overlap of the
top 10 %, and each dtype's seconds.

    OMP_NUM_THREADS=2 python benchmarks/less_proj_dtype.py --proxy CACHE/proxies/KEY --rows 64
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import sys
import time
from pathlib import Path

from less_memory import BENCH


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxy", required=True, help="a finished LESS warm-up folder (paper preset, SmolLM2)")
    ap.add_argument("--rows", type=int, default=64, help="pool rows to score (the pool's first ones)")
    ap.add_argument("--task", default="food", help="the WordNet target task (its dev set)")
    ap.add_argument("--block-mb", type=float, default=4096)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "less_proj_dtype.json"))
    a = ap.parse_args()

    import numpy as np
    import torch

    from smollm import missing, smollm2_folder
    from tamis.models.lm import encode_for_model
    from tamis.models.projection import RademacherProjector
    from tamis.models.stats import grad_dim, per_example_grads
    from tamis.models.train import TrainedProxy
    from tamis.schemas.records import parse_record

    reason = missing()
    if reason:
        sys.exit(reason)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    model = str(smollm2_folder())
    warm = TrainedProxy.open(a.proxy, base=model)
    if not warm.complete:
        sys.exit(f"{a.proxy}: the warm-up did not finish")
    with gzip.open(BENCH / "pool.jsonl.gz", "rt", encoding="utf-8") as f:
        pool = [parse_record(json.loads(line)) for line in itertools.islice(f, a.rows)]
    targets = [parse_record(json.loads(line))
               for line in (BENCH / "targets" / a.task / "dev.jsonl").read_text().splitlines() if line.strip()]
    model_, tokenizer = warm.load(-1, trainable=True)
    moments = warm.checkpoints[-1].adam_moments()
    pool_examples = encode_for_model(model_, tokenizer, pool, 128)
    target_examples = encode_for_model(model_, tokenizer, targets, 128)
    dim = grad_dim(model_)
    scores, features, seconds = {}, {}, {}
    for dtype in ("float32", "bfloat16"):
        projector = RademacherProjector(dim, 8192, seed=0, cache_bytes=0, dtype=dtype)
        kwargs = dict(projector=projector, normalize=True, chunk_size=16, batch_tokens=4096, block_bytes=int(a.block_mb) << 20)
        start = time.perf_counter()
        rows = per_example_grads(model_, pool_examples, adam_moments=moments, **kwargs)
        aims = per_example_grads(model_, target_examples, **kwargs)
        seconds[dtype] = round(time.perf_counter() - start, 1)
        features[dtype] = (rows, aims)
        scores[dtype] = (rows.astype(np.float64) @ aims.T.astype(np.float64)).mean(axis=1)
        print(f"{dtype}: {seconds[dtype]} s for {len(pool)} rows and {len(targets)} targets, one checkpoint", flush=True)

    exact, rounded = scores["float32"], scores["bfloat16"]
    ok = ~np.isnan(exact) & ~np.isnan(rounded)
    ranks = [np.argsort(np.argsort(s[ok])) for s in (exact, rounded)]
    spearman = float(np.corrcoef(*ranks)[0, 1])
    top = max(1, round(0.1 * ok.sum()))
    best = [set(np.argsort(-s[ok])[:top]) for s in (exact, rounded)]
    feature_diff = max(float(np.abs(features["float32"][i] - features["bfloat16"][i]).max()) for i in (0, 1))
    result = {"proxy": warm.key, "checkpoint": warm.checkpoints[-1].index, "rows": len(pool),
              "targets": len(targets), "task": a.task, "threads": os.environ.get("OMP_NUM_THREADS"), "seconds": seconds,
              "max_abs_feature_diff": feature_diff,
              "score_range_fp32": [float(exact[ok].min()), float(exact[ok].max())],
              "max_abs_score_diff": float(np.abs(exact[ok] - rounded[ok]).max()),
              "spearman": spearman, "top10pct_overlap": f"{len(best[0] & best[1])}/{top}"}
    print(json.dumps(result, indent=2))
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
