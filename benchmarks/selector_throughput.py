"""Examples per second of every registered selector's scoring step, with its default parameters.

Each selector goes through its real lifecycle on WordNet rows: ``prepare`` on a pool sample
(proxy training, centroid fitting; timed apart, since it runs once per run and is cached),
``setup`` and ``fit`` on the three dev target sets, then ``score`` on ``--n`` rows, timed.
Prints a table and writes benchmarks/results/selector_throughput.json.

    OMP_NUM_THREADS=1 python benchmarks/selector_throughput.py --n 2000 --pool-rows 20000
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "wordnet"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="rows scored (timed)")
    ap.add_argument("--pool-rows", type=int, default=20_000, help="rows prepare may sample from")
    ap.add_argument("--selectors", nargs="*", default=None)
    ap.add_argument("--work", default="/tmp/tamis-selector-throughput")
    a = ap.parse_args()

    import torch

    from tamis.pipeline.sources import read_records, read_targets
    from tamis.selectors import PoolSample, RunContext, registry

    with gzip.open(BENCH / "pool.jsonl.gz", "rt") as f:
        lines = list(itertools.islice(f, a.pool_rows))
    pool_file = Path(a.work) / "pool.jsonl"
    pool_file.parent.mkdir(parents=True, exist_ok=True)
    pool_file.write_text("".join(lines))
    pool = list(read_records(str(pool_file)))
    rows = pool[-a.n:]
    targets = read_targets({t: str(BENCH / "targets" / t / "dev.jsonl") for t in ("food", "animal", "motion")})
    context = RunContext(max_length=128, work_dir=str(Path(a.work) / "work"))
    results = {"n": len(rows), "pool_rows": len(pool), "threads": torch.get_num_threads(), "selectors": {}}
    for name in a.selectors or registry.available():
        cls = registry.get(name)
        sel = cls()
        tgt = targets if cls.needs_target else None
        t0 = time.perf_counter()
        prepared = sel.prepare(PoolSample(lambda: pool), tgt, context)
        prepare_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sel.setup(context, prepared, tgt)
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sel.score(rows)
        score_s = time.perf_counter() - t0
        results["selectors"][name] = {"prepare_s": prepare_s, "setup_fit_s": setup_s, "score_s": score_s,
                                      "examples_per_s": len(rows) / score_s,
                                      "tasks": len(sel.task_names(tgt))}
        print(f"{name:<8} prepare {prepare_s:7.1f}s  setup+fit {setup_s:6.1f}s  "
              f"score {len(rows)} rows {score_s:7.1f}s = {len(rows) / score_s:7.1f} examples/s", flush=True)
    dest = Path(__file__).parent / "results" / "selector_throughput.json"
    dest.write_text(json.dumps(results, indent=2))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
