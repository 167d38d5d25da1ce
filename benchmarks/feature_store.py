"""Stored pool features: a first run, then a second on the same pool into a new folder, per selector.

For each selector: a fresh cache (``$TAMIS_CACHE``: proxies and the feature store) under
``--work``, a first ``tamis select`` for the first target task, then a second one, into a new
folder, for the second task (the same task when only one is given): a new question of a pool
already scored. Prints the wall time of both (whole commands, start-up included), the scoring
pass of both, the feature counters of the second run (reused rows, computed rows), and the store's
bytes: in all, per row, and per million rows (measured bytes per row x 1e6).

    python benchmarks/feature_store.py                        # the demo pool, food then animal, every selector
    python benchmarks/feature_store.py --selector rds --selector kmeans \\
        --pool wordnet.jsonl.gz --target food=food_dev.jsonl --target animal=animal_dev.jsonl
    python benchmarks/feature_store.py --quick                # the selectors' tiny test parameters (seconds)

``--together rds,kmeans`` runs the named selectors in one run as well (``kmeans.text=all`` so
they share the embeddings) and prints its time beside each alone.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SELECTORS = ["rds", "kmeans", "color", "less", "el2n", "grand", "irt"]


def demo_defaults() -> tuple[str, dict[str, str]]:
    from tamis.demo import demo_dir

    d = Path(demo_dir())
    return str(d / "pool.jsonl.gz"), {"food": str(d / "food_dev.jsonl"), "animal": str(d / "animal_dev.jsonl")}


def run_select(args, selectors: list[str], task: tuple[str, str] | None, out: Path, cache: Path,
               params: list[str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "tamis", "select", "--pool", args.pool, "--out", str(out), "--no-progress",
           "--shard-rows", str(args.shard_rows), "--max-length", str(args.max_length), "--overwrite"]
    for s in selectors:
        cmd += ["--selector", s]
    if task is not None:
        cmd += ["--target", f"{task[0]}={task[1]}"]
    for p in params:
        cmd += ["--param", p]
    if args.feature_dtype:
        cmd += ["--feature-dtype", args.feature_dtype]
    env = dict(os.environ, TAMIS_CACHE=str(cache), HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return wall, json.loads((out / "manifest.json").read_text())


def selector_params(name: str, args) -> list[str]:
    from tamis.selectors import registry

    params = [f"{name}.{k}={json.dumps(v) if not isinstance(v, str) else v}"
              for k, v in (registry.get(name).test_params().items() if args.quick else [])]
    return params + [p for p in args.param if p.startswith(f"{name}.")]


def store_bytes(cache: Path) -> dict[str, dict]:
    from tamis.models.features import FeatureStore, usage

    return usage(FeatureStore(cache / "features"))


def main() -> None:
    pool, targets = demo_defaults()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default=pool)
    ap.add_argument("--target", action="append", default=[], help="task=path (first run: the first; second: the second)")
    ap.add_argument("--selector", action="append", default=[])
    ap.add_argument("--param", action="append", default=[], help="name.key=value, as tamis select")
    ap.add_argument("--together", default="", help="comma-separated selectors also run in one run (e.g. rds,kmeans)")
    ap.add_argument("--shard-rows", type=int, default=10_000)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--feature-dtype", default=None, choices=["float32", "float16"])
    ap.add_argument("--quick", action="store_true", help="the selectors' tiny test parameters")
    ap.add_argument("--work", default="runs/feature_store_bench")
    ap.add_argument("--keep", action="store_true", help="keep the runs and caches under --work")
    args = ap.parse_args()
    if args.target:
        targets = dict(t.split("=", 1) for t in args.target)
    tasks = list(targets.items())
    first_task, second_task = tasks[0], tasks[1] if len(tasks) > 1 else tasks[0]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from tamis.selectors import registry

    print(f"pool {args.pool}; first task {first_task[0]}, second task {second_task[0]}; shard_rows {args.shard_rows}, "
          f"max_length {args.max_length}, feature dtype {args.feature_dtype or 'float32'}"
          f"{', test parameters' if args.quick else ''}")
    header = (f"{'selector':<16} {'first s':>8} {'(score)':>8} {'second s':>9} {'(score)':>8} {'ratio':>6} "
              f"{'reused':>8} {'computed':>9} {'store':>10} {'B/row':>8} {'MB per 1M rows':>15}")
    print(header)
    print("-" * len(header))
    groups = [[s] for s in (args.selector or SELECTORS)]
    if args.together:
        groups.append(args.together.split(","))
    for group in groups:
        label = "+".join(group)
        cache = work / f"cache-{label}"
        shutil.rmtree(cache, ignore_errors=True)
        params = [p for s in group for p in selector_params(s, args)]
        if "kmeans" in group and "rds" in group and not any(p.startswith("kmeans.text=") for p in params):
            params.append("kmeans.text=all")  # RDS+'s rendering, so the two share embeddings
        needs = any(registry.get(s).needs_target for s in group)
        first_s, first = run_select(args, group, first_task if needs else None, work / f"{label}-1", cache, params)
        second_s, second = run_select(args, group, second_task if needs else None, work / f"{label}-2", cache, params)
        metrics = second.get("metrics", {})
        reused = sum(metrics.get(f"{s}_features_reused", 0) for s in group)
        computed = sum(metrics.get(f"{s}_features_computed", 0) for s in group)
        usage = store_bytes(cache)
        total = sum(u["bytes"] for u in usage.values())
        rows = second["counts"]["accepted"]
        # Bytes per pool row: the chunks' entries (kmeans also stores its fitting sample's embeddings).
        per_row = total / max(1, rows)
        print(f"{label:<16} {first_s:8.1f} {first['timings']['score_s']:8.1f} {second_s:9.1f} "
              f"{second['timings']['score_s']:8.1f} {second_s / first_s:6.3f} {reused:8d} {computed:9d} "
              f"{total / 1e6:9.2f}M {per_row:8.0f} {per_row:15.0f}")
        for kind, u in usage.items():
            print(f"  {kind}: {u['entries']} entries, {u['rows']} rows, {u['bytes']} bytes "
                  f"({u['bytes'] / max(1, u['rows']):.1f} B/row)")
        if not args.keep:
            for out in (work / f"{label}-1", work / f"{label}-2"):
                shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
