"""Domain diversity of a kMQ selection on WordNet, against random selections of the same size.

WordNet rows carry one of 45 lexicographer domains (noun.food, verb.motion, ...), which the
selector never sees. A `tamis select --selector kmeans` run picks ``--budget`` of a random
``--rows`` subset of the pool (20k by default: about 4-5 minutes of MiniLM embedding on 2 CPU
cores); then the number of domains represented and the entropy of the domain distribution (nats)
are compared with ``--random-seeds`` uniform random selections of the same size. Writes
benchmarks/results/kmeans_diversity.json and kmeans_diversity.png (domain shares per arm).

    python benchmarks/kmeans_diversity.py                       # 20k rows, 5%
    python benchmarks/kmeans_diversity.py --rows 2000           # a quick check
    python benchmarks/kmeans_diversity.py --param rounds=3      # with iterative refinement
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def entropy(counts: Counter) -> float:
    p = np.array(list(counts.values()), dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def describe(domains: list[str]) -> dict:
    c = Counter(domains)
    return {"n": len(domains), "domains": len(c), "entropy": entropy(c), "counts": dict(c.most_common())}


def subset(bench: Path, rows: int, seed: int, dest: Path) -> list[str]:
    """A uniform random ``rows`` of the pool's lines (all of them when rows is 0), written to ``dest``."""
    with gzip.open(bench / "pool.jsonl.gz", "rb") as f:
        lines = f.readlines()
    if 0 < rows < len(lines):
        lines = random.Random(seed).sample(lines, rows)
    dest.write_bytes(b"".join(lines))
    return [json.loads(line)["id"] for line in lines]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pool = result["pool"]["counts"]
    names = sorted(pool, key=lambda d: -pool[d])
    arms = {"pool": {d: pool[d] / result["pool"]["n"] for d in names},
            "random (mean)": result["random"]["mean_share"],
            "kmeans": {d: result["kmeans"]["counts"].get(d, 0) / result["kmeans"]["n"] for d in names}}
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(13, 4.8))
    for i, (arm, share) in enumerate(arms.items()):
        ax.bar(x + (i - 1) * 0.28, [share.get(d, 0.0) for d in names], width=0.28, label=arm)
    ax.set_xticks(x, names, rotation=75, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("share of rows (log)")
    r, k = result["random"], result["kmeans"]
    ax.set_title(f"WordNet {result['rows']} rows, {k['n']} selected: kmeans {k['domains']} domains "
                 f"(entropy {k['entropy']:.2f}) vs random {r['domains_mean']:.1f} ± {r['domains_sd']:.1f} "
                 f"({r['entropy_mean']:.2f} ± {r['entropy_sd']:.2f})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=str(Path(__file__).resolve().parents[2] / "shared" / "bench" / "wordnet"))
    ap.add_argument("--rows", type=int, default=20_000, help="pool subset size (0: the whole pool)")
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--sample-size", type=int, default=5000, help="rows the centroids are fitted on")
    ap.add_argument("--param", action="append", default=[], help="more kmeans parameters, key=value")
    ap.add_argument("--random-seeds", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/kmeans-diversity")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--tag", default="", help="suffix of the result files, e.g. rounds3")
    a = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    import tamis
    from tamis.schemas.config import parse_param_pairs

    bench, out = Path(a.bench), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = {}
    with gzip.open(bench / "labels.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            labels[row["id"]] = row["domain"]
    ids = subset(bench, a.rows, a.seed, out / "pool.jsonl")

    params = {"sample_size": a.sample_size, **parse_param_pairs(a.param)}
    start = time.perf_counter()
    summary = tamis.select(pool=[str(out / "pool.jsonl")], out=str(out / "run"), selector=["kmeans"],
                           budget=a.budget, param=params, seed=a.seed, workers=a.workers, overwrite=True)
    wall = time.perf_counter() - start
    table = pa.concat_tables(pq.read_table(p, columns=["id", "selected", "cluster"])
                             for p in sorted((out / "run" / "shards").glob("part-*.parquet")))
    chosen = table.filter(table.column("selected")).column("id").to_pylist()
    manifest = json.loads((out / "run" / "manifest.json").read_text())

    rng = np.random.default_rng(a.seed)
    eligible = table.column("id").to_pylist()
    randoms = [describe([labels[eligible[i]] for i in rng.choice(len(eligible), len(chosen), replace=False)])
               for _ in range(a.random_seeds)]
    names = set(labels[i] for i in ids)
    mean_share = {d: float(np.mean([r["counts"].get(d, 0) / r["n"] for r in randoms])) for d in sorted(names)}
    result = {
        "rows": len(ids), "budget": a.budget, "params": params, "seed": a.seed,
        "pool": describe([labels[i] for i in ids]),
        "kmeans": {**describe([labels[i] for i in chosen]), "k": manifest["prepared"]["kmeans"]["k"],
                   "wall_s": wall, "timings": summary.timings},
        "random": {"seeds": a.random_seeds,
                   "domains_mean": float(np.mean([r["domains"] for r in randoms])),
                   "domains_sd": float(np.std([r["domains"] for r in randoms])),
                   "domains_min": int(min(r["domains"] for r in randoms)),
                   "domains_max": int(max(r["domains"] for r in randoms)),
                   "entropy_mean": float(np.mean([r["entropy"] for r in randoms])),
                   "entropy_sd": float(np.std([r["entropy"] for r in randoms])),
                   "mean_share": mean_share},
        "selection_report": {k: v for k, v in manifest.get("selection_report", {}).items() if k != "rounds"}
                            | {"rounds": [{"round": r["round"], "selected": r["selected"],
                                           "max_weight": max(r["cluster_weights"])}
                                          for r in manifest.get("selection_report", {}).get("rounds", [])]},
    }
    k, r = result["kmeans"], result["random"]
    print(f"{len(ids)} rows ({result['pool']['domains']} domains, entropy {result['pool']['entropy']:.3f}); "
          f"{k['n']} selected, k={k['k']}, {wall:.0f}s")
    print(f"kmeans: {k['domains']} domains, entropy {k['entropy']:.3f}")
    print(f"random: {r['domains_mean']:.1f} ± {r['domains_sd']:.1f} domains (min {r['domains_min']}, "
          f"max {r['domains_max']}), entropy {r['entropy_mean']:.3f} ± {r['entropy_sd']:.3f}")
    RESULTS.mkdir(exist_ok=True)
    stem = "kmeans_diversity" + (f"_{a.tag}" if a.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / f"{stem}.png")
    print(f"written {RESULTS / stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
