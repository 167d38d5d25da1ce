"""Third-party selectors load through the `tamis.selectors` entry-point group, and only so."""
import sys

import pytest

from tamis.selectors import registry

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
    """A real installed distribution (a .dist-info with entry_points.txt) on sys.path."""
    (tmp_path / "tamis_length_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "tamis_length_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tamis-length-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tamis.selectors]\nlength = tamis_length_plugin:LengthSelector\n")
    monkeypatch.syspath_prepend(str(tmp_path))
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


def test_unknown_names_and_paths_are_refused():
    with pytest.raises(KeyError, match="unknown selector"):
        registry.get("tamis_length_plugin:LengthSelector")
    with pytest.raises(KeyError, match="unknown selector"):
        registry.get("/tmp/evil.py")
