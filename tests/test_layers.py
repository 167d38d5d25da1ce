"""The layering, enforced: imports go one way, selectors are leaves, Beam stays in its two places.

    cli > api > pipeline > selectors > models > storage layer (tamis.io), schemas

A module may import its own layer or any layer below; ``tamis.errors`` is a leaf anyone may
import. A selector module imports no other selector (only the shared base). ``apache_beam`` is
imported only in ``tamis/pipeline/`` and ``tamis/io/``. Every import counts, module-level or
inside a function (a lazy import still couples the modules). ``benchmarks/import_graph.py``
prints the graph these tests read.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tamis"

# Longest matching prefix wins. Higher numbers may import lower (or equal) ones.
LAYERS = {
    "tamis.cli": 6, "tamis.__main__": 6,
    "tamis": 5, "tamis.api": 5, "tamis.evaluate": 5, "tamis.report": 5, "tamis.demo": 5, "tamis.curriculum": 5,
    "tamis.testing": 5,
    "tamis.pipeline": 4,
    "tamis.selectors": 3,
    "tamis.models": 2, "tamis.irt": 2,
    "tamis.io": 1, "tamis.schemas": 1,
    "tamis.errors": 0,
}
LAYER_NAMES = {6: "cli", 5: "api", 4: "pipeline", 3: "selectors", 2: "models", 1: "io/schemas", 0: "errors"}
# What every selector module may import from its own package: the protocol and the selection
# rules (plain data), not another selector.
SELECTOR_SHARED = {"tamis.selectors.base", "tamis.selectors.rules"}
# The package's own plumbing: it names selectors (by string) and re-exports the base.
SELECTOR_PLUMBING = {"tamis.selectors", "tamis.selectors.registry", "tamis.selectors.base", "tamis.selectors.rules"}
BEAM_ALLOWED = ("tamis.pipeline", "tamis.io")
# Violations still in the code, each with the work that removes it. Keyed by (importer, imported
# module or top-level package), not by line. The tests fail on any violation not listed here,
# and on a listed one that is gone (take it off the list).
KNOWN = {
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (a tamis module, or the top-level name of another package)
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str:
    """The deepest known tamis module that ``name`` (a dotted path, maybe naming an attribute) is in."""
    parts = name.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts) or name


def imports() -> list[Import]:
    """Every import in the package, with the module it lands in."""
    known = modules()
    found: list[Import] = []
    for source, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]

        def visit(node, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        target = _resolve(alias.name, known) if alias.name.startswith("tamis") else alias.name
                        found.append(Import(source, target, child.lineno, in_function))
                elif isinstance(child, ast.ImportFrom):
                    if child.level:
                        base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                        stem = ".".join(base + ([child.module] if child.module else []))
                    else:
                        stem = child.module or ""
                    if not stem.startswith("tamis"):
                        found.append(Import(source, stem, child.lineno, in_function))
                        continue
                    for alias in child.names:  # "from . import api" names a module, not an attribute
                        found.append(Import(source, _resolve(f"{stem}.{alias.name}", known), child.lineno,
                                            in_function))
                visit(child, inner)

        visit(tree, False)
    return list(dict.fromkeys(found))  # "from x import a, b" is one arrow, not two


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise KeyError(f"{module} has no layer: add it to LAYERS in tests/test_layers.py")


def internal(found: list[Import]) -> list[Import]:
    return [i for i in found if i.target.startswith("tamis") and i.target != i.source]


def upward(found: list[Import]) -> list[Import]:
    return [i for i in internal(found) if layer(i.target) > layer(i.source)]


def selector_to_selector(found: list[Import]) -> list[Import]:
    return [i for i in internal(found)
            if i.source.startswith("tamis.selectors.") and i.target.startswith("tamis.selectors")
            and i.source not in SELECTOR_PLUMBING and i.target not in SELECTOR_SHARED]


def beam_outside(found: list[Import]) -> list[Import]:
    return [i for i in found if i.target.split(".")[0] == "apache_beam"
            and not any(i.source == p or i.source.startswith(p + ".") for p in BEAM_ALLOWED)]


def _key(i: Import) -> tuple[str, str]:
    return (i.source, i.target if i.target.startswith("tamis") else i.target.split(".")[0])


def unknown(found: list[Import]) -> list[Import]:
    return [i for i in found if _key(i) not in KNOWN]


def _lines(found: list[Import]) -> str:
    return "\n".join(f"  {i.source}:{i.line} imports {i.target}{' (in a function)' if i.in_function else ''}"
                     for i in found)


# -- the tests ------------------------------------------------------------------------------------
def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_no_layer_imports_upward():
    bad = unknown(upward(imports()))
    assert not bad, "imports that go up a layer:\n" + _lines(bad)


def test_selectors_do_not_import_each_other():
    bad = unknown(selector_to_selector(imports()))
    assert not bad, "a selector imports another selector (move shared code to tamis.models):\n" + _lines(bad)


def test_beam_only_in_pipeline_and_storage_layer():
    bad = unknown(beam_outside(imports()))
    assert not bad, "apache_beam imported outside tamis/pipeline and tamis/io:\n" + _lines(bad)


def test_known_violations_are_still_there():
    """A fixed violation leaves KNOWN, so the list only ever shrinks."""
    found = imports()
    seen = {_key(i) for i in upward(found) + selector_to_selector(found) + beam_outside(found)}
    assert not set(KNOWN) - seen, f"fixed, take off KNOWN: {sorted(set(KNOWN) - seen)}"


def test_the_checks_see_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The rules must catch what they exist to catch: an upward import hidden in a function, a
    selector importing a sibling, Beam in the model layer."""
    package = tmp_path / "tamis"
    (package / "selectors").mkdir(parents=True)
    (package / "models").mkdir()
    for init in ("__init__.py", "selectors/__init__.py", "models/__init__.py", "api.py", "selectors/base.py"):
        (package / init).write_text("")
    (package / "selectors" / "a.py").write_text("from .base import x\n")
    (package / "selectors" / "b.py").write_text("def f():\n    from .a import g\n    from ..api import h\n")
    (package / "models" / "m.py").write_text("import apache_beam as beam\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", package)
    found = imports()
    assert [(i.source, i.target, i.in_function) for i in upward(found)] == [("tamis.selectors.b", "tamis.api", True)]
    assert [(i.source, i.target) for i in selector_to_selector(found)] == [("tamis.selectors.b", "tamis.selectors.a")]
    assert [i.source for i in beam_outside(found)] == ["tamis.models.m"]
