"""What the content-keyed planning step costs, beside the time it takes to score the pool.

Planning a run = expand the pool patterns + count each file's lines (to cut chunks) + the resume
key: each input file's size and sha256 (``tamis.io.runfolder.file_digest``) and a hash of the
parsed target examples. The first two were there before the key covered content; the hashes
are the new part. Times each part on the 116k-row WordNet pool (gzip, as shipped, and the same
lines uncompressed), best of ``--repeats``. Nothing is scored: the scoring time it is set against
is the one recorded by the full RDS+ run on this pool (benchmarks/results/wordnet_rds.json,
``manifest_timings.score_s``). Prints figures and writes benchmarks/results/plan_cost.json.

    python benchmarks/plan_cost.py
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "wordnet"
RESULTS = Path(__file__).resolve().parent / "results"


def best(fn, repeats: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return min(times), value


def plan_parts(pool: str, targets: dict[str, str], repeats: int) -> dict:
    from tamis.io.filesystems import file_digest
    from tamis.pipeline.chunks import count_lines
    from tamis.pipeline.plan import target_digests
    from tamis.pipeline.sources import expand, read_targets

    out: dict = {}
    out["expand_s"], paths = best(lambda: expand([pool]), repeats)
    out["count_lines_s"], lines = best(lambda: [count_lines(p) for p in paths], repeats)
    out["file_digest_s"], digests = best(lambda: [file_digest(p) for p in paths], repeats)
    out["read_targets_s"], parsed = best(lambda: read_targets(targets), repeats)
    out["target_digest_s"], _ = best(lambda: target_digests(parsed), repeats)
    out["lines"] = sum(lines)
    out["bytes"] = sum(d["bytes"] for d in digests)
    out["before_s"] = out["expand_s"] + out["count_lines_s"] + out["read_targets_s"]  # planning without the key's hashes
    out["key_s"] = out["file_digest_s"] + out["target_digest_s"]  # what covering content adds
    out["total_s"] = out["before_s"] + out["key_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default=str(BENCH / "pool.jsonl.gz"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scored", default=str(RESULTS / "wordnet_rds.json"),
                    help="a recorded full run on the same pool: its manifest_timings.score_s")
    a = ap.parse_args()

    targets = {t: str(Path(a.pool).parent / "targets" / t / "dev.jsonl") for t in ("food", "animal", "motion")}
    score_s = json.loads(Path(a.scored).read_text())["manifest_timings"]["score_s"]
    tmp = Path(tempfile.mkdtemp(prefix="tamis-plancost-"))
    try:
        plain = tmp / "pool.jsonl"
        with gzip.open(a.pool, "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        results = {"pool": a.pool, "repeats": a.repeats, "cpu_count": os.cpu_count(),
                   "score_s_recorded": score_s, "score_s_source": f"{a.scored}: manifest_timings.score_s (RDS+, all-MiniLM-L6-v2, CPU)",
                   "gzip": plan_parts(a.pool, targets, a.repeats),
                   "plain": plan_parts(str(plain), targets, a.repeats)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    for kind in ("gzip", "plain"):
        r = results[kind]
        r["key_share_of_score"] = r["key_s"] / score_s
        r["plan_share_of_score"] = r["total_s"] / score_s
        print(f"{kind:5} {r['lines']:,} lines, {r['bytes'] / 1e6:.1f} MB: expand {r['expand_s']:.3f}s, "
              f"count_lines {r['count_lines_s']:.3f}s, sha256 {r['file_digest_s']:.3f}s, "
              f"targets {r['read_targets_s'] + r['target_digest_s']:.3f}s -> planning {r['total_s']:.3f}s "
              f"(the content key adds {r['key_s']:.3f}s)")
        print(f"      vs scoring {score_s:.0f}s (recorded): planning {100 * r['plan_share_of_score']:.4f}% of it, "
              f"the content key {100 * r['key_share_of_score']:.4f}%")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "plan_cost.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
