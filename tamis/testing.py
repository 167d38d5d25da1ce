"""The checks every selector must pass, built-in or plugin, as scikit-learn's ``check_estimator``.

    from tamis.testing import check_selector

    def test_my_selector():
        check_selector(MySelector)  # raises AssertionError naming the check that failed

It builds the selector from ``test_params()`` (keep them small: tiny proxies, a few steps), runs
the lifecycle the pipeline runs (``prepare`` on a pool sample, the prepared record through JSON
as workers get it, ``setup``, ``score``) on rows of the demo pool that ships with
tamis, and checks:

* parameters: explicit keyword parameters with defaults, stored unchanged, ``get_params`` and
  ``from_params`` round-trip, an unknown name is refused;
* a selector that needs targets refuses to set up without them;
* ``prepare`` returns its ``prepared_type``, which goes through JSON and back unchanged;
* the columns declared before setup are exactly the columns ``score`` returns, one value per
  record, of the declared types (float columns already float32), score columns named
  ``score_<name>...`` and finite on these well-formed rows;
* determinism: scoring the same rows twice gives the same bits, and a second worker (a new
  instance, set up on the same prepared record) agrees to the bit;
* batch independence: scoring in two batches gives what one batch gives (1e-5 for floats);
* ``setup`` leaves the parameters as they were;
* stored pool features (a selector with a ``feature_spec``): the spec is JSON with a ``kind`` and
  names no local path; ``featurize`` gives one row per record; a second worker that finds the
  batch in the store scores it to the bit as one that computed it;
* ``selection_rule()`` returns a rule, and a table rule sets only declared columns.
"""
from __future__ import annotations

import gzip
import inspect
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from .demo import demo_dir
from .selectors import PoolSample, Prepared, RunContext, Selector
from .selectors.rules import Rule, TableRule

# No feature store but the one check_feature_store makes in a temporary folder: the checks
# leave nothing in the user's cache.
CONTEXT = RunContext(max_length=64, batch_tokens=2048, feature_store="none")


def demo_records(n: int) -> list[dict]:
    """The first ``n`` distinct, well-formed records of the demo pool, as the pipeline hands
    them to ``score`` (``id``, ``messages``, ``text``, ``extra``)."""
    out, seen = [], set()
    with gzip.open(Path(demo_dir()) / "pool.jsonl.gz", "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj.get("id"), str) and isinstance(obj.get("messages"), list) and obj["id"] not in seen:
                seen.add(obj["id"])
                out.append({"id": obj["id"], "messages": obj["messages"], "text": None, "extra": None})
            if len(out) == n:
                break
    return out


def default_data() -> tuple[list[dict], list[dict], dict[str, list[dict]]]:
    """(pool for ``prepare``, rows to score, targets): 200 demo rows; 24 of them plus a text
    record; two tasks of 6 rows each."""
    pool = demo_records(200)
    rows = pool[:24] + [{"id": "t", "messages": None, "text": "A plain text record about bread and butter.",
                         "extra": None}]
    targets = {"food": [dict(r, subtask=None) for r in rows[:6]], "animal": [dict(r, subtask=None) for r in rows[6:12]]}
    return pool, rows, targets


class _Case:
    """One selector class under test, prepared and fitted once for the checks that score."""

    def __init__(self, cls: type[Selector], params: dict, pool, rows, targets, context: RunContext):
        self.cls, self.params, self.rows, self.context = cls, params, rows, context
        self.targets = targets if cls.needs_target else None
        self.pool = pool
        self._fitted: Selector | None = None

    def new(self) -> Selector:
        return self.cls.from_params(dict(self.params))

    def prepare(self) -> Prepared:
        if not hasattr(self, "_prepared"):
            prepared = self.new().prepare(PoolSample(lambda: list(self.pool)), self.targets, self.context)
            kind = self.cls.prepared_type
            assert isinstance(prepared, kind), f"prepare must return a {kind.__name__} (prepared_type), got {prepared!r}"
            try:
                data = json.loads(json.dumps(prepared.to_json()))
            except (TypeError, ValueError) as e:
                raise AssertionError(f"the prepared record must be JSON-able: {e}") from None
            # What a reselect rebuilds from the manifest, and what a worker receives.
            self._prepared = kind.from_json(data)
            assert self._prepared == prepared, "prepared_type.from_json(record.to_json()) must give the record back"
        return self._prepared

    def fit(self) -> Selector:
        selector = self.new()
        selector.setup(self.context, self.prepare(), self.targets)
        return selector

    @property
    def fitted(self) -> Selector:
        if self._fitted is None:
            self._fitted = self.fit()
        return self._fitted

    @property
    def tasks(self) -> list[str]:
        return self.fitted.task_names(self.targets)


# -- the checks ---------------------------------------------------------------------------------
def check_parameters(case: _Case) -> None:
    cls = case.cls
    assert isinstance(cls, type) and issubclass(cls, Selector), f"{cls!r} is not a tamis Selector subclass"
    assert isinstance(cls.name, str) and cls.name, "set a class attribute name"
    signature = inspect.signature(cls.__init__)
    for p in list(signature.parameters.values())[1:]:
        assert p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY), f"parameter {p.name!r}: no *args/**kwargs"
        assert p.default is not p.empty, f"parameter {p.name!r} needs a default"
    defaults = cls.param_defaults()
    selector = cls()
    missing = [k for k in defaults if not hasattr(selector, k)]
    assert not missing, f"__init__ must store each parameter under its own name (missing: {missing})"
    assert selector.get_params() == defaults, "__init__ must store every parameter unchanged, under its own name"
    assert cls.from_params(selector.get_params()).get_params() == defaults, "from_params(get_params()) must round-trip"
    unknown = set(cls.test_params()) - set(defaults)
    assert not unknown, f"test_params names parameters that do not exist: {sorted(unknown)}"
    built = cls.from_params(dict(case.params))
    changed = {k for k, v in case.params.items() if built.get_params()[k] != v}
    assert not changed, f"__init__ changed the values of {sorted(changed)}"
    try:
        cls.from_params({"no_such_parameter": 1})
    except ValueError as e:
        assert "has no parameter" in str(e), f"an unknown parameter must be refused by name, got {e}"
    else:
        raise AssertionError("from_params accepted a parameter that does not exist")
    repr(built)


