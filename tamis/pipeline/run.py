"""Run a selection: plan the chunks, score them (pass 1), select (pass 2), write the manifest.

Pass 1 writes one shard per chunk and is resumable: a rerun into the same folder with the
same scoring config and the same input content skips finished chunks. Pass 2 reads ids and
scores only, so it is cheap and is all that ``reselect`` runs. Every file goes through
:class:`tamis.io.runfolder.RunFolder`, which holds the folder's lock for the whole run and
records its state (scoring, selecting, finished) for readers.
"""

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..io.filesystems import exists, read_parquet_metadata, use_beam_options
from ..io.runfolder import FINISHED, MANIFEST, SCORING, SELECTING, SELECTION, SHARDS, WORK, RunFolder
from ..errors import ConfigError
from ..schemas.config import SelectConfig
from ..schemas.records import content_key
from ..selectors.base import Prepared
from ..selectors.rules import SELECTION_REPORT, Resolution
from .artifacts import prepare_for_workers
from .chunks import ReadChunks, ValidateChunk, ValidChunk
from .options import check_options, pipeline_options
from .plan import Plan, target_digests
from .scoring import SelectorModelHandler, WriteShard, models_used
from .selection import Ranking, selection_pipeline
from .sources import read_targets

@dataclass
class RunSummary:
    out: str
    counts: dict[str, int]
    timings: dict[str, float]
    chunks: dict[str, int] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


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


def one_chunk_batch(chunk: ValidChunk) -> list[ValidChunk]:
    """A chunk as RunInference's batch of one: a chunk is already the unit a selector scores."""
    return [chunk]


def score_pipeline(plan: Plan, done: set[str], prepared: dict | None = None, pipeline=None):
    """Pass 1's graph, built and not run (``tamis select --dry-run`` and the Flex Template use it too)."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference

    prepared = prepared or {}
    handler = SelectorModelHandler([(s.name, s.get_params(), prepared.get(s.name)) for s in plan.selectors],
                                   plan.targets, plan.context())
    target_keys = frozenset(content_key(r) for examples in (plan.targets or {}).values() for r in examples)
    pipeline = pipeline or beam.Pipeline(options=pipeline_options(plan.config))
    _ = (pipeline
         | "Files" >> beam.Create(plan.files)
         | "ReadChunks" >> beam.ParDo(ReadChunks(frozenset(done)))
         | "Distribute" >> beam.Reshuffle()
         | "Validate" >> beam.ParDo(ValidateChunk(target_keys))
         | "AsBatch" >> beam.Map(one_chunk_batch)
         | "Score" >> RunInference(handler.with_no_batching())
         | "WriteShards" >> beam.ParDo(WriteShard(plan.config.out, plan.schema)))
    return pipeline


def score_pass(plan: Plan, done: set[str], progress: bool, prepared: dict) -> dict[str, Any]:
    pipeline = score_pipeline(plan, done, prepared)
    config = plan.config
    with _Progress(RunFolder(config.out), len(plan.chunks), len(done), progress and config.runner != "DataflowRunner"):
        result = pipeline.run()
        result.wait_until_finish()
    return _metrics(result)


def select_pass(config: SelectConfig, ranking: Ranking) -> dict[str, Any]:
    import apache_beam as beam

    folder = RunFolder(config.out)
    folder.delete_work_file(SELECTION_REPORT)  # from an earlier selection: never merged into this one's manifest
    shards = folder.shards()
    if not shards:
        return {}
    rows = sum(_shard_meta(p)[0] for p in shards)
    # Shards never change after the selection that removed their later duplicates: while they are the
    # same files (names, sizes, times), a new selection skips the search for repeated ids.
    unique = (folder.read_json(UNIQUE_IDS) or {}).get("shards") == shard_signature(folder)
    # Reading ids and scores is cheap: local worker processes would cost more to start than they save.
    pipeline = beam.Pipeline(options=pipeline_options(config, workers=1))
    selection_pipeline(pipeline, folder.path, folder.chunk_names(), ranking, rows, unique_ids=unique)
    result = pipeline.run()
    result.wait_until_finish()
    folder.write_json(UNIQUE_IDS, {"shards": shard_signature(folder)})
    return _metrics(result)


UNIQUE_IDS = f"{WORK}/unique_ids.json"  # the shards as they were when their ids were last found unique


def shard_signature(folder: RunFolder) -> dict[str, list]:
    """Each shard's name, size and modification time, from one listing."""
    from ..io.filesystems import TEMP_SUFFIX, list_files

    return {path.rsplit("/", 1)[-1]: [size, mtime] for path, size, mtime in list_files(folder.join(SHARDS))
            if path.endswith(".parquet") and not path.endswith(TEMP_SUFFIX)}


def _shard_meta(path: str) -> tuple[int, int]:
    """(rows, input lines) of a shard, from its Parquet footer alone."""
    return _rows_and_lines(read_parquet_metadata(path))


def _rows_and_lines(meta) -> tuple[int, int]:
    from .scoring import META_LINES

    return meta.num_rows, int((meta.metadata or {}).get(META_LINES, b"0"))


