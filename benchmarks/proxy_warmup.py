"""Warm-up proxy on the WordNet benchmark: does the built proxy learn, and does the warm-up help?

Builds the default small GPT-2 proxy on a pool sample (full parameters), warms it up with LoRA on
5% of the pool (LESS's recipe, scaled to a small model), and reports the held-out loss (mean over
scored assistant tokens) on each task's eval targets and on unseen pool rows, at every checkpoint.
Everything goes through the proxy cache, so a second run only re-scores.

    python benchmarks/proxy_warmup.py [--threads 1] [--cache-dir /tmp/tamis-bench-proxies]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "wordnet"  # ../shared/bench/wordnet beside the checkout


def held_out_loss(model, tokenizer, records, max_length: int) -> float:
    from tamis.models.lm import encode_records
    from tamis.models.stats import sequence_stats

    stats = sequence_stats(model, encode_records(tokenizer, records, max_length), batch_tokens=8192)
    return float(np.average(stats["loss"], weights=stats["tokens"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=str(BENCH / "pool.jsonl.gz"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--cache-dir", default="/tmp/tamis-bench-proxies")
    parser.add_argument("--sample-size", type=int, default=10_000, help="pool rows the proxy is built on")
    parser.add_argument("--build-epochs", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.05, help="warm-up slice of the pool")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=32)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "proxy_warmup.json"))
    args = parser.parse_args()

    import torch

    from tamis.models.build import build_proxy
    from tamis.models.lm import load_causal_lm
    from tamis.models.train import slice_position, train_proxy
    from tamis.pipeline.sources import read_records, read_targets
    from tamis.schemas.proxy import ProxyModelConfig, TrainConfig

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pool = list(read_records(args.pool))
    read_s = time.perf_counter() - t0
    evals = read_targets({task: str(BENCH / "targets" / task / "eval.jsonl") for task in ("food", "animal", "motion")})
    # Unseen pool rows: positions above every slice drawn here (same seed 42 as the defaults).
    evals["pool-unseen"] = [r for r in pool if slice_position(r, 42) >= 0.99][:1000]

    build_config = ProxyModelConfig(sample_size=args.sample_size, epochs=args.build_epochs)
    t0 = time.perf_counter()
    built = build_proxy(pool, build_config, cache_dir=args.cache_dir)
    build_s = time.perf_counter() - t0
    warm_config = TrainConfig(mode="lora", fraction=args.fraction, epochs=args.epochs, lr=args.lr,
                              lora_r=args.lora_r, lora_alpha=4 * args.lora_r, max_length=build_config.context)
    t0 = time.perf_counter()
    warmed = train_proxy(built, pool, warm_config, cache_dir=args.cache_dir)
    warm_s = time.perf_counter() - t0

    rows = []
    t0 = time.perf_counter()
    init_model, tok = load_causal_lm(str(built.path / "init"))
    stages = [("init (random)", lambda: (init_model, tok), None)]
    stages += [(f"build {c.path.name}", (lambda i=i: built.load(i)), c) for i, c in enumerate(built.checkpoints)]
    stages += [(f"warm-up {c.path.name}", (lambda i=i: warmed.load(i)), c) for i, c in enumerate(warmed.checkpoints)]
    for label, load, ckpt in stages:
        model, tokenizer = load()
        losses = {task: held_out_loss(model, tokenizer, recs, build_config.context) for task, recs in evals.items()}
        rows.append({"stage": label, "avg_lr": ckpt.avg_lr if ckpt else None,
                     "train_loss": ckpt.mean_loss if ckpt else None, "held_out_loss": losses})
    eval_s = time.perf_counter() - t0

    tasks = list(evals)
    print(f"pool {len(pool):,} rows (read in {read_s:.1f} s); built on {build_config.sample_size:,} rows "
          f"x {build_config.epochs} epochs ({'cached' if built.cached else f'{build_s:.0f} s'}); "
          f"warm-up LoRA r={args.lora_r} on {args.fraction:.0%} = {len(warmed.history) // args.epochs} steps/epoch "
          f"x {args.epochs} epochs ({'cached' if warmed.cached else f'{warm_s:.0f} s'}); scoring {eval_s:.0f} s")
    print(f"{'stage':<24}{'avg lr':>10}{'train':>8}" + "".join(f"{t:>13}" for t in tasks))
    for r in rows:
        lr = f"{r['avg_lr']:.2e}" if r["avg_lr"] is not None else "-"
        tr = f"{r['train_loss']:.3f}" if r["train_loss"] is not None else "-"
        print(f"{r['stage']:<24}{lr:>10}{tr:>8}" + "".join(f"{r['held_out_loss'][t]:>13.3f}" for t in tasks))
    results = {
        "pool_rows": len(pool), "threads": args.threads, "build_config": build_config.model_dump(),
        "warmup_config": warm_config.model_dump(), "warmup_examples": int(json.loads(
            (warmed.path / "inputs.json").read_text())["n_examples"]),
        "seconds": {"read": read_s, "build": build_s, "warmup": warm_s, "eval": eval_s},
        "cached": {"build": built.cached, "warmup": warmed.cached},
        "eval_rows": {t: len(v) for t, v in evals.items()}, "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
