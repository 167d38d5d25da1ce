"""Third-party selectors load through the `tamis.selectors` entry-point group, and only so."""
import sys

import pytest

from tamis.selectors import registry

from .conftest import install_plugin

PLUGIN = '''
import numpy as np
from tamis.selectors import Selector

class LengthSelector(Selector):
    """Score = number of characters (a plugin for the tests)."""
    name = "length"

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def score(self, records):
        return {"score_length": np.array([self.scale * len(r["text"] or "") for r in records], dtype=np.float32)}
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "tamis_length_plugin", PLUGIN, {"length": "LengthSelector"})
    yield
    sys.modules.pop("tamis_length_plugin", None)


def test_entry_point_plugin_is_listed_and_runs(installed_plugin, tmp_path):
    import tamis

    from .conftest import write_jsonl

    assert "length" in registry.available()
    sel = registry.create("length", {"scale": 2.0})
    assert sel.score([{"id": "a", "messages": None, "text": "abc", "extra": None}])["score_length"][0] == 6.0
    pool = write_jsonl(tmp_path / "p.jsonl", [{"id": str(i), "text": "x" * (i + 1)} for i in range(10)])
    summary = tamis.select(pool=[str(pool)], selector=["length"], budget=3, out=str(tmp_path / "o"))
    picked = tamis.load_selected(str(tmp_path / "o"))
    assert summary.counts["selected"] == 3 and picked["id"] == ["9", "8", "7"]


def test_a_plugin_written_outside_tamis_passes_check_selector(tmp_path, monkeypatch, one_thread):
    """A new selector in under 60 lines, on tamis.models alone, installed as a third party would
    install it (a distribution with a tamis.selectors entry point), passes the conformance suite."""
    from pathlib import Path

    from tamis.testing import check_selector

    source = (Path(__file__).parent / "plugins" / "tamis_typical.py").read_text()
    assert len(source.splitlines()) < 60
    install_plugin(tmp_path, monkeypatch, "tamis_typical", source, {"typical": "TypicalSelector"})
    try:
        check_selector(registry.get("typical"))
    finally:
        sys.modules.pop("tamis_typical", None)


def test_unknown_names_and_paths_are_refused():
    with pytest.raises(KeyError, match="unknown selector"):
        registry.get("tamis_length_plugin:LengthSelector")
    with pytest.raises(KeyError, match="unknown selector"):
        registry.get("/tmp/evil.py")