def count_outputs(out: str) -> dict[str, int]:
    """Counts read back from the files: the accounting identity is checked on these. Only the
    shards' footers and their small columns are read, never their text."""
    folder = RunFolder(out)
    counts = {"input": 0, "accepted": 0, "rejected": 0, "selected": 0, "matches_target": 0, "duplicates": 0}
    sets = folder.attribute_sets()
    for chunk in folder.chunk_names():
        meta = read_parquet_metadata(folder.shard_path(chunk))
        rows, lines = _rows_and_lines(meta)
        counts["input"] += lines
        counts["accepted"] += rows
        # Tasks added later have their own target matches: a row counts once, whichever it matches.
        wanted = folder.match_columns(chunk) if any(n != SELECTION for n in sets) else ["matches_target"]
        has_selection = SELECTION in sets and exists(folder.attribute_path(SELECTION, chunk))
        if has_selection or "selected" in meta.schema.to_arrow_schema().names:  # older runs: inside the shard
            wanted.append("selected")
        table = folder.read_chunk(chunk, wanted, sets=[n for n in sets if n != SELECTION or has_selection])
        matches = [table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names if c.startswith("matches_target")]
        counts["matches_target"] += int(np.logical_or.reduce(matches).sum()) if rows else 0
        if "selected" in table.column_names:
            counts["selected"] += int(np.sum(table.column("selected").to_numpy(zero_copy_only=False)))
    for path in folder.rejects():
        n = read_parquet_metadata(path).num_rows
        counts["rejected"] += n
        if path.rsplit("/", 1)[-1].startswith("duplicates-"):
            counts["duplicates"] += n
    return counts


def check_counts(counts: dict[str, int]) -> None:
    if counts["input"] != counts["accepted"] + counts["rejected"] or counts["selected"] > counts["accepted"]:
        raise RuntimeError(f"accounting identity broken (input == accepted + rejected, selected <= accepted): {counts}")


def run_notes(counts: dict[str, int], ranking: Ranking, decontaminate: bool) -> tuple[list[str], Resolution]:
    """Outcomes a user may not expect, in words, from the same budget resolution the selection used."""
    resolution = ranking.resolve(counts["accepted"] - (counts["matches_target"] if decontaminate else 0))
    if counts["accepted"] == 0:
        return ["no accepted rows (an empty pool, or every line rejected): nothing was scored or selected"], resolution
    return resolution.notes(), resolution


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


def begin_scoring(plan: Plan, folder: RunFolder) -> set[str]:
    """Under the run folder's lock: count the pool, check the resume key, keep the targets and
    mark the run as scoring. Returns the chunks an earlier run already scored."""
    plan.count_files()
    done = folder.prepare(plan.resume_key(), plan.config.overwrite) & plan.chunks
    folder.save_targets(plan.targets)
    folder.set_state(SCORING, by="select", chunks=len(plan.chunks))
    return done


