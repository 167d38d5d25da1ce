"""Every registered selector (built-in or plugin) passes tamis.testing.check_selector, the
conformance suite plugin authors run too (like scikit-learn's check_estimator)."""
import numpy as np
import pytest

from tamis.selectors import Selector, registry
from tamis.testing import check_selector

NAMES = registry.available()


@pytest.mark.parametrize("name", NAMES)
def test_registered_selector_conforms(name, one_thread):
    check_selector(registry.get(name))


# -- the suite fails selectors that break the contract (it is not a suite that cannot fail) ------------
class _Length(Selector):
    """Score = characters of content; ``mode`` breaks one rule of the contract on purpose."""

    name = "length"

    def __init__(self, mode: str = "ok"):
        self.mode = mode

    def score(self, records):
        n = np.array([len(r["text"] or str(r["messages"])) for r in records], dtype=np.float32)
        if self.mode == "per_batch":  # z-scored within the batch: depends on its neighbours
            n = ((n - n.mean()) / (n.std() + 1)).astype(np.float32)
        if self.mode == "float64":
            n = n.astype(np.float64)
        out = {"score_length": n}
        if self.mode == "undeclared":
            out["extra_column"] = n
        return out


@pytest.mark.parametrize("mode, check", [("per_batch", "check_batch_independent"),
                                         ("float64", "check_declared_columns"),
                                         ("undeclared", "check_declared_columns")])
def test_check_selector_catches_a_broken_selector(mode, check):
    check_selector(_Length, {"mode": "ok"})
    with pytest.raises(AssertionError, match=check):
        check_selector(_Length, {"mode": mode})


def test_check_selector_catches_parameters_that_are_not_stored_as_given():
    class Renamed(_Length):
        def __init__(self, scale: float = 1.0):
            self.factor = scale  # get_params cannot find it

    with pytest.raises(AssertionError, match="check_parameters.*own name"):
        check_selector(Renamed)


class _Stored(Selector):
    """Score = characters of content, through stored features; ``mode`` breaks the feature contract."""

    name = "stored_length"

    def __init__(self, mode: str = "ok"):
        self.mode = mode

    def feature_spec(self):
        spec = {"kind": "length", "version": 1}
        if self.mode == "path":  # a local path: another machine's spec would differ
            spec["model"] = __file__
        return spec

    def featurize(self, records):
        n = np.array([len(r["text"] or str(r["messages"])) for r in records], dtype=np.float64)
        return {"length": n[:-1] if self.mode == "rows" and len(n) > 1 else n}

    def score_features(self, features, records):
        return {"score_stored_length": np.asarray(features["length"], dtype=np.float32)}


@pytest.mark.parametrize("mode, error, message", [("path", AssertionError, "check_feature_store.*local paths"),
                                                  ("rows", ValueError, "featurize returned .* rows for 25")])
def test_check_selector_catches_a_broken_feature_contract(mode, error, message):
    check_selector(_Stored, {"mode": "ok"})
    with pytest.raises(error, match=message):
        check_selector(_Stored, {"mode": mode})
