"""Rows per second of every LM-based selector's scoring step with SmolLM2-135M-Instruct as its model.

Each selector goes through its real lifecycle on WordNet rows with ``model`` = the SmolLM2
folder (``benchmarks/smollm.py`` converts it once): ``prepare`` (warm-ups and fine-tunes, timed
apart: once per run and cached), ``setup`` and ``fit`` on the food dev targets, then ``score`` on
``--n`` rows, timed. The training settings are cut down (small samples, one run, a small LoRA
and projection for LESS) so that the whole script finishes in minutes on a CPU; the scoring step,
which is what the rows/s figure measures, is the real one: its cost per row is set by the model,
not by how long the warm-up trained. Per-run selectors (el2n, grand) are timed with one run; their
default of 10 runs scores 10 times slower. Prints a table and writes
benchmarks/results/smollm2_throughput.json.

    OMP_NUM_THREADS=2 python benchmarks/smollm2_throughput.py --n 32
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import time
from pathlib import Path

# The shared bench folder sits beside the checkout (/work/main -> /work/shared) or, from a worktree
# (/work/wt/NAME), one level further up.
BENCH = next((p / "shared" / "bench" / "wordnet" for p in Path(__file__).resolve().parents
              if (p / "shared" / "bench" / "wordnet").is_dir()), Path(__file__).resolve().parents[2] / "shared" / "bench" / "wordnet")

# Training cut down to fit a CPU (see the docstring); scoring itself is unchanged.
SETTINGS = {
    "rds": {},
    "less": {"lora_r": 8, "lora_alpha": 32.0, "proj_dim": 1024, "fraction": 1.0, "max_warmup_examples": 16,
             "epochs": 2, "batch_size": 8},
    "color": {"finetune_epochs": 1, "finetune_batch_size": 8},
    "el2n": {"mode": "lora", "runs": 1, "sample_size": 16, "batch_size": 8, "lr": 1e-4},
    "grand": {"mode": "lora", "runs": 1, "sample_size": 16, "batch_size": 8, "lr": 1e-4},
    "irt": {"sample_size": 16, "calibration_size": 16, "crowd_checkpoints": 4, "proxy_epochs": 1, "batch_size": 4},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32, help="rows scored (timed)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--selectors", nargs="*", default=list(SETTINGS))
    ap.add_argument("--work", default="/tmp/tamis-smollm2-throughput")
    a = ap.parse_args()

    import torch

    from smollm import missing, smollm2_folder
    from tamis.pipeline.sources import read_records, read_targets
    from tamis.selectors import PoolSample, RunContext, registry

    reason = missing()
    if reason:
        raise SystemExit(reason)
    folder = str(smollm2_folder())
    os.environ.setdefault("TAMIS_CACHE", str(Path(a.work) / "cache"))
    with gzip.open(BENCH / "pool.jsonl.gz", "rt") as f:
        lines = list(itertools.islice(f, 2000))
    pool_file = Path(a.work) / "pool.jsonl"
    pool_file.parent.mkdir(parents=True, exist_ok=True)
    pool_file.write_text("".join(lines))
    pool = list(read_records(str(pool_file)))
    rows = pool[-a.n:]
    targets = read_targets({"food": str(BENCH / "targets" / "food" / "dev.jsonl")})
    context = RunContext(max_length=a.max_length, work_dir=str(Path(a.work) / "work"))
    results = {"model": "SmolLM2-135M-Instruct (dequantized Q4_1, fp32)", "n": len(rows),
               "max_length": a.max_length, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
               "cpus_on_machine": os.cpu_count(), "note": "a shared machine: other jobs ran at the same time",
               "settings": SETTINGS, "selectors": {}}
    print(f"SmolLM2 from {folder}; {len(rows)} rows, max_length {a.max_length}, torch threads {torch.get_num_threads()}")
    for name in a.selectors:
        cls = registry.get(name)
        sel = cls(model=folder, **SETTINGS[name])
        tgt = targets if cls.needs_target else None
        t0 = time.perf_counter()
        prepared = sel.prepare(PoolSample(lambda: pool), tgt, context)
        prepare_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sel.setup(context)
        sel.fit(tgt, prepared)
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sel.score(rows)
        score_s = time.perf_counter() - t0
        results["selectors"][name] = {"prepare_s": prepare_s, "setup_fit_s": setup_s, "score_s": score_s,
                                      "rows_per_s": len(rows) / score_s}
        print(f"{name:<6} prepare {prepare_s:7.1f}s  setup+fit {setup_s:6.1f}s  "
              f"score {len(rows)} rows {score_s:7.1f}s = {len(rows) / score_s:6.2f} rows/s", flush=True)
        del sel
    dest = Path(__file__).parent / "results" / "smollm2_throughput.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(results, indent=2))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
