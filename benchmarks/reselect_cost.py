"""What a new selection costs: wall time and bytes written by ``tamis reselect`` on a scored run.

The scores come from a cheap selector defined here (a row's length), so that a pool of a million
rows can be scored on a laptop; a reselect reads ids and scores and writes the selection, so its
cost does not depend on which selector made the scores. Bytes written are the sizes of the files
under the run folder that the reselect created or changed.

    python benchmarks/reselect_cost.py --pool ../shared/bench/wordnet/pool.jsonl.gz --out /tmp/rs116k
    python benchmarks/reselect_cost.py --synthetic 1000000 --pool ../shared/bench/wordnet/pool.jsonl.gz --out /tmp/rs1m

Run it with ``PYTHONPATH`` at another checkout to measure that version (the API it uses,
``tamis.select`` and ``tamis.reselect``, is the same in every version since 0.1).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import numpy as np

from tamis.selectors import Selector, registry


class LengthSelector(Selector):
    """Score = the row's length in characters (a stand-in for any selector's scores)."""

    name = "length"

    def score(self, records):
        lengths = [sum(len(m["content"] or "") for m in r["messages"]) if r.get("messages") else len(r["text"] or "")
                   for r in records]
        return {"score_length": np.asarray(lengths, dtype=np.float32)}


def synthetic_pool(path: Path, rows: int, source: Path) -> Path:
    """``rows`` chat rows cycled from a real pool's lines, each with a new id."""
    with gzip.open(source, "rt", encoding="utf-8", errors="replace") as f:
        lines = []
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj.get("messages"), list):
                lines.append(obj["messages"])
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as out:
        for i in range(rows):
            out.write(json.dumps({"id": f"s{i:08d}", "messages": lines[i % len(lines)]}) + "\n")
    return path


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool")
    parser.add_argument("--synthetic", type=int, help="rows of a synthetic pool cycled from --pool (default: the demo pool)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--budgets", default="0.05,0.1,2000", help="the first run's budget, then each reselect's")
    parser.add_argument("--existing", help="a run this script made before: reselect it again, without scoring")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    import tamis

    registry.BUILTIN["length"] = "__main__:LengthSelector"  # in-process runner: no plugin install needed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = args.pool
    if args.synthetic and not args.existing:
        source = Path(pool) if pool else Path(tamis.__file__).parent / "demo" / "pool.jsonl.gz"
        pool = str(synthetic_pool(out / f"pool{args.synthetic}.jsonl.gz", args.synthetic, source))
    run = out / "run"
    figures = {"tamis": os.path.dirname(tamis.__file__), "reselects": []}
    if args.existing:
        run = Path(args.existing)
        figures["existing"] = str(run)
    else:
        start = time.perf_counter()
        summary = tamis.select(pool=[pool], selector=["length"], budget=float(args.budgets.split(",")[0]),
                               shard_rows=10_000, out=str(run), overwrite=True)
        figures.update({"pool": pool, "rows": summary.counts["accepted"], "select_s": round(time.perf_counter() - start, 1)})
    figures["shard_files"] = len(list((run / "shards").glob("*.parquet")))
    figures["shard_bytes"] = sum(p.stat().st_size for p in (run / "shards").glob("*.parquet"))
    for budget in args.budgets.split(",")[1:]:
        before = snapshot(run)
        start = time.perf_counter()
        tamis.reselect(str(run), float(budget))
        wall = time.perf_counter() - start
        after = snapshot(run)
        written = {k: v[0] for k, v in after.items() if before.get(k) != v}
        figures["reselects"].append({"budget": float(budget), "wall_s": round(wall, 2),
                                     "bytes_written": sum(written.values()), "files_written": len(written),
                                     "shards_rewritten": sum(1 for k in written if k.startswith("shards/"))})
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
