"""The selector protocol: what every selector implements, and nothing about Beam.

A selector is built from explicit keyword parameters (scikit-learn style: stored unchanged,
introspected by :meth:`Selector.get_params`), then goes through a fixed lifecycle that the
pipeline drives (as NeMo Curator's stages do):

1. ``prepare(pool, targets, context)``: once per run, before any scoring, on the launching
   machine: train or fit what every worker shares (proxy models, centroids) from a sample of
   the pool, and return a small JSON-able record of what workers need (paths, hashes);
2. ``setup(context, prepared, targets)``: once per worker, load the models (heavy imports go
   here, never at import) from that record and the target examples;
3. ``score(records)``: score a batch of records, returning one array per declared column.

Most selectors split step 3 in two, and should: the *pool features*, what they compute from a
record without looking at any target (an embedding, a gradient, a prior's loss, a score that
needs no target), and the columns made from those features and the targets. A selector says so
by implementing three methods, and the default ``score`` then is ``score_features(features)``:

- ``feature_spec()``: everything that shapes the features (a kind, the model's content hash,
  pooling, text rendering, max_length, compute dtype, a proxy's cache key); never a local path;
- ``featurize(records)``: the features, one array per name, one row per record;
- ``score_features(features, records)``: the columns, from the features (as the store keeps
  them: see :func:`tamis.models.features.stored_form`) and the targets.

The pipeline keeps features in a :class:`~tamis.models.features.FeatureStore` keyed by the spec
and the rows' content, so a new task, a resumed run or a rerun into a new folder computes only
the target side; selectors of one run with equal specs share one ``featurize`` call. Load pool-
side models lazily, in ``featurize``, so a batch found in the store loads none.

The pipeline owns reading, batching across workers, selection and writing; a selector only
turns records into columns. To add one, subclass :class:`Selector`, give it a ``name``, and
register it (``tamis.selectors.registry`` or the ``tamis.selectors`` entry-point group).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, TamisError
from ..models.train import select_slice
from ..schemas.output import score_column
from .rules import Rule, TopK


class PoolSample:
    """What ``prepare`` may read of the pool: deterministic slices, drawn by a hash of each id.

    The slice does not depend on file order or sharding, so every rerun trains on the same rows.
    """

    def __init__(self, read: "Callable[[], Iterable[dict]]"):
        self._read = read

    def sample(self, fraction: float = 1.0, max_examples: int | None = None, seed: int = 42) -> list[dict]:
        """Valid pool records whose id hashes under ``fraction`` (at most ``max_examples``)."""
        return select_slice(self._read(), fraction, max_examples, seed)

    def __iter__(self):
        return iter(self._read())


@dataclass(frozen=True)
class RunContext:
    """Run-wide settings every selector receives at setup, not per-selector parameters."""

    device: str = "cpu"
    dtype: str = "float32"
    max_length: int = 512  # tokens per example; longer examples keep their first tokens
    batch_tokens: int = 16_384  # padded tokens per model batch
    seed: int = 0
    work_dir: str | None = None  # a local folder for caches (trained proxies, features)
    score_attempts: int = 3  # tries per scoring call before a row is rejected (local runners never retry)
    retry_backoff_s: float = 0.5  # first wait between tries; doubles each time
    # Where stores every worker shares go by default (the feature store): None keeps them in
    # this machine's cache (local runners); OUT/_work/... when the workers share no disk with it.
    shared_store: str | None = None
    # The pool-feature store (--feature-store): a folder or URL; None: shared_store, else
    # $TAMIS_CACHE/features; "none": compute every time, keep nothing.
    feature_store: str | None = None
    feature_dtype: str = "float32"  # stored vectors: "float32" or "float16" (--feature-dtype; half the bytes)


def open_feature_store(context: RunContext, override: str | None = None):
    """The run's feature store: ``override`` (a selector's own ``feature_store``), else the run's
    ``feature_store``, else the shared store of a run whose workers are elsewhere, else
    ``$TAMIS_CACHE/features``. None when the store is turned off (``"none"``)."""
    from ..models.features import DISABLED, FeatureStore

    root = override or context.feature_store or context.shared_store
    if root == DISABLED:
        return None
    return FeatureStore(root, dtype=context.feature_dtype)


def stored_features(store, spec: dict, records: list[dict], featurize, dtype: str = "float32",
                    write: bool = True) -> tuple[dict[str, np.ndarray], bool]:
    """(features of ``records``, whether the store had them): from ``store`` (a FeatureStore, or
    None for none), else ``featurize(records)`` in the stored form, then stored (unless not
    ``write``). ``prepare`` steps use it too (kmeans embeds its fitting sample through it)."""
    from ..models.features import stored_form

    if store is not None:
        key = store.key(spec, records)
        found = store.load(spec["kind"], key, len(records))
        if found is not None:
            return found, True
    features = stored_form(featurize(records), store.dtype if store is not None else dtype)
    bad = {name: len(a) for name, a in features.items() if len(a) != len(records)}
    if bad:
        raise ValueError(f"featurize returned {bad} rows for {len(records)} records")
    if store is not None and records and write:
        store.save(spec["kind"], key, features, spec, len(records))
    return features, False


def score_batch(selectors: "Iterable[Selector]", records: list[dict], write: bool = True) -> dict[str, np.ndarray]:
    """Every selector's columns for one batch. Selectors whose feature specs are equal (say
    ``rds`` and ``kmeans`` with one embedder and ``kmeans.text=all``) share one ``featurize``
    call or store read; the others count those rows as reused. ``write=False`` stores nothing
    new (a failed chunk scored row by row would leave an entry per row)."""
    from ..models.features import spec_digest

    columns: dict[str, np.ndarray] = {}
    shared: dict[tuple, dict[str, np.ndarray]] = {}
    for selector in selectors:
        spec = selector.feature_spec()
        if spec is None:
            columns.update(selector.score(records))
            continue
        store = getattr(selector, "feature_store_", None)
        dtype = store.dtype if store is not None else getattr(getattr(selector, "context_", None), "feature_dtype",
                                                              "float32")
        key = (spec_digest(spec), dtype)
        if key in shared:
            features = shared[key]
            selector.count_features("features_reused", len(records))
        else:
            features = shared[key] = selector.pool_features(records, write)
        columns.update(selector.score_features(features, records))
    return columns


@functools.lru_cache(maxsize=None)
def _adapter(annotation: Any):
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(annotation, config=ConfigDict(strict=True, allow_inf_nan=False))


def _check_value(annotation: Any, value: Any, label: str) -> Any:
    from pydantic import ValidationError

    if annotation is Any:
        return value
    try:
        adapter = _adapter(annotation)
    except Exception:  # a type pydantic cannot check (a plugin's own class): left to the constructor
        return value
    tries = [value, tuple(value)] if isinstance(value, list) else [value]
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        tries.append(float(value))  # YAML 1.1 reads 1e-4 (no dot) as a string; it is still a number
    for candidate in tries:
        try:
            return adapter.validate_python(candidate)
        except ValidationError:
            continue
    hint = " (a quoted string is not a boolean)" if isinstance(value, str) and "true or false" in describe_type(annotation) else ""
    raise ConfigError(f"--param {label}: expected {describe_type(annotation)}, got {value!r}{hint}")


# A number written in exponent form without a dot (2e-5), which YAML 1.1 leaves a string.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")
_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", type(None): "null"}
_PLURALS = {"a whole number": "whole numbers", "a number": "numbers", "a string": "strings", "true or false": "booleans"}


def describe_type(annotation: Any) -> str:
    """An annotation in words, for error lines: ``float | None`` -> 'a number or null'."""
    if annotation in _NAMES:
        return _NAMES[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        words = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(words + (["null"] if type(None) in args else []))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return f"a list of {_PLURALS.get(describe_type(inner[0]), 'values')}" if len(set(inner)) == 1 else "a list"
    if origin is dict or annotation is dict or (isinstance(origin, type) and issubclass(origin, Mapping)):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` returns: the same record for every worker, and the manifest's JSON.

    Subclass it with typed fields of plain JSON values (str, numbers, lists, dicts of them).
    """

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> "Prepared | None":
        return None if data is None else cls(**data)


