"""Run a selection: plan the chunks, score them (pass 1), select (pass 2), write the manifest.

Pass 1 writes one shard per chunk and is resumable: a rerun into the same folder with the
same scoring config and the same input content skips finished chunks. Pass 2 reads ids and
scores only, so it is cheap and is all that ``reselect`` runs. Every file goes through
:class:`tamis.io.runfolder.RunFolder`, which holds the folder's lock for the whole run and
records its state (scoring, selecting, finished) for readers.
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..io.filesystems import file_digest, read_parquet_metadata, use_beam_options
from ..io.runfolder import FINISHED, MANIFEST, SCORING, SELECTING, WORK, RunFolder, content_digest
from ..schemas.config import SelectConfig
from ..schemas.output import output_schema
from ..schemas.records import content_key
from ..selectors import registry
from ..selectors.base import RunContext
from .chunks import InputFile, ReadChunks, ValidateChunk, count_lines
from .artifacts import publish_prepared
from .options import check_options, check_prepared, pipeline_options, workers_elsewhere
from .scoring import SelectorModelHandler, WriteShard, models_used
from .selection import SELECTION_REPORT, Ranking, selection_pipeline
from .sources import expand, read_records, read_targets

# Config keys that do not change any score: a run that differs only in these resumes.
_NOT_SCORING = {"budget", "out", "runner", "workers", "beam_args", "overwrite", "select_by", "decontaminate",
                "score_attempts"}


@dataclass
class RunSummary:
    out: str
    counts: dict[str, int]
    timings: dict[str, float]
    chunks: dict[str, int] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


def scoring_key(config: SelectConfig, files: list[dict], targets: dict | None) -> str:
    """What the scores depend on: the scoring config, each input file's content, the targets' content."""
    payload = {k: v for k, v in config.model_dump().items() if k not in _NOT_SCORING}
    payload["files"] = [[f["path"], f["bytes"], f["sha256"]] for f in files]
    payload["targets"] = target_digests(targets)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def target_digests(targets: dict | None) -> dict[str, str]:
    """Task -> a hash of its parsed target examples (what decontamination and the scores see)."""
    return {task: content_digest(examples) for task, examples in sorted((targets or {}).items())}


def make_plan(config: SelectConfig, paths: list[str], targets: dict | None) -> dict:
    """The resume key and what it covers (kept in ``_work/plan.json`` to say what changed)."""
    files = [file_digest(p) for p in paths]
    return {"scoring_key": scoring_key(config, files, targets), "files": files, "targets": target_digests(targets)}


def build_selectors(config: SelectConfig, targets: dict | None):
    """Instantiate (not set up) each selector: validates parameters and targets early."""
    selectors = []
    for name in config.selector:
        selector = registry.create(name, config.params_for(name))
        if selector.needs_target and not targets:
            raise ValueError(f"selector {name!r} needs --target (task=path)")
        selectors.append(selector)
    unknown = {k.partition(".")[0] for k in config.param if "." in k} - set(config.selector)
    if unknown:
        raise ValueError(f"--param scoped to a selector not in this run: {sorted(unknown)}")
    return selectors


class _Progress:
    """Counts finished shards on disk while a local pipeline runs (rich progress bar)."""

    def __init__(self, folder: RunFolder, total: int, already: int, enabled: bool):
        self.folder, self.total, self.already, self.enabled = folder, total, already, enabled
        self._stop = threading.Event()

    def __enter__(self):
        if self.enabled and self.total > self.already:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("scoring chunks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=True) as bar:
            task = bar.add_task("score", total=self.total, completed=self.already)
            while not self._stop.wait(0.5):
                bar.update(task, completed=len(self.folder.shards()))

    def __exit__(self, *exc):
        self._stop.set()
        if hasattr(self, "_thread"):
            self._thread.join(timeout=2)


def _metrics(result) -> dict[str, Any]:
    """Beam counters and distributions, where the runner reports them."""
    out: dict[str, Any] = {}
    try:
        metrics = result.metrics().query()
    except Exception:  # some runners report no metrics; the counts come from the files anyway
        return out
    for c in metrics.get("counters", []):
        if c.key.metric.namespace == "tamis":
            out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (c.committed or c.attempted or 0)
    for d in metrics.get("distributions", []):
        if d.key.metric.namespace == "tamis":
            v = d.committed or d.attempted
            if v is not None:
                out[d.key.metric.name + "_total"] = out.get(d.key.metric.name + "_total", 0) + v.sum
    return out


def run_context(config: SelectConfig) -> RunContext:
    return RunContext(device=config.device, dtype=config.dtype, max_length=config.max_length,
                      batch_tokens=config.batch_tokens, seed=config.seed, work_dir=RunFolder(config.out).work_dir,
                      score_attempts=config.score_attempts)


def prepare_selectors(config: SelectConfig, selectors, targets) -> dict[str, dict]:
    """Each selector's once-per-run preparation (proxy training, fits) on a pool sample."""
    from ..selectors.base import PoolSample

    pool = PoolSample(lambda: read_records(config.pool))
    context = run_context(config)
    return {s.name: s.prepare(pool, targets, context) or {} for s in selectors}


