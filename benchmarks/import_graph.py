"""Print tamis's import graph: arrows between modules, the arrows that go up a layer, imports
of one selector by another, and Beam imports outside the pipeline and the storage layer.

The rules and the parsing are those of ``tests/test_layers.py`` (ast over tamis/**/*.py, imports
inside functions included).

    python benchmarks/import_graph.py            # everything
    python benchmarks/import_graph.py --summary  # counts and the violations only
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_layers import LAYER_NAMES, beam_outside, imports, internal, layer, selector_to_selector, upward  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--summary", action="store_true", help="counts and violations only, not every arrow")
    args = parser.parse_args()
    found = imports()
    edges: dict[tuple[str, str], list] = defaultdict(list)
    for i in internal(found):
        edges[(i.source, i.target)].append(i)
    if not args.summary:
        print("# arrows between tamis modules (module -> module  [layers]  lines; f = inside a function)")
        for (source, target), where in sorted(edges.items()):
            lines = ",".join(f"{i.line}{'f' if i.in_function else ''}" for i in where)
            print(f"{source} -> {target}  [{LAYER_NAMES[layer(source)]} -> {LAYER_NAMES[layer(target)]}]  {lines}")
    sections = [("upward arrows", upward(found)), ("selector -> selector", selector_to_selector(found)),
                ("apache_beam outside tamis/pipeline and tamis/io", beam_outside(found))]
    for title, bad in sections:
        print(f"\n# {title}: {len(bad)}")
        for i in bad:
            print(f"{i.source}:{i.line} -> {i.target}{' (in a function)' if i.in_function else ''}")
    own = internal(found)
    print(f"\n# {len(edges)} module arrows from {len(own)} imports of tamis modules, "
          f"{sum(i.in_function for i in own)} of them inside functions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