class Selector:
    """Base class. Subclasses set ``name`` and implement ``score`` (and usually ``prepare``/``setup``)."""

    name: ClassVar[str] = ""
    #: True when the selector needs ``--target`` (RDS+, LESS, CoLoR-Filter).
    needs_target: ClassVar[bool] = False
    #: Default budget when the run gives none (a fraction below 1, or a count).
    default_budget: ClassVar[float] = 0.05
    #: The type of the record ``prepare`` returns.
    prepared_type: ClassVar[type[Prepared]] = Prepared
    #: True when a task's target side still reads every pool row (CoLoR-Filter: a conditional model
    #: fine-tuned on the task's targets scores the pool), so a task added later is not cheap.
    target_side_reads_pool: ClassVar[bool] = False

    def __init__(self) -> None:  # subclasses list their parameters explicitly
        pass

    # -- parameters (scikit-learn conventions) ---------------------------------------------
    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """Constructor parameters and their defaults, in signature order."""
        sig = inspect.signature(cls.__init__)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    @classmethod
    def param_types(cls) -> dict[str, Any]:
        """Each constructor parameter's annotation (``Any`` where it has none)."""
        try:
            hints = typing.get_type_hints(cls.__init__)
        except Exception:  # an annotation that does not resolve checks nothing, as if absent
            hints = {}
        return {name: hints.get(name, Any) for name in cls.param_defaults()}

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.param_defaults()}

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Every value checked against its constructor annotation, before anything loads.

        Checks are strict: a string is never a boolean (``"false"`` would be truthy), a boolean
        is never a number, a number is never a string. A list stands for a tuple (YAML has no
        tuples). Returns the values as the constructor takes them; fails with one line such as
        ``--param less.lr: expected a number, got 'abc'``.
        """
        types_ = cls.param_types()
        checked: dict[str, Any] = {}
        for key, value in params.items():
            if key not in types_:
                raise ConfigError(f"--param {cls.name}.{key}: selector {cls.name!r} has no parameter {key!r} "
                                  f"(it takes: {', '.join(types_) or 'none'})")
            checked[key] = _check_value(types_[key], value, f"{cls.name}.{key}")
        return checked

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "Selector":
        """Build from a config mapping: unknown keys, wrong types and values the constructor
        refuses fail with one line naming the parameter."""
        checked = cls.check_params(params)
        try:
            return cls(**checked)
        except TamisError:
            raise
        except ValueError as e:  # the constructor's own range checks ("runs must be at least 1")
            from pydantic import ValidationError

            from ..schemas.config import config_error_line

            line = config_error_line(e) if isinstance(e, ValidationError) else str(e)
            raise ConfigError(f"--param for selector {cls.name!r}: {line}") from e

    @classmethod
    def test_params(cls) -> dict[str, Any]:
        """Parameters small enough for the conformance suite to run in seconds on a CPU
        (tiny proxies, few steps). Real runs never use them."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- lifecycle ---------------------------------------------------------------------------
    def prepare(self, pool: PoolSample, targets: dict[str, list[dict]] | None, context: RunContext) -> Prepared:
        """Once per run, before scoring: train or fit shared state; return what workers need.

        Runs where the pipeline is launched. Anything expensive should go through a cache
        keyed by its inputs (the proxy layer's cache does), so a rerun is cheap.
        """
        return self.prepared_type()

    def setup(self, context: RunContext, prepared: Prepared | None = None, targets: dict[str, list[dict]] | None = None) -> None:
        """Once per worker: load the models, from what ``prepare`` returned and the target examples
        (task -> records with an optional ``subtask``). Learned state gets a trailing underscore."""
        if self.needs_target and not targets:
            raise ConfigError(f"selector {self.name!r} needs --target")
        self.context_ = context
        self.prepared_ = prepared
        self.tasks_ = self.task_names(targets)
        self.feature_store_ = open_feature_store(context, getattr(self, "feature_store", None))
        self.feature_counts_ = {"features_reused": 0, "features_computed": 0}

    def score(self, records: list[dict]) -> dict[str, np.ndarray]:
        """Score a batch: one array of length ``len(records)`` per declared column.

        By default, the batch's pool features (stored, or computed and stored) through
        :meth:`score_features`; a selector without a :meth:`feature_spec` overrides this."""
        if self.feature_spec() is None:
            raise NotImplementedError(f"{type(self).__name__} implements neither score() nor feature_spec()")
        return self.score_features(self.pool_features(records), records)

    # -- pool features: the target-independent part, stored once ---------------------------------
    def feature_spec(self) -> dict | None:
        """What shapes this selector's pool features, as plain JSON (after setup): a ``kind``
        (the store's folder, e.g. ``"embedding"``) and every setting that changes a value (the
        model's content hash, never its local path; pooling; text rendering; max_length; compute
        dtype; proxies' cache keys). Selectors whose specs are equal share one ``featurize``
        call and one stored entry. None (the default): nothing is stored."""
        return None

    def featurize(self, records: list[dict]) -> dict[str, np.ndarray]:
        """The pool features of a batch: name -> array with one row per record (no target used)."""
        raise NotImplementedError

    def score_features(self, features: dict[str, np.ndarray], records: list[dict]) -> dict[str, np.ndarray]:
        """The declared columns from a batch's features (as stored: float vectors in the run's
        ``feature_dtype``, per-row floats float32) and the targets."""
        raise NotImplementedError

    def pool_features(self, records: list[dict], write: bool = True) -> dict[str, np.ndarray]:
        """The batch's features from the store, else featurized, cast to the stored form and stored."""
        dtype = getattr(getattr(self, "context_", None), "feature_dtype", "float32")
        features, found = stored_features(getattr(self, "feature_store_", None), self.feature_spec(), records,
                                          self.featurize, dtype, write)
        self.count_features("features_reused" if found else "features_computed", len(records))
        return features

    def count_features(self, counter: str, rows: int) -> None:
        counts = self.__dict__.setdefault("feature_counts_", {"features_reused": 0, "features_computed": 0})
        counts[counter] += rows

    # -- declared output (known before setup, so the driver can plan the schema) ---------------
    def task_names(self, targets: dict | None) -> list[str]:
        """The tasks this selector scores: every target task, or none for untargeted selectors."""
        return sorted(targets) if (targets and self.needs_target) else []

    def score_columns(self, tasks: list[str]) -> dict[str | None, str]:
        """Task -> the score column that ranks rows for it (``None`` for an untargeted selector)."""
        if self.needs_target:
            return {task: score_column(self.name, task) for task in tasks}
        return {None: score_column(self.name)}

    def columns(self, tasks: list[str]) -> list[pa.Field]:
        """Every column this selector writes: its float32 score columns by default."""
        return [pa.field(c, pa.float32()) for c in self.score_columns(tasks).values()]

    def selection_rule(self) -> Rule:
        """How pass 2 picks rows when this selector drives it (see :mod:`tamis.selectors.rules`):
        by default the best scores, tasks taking turns. Declared from parameters alone."""
        return TopK()

    def counters(self) -> dict[str, int]:
        """Running totals this worker has counted; the pipeline adds them up across workers into
        the manifest's metrics as ``<name>_<counter>``. By default: pool-feature rows reused
        (from the store, or from another selector of the run with an equal spec) and computed."""
        return {k: v for k, v in getattr(self, "feature_counts_", {}).items() if v}

    def model_info(self) -> dict[str, dict]:
        """Models this selector used, for the manifest: name -> {"path", "sha256", ...}."""
        return {}
