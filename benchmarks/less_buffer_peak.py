"""Peak RSS of LESS's buffered route in-process: SmolLM2-135M with LoRA r=128 on q, k, v, o,
Adam-preconditioned per-example gradients of N WordNet rows buffered under ``block_mb`` and
projected to a tiny k (so the projection's time does not matter, its memory is the same).

    OMP_NUM_THREADS=2 python benchmarks/less_buffer_peak.py --rows 80 --block-mb 4096

Prints the peak RSS (``ru_maxrss``) and seconds; with 80 rows and block_mb=4096 the buffer holds
64 rows (3.8 GB) when the fifth chunk arrives.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=80)
    ap.add_argument("--block-mb", type=int, default=4096)
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from less_memory import paper_lora_rows
    from smollm import missing, smollm2_folder

    reason = missing()
    if reason:
        raise SystemExit(reason)
    import torch

    from tamis.models.projection import RademacherProjector
    from tamis.models.stats import grad_dim, grad_param_names, per_example_grads

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    model, examples = paper_lora_rows(str(smollm2_folder()), a.rows)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    moments = {n: (torch.randn(params[n].shape, generator=gen) * 1e-4, torch.rand(params[n].shape, generator=gen) * 1e-8)
               for n in grad_param_names(model, "trainable")}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    start = time.perf_counter()
    per_example_grads(model, examples, chunk_size=16, batch_tokens=4096, normalize=True, adam_moments=moments,
                      projector=RademacherProjector(grad_dim(model), 8, cache_bytes=0), block_bytes=a.block_mb << 20)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"rows": a.rows, "block_mb": a.block_mb, "peak_rss_mb_before": before, "peak_rss_mb": peak,
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