def run_select(config: SelectConfig, progress: bool = False) -> RunSummary:
    """Score and select: the whole ``tamis select`` run, holding the run folder's lock throughout."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    use_beam_options(config.beam_args)  # s3/gcs endpoint and credentials, before the first read
    folder = RunFolder(config.out)
    check_options(config)  # before any work: a bad option fails here, not after the proxy training
    plan = Plan.build(config)
    with folder.lock():
        done = begin_scoring(plan, folder)
        timings["plan_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        prepared, artifacts = prepare_for_workers(plan, folder)  # published under OUT for remote workers
        timings["prepare_s"] = time.perf_counter() - t1

        t1 = time.perf_counter()
        # Nothing left to score (a finished or Flex-launched pass 1): only the selection runs.
        metrics = score_pass(plan, done, progress, prepared) if plan.chunks - done else {}
        timings["score_s"] = time.perf_counter() - t1

        ranking = plan.ranking(prepared)
        folder.set_state(SELECTING, by="select", chunks=len(plan.chunks))
        t2 = time.perf_counter()
        metrics.update(select_pass(config, ranking))
        timings["select_s"] = time.perf_counter() - t2
        timings["total_s"] = time.perf_counter() - t0

        counts = count_outputs(folder.path)
        check_counts(counts)
        notes, resolution = run_notes(counts, ranking, config.decontaminate)
        manifest = {
            "tamis_manifest": 2,  # 2: the selection lies beside the shards (attributes/selection)
            "config": config.model_dump(),
            "resolved": {"budget": ranking.budget.value, "select_by": config.driver, "tasks": plan.tasks,
                         "rule": describe_rule(ranking.rule), "skip_top": ranking.rule.skip.fraction,
                         "selection": asdict(resolution),
                         "ranking_columns": {str(k): v for k, v in ranking.task_columns.items()},
                         "files": plan.paths, "schema": [f"{f.name}: {f.type}" for f in plan.schema]},
            "versions": _versions(),
            "models": {k: v for s in plan.selectors for k, v in s.model_info().items()},
            "worker_models": models_used(folder.shards()),
            "prepared": {name: to_json(p) for name, p in prepared.items()},
            "artifacts": artifacts,
            "targets": {t: len(v) for t, v in (plan.targets or {}).items()},
            # Every task of the run and how its scores were made (tamis add-task adds entries).
            "tasks": {t: {"made_by": "select", "targets": len(v), "target_digest": d,
                          "selectors": [s.name for s in plan.selectors if s.needs_target]}
                      for (t, v), d in zip(sorted((plan.targets or {}).items()), target_digests(plan.targets).values())},
            "counts": counts,
            "chunks": {"planned": len(plan.chunks), "reused": len(done), "computed": len(plan.chunks - done)},
            "notes": notes,
            "timings": timings,
            "metrics": metrics,
        }
        _merge_selection_report(manifest, folder)
        folder.write_json(MANIFEST, manifest)
        folder.set_state(FINISHED, by="select", chunks=len(plan.chunks))
    return RunSummary(config.out, counts, timings, manifest["chunks"], manifest)


def describe_rule(rule) -> dict:
    """The rule as the manifest records it: its class and its compared options."""
    import dataclasses

    options = {f.name: getattr(rule, f.name) for f in dataclasses.fields(rule) if f.compare} \
        if dataclasses.is_dataclass(rule) else {}
    return json.loads(json.dumps({"rule": type(rule).__name__, **options}, default=lambda o: asdict(o)))


def to_json(prepared: Prepared | None) -> dict | None:
    """A prepared record as the manifest keeps it."""
    return None if prepared is None else prepared.to_json()


def run_reselect(out: str, budget: float, runner: str = "DirectRunner", workers: int = 1,
                 beam_args: list[str] | None = None, tasks: list[str] | None = None,
                 budget_per_task: bool | None = None, duplicates: str | None = None) -> RunSummary:
    """Select again on a finished run with a new budget, without scoring again.

    It acts on the folder ``out`` as it lies now (a copied or moved run works where it is), not on
    the path its manifest recorded. ``tasks`` restricts the selection to some of the run's tasks
    (for example one task's top-k from a run that scored several); by default the tasks the run
    was made with. ``budget_per_task`` and ``duplicates`` change the rule's options (default: as
    the run was made). Only the small selection files beside the shards are written.
    """
    use_beam_options(beam_args or [])  # s3/gcs endpoint and credentials, before the first read
    folder = RunFolder(out)
    folder.require_exists()  # before the lock, which would create the folder
    with folder.lock():
        manifest = folder.require_reselectable()
        return reselect_locked(folder, manifest, budget, runner=runner, workers=workers, beam_args=beam_args,
                               tasks=tasks, budget_per_task=budget_per_task, duplicates=duplicates)


def reselect_locked(folder: RunFolder, manifest: dict, budget: float, *, runner: str | None = None,
                    workers: int | None = None, beam_args: list[str] | None = None, tasks: list[str] | None = None,
                    budget_per_task: bool | None = None, duplicates: str | None = None,
                    by: str = "reselect") -> RunSummary:
    """:func:`run_reselect`'s work, for a caller that holds the folder's lock (``add-task`` too)."""
    data = dict(manifest["config"], out=folder.path, budget=budget)
    data.update({k: v for k, v in (("runner", runner), ("workers", workers), ("beam_args", beam_args),
                                   ("budget_per_task", budget_per_task), ("duplicates", duplicates)) if v is not None})
    config = SelectConfig(**data)
    columns = {(None if k == "None" else k): v for k, v in manifest["resolved"]["ranking_columns"].items()}
    if tasks:
        missing = set(tasks) - set(columns)
        if missing:
            raise ConfigError(f"task(s) {sorted(missing)} not in this run (it has: {', '.join(map(str, columns))})")
        columns = {t: c for t, c in columns.items() if t in tasks}
    # The targets the run was scored with, kept in the folder; older runs read the target files.
    targets = folder.read_targets()
    if targets is None:
        targets = read_targets(config.target) if config.target else None
    targets = targets or None
    plan = Plan.build(config, targets)
    ranking = plan.ranking(plan.prepared_from_json(manifest.get("prepared", {})), columns)
    chunks = (folder.state() or {}).get("chunks")
    folder.set_state(SELECTING, by=by, chunks=chunks)
    t0 = time.perf_counter()
    select_pass(config, ranking)
    counts = count_outputs(folder.path)
    check_counts(counts)
    manifest["config"] = config.model_dump()
    manifest["resolved"]["budget"] = budget
    manifest["resolved"]["selected_tasks"] = sorted(str(t) for t in columns)
    manifest["counts"] = counts
    manifest["notes"], resolution = run_notes(counts, ranking, config.decontaminate)
    manifest["resolved"]["selection"] = asdict(resolution)
    manifest["resolved"]["rule"] = describe_rule(ranking.rule)
    manifest.setdefault("reselects", []).append({"budget": budget, "by": by, "select_s": time.perf_counter() - t0})
    manifest["timings"]["reselect_s"] = time.perf_counter() - t0
    _merge_selection_report(manifest, folder)
    folder.write_json(MANIFEST, manifest)
    folder.set_state(FINISHED, by=by, chunks=chunks)
    return RunSummary(folder.path, counts, manifest["timings"], manifest.get("chunks", {}), manifest)
