"""Beam overhead: a whole `tamis select` (RDS+ with all-MiniLM-L6-v2) against a bare
`SentenceTransformer.encode` loop over the same texts with the same batch size.

Both sides tokenize and run MiniLM over every text; tamis also validates, batches by token
budget, searches FAISS, writes Parquet and selects. The ratio of wall times is the overhead.
Texts are rendered the same way ("role: content" lines). Prints figures and writes
benchmarks/results/overhead.json.

    python benchmarks/overhead.py --n 3000
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "wordnet"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64, help="rows per batch on both sides")
    ap.add_argument("--pool", default=str(BENCH / "pool.jsonl.gz"))
    ap.add_argument("--target", default=str(BENCH / "targets" / "food" / "dev.jsonl"))
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tamis-overhead-"))
    os.environ["TMPDIR"] = str(tmp)
    with gzip.open(a.pool, "rt") as f:
        lines = list(itertools.islice(f, a.n))
    pool = tmp / "pool.jsonl"
    pool.write_text("".join(lines))

    import numpy as np
    from sentence_transformers import SentenceTransformer

    import tamis
    from tamis.models.loading import resolve_model
    from tamis.models.text import render_plain
    from tamis.pipeline.sources import read_records

    texts = [render_plain(r) for r in read_records(str(pool))]
    tokens = SentenceTransformer(resolve_model("minilm"), device="cpu").tokenizer(texts)["input_ids"]
    mean_len = float(np.mean([len(t) for t in tokens]))
    # tamis batches by padded tokens: a budget of batch_size rows of the longest text in a
    # length-sorted batch gives about the same rows per batch as the bare loop.
    batch_tokens = int(a.batch_size * mean_len * 1.1)

    t0 = time.perf_counter()
    model = SentenceTransformer(resolve_model("minilm"), device="cpu")
    model.encode(texts, batch_size=a.batch_size, normalize_embeddings=True)
    bare = time.perf_counter() - t0

    t0 = time.perf_counter()
    summary = tamis.select(pool=[str(pool)], target={"food": a.target}, out=str(tmp / "out"), budget=0.05,
                           batch_tokens=batch_tokens, shard_rows=a.n)
    piped = time.perf_counter() - t0
    result = {
        "n": len(texts), "mean_tokens": mean_len, "batch_size": a.batch_size, "batch_tokens": batch_tokens,
        "bare_encode_s": bare, "bare_texts_per_s": len(texts) / bare,
        "tamis_select_s": piped, "tamis_texts_per_s": len(texts) / piped,
        "tamis_score_stage_s": summary.timings["score_s"],
        "overhead_ratio": piped / bare, "overhead_ratio_score_stage": summary.timings["score_s"] / bare,
        "tamis_timings": summary.timings, "threads": __import__("torch").get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    print(f"bare encode {bare:.1f}s ({len(texts) / bare:.0f} texts/s); tamis select {piped:.1f}s "
          f"({len(texts) / piped:.0f} texts/s); overhead x{piped / bare:.2f} (score stage x{summary.timings['score_s'] / bare:.2f})")
    dest = Path(__file__).parent / "results" / "overhead.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(result, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