def score_pipeline(config: SelectConfig, files: list[InputFile], done: set[str], targets, selectors, schema,
                   prepared: dict[str, dict] | None = None, pipeline=None):
    """Pass 1's graph, built and not run (``tamis select --dry-run`` and the Flex Template use it too)."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference

    prepared = prepared or {}
    handler = SelectorModelHandler([(s.name, s.get_params(), prepared.get(s.name, {})) for s in selectors],
                                   targets, run_context(config))
    target_keys = frozenset(content_key(r) for examples in (targets or {}).values() for r in examples)
    pipeline = pipeline or beam.Pipeline(options=pipeline_options(config))
    _ = (pipeline
         | "Files" >> beam.Create(files)
         | "ReadChunks" >> beam.ParDo(ReadChunks(frozenset(done)))
         | "Distribute" >> beam.Reshuffle()
         | "Validate" >> beam.ParDo(ValidateChunk(target_keys))
         | "AsBatch" >> beam.Map(lambda chunk: [chunk])
         | "Score" >> RunInference(handler.with_no_batching())
         | "WriteShards" >> beam.ParDo(WriteShard(config.out, schema)))
    return pipeline


def score_pass(config: SelectConfig, files: list[InputFile], done: set[str], targets, selectors, schema,
               progress: bool, prepared: dict[str, dict] | None = None) -> dict[str, Any]:
    pipeline = score_pipeline(config, files, done, targets, selectors, schema, prepared)
    total = sum(f.n_chunks for f in files)
    with _Progress(RunFolder(config.out), total, len(done), progress and config.runner != "DataflowRunner"):
        result = pipeline.run()
        result.wait_until_finish()
    return _metrics(result)


def select_pass(config: SelectConfig, ranking: Ranking, budget: float) -> dict[str, Any]:
    import apache_beam as beam

    folder = RunFolder(config.out)
    folder.delete_work_file(SELECTION_REPORT)  # from an earlier selection: never merged into this one's manifest
    shards = folder.shards()
    if not shards:
        return {}
    rows = sum(_shard_meta(p)[0] for p in shards)
    # Reading ids and scores is cheap: local worker processes would cost more to start than they save.
    pipeline = beam.Pipeline(options=pipeline_options(config, workers=1))
    selection_pipeline(pipeline, folder.path, shards, ranking, budget, rows)
    result = pipeline.run()
    result.wait_until_finish()
    return _metrics(result)


def _shard_meta(path: str) -> tuple[int, int]:
    """(rows, input lines) of a shard, from its Parquet footer alone."""
    return _rows_and_lines(read_parquet_metadata(path))


def _rows_and_lines(meta) -> tuple[int, int]:
    from .scoring import META_LINES

    return meta.num_rows, int((meta.metadata or {}).get(META_LINES, b"0"))


def count_outputs(out: str) -> dict[str, int]:
    """Counts read back from the files: the accounting identity is checked on these."""
    import io

    import pyarrow.parquet as pq

    from ..io.filesystems import read_bytes

    folder = RunFolder(out)
    counts = {"input": 0, "accepted": 0, "rejected": 0, "selected": 0, "matches_target": 0, "duplicates": 0}
    for path in folder.shards():
        shard = pq.ParquetFile(io.BytesIO(read_bytes(path)))  # one read: footer and two columns
        table = shard.read(columns=["selected", "matches_target"])
        rows, lines = _rows_and_lines(shard.metadata)
        counts["input"] += lines
        counts["accepted"] += rows
        counts["selected"] += sum(table.column("selected").to_pylist())
        counts["matches_target"] += sum(table.column("matches_target").to_pylist())
    for path in folder.rejects():
        n = read_parquet_metadata(path).num_rows
        counts["rejected"] += n
        if path.rsplit("/", 1)[-1].startswith("duplicates-"):
            counts["duplicates"] += n
    return counts


def check_counts(counts: dict[str, int]) -> None:
    if counts["input"] != counts["accepted"] + counts["rejected"] or counts["selected"] > counts["accepted"]:
        raise RuntimeError(f"accounting identity broken (input == accepted + rejected, selected <= accepted): {counts}")


def run_notes(counts: dict[str, int], budget: float, decontaminate: bool) -> list[str]:
    """Outcomes a user may not expect, in words: the CLI prints them and the manifest keeps them."""
    eligible = counts["accepted"] - (counts["matches_target"] if decontaminate else 0)
    if counts["accepted"] == 0:
        return ["no accepted rows (an empty pool, or every line rejected): nothing was scored or selected"]
    if budget >= 1 and budget > eligible:
        return [f"budget {int(budget)} is more than the {eligible} eligible rows: at most {eligible} can be selected"]
    if budget < 1 and math.floor(budget * eligible) == 0:
        return [f"budget {budget} of {eligible} eligible rows rounds down to 0 rows: nothing selected "
                "(give a row count instead)"]
    return []


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("tamis", "apache-beam", "torch", "transformers", "sentence-transformers", "peft",
                "faiss-cpu", "pyarrow", "numpy", "pydantic"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _merge_selection_report(manifest: dict, folder: RunFolder) -> None:
    """A custom selection rule's report (per-round weights and the like), when it wrote one."""
    report = folder.read_json(f"{WORK}/{SELECTION_REPORT}")
    if report is not None:
        manifest["selection_report"] = report
    else:
        manifest.pop("selection_report", None)


