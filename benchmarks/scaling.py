"""Scaling: wall time and peak RSS of `tamis select` for growing pools.

The WordNet pool is replicated to each size (the copies get new ids) and scored by RDS+ on a
small proxy LM that tamis builds and trains itself (the cheapest real embedder). Each run is a
fresh process under /usr/bin/time -v. Prints a table and writes benchmarks/results/scaling.json.

    python benchmarks/scaling.py --sizes 10000 100000 1000000
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "wordnet"


def replicate(src: Path, n: int, dest: Path) -> None:
    """Write n rows cycling over the pool; copy c of a row gets id '<id>~c'."""
    with gzip.open(src, "rt") as f:
        lines = [json.loads(line) for line in f]
    with gzip.open(dest, "wt", compresslevel=1) as out:
        for i in range(n):
            row = dict(lines[i % len(lines)])
            copy = i // len(lines)
            if copy:
                row["id"] = f"{row['id']}~{copy}"
            out.write(json.dumps(row) + "\n")


def build_embedder(work: Path) -> str:
    """A small GPT-2 proxy built and trained on a pool sample (cached by the proxy layer)."""
    from tamis.models.build import build_proxy
    from tamis.pipeline.sources import read_records
    from tamis.schemas.proxy import ProxyModelConfig

    config = ProxyModelConfig(n_layer=2, n_embd=128, n_head=4, vocab_size=2048, context=128, sample_size=5000, epochs=1)
    proxy = build_proxy(read_records(str(BENCH / "pool.jsonl.gz")), config, cache_dir=work / "cache", progress=False)
    return proxy.final_model_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--work", default="/tmp/tamis-scaling")
    ap.add_argument("--shard-rows", type=int, default=50_000)
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model = build_embedder(work)
    rows = []
    for n in a.sizes:
        pool = work / f"pool-{n}.jsonl.gz"
        if not pool.exists():
            replicate(BENCH / "pool.jsonl.gz", n, pool)
        out = work / f"out-{n}"
        cmd = ["/usr/bin/time", "-v", "tamis", "select", "--pool", str(pool), "--target",
               f"food={BENCH / 'targets' / 'food' / 'dev.jsonl'}", "--selector", "rds", "--param", f"model={model}",
               "--budget", "0.05", "--out", str(out), "--overwrite", "--no-progress", "--shard-rows", str(a.shard_rows),
               "--max-length", "128"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "TMPDIR": str(work)})
        wall = time.perf_counter() - start
        if proc.returncode:
            print(proc.stdout[-2000:], proc.stderr[-4000:])
            raise SystemExit(f"size {n} failed")
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
        manifest = json.loads((out / "manifest.json").read_text())
        rows.append({"n": n, "wall_s": wall, "peak_rss_mb": rss, "rows_per_s": n / wall, "timings": manifest["timings"],
                     "counts": manifest["counts"]})
        print(f"{n:>9,} rows: wall {wall:7.1f}s  ({n / wall:6.0f} rows/s)  peak RSS {rss:7.0f} MB  "
              f"score {manifest['timings']['score_s']:.0f}s select {manifest['timings']['select_s']:.0f}s", flush=True)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"time x{last['wall_s'] / first['wall_s']:.1f} for rows x{last['n'] / first['n']:.0f}; "
              f"RSS x{last['peak_rss_mb'] / first['peak_rss_mb']:.2f}")
    dest = Path(__file__).parent / "results" / "scaling.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps({"model": model, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
