"""Scoring through Beam's RunInference, and writing each chunk's shard.

The ModelHandler's "model" is the list of fitted selectors: RunInference loads it once per
worker (setup, with the prepared record and the targets) and reuses it for every chunk. Chunks arrive already
batched (``with_no_batching``): Beam's BatchElements sizes batches by timing, which would make
scores depend on the runner; the selectors batch inside a chunk by a token budget instead.
"""

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from ..io.runfolder import RunFolder, write_parquet
from ..schemas.output import REJECT_SCHEMA
from ..selectors import registry
from ..selectors.base import RunContext, Selector, score_batch
from .artifacts import localize_prepared
from .chunks import NAMESPACE, ValidChunk

# Parquet key-value metadata that makes each shard self-describing for the counts.
META_LINES = b"tamis.lines"
# JSON of the models the worker that scored a shard loaded (path, sha256, host): see worker_models().
META_MODELS = b"tamis.models"


class LoadedSelectors(list):
    """The fitted selectors of one worker (a list subclass, as Beam's model cache needs weakrefs)."""


class SelectorModelHandler(ModelHandler[ValidChunk, PredictionResult, LoadedSelectors]):
    """Loads the run's selectors once per worker and scores whole chunks with them."""

    def __init__(self, selectors: Sequence[tuple[str, dict, dict]], targets: dict[str, list[dict]] | None,
                 context: RunContext):
        self._selectors = list(selectors)  # (name, parameters, what its prepare step returned)
        self._targets = targets
        self._context = context

    def load_model(self) -> LoadedSelectors:
        models = LoadedSelectors()
        artifacts: list[dict] = []  # what this worker copied from the run folder (remote workers only)
        for name, params, prepared in self._selectors:
            selector = registry.create(name, params)
            selector.setup(self._context, localize_prepared(prepared, artifacts), self._targets)
            models.append(selector)
        models.info = worker_models(models, artifacts)
        models.counters_seen = {}  # selector counter -> the total already reported to Beam
        return models

    def run_inference(self, batch: Sequence[ValidChunk], model: LoadedSelectors,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        for chunk in batch:
            start = time.perf_counter()
            chunk, columns = score_chunk(model, chunk, self._context.score_attempts, self._context.retry_backoff_s)
            Metrics.counter(NAMESPACE, "scored").inc(len(chunk.records))
            report_counters(model)
            Metrics.distribution(NAMESPACE, "score_ms_per_chunk").update(int(1000 * (time.perf_counter() - start)))
            yield PredictionResult(chunk, columns, getattr(model, "info", None))

    def get_num_bytes(self, batch: Sequence[ValidChunk]) -> int:
        return sum(len(c.records) for c in batch)

    def get_metrics_namespace(self) -> str:
        return "tamis_inference"


def report_counters(model: LoadedSelectors) -> None:
    """Turn each selector's running totals into Beam counters (the increments since last time)."""
    seen = model.counters_seen
    for selector in model:
        for name, total in selector.counters().items():
            key = f"{selector.name}_{name}"
            if total != seen.get(key, 0):
                Metrics.counter(NAMESPACE, key).inc(total - seen.get(key, 0))
                seen[key] = total


def _score_all(model: Sequence[Selector], records: list[dict], write: bool = True) -> dict[str, np.ndarray]:
    """Every selector's columns; pool features through the feature store, shared by equal specs."""
    return score_batch(model, records, write)


def _with_retries(fn, attempts: int, backoff_s: float):
    """``fn()``, retried up to ``attempts`` times with exponential backoff; re-raises the last error."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception:
            if attempt == attempts - 1:
                raise
            Metrics.counter(NAMESPACE, "score_retries").inc()
            time.sleep(backoff_s * 2 ** attempt)


def score_chunk(model: Sequence[Selector], chunk: ValidChunk, attempts: int = 3,
                backoff_s: float = 0.5) -> tuple[ValidChunk, dict[str, np.ndarray]]:
    """Score a chunk, retrying a failed call (local runners do not retry bundles).

    The whole chunk is retried first, so a transient fault changes nothing: the same rows are
    batched the same way. If it still fails, rows are scored one by one (with retries); a row
    that fails every attempt moves to the rejects with the error, and the rest are kept.
    """
    if not chunk.records:
        return chunk, {}
    try:
        return chunk, _with_retries(lambda: _score_all(model, chunk.records), attempts, backoff_s)
    except Exception:
        pass
    from ..schemas.records import record_to_json

    kept, flags, parts, rejects = [], [], [], list(chunk.rejects)
    for record, flag in zip(chunk.records, chunk.matches_target):
        try:
            # One row at a time: read the store, but leave no entry per row in it.
            parts.append(_with_retries(lambda: _score_all(model, [record], write=False), attempts, backoff_s))
        except Exception as e:
            reason = f"scoring failed after {attempts} attempts: {type(e).__name__}: {e}".replace("\n", " ")
            rejects.append({"id": record["id"], "raw": record_to_json(record), "reason": reason[:1000],
                            "source": f"{chunk.name} (scoring)"})
            Metrics.counter(NAMESPACE, "score_failures").inc()
            continue
        kept.append(record)
        flags.append(flag)
    columns = {c: np.concatenate([p[c] for p in parts]) for c in (parts[0] if parts else {})}
    return ValidChunk(chunk.name, chunk.lines, kept, flags, rejects, chunk.read_seconds), columns


def worker_models(selectors: Sequence[Selector], artifacts: Sequence[dict] = ()) -> str:
    """JSON of what this worker loaded (each selector's ``model_info`` after setup) and where.

    Every shard carries it in its Parquet metadata, so the manifest can say which copy of each
    model (path, sha256) scored which shards on which machine, on any runner.
    """
    import json
    import socket

    info: dict[str, Any] = {}
    for selector in selectors:
        try:
            info.update(selector.model_info())
        except Exception as e:  # a report must never stop scoring
            info[selector.name] = {"error": f"model_info failed: {e}"}
    report = {"host": socket.gethostname(), "models": info}
    if artifacts:
        report["artifacts"] = list(artifacts)
    return json.dumps(report, sort_keys=True, default=str)


def models_used(shard_paths: Sequence[str]) -> list[dict]:
    """Each distinct (host, models loaded) of the workers that wrote these shards, with a shard count."""
    import json

    from ..io.filesystems import read_parquet_metadata

    counts: dict[str, int] = {}
    for path in shard_paths:
        raw = (read_parquet_metadata(path).metadata or {}).get(META_MODELS)
        if raw:
            counts[raw.decode()] = counts.get(raw.decode(), 0) + 1
    return [dict(json.loads(k), shards=n) for k, n in sorted(counts.items())]


def shard_table(chunk: ValidChunk, columns: dict[str, np.ndarray], schema: pa.Schema) -> pa.Table:
    """The chunk's accepted rows with their scores (the selection is written beside it, later)."""
    n = len(chunk.records)
    data: dict[str, Any] = {
        "id": [r["id"] for r in chunk.records],
        "messages": [r["messages"] for r in chunk.records],
        "text": [r["text"] for r in chunk.records],
        "extra": [r["extra"] for r in chunk.records],
        "matches_target": chunk.matches_target,
    }
    for f in schema:
        if f.name in data:
            continue
        if f.name not in columns:
            if n:
                raise KeyError(f"a selector declared column {f.name!r} but did not return it")
            data[f.name] = []
            continue
        values = np.asarray(columns[f.name])
        if len(values) != n:
            raise ValueError(f"column {f.name!r} has {len(values)} values for {n} rows")
        data[f.name] = values
    return pa.table({f.name: pa.array(data[f.name], type=f.type) for f in schema}, schema=schema)


class WriteShard(beam.DoFn):
    """Write a scored chunk: rejects first, then the shard (whose existence marks it done)."""

    def __init__(self, out: str, schema: pa.Schema):
        self.folder = RunFolder(out)
        self.schema = schema

    def process(self, result: PredictionResult) -> Iterator[str]:
        chunk: ValidChunk = result.example
        start = time.perf_counter()
        if chunk.rejects:
            write_parquet(self.folder.reject_path(chunk.name),
                          pa.Table.from_pylist(chunk.rejects, schema=REJECT_SCHEMA))
        table = shard_table(chunk, result.inference, self.schema)
        metadata = {META_LINES: str(chunk.lines).encode()}
        if result.model_id:
            metadata[META_MODELS] = result.model_id.encode()
        write_parquet(self.folder.shard_path(chunk.name), table, metadata)
        Metrics.distribution(NAMESPACE, "write_ms_per_chunk").update(int(1000 * (time.perf_counter() - start)))
        yield chunk.name
