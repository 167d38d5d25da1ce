"""LESS on a 30k-row WordNet pool: a cold run, then a new task with a warm feature store.

1. cold: `tamis select --selector less --target food=...` with an empty cache (the proxy is built,
   warmed up, and every pool row's gradient features are computed for every checkpoint);
2. warm: the same pool, a task the cold run never saw (`animal`), in a new output folder: the
   proxies come from the proxy cache and the pool features from the feature store, so only the
   targets' gradients are computed.

Prints both wall times, the manifest's stage timings and feature counts, and writes
benchmarks/results/less_rescoring.json. The cold time is the "30k rows on 2 cores" figure.

    python benchmarks/less_rescoring.py --rows 30000 --work /tmp/less-rescoring
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "wordnet"


def run(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default=str(BENCH))
    ap.add_argument("--rows", type=int, default=30_000)
    ap.add_argument("--work", default="/tmp/less-rescoring")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--param", action="append", default=[], help="extra --param for the less selector")
    a = ap.parse_args()

    bench, work = Path(a.bench), Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pool = work / "pool.jsonl"
    with gzip.open(bench / "pool.jsonl.gz", "rt", encoding="utf-8") as f, open(pool, "w", encoding="utf-8") as out:
        out.writelines(itertools.islice(f, a.rows))
    env = dict(os.environ, TAMIS_CACHE=str(work / "cache"))  # a cold cache: nothing trained yet

    def select(task: str, out: str) -> tuple[float, dict]:
        cmd = ["tamis", "select", "--pool", str(pool), "--selector", "less", "--budget", "0.05",
               "--target", f"{task}={bench / 'targets' / task / 'dev.jsonl'}", "--out", str(work / out),
               "--no-progress", "--workers", str(a.workers)]
        for p in a.param:
            cmd += ["--param", p]
        wall = run(cmd, env)
        manifest = json.loads((work / out / "manifest.json").read_text())
        return wall, {"timings": manifest["timings"], "counts": manifest["counts"],
                      "features": {k: v for k, v in manifest.get("metrics", {}).items() if k.startswith("less_")}}

    cold_s, cold = select("food", "cold")
    warm_s, warm = select("animal", "warm")
    result = {"rows": a.rows, "workers": a.workers, "params": a.param, "cpus": os.cpu_count(),
              "cold": {"wall_s": cold_s, **cold}, "warm": {"wall_s": warm_s, **warm}}
    for name in ("cold", "warm"):
        r = result[name]
        t = r["timings"]
        print(f"{name}: wall {r['wall_s']:.0f} s (prepare {t.get('prepare_s', 0):.0f} s, score {t.get('score_s', 0):.0f} s, "
              f"select {t.get('select_s', 0):.0f} s); features {r['features']}")
    print(f"warm / cold wall time: {warm_s / cold_s:.3f}")
    dest = Path(__file__).parent / "results" / "less_rescoring.json"
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