def check_refuses_to_fit_without_targets(case: _Case) -> None:
    if not case.cls.needs_target:
        return
    selector = case.new()
    try:
        selector.setup(case.context, None, None)
    except ValueError as e:
        assert "needs --target" in str(e), f"say that the selector needs --target, got {e}"
    else:
        raise AssertionError("a selector with needs_target fitted without targets")


def check_declared_columns(case: _Case) -> None:
    declared = case.new().columns(case.tasks)  # known before setup: the driver plans the schema with it
    assert all(isinstance(f, pa.Field) for f in declared), "columns() must return pyarrow fields"
    assert [f.name for f in case.fitted.columns(case.tasks)] == [f.name for f in declared], \
        "columns() must not depend on setup"
    out = case.fitted.score(case.rows)
    assert set(out) == {f.name for f in declared}, \
        f"score returned {sorted(out)}, the selector declares {sorted(f.name for f in declared)}"
    for f in declared:
        values = out[f.name]
        assert len(values) == len(case.rows), f"{f.name}: {len(values)} values for {len(case.rows)} records"
        # None is a null (a column set only at selection time); anything else must convert exactly.
        assert pa.array(values, type=f.type).type == f.type, f"{f.name}: does not convert to {f.type}"
        if pa.types.is_floating(f.type):
            assert np.asarray(values).dtype == np.float32, f"{f.name}: float columns must be float32"
    score_columns = case.fitted.score_columns(case.tasks).values()
    for column in score_columns:
        assert column.startswith(f"score_{case.cls.name}"), f"score column {column!r} must start with score_<name>"
        assert np.isfinite(np.asarray(out[column], dtype=np.float64)).all(), f"{column}: non-finite scores"


def check_deterministic(case: _Case) -> None:
    first, again = case.fitted.score(case.rows), case.fitted.score(case.rows)
    other = case.fit().score(case.rows)  # a second worker: its own setup on the same record
    for column, values in first.items():
        np.testing.assert_array_equal(values, again[column], err_msg=f"{column}: same rows scored twice differ")
        np.testing.assert_array_equal(values, other[column], err_msg=f"{column}: two workers disagree")


