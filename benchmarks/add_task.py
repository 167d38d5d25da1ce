"""A first run, then a task added to it: the wall time of each, and what the store served.

    python benchmarks/add_task.py --pool ../shared/bench/wordnet/pool.jsonl.gz \
        --first food=../shared/bench/wordnet/targets/food/dev.jsonl \
        --add animal=../shared/bench/wordnet/targets/animal/dev.jsonl --selector rds --out /tmp/at_rds

Both steps run as a user runs them (``tamis select``, then ``tamis add-task``), each in its own
process under ``/usr/bin/time -v`` for its peak memory. The feature store is a fresh folder under
``--out`` (``TAMIS_CACHE``), so the first run pays for every feature. ``--rows N`` takes the pool's
first N lines (a subset, written under ``--out``).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


def timed(command: list[str], env: dict) -> dict:
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(int(rss.group(1)) / 1024) if rss else None,
            "stdout": done.stdout.strip().splitlines()[-6:]}


def subset(pool: str, rows: int, dest: Path) -> str:
    opener = gzip.open if pool.endswith(".gz") else open
    with opener(pool, "rt", encoding="utf-8", errors="replace") as f, open(dest, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i == rows:
                break
            out.write(line)
    return str(dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True)
    parser.add_argument("--first", required=True, help="task=path for the first run")
    parser.add_argument("--add", required=True, help="task=path added afterwards")
    parser.add_argument("--selector", action="append", required=True)
    parser.add_argument("--param", action="append", default=[])
    parser.add_argument("--rows", type=int)
    parser.add_argument("--budget", default="0.05")
    parser.add_argument("--out", required=True)
    parser.add_argument("--json")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = subset(args.pool, args.rows, out / f"pool{args.rows}.jsonl") if args.rows else args.pool
    env = dict(os.environ, TAMIS_CACHE=str(out / "cache"))
    run = str(out / "run")
    select = [sys.executable, "-m", "tamis", "select", "--pool", pool, "--target", args.first, "--out", run,
              "--budget", args.budget, "--no-progress", "--overwrite"]
    for name in args.selector:
        select += ["--selector", name]
    for p in args.param:
        select += ["--param", p]
    figures = {"pool": pool, "selectors": args.selector, "params": args.param, "first": timed(select, env)}
    figures["add"] = timed([sys.executable, "-m", "tamis", "add-task", run, "--target", args.add], env)
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    task = args.add.split("=", 1)[0]
    figures["rows"] = manifest["counts"]["accepted"]
    figures["first_timings"] = {k: round(v, 1) for k, v in manifest["timings"].items()}
    figures["added_task"] = {k: manifest["tasks"][task][k] for k in ("store", "score_s", "prepare_s", "chunks")}
    figures["ratio"] = round(figures["add"]["wall_s"] / figures["first"]["wall_s"], 4)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
