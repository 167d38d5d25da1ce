"""What each selector publishes for its workers when they share no disk with the launcher.

Runs every registered selector's ``prepare`` (default parameters unless --test-params) on a pool,
then publishes what the prepared record names, exactly as a run with remote workers does
(``tamis.pipeline.artifacts.publish_prepared`` into ``OUT/_work/artifacts``), and prints the
files and bytes per selector. Example:

    OMP_NUM_THREADS=1 python benchmarks/artifact_sizes.py --pool tamis/demo/pool.jsonl.gz \
        --target food=tamis/demo/food_dev.jsonl --out /tmp/artifacts_demo
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from tamis.io.runfolder import RunFolder
from tamis.pipeline.artifacts import publish_prepared
from tamis.pipeline.plan import Plan, load_config
from tamis.selectors import registry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", required=True)
    ap.add_argument("--target", action="append", default=[], help="task=path")
    ap.add_argument("--out", required=True, help="a scratch run folder (artifacts are written under it)")
    ap.add_argument("--selector", action="append", help="default: every registered selector")
    ap.add_argument("--test-params", action="store_true", help="each selector's small test parameters")
    ap.add_argument("--param", action="append", default=[], help="name.key=value (YAML value), e.g. irt.sample_size=1000")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    targets = dict(t.split("=", 1) for t in args.target)
    rows = []
    for name in args.selector or registry.available():
        cls = registry.get(name)
        if cls.needs_target and not targets:
            continue
        params = cls.test_params() if args.test_params else {}
        for pair in args.param:
            key, _, value = pair.partition("=")
            scope, _, key = key.partition(".")
            if scope == name:
                params[key] = yaml.safe_load(value)
        out = f"{args.out.rstrip('/')}/{name}"
        config = load_config(None, pool=[args.pool], target=targets, selector=[name], out=out,
                             param={f"{name}.{k}": v for k, v in params.items()})
        plan = Plan.build(config)
        start = time.perf_counter()
        try:
            prepared = plan.prepare()
        except ValueError as e:  # a selector that cannot prepare on this pool says why
            print(f"{name:8s} not prepared: {e}", flush=True)
            rows.append({"selector": name, "error": str(e)})
            continue
        prepare_s = time.perf_counter() - start
        _, published = publish_prepared(prepared, RunFolder(out))
        total = sum(p["bytes"] for p in published)
        files = sum(sum(1 for f in Path(p["from"]).rglob("*") if f.is_file()) if Path(p["from"]).is_dir() else 1
                    for p in published)
        rows.append({"selector": name, "artifacts": len(published), "files": files, "bytes": total,
                     "prepare_s": round(prepare_s, 1), "what": [Path(p["from"]).name for p in published]})
        print(f"{name:8s} {len(published):3d} artifact(s) {files:4d} files {total / 1e6:9.2f} MB  "
              f"prepare {prepare_s:6.1f}s  {', '.join(rows[-1]['what'])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"pool": args.pool, "test_params": args.test_params, "rows": rows},
                                              indent=2))


if __name__ == "__main__":
    main()
