"""Selection quality on the WordNet benchmark: P@500 and `tamis evaluate` per task.

One `tamis select` run scores the whole pool for the three tasks (food, animal, motion) under
`/usr/bin/time -v` (wall time and peak RSS); then, per task, the run is reselected to that
task's top 5% and evaluated: held-out loss of a small proxy trained on it, beside random 5%
and the full pool, over several seeds. Prints a table and writes
benchmarks/results/wordnet_<selector>.json.

    python benchmarks/wordnet_selection.py --selector rds --out runs/wn-rds
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

TASKS = {"food": "noun.food", "animal": "noun.animal", "motion": "verb.motion"}


def timed(cmd: list[str]) -> dict:
    """Run a command under /usr/bin/time -v; its wall seconds and peak RSS in MB."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"wall_s": wall, "peak_rss_mb": int(rss.group(1)) / 1024 if rss else None, "stdout": proc.stdout}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--selector", default="rds")
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--select-args", default="", help="more `tamis select` flags, e.g. '--max-length 128'")
    ap.add_argument("--bench", default=str(Path(__file__).resolve().parents[2] / "shared" / "bench" / "wordnet"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--k", type=int, default=500)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip-select", action="store_true", help="reuse a finished run in --out")
    ap.add_argument("--skip-evaluate", action="store_true")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS),
                    help="the tasks to select for (default all three); each adds its dev targets' cost")
    ap.add_argument("--tag", default="", help="suffix of the result file, e.g. big (wordnet_<selector>_big.json)")
    a = ap.parse_args()

    bench = Path(a.bench)
    result: dict = {"selector": a.selector, "params": a.param, "budget": a.budget}
    if not a.skip_select:
        cmd = ["tamis", "select", "--pool", str(bench / "pool.jsonl.gz"), "--selector", a.selector,
               "--budget", str(a.budget), "--out", a.out, "--no-progress", "--workers", str(a.workers)]
        for task in a.tasks:
            cmd += ["--target", f"{task}={bench / 'targets' / task / 'dev.jsonl'}"]
        for p in a.param:
            cmd += ["--param", p]
        cmd += a.select_args.split()
        run = timed(cmd)
        print(run["stdout"])
        result["select"] = {k: v for k, v in run.items() if k != "stdout"}
        print(f"select: wall {run['wall_s']:.0f}s, peak RSS {run['peak_rss_mb']:.0f} MB")

    import pyarrow as pa
    import pyarrow.parquet as pq

    import tamis
    from tamis.evaluate import EvalSettings, evaluate_run, format_table, load_labels, precision_at_k

    manifest = json.loads(Path(a.out, "manifest.json").read_text())
    result["manifest_counts"] = manifest["counts"]
    result["manifest_timings"] = manifest["timings"]
    labels = load_labels(str(bench / "labels.jsonl.gz"))
    table = pa.concat_tables(pq.read_table(f) for f in sorted(Path(a.out, "shards").glob("part-*.parquet")))
    ranking = {t: c for t, c in manifest["resolved"]["ranking_columns"].items() if t in TASKS}
    result["precision_at_k"] = precision_at_k(table, ranking, labels, {t: TASKS[t] for t in a.tasks}, a.k)
    for task, p in result["precision_at_k"].items():
        print(f"P@{a.k} {task}: {p['precision']:.3f} (base rate {p['base_rate']:.4f}, lift {p['lift']:.1f}x)")

    if not a.skip_evaluate:
        result["evaluate"] = {}
        for task in a.tasks:
            tamis.reselect(a.out, a.budget, tasks=[task])
            res = evaluate_run(a.out, {task: str(bench / "targets" / task / "eval.jsonl")}, seeds=a.seeds,
                               settings=EvalSettings(steps=a.steps))
            result["evaluate"][task] = {"summary": res["summary"][task], "n_selected": res["n_selected"],
                                        "n_pool": res["n_pool"], "timings": res["timings"]}
            from rich.console import Console

            Console().print(format_table(res))
        tamis.reselect(a.out, a.budget)  # leave the run with its round-robin selection

    dest = Path(__file__).parent / "results" / f"wordnet_{a.selector}{'_' + a.tag if a.tag else ''}.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(result, indent=2))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