def check_batch_independent(case: _Case) -> None:
    whole = case.fitted.score(case.rows)
    cut = len(case.rows) * 2 // 5
    halves = [case.fitted.score(case.rows[:cut]), case.fitted.score(case.rows[cut:])]
    for column, values in whole.items():
        joined = np.concatenate([np.asarray(h[column]) for h in halves])
        message = f"{column}: scores depend on how rows are batched"
        if np.asarray(values).dtype.kind == "f":
            np.testing.assert_allclose(values, joined, atol=1e-5, err_msg=message)
        else:
            np.testing.assert_array_equal(values, joined, err_msg=message)


def check_fit_keeps_parameters(case: _Case) -> None:
    assert case.fitted.get_params() == case.new().get_params(), "setup must not change the parameters"


def check_feature_store(case: _Case, store_root: str | None = None) -> None:
    """A selector with a feature spec: the spec is portable, featurize gives a row per record, and
    scores from stored features equal scores from fresh ones, bit for bit."""
    import dataclasses
    import os
    import tempfile

    spec = case.fitted.feature_spec()
    if spec is None:
        return
    try:
        text = json.dumps(spec)
    except (TypeError, ValueError) as e:
        raise AssertionError(f"feature_spec() must be JSON-able: {e}") from None
    assert isinstance(spec.get("kind"), str) and spec["kind"], "feature_spec() needs a 'kind'"
    assert json.loads(text) == spec, "feature_spec() must hold plain JSON values (no tuples)"

    def paths(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from paths(v)
        elif isinstance(value, list):
            for v in value:
                yield from paths(v)
        elif isinstance(value, str) and os.sep in value and os.path.exists(value):
            yield value

    local = list(paths(spec))
    assert not local, f"feature_spec() must not name local paths (two machines must agree): {local}"
    features = case.fitted.featurize(case.rows)
    for name, array in features.items():
        assert len(array) == len(case.rows), f"featurize: {name} has {len(array)} rows for {len(case.rows)} records"
    with tempfile.TemporaryDirectory() as root:
        context = dataclasses.replace(case.context, feature_store=store_root or root)
        first = case.cls.from_params(dict(case.params))
        first.setup(context, case.prepare(), case.targets)
        computed = first.score(case.rows)
        assert first.counters().get("features_computed") == len(case.rows), \
            f"a first score() must compute and store the features: counters {first.counters()}"
        second = case.cls.from_params(dict(case.params))
        second.setup(context, case.prepare(), case.targets)
        found = second.score(case.rows)
        assert second.counters() == {"features_reused": len(case.rows)}, \
            f"a second worker must find the features in the store: counters {second.counters()}"
    for column, values in computed.items():
        np.testing.assert_array_equal(values, found[column],
                                      err_msg=f"{column}: scores from stored features differ from fresh ones")


def check_selection_rule(case: _Case) -> None:
    """The rule is declared from the parameters alone, and a table rule reads and sets declared columns."""
    rule = case.new().selection_rule()
    assert isinstance(rule, Rule), f"selection_rule() must return a tamis.selectors.rules rule, got {rule!r}"
    if isinstance(rule, TableRule):
        declared = {f.name for f in case.new().columns(case.tasks)}
        own = {f.name for f in rule.fields}
        assert own <= declared, f"the rule sets columns {sorted(own - declared)} the selector does not declare"


CHECKS: list[Callable[[_Case], None]] = [
    check_parameters, check_refuses_to_fit_without_targets, check_declared_columns, check_deterministic,
    check_batch_independent, check_fit_keeps_parameters, check_feature_store, check_selection_rule,
]


def check_selector(cls: type[Selector], params: dict | None = None, *, pool: list[dict] | None = None,
                   records: list[dict] | None = None, targets: dict[str, list[dict]] | None = None,
                   context: RunContext = CONTEXT) -> Selector:
    """Run every check on selector class ``cls`` (built from ``params``, default its
    ``test_params()``). Raises AssertionError naming the failed check; returns the fitted selector.
    ``pool``, ``records`` and ``targets`` replace the demo data (say, for a selector that reads
    labels)."""
    default_pool, default_rows, default_targets = default_data()
    case = _Case(cls, cls.test_params() if params is None else params, pool or default_pool,
                 records or default_rows, targets or default_targets, context)
    for check in CHECKS:
        try:
            check(case)
        except AssertionError as e:
            raise AssertionError(f"{cls.__name__} fails {check.__name__}: {e}") from e
    return case.fitted


__all__ = ["CHECKS", "check_selector", "demo_records"]
