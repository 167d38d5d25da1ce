"""The conformance suite every registered selector must pass (built-in or plugin).

Like scikit-learn's check_estimator: explicit parameters, declared columns that match what
``score`` returns, float32 scores, determinism, and independence from how rows are batched.
"""
import numpy as np
import pyarrow as pa
import pytest

from tamis.selectors import PoolSample, RunContext, Selector, registry

from .conftest import demo_records

NAMES = registry.available()
RECORDS = None


def records(n=24):
    global RECORDS
    if RECORDS is None:
        RECORDS = [
            {"id": r["id"], "messages": r["messages"], "text": None, "extra": None} for r in demo_records(n)
        ] + [{"id": "t", "messages": None, "text": "A plain text record about bread and butter.", "extra": None}]
    return RECORDS


def targets(n=6):
    rs = records()
    return {"food": [dict(r, subtask=None) for r in rs[:n]], "animal": [dict(r, subtask=None) for r in rs[n:2 * n]]}


@pytest.fixture(scope="module", params=NAMES)
def fitted(request):
    cls = registry.get(request.param)
    selector = cls.from_params(cls.test_params())
    context = RunContext(max_length=64, batch_tokens=2048)
    tgt = targets() if cls.needs_target else None
    prepared = selector.prepare(PoolSample(lambda: demo_records(200)), tgt, context)
    selector.setup(context)
    selector.fit(tgt, prepared)
    return selector


@pytest.mark.parametrize("name", NAMES)
def test_parameters_are_explicit_and_round_trip(name):
    cls = registry.get(name)
    assert issubclass(cls, Selector) and cls.name == name
    defaults = cls.param_defaults()
    assert all(v is not inspect_empty() for v in defaults.values()), "every parameter needs a default"
    sel = cls()
    assert sel.get_params() == defaults
    clone = cls.from_params(sel.get_params())
    assert clone.get_params() == sel.get_params()
    assert set(cls.test_params()) <= set(defaults)
    with pytest.raises(ValueError, match="has no parameter"):
        cls.from_params({"no_such_parameter": 1})


def inspect_empty():
    import inspect

    return inspect.Parameter.empty


@pytest.mark.parametrize("name", NAMES)
def test_targeted_selectors_refuse_to_run_without_targets(name):
    cls = registry.get(name)
    if not cls.needs_target:
        pytest.skip("untargeted")
    sel = cls()
    sel.setup(RunContext(max_length=64))
    with pytest.raises(ValueError, match="needs --target"):
        sel.fit(None)


def test_declared_columns_match_scores(fitted):
    tasks = fitted.task_names(targets() if fitted.needs_target else None)
    declared = fitted.columns(tasks)
    assert all(isinstance(f, pa.Field) for f in declared)
    out = fitted.score(records())
    assert set(out) == {f.name for f in declared}
    for f in declared:
        col = np.asarray(out[f.name])
        assert len(col) == len(records())
        # Values must convert to the declared type exactly (None is a null: e.g. a column set only
        # at selection time); float columns must already be float32.
        assert pa.array(out[f.name], type=f.type).type == f.type
        if pa.types.is_floating(f.type):
            assert col.dtype == np.float32
    for col in fitted.score_columns(tasks).values():
        assert col.startswith(f"score_{fitted.name}")
        assert np.isfinite(np.asarray(out[col], dtype=np.float64)).all()


def test_scores_are_deterministic_and_do_not_depend_on_batching(fitted):
    rs = records()
    whole = fitted.score(rs)
    again = fitted.score(rs)
    halves = [fitted.score(rs[:10]), fitted.score(rs[10:])]
    for col, values in whole.items():
        np.testing.assert_array_equal(values, again[col])
        joined = np.concatenate([h[col] for h in halves])
        if np.asarray(values).dtype.kind == "f":
            np.testing.assert_allclose(values, joined, atol=1e-5)
        else:
            np.testing.assert_array_equal(values, joined)