def custom_rule(driver, prepared: dict, targets, config: SelectConfig) -> tuple | None:
    """What pass 2 needs to rebuild the driving selector and run its own selection rule."""
    if not driver.custom_selection:
        return None
    inputs = driver.selection_inputs(driver.task_names(targets))
    return (driver.name, driver.get_params(), prepared.get(driver.name, {}), targets, run_context(config), inputs)


def run_select(config: SelectConfig, progress: bool = False) -> RunSummary:
    """Score and select: the whole ``tamis select`` run, holding the run folder's lock throughout."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    use_beam_options(config.beam_args)  # s3/gcs endpoint and credentials, before the first read
    folder = RunFolder(config.out)
    check_options(config)  # before any work: a bad option fails here, not after the proxy training
    targets = read_targets(config.target) if config.target else None
    selectors = build_selectors(config, targets)
    driver = next(s for s in selectors if s.name == config.driver)
    columns = [c for s in selectors for c in s.columns(s.task_names(targets))]
    schema = output_schema(columns)
    missing = sorted(set(driver.selection_inputs(driver.task_names(targets))) - set(schema.names)) \
        if driver.custom_selection else []
    if missing:
        raise ValueError(f"selector {driver.name!r} selects by column(s) {missing} that no selector in this run "
                         f"writes (columns: {', '.join(schema.names)})")
    paths = expand(config.pool)
    with folder.lock():
        files = [InputFile(i, p, count_lines(p), config.shard_rows) for i, p in enumerate(paths)]
        done = folder.prepare(make_plan(config, paths, targets), config.overwrite)
        planned = {f.chunk_name(k) for f in files for k in range(f.n_chunks)}
        folder.save_targets(targets)
        folder.set_state(SCORING, by="select", chunks=len(planned))
        timings["plan_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        prepared = prepare_selectors(config, selectors, targets)
        artifacts: list[dict] = []
        if workers_elsewhere(config):  # workers share no disk with this machine: publish under OUT
            prepared, artifacts = publish_prepared(prepared, folder)
        check_prepared(config, prepared)  # no worker is ever handed a path on this machine's disk
        timings["prepare_s"] = time.perf_counter() - t1

        t1 = time.perf_counter()
        reused = done & planned
        # Nothing left to score (a finished or Flex-launched pass 1): only the selection runs.
        metrics = score_pass(config, files, reused, targets, selectors, schema, progress, prepared) if planned - reused else {}
        timings["score_s"] = time.perf_counter() - t1

        budget = config.budget if config.budget is not None else driver.default_budget
        ranking = Ranking(driver.score_columns(driver.task_names(targets)), config.decontaminate, driver.skip_top(),
                          custom_rule(driver, prepared, targets, config))
        folder.set_state(SELECTING, by="select", chunks=len(planned))
        t2 = time.perf_counter()
        metrics.update(select_pass(config, ranking, budget))
        timings["select_s"] = time.perf_counter() - t2
        timings["total_s"] = time.perf_counter() - t0

        counts = count_outputs(folder.path)
        check_counts(counts)
        manifest = {
            "tamis_manifest": 1,
            "config": config.model_dump(),
            "resolved": {"budget": budget, "select_by": config.driver, "tasks": sorted(targets or {}),
                         "skip_top": ranking.skip_top,
                         "ranking_columns": {str(k): v for k, v in ranking.task_columns.items()},
                         "files": paths, "schema": [f"{f.name}: {f.type}" for f in schema]},
            "versions": _versions(),
            "models": {k: v for s in selectors for k, v in s.model_info().items()},
            "worker_models": models_used(folder.shards()),
            "prepared": prepared,
            "artifacts": artifacts,
            "targets": {t: len(v) for t, v in (targets or {}).items()},
            "counts": counts,
            "chunks": {"planned": len(planned), "reused": len(reused), "computed": len(planned - reused)},
            "notes": run_notes(counts, budget, config.decontaminate),
            "timings": timings,
            "metrics": metrics,
        }
        _merge_selection_report(manifest, folder)
        folder.write_json(MANIFEST, manifest)
        folder.set_state(FINISHED, by="select", chunks=len(planned))
    return RunSummary(config.out, counts, timings, manifest["chunks"], manifest)


def run_reselect(out: str, budget: float, runner: str = "DirectRunner", workers: int = 1,
                 beam_args: list[str] | None = None, tasks: list[str] | None = None) -> RunSummary:
    """Select again on a finished run with a new budget, without scoring again.

    It acts on the folder ``out`` as it lies now (a copied or moved run works where it is), not on
    the path its manifest recorded. ``tasks`` restricts the selection to some of the run's tasks
    (for example one task's top-k from a run that scored several); by default the tasks the run
    was made with.
    """
    use_beam_options(beam_args or [])  # s3/gcs endpoint and credentials, before the first read
    folder = RunFolder(out)
    folder.require_exists()  # before the lock, which would create the folder
    with folder.lock():
        manifest = folder.require_reselectable()
        data = dict(manifest["config"], out=folder.path, budget=budget, runner=runner, workers=workers,
                    beam_args=beam_args or [])
        config = SelectConfig(**data)
        columns = {(None if k == "None" else k): v for k, v in manifest["resolved"]["ranking_columns"].items()}
        if tasks:
            missing = set(tasks) - set(columns)
            if missing:
                raise ValueError(f"task(s) {sorted(missing)} not in this run (it has: {', '.join(map(str, columns))})")
            columns = {t: c for t, c in columns.items() if t in tasks}
        # The targets the run was scored with, kept in the folder; older runs read the target files.
        targets = folder.read_targets()
        if targets is None:
            targets = read_targets(config.target) if config.target else None
        targets = targets or None
        driver = next(s for s in build_selectors(config, targets) if s.name == config.driver)
        ranking = Ranking(columns, config.decontaminate, float(manifest["resolved"].get("skip_top", 0.0)),
                          custom_rule(driver, manifest.get("prepared", {}), targets, config))
        chunks = (folder.state() or {}).get("chunks")
        folder.set_state(SELECTING, by="reselect", chunks=chunks)
        t0 = time.perf_counter()
        select_pass(config, ranking, budget)
        counts = count_outputs(folder.path)
        check_counts(counts)
        manifest["config"] = config.model_dump()
        manifest["resolved"]["budget"] = budget
        manifest["resolved"]["selected_tasks"] = sorted(str(t) for t in columns)
        manifest["counts"] = counts
        manifest["notes"] = run_notes(counts, budget, config.decontaminate)
        manifest.setdefault("reselects", []).append({"budget": budget, "select_s": time.perf_counter() - t0})
        manifest["timings"]["reselect_s"] = time.perf_counter() - t0
        _merge_selection_report(manifest, folder)
        folder.write_json(MANIFEST, manifest)
        folder.set_state(FINISHED, by="reselect", chunks=chunks)
    return RunSummary(folder.path, counts, manifest["timings"], manifest.get("chunks", {}), manifest)
