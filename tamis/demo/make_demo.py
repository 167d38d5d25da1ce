"""Rebuild the bundled demo pool from the WordNet benchmark (../shared/bench/wordnet).

2,000 pool rows drawn at random (seed 0), six deliberately broken lines so the rejects have
something to show, and the food and animal dev sets as targets. Run from the repository root:
``python tamis/demo/make_demo.py ../shared/bench/wordnet``.
"""
import gzip
import random
import sys
from pathlib import Path

BROKEN = [
    b'{"id": "broken-json", "text": "an unterminated string}\n',
    b'{"text": "a record without an id"}\n',
    b'{"id": "empty-text", "text": "   "}\n',
    b'{"id": "bad-utf8", "text": "caf\xe9 au lait"}\n',
    b'{"id": "wrong-type", "messages": "not a list"}\n',
]


def main(bench: str) -> None:
    here = Path(__file__).parent
    with gzip.open(Path(bench) / "pool.jsonl.gz", "rb") as f:
        lines = f.readlines()
    rng = random.Random(0)
    picked = rng.sample(lines, 2000)
    out = picked[:1000] + BROKEN + picked[1000:] + [picked[5]]  # the last line repeats an id
    with gzip.GzipFile(here / "pool.jsonl.gz", "wb", mtime=0) as f:
        f.writelines(out)
    for task in ("food", "animal"):
        (here / f"{task}_dev.jsonl").write_bytes((Path(bench) / "targets" / task / "dev.jsonl").read_bytes())
    print(f"{len(out)} lines written")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/bench/wordnet")
