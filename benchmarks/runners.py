"""The same selection on each local runner: wall time, and whether the scores are bit-identical.

Runs RDS+ (the packaged all-MiniLM-L6-v2) over the first N demo rows with two target tasks on
DirectRunner (in-process), PortableRunner (embedded job server, LOOPBACK workers: the portable
Fn API path Flink and Dataflow use) and DirectRunner with 2 worker processes, then compares every
score column bit for bit and the selected ranks. Prints figures and writes
benchmarks/results/runners.json.

    python benchmarks/runners.py --n 2000            # the whole demo pool, a few minutes on 2 cores
    python benchmarks/runners.py --n 200             # a quick check
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "tamis" / "demo"
RUNS = {"direct": {}, "portable": {"runner": "PortableRunner"}, "direct-2-processes": {"workers": 2}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="demo pool lines")
    ap.add_argument("--shard-rows", type=int, default=250)
    a = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    import tamis

    tmp = Path(tempfile.mkdtemp(prefix="tamis-runners-"))
    os.environ["TMPDIR"] = str(tmp)
    pool = tmp / "pool.jsonl"
    with gzip.open(DEMO / "pool.jsonl.gz", "rt", encoding="utf-8", errors="replace") as f:
        pool.write_text("".join(itertools.islice(f, a.n)))
    targets = {"food": str(DEMO / "food_dev.jsonl"), "animal": str(DEMO / "animal_dev.jsonl")}

    results, tables = {}, {}
    for name, extra in RUNS.items():
        start = time.perf_counter()
        summary = tamis.select(pool=[str(pool)], target=targets, out=str(tmp / name), budget=0.05,
                               shard_rows=a.shard_rows, **extra)
        results[name] = {"wall_s": round(time.perf_counter() - start, 2), "score_s": round(summary.timings["score_s"], 2),
                         "counts": summary.counts}
        tables[name] = pa.concat_tables(pq.read_table(p) for p in sorted((tmp / name / "shards").glob("part-*.parquet")))
        print(f"{name:20s} {results[name]['wall_s']:7.1f} s  (scoring pass {results[name]['score_s']:.1f} s)", flush=True)

    reference = tables["direct"]
    columns = [c for c in reference.column_names if c.startswith("score_")] + ["id", "rank", "selected_for"]
    for name, table in tables.items():
        results[name]["identical_to_direct"] = all(table.column(c).equals(reference.column(c)) for c in columns)
        print(f"{name:20s} bit-identical scores and selection: {results[name]['identical_to_direct']}")
    out = {"n": a.n, "shard_rows": a.shard_rows, "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
           "runs": results}
    path = Path(__file__).resolve().parent / "results" / "runners.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {path}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
