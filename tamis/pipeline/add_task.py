"""A new target task on a finished run, without scoring the pool again (``tamis add-task``).

The run's rows are read back from its shards and scored for the new tasks only, by the run's
targeted selectors with the run's own settings. What does not depend on the targets (RDS+'s
embeddings, LESS's projected gradients, CoLoR-Filter's prior loss) comes from the feature store
the first run filled, so only the target side is computed; CoLoR-Filter's conditional model is
fine-tuned on the new targets and still reads the pool, which it says. Each task's columns go
to their own attribute files beside the shards (``attributes/task-<task>/``), the shards are
never rewritten, and the selection is then made again over every task of the run.

Scores of an added task equal, bit for bit, those of a fresh run with that task alone: the same
rows go to the same selectors in the same chunks, with the same settings and models.
"""

import time
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa

from ..errors import ConfigError, InputError, RunFolderError
from ..io.filesystems import exists, use_beam_options
from ..io.runfolder import ADDING, FINISHED, MANIFEST, PLAN, TASK_PREFIX, RunFolder, write_parquet
from ..schemas.config import SelectConfig
from ..schemas.records import content_key
from ..selectors.base import Selector
from .artifacts import prepare_for_workers
from .chunks import ValidChunk
from .options import check_options, pipeline_options
from .plan import Plan, target_digests
from .scoring import SelectorModelHandler, report_counters, score_chunk
from .sources import read_targets

MATCH_PREFIX = "matches_target_"  # a task's own decontamination column, in its attribute files


@dataclass
class AddTaskSummary:
    out: str
    tasks: list[str]
    counts: dict[str, int]
    timings: dict[str, float]
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what the user should know about how the task was scored


class ReadShardChunk(beam.DoFn):
    """A finished chunk's accepted rows, read back from its shard, as pass 1 scored them."""

    def __init__(self, out: str, target_keys: dict[str, frozenset[str]]):
        self.folder = RunFolder(out)
        self.target_keys = target_keys

    def process(self, chunk: str) -> Iterator[tuple[ValidChunk, dict[str, list[bool]]]]:
        table = self.folder.read_chunk(chunk, ["id", "messages", "text", "extra"], sets=[])
        records = table.to_pylist()
        keys = [content_key(r) for r in records]
        matches = {task: [k in wanted for k in keys] for task, wanted in self.target_keys.items()}
        yield ValidChunk(chunk, 0, records, [False] * len(records), []), matches


class ScoreForTasks(beam.DoFn):
    """Score a chunk for the new tasks; a row whose scoring fails every attempt gets no score (NaN)
    for them (it stays in the run: it was accepted once, and is simply never picked for them)."""

    def __init__(self, handler: SelectorModelHandler, context):
        self.handler = handler  # loads the selectors once per worker, as pass 1's RunInference does
        self.context = context

    def setup(self):
        self.model = self.handler.load_model()

    def process(self, item: tuple[ValidChunk, dict[str, list[bool]]]) -> Iterator[tuple[ValidChunk, dict[str, list[bool]], dict[str, np.ndarray]]]:
        chunk, matches = item
        kept, columns = score_chunk(self.model, chunk, self.context.score_attempts, self.context.retry_backoff_s)
        report_counters(self.model)  # features reused from the store, and computed
        if len(kept.records) != len(chunk.records):
            position = {r["id"]: i for i, r in enumerate(kept.records)}
            full = {}
            for name, values in columns.items():
                filled = np.full(len(chunk.records), np.nan, dtype=np.float64) if values.dtype != object else \
                    np.array([None] * len(chunk.records), dtype=object)
                for i, r in enumerate(chunk.records):
                    if r["id"] in position:
                        filled[i] = values[position[r["id"]]]
                full[name] = filled
            columns = full
            beam.metrics.Metrics.counter("tamis", "add_task_failed_rows").inc(len(chunk.records) - len(kept.records))
        yield chunk, matches, columns


class WriteTaskAttributes(beam.DoFn):
    """Each new task's columns for one chunk, in ``attributes/task-<task>/<chunk>.parquet``."""

    def __init__(self, out: str, fields: dict[str, list[pa.Field]]):
        self.folder = RunFolder(out)
        self.fields = fields

    def process(self, item: tuple[ValidChunk, dict[str, list[bool]], dict[str, np.ndarray]]) -> Iterator[str]:
        chunk, matches, columns = item
        ids = [r["id"] for r in chunk.records]
        for task, fields in self.fields.items():
            schema = pa.schema([pa.field("id", pa.string(), nullable=False), *fields,
                                pa.field(MATCH_PREFIX + task, pa.bool_(), nullable=False)])
            data = {"id": ids, MATCH_PREFIX + task: matches[task]}
            for f in fields:
                values = columns.get(f.name)
                data[f.name] = values if values is not None else [None] * len(ids)
            write_parquet(self.folder.attribute_path(TASK_PREFIX + task, chunk.name),
                          pa.table({f.name: pa.array(data[f.name], f.type) for f in schema}, schema=schema))
        yield chunk.name


def task_pipeline(plan: Plan, chunks: list[str], prepared: dict, pipeline=None):
    """The add-task graph over ``chunks`` of the run ``plan.config.out``, built and not run: read
    each shard's rows back, score them for the plan's tasks, write each task's attribute files."""
    context = plan.context()
    handler = SelectorModelHandler([(s.name, s.get_params(), prepared.get(s.name)) for s in plan.selectors],
                                   plan.targets, context)
    keys = {task: frozenset(content_key(r) for r in examples) for task, examples in plan.targets.items()}
    out = RunFolder(plan.config.out).path
    pipeline = pipeline or beam.Pipeline(options=pipeline_options(plan.config))
    _ = (pipeline
         | "Chunks" >> beam.Create(chunks)
         | "Distribute" >> beam.Reshuffle()
         | "ReadShards" >> beam.ParDo(ReadShardChunk(out, keys))
         | "Score" >> beam.ParDo(ScoreForTasks(handler, context))
         | "WriteTasks" >> beam.ParDo(WriteTaskAttributes(out, {t: task_fields(plan, t) for t in plan.tasks})))
    return pipeline


def task_fields(plan: Plan, task: str) -> list[pa.Field]:
    """The columns the run's targeted selectors write for one task."""
    return [f for s in plan.selectors for f in s.columns([task])]


def _config_for_tasks(manifest: dict, folder: RunFolder, new: dict[str, str], runner: str | None, workers: int | None,
                      beam_args: list[str] | None) -> SelectConfig:
    """The run's own config, with only its targeted selectors and only the new tasks' targets."""
    from ..selectors import registry

    data = dict(manifest["config"], out=folder.path, target=new, overwrite=False)
    targeted = [s for s in data["selector"] if registry.get(s).needs_target]
    if not targeted:
        raise ConfigError(f"the selectors of {folder.path} ({', '.join(data['selector'])}) take no target: a new task "
                          "changes none of their scores; run tamis select with a targeted selector (rds, less, color)")
    data["selector"] = targeted
    driver = data.get("select_by") or manifest["config"]["selector"][0]
    data["select_by"] = driver if driver in targeted else targeted[0]
    data["param"] = {k: v for k, v in data.get("param", {}).items()
                     if "." not in k or k.partition(".")[0] in targeted}
    if runner is not None:
        data["runner"] = runner
    if workers is not None:
        data["workers"] = workers
    if beam_args is not None:
        data["beam_args"] = beam_args
    return SelectConfig(**data)


def check_pool_unchanged(plan: Plan, folder: RunFolder) -> None:
    """The selectors' preparation reads the pool (LESS's warm-up slice, CoLoR-Filter's prior): it must
    be the pool the run was scored from, or the new task's scores would not match the others'."""
    old = folder.read_json(PLAN) or {}
    try:
        plan.count_files()
        now = plan.resume_key()["files"]
    except (FileNotFoundError, InputError) as e:
        raise RunFolderError(f"the pool of {folder.path} is gone ({e}): adding a task prepares the selectors on it "
                             "as the run did; put it back where the run read it") from None
    before = [[f["path"], f["sha256"]] for f in old.get("files", [])]
    if before and before != [[f["path"], f["sha256"]] for f in now]:
        raise RunFolderError(f"the pool of {folder.path} changed since it was scored (its files' sha256 differ): "
                             "its scores and a new task's would come from different data; score it again with "
                             "tamis select --overwrite")


def run_add_task(out: str, target: dict[str, str], *, replace: bool = False, runner: str | None = None,
                 workers: int | None = None, beam_args: list[str] | None = None, reselect: bool = True) -> AddTaskSummary:
    """Add target tasks to a finished run: score them from the stored features, then select again.

    ``target``: task -> target examples file, as ``tamis select --target``. A task the run already
    has is refused unless ``replace``. An add-task that was interrupted is finished by running it
    again (with the same or other targets for the tasks it was adding). With ``reselect`` (the
    default) the selection is made again with the run's budget over all its tasks.
    """
    from .run import count_outputs, reselect_locked

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    use_beam_options(beam_args or [])
    folder = RunFolder(out)
    folder.require_exists()
    with folder.lock():
        state = folder.state() or {}
        resuming = state.get("phase") == ADDING
        manifest = folder.read_manifest() if resuming else folder.require_finished("add a task to")
        if manifest is None:
            raise RunFolderError(f"{folder.join(MANIFEST)} not found: is this a finished tamis run?")
        targets = read_targets(target)
        tasks = sorted(targets)
        have = set(manifest["resolved"].get("tasks") or [])
        interrupted = set(state.get("tasks") or []) if resuming else set()
        clash = sorted((set(tasks) & have) - interrupted)
        if clash and not replace:
            raise ConfigError(f"task(s) {clash} already in {folder.path}: choose another name, or pass --replace "
                              "to score them again with these targets")
        config = _config_for_tasks(manifest, folder, target, runner, workers, beam_args)
        check_options(config)
        plan = Plan.build(config, targets)
        check_pool_unchanged(plan, folder)
        digests = target_digests(targets)
        chunks = folder.chunk_names()
        done: set[str] = set()
        if resuming and state.get("targets") == digests:  # the same targets: keep what it finished
            done = {c for c in chunks if all(exists(folder.attribute_path(TASK_PREFIX + t, c)) for t in tasks)}
        else:
            for task in sorted(set(tasks) | interrupted):
                folder.delete_attribute_set(TASK_PREFIX + task)
        folder.set_state(ADDING, by="add-task", tasks=tasks, targets=digests, chunks=len(chunks))
        timings["plan_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        prepared, artifacts = prepare_for_workers(plan, folder)
        timings["prepare_s"] = time.perf_counter() - t1

        t1 = time.perf_counter()
        metrics: dict[str, Any] = {}
        todo = [c for c in chunks if c not in done]
        if todo:
            from .run import _metrics

            pipeline = task_pipeline(plan, todo, prepared)
            result = pipeline.run()
            result.wait_until_finish()
            metrics = _metrics(result)
        timings["score_s"] = time.perf_counter() - t1

        # The run now has these tasks: record them, their targets and how their scores were made.
        saved = folder.read_targets() or {}
        saved.update(targets)
        folder.save_targets(saved)
        resolved = manifest["resolved"]
        resolved["tasks"] = sorted(have | set(tasks))
        columns = dict(resolved.get("ranking_columns", {}))
        if resolved.get("select_by") == plan.driver.name:  # the run's driver scores tasks: they join its selection
            columns.update(plan.driver.score_columns(tasks))
        resolved["ranking_columns"] = columns
        manifest["config"]["target"] = {**manifest["config"].get("target", {}), **target}
        record = manifest.setdefault("tasks", {})
        for task in tasks:
            record[task] = {
                "made_by": "add-task", "targets": len(targets[task]), "target_digest": digests[task],
                "target_file": target[task], "selectors": [s.name for s in plan.selectors],
                "columns": [f.name for f in task_fields(plan, task)],
                "store": {k: v for k, v in metrics.items() if "features" in k},
                "pool_side": {s.name: pool_side(s) for s in plan.selectors},
                "prepared": {n: (p.to_json() if p is not None else None) for n, p in prepared.items()},
                "artifacts": artifacts, "score_s": timings["score_s"], "prepare_s": timings["prepare_s"],
                "chunks": {"planned": len(chunks), "reused": len(done), "computed": len(todo)},
            }
        manifest.setdefault("metrics", {}).update({f"add_task_{k}": v for k, v in metrics.items()})
        slow = [s.name for s in plan.selectors if s.target_side_reads_pool]
        notes = [f"{name}: a model fitted to the new targets scored every row again (its other half came from "
                 "the feature store)" for name in slow]
        manifest["counts"] = count_outputs(folder.path)
        folder.write_json(MANIFEST, manifest)
        if reselect:
            t1 = time.perf_counter()
            summary = reselect_locked(folder, manifest, manifest["resolved"]["budget"], by="add-task")
            manifest = summary.manifest
            timings["select_s"] = time.perf_counter() - t1
        else:
            folder.set_state(FINISHED, by="add-task", chunks=len(chunks))
        timings["total_s"] = time.perf_counter() - t0
        return AddTaskSummary(folder.path, tasks, manifest["counts"], timings, manifest, notes)


def pool_side(selector) -> str:
    """How a selector's pool side was made for an added task, in words for the manifest."""
    if selector.target_side_reads_pool:
        return ("the target-independent part from the feature store; a model fitted to the new targets "
                "scored every row")
    if type(selector).feature_spec is Selector.feature_spec:  # it keeps no stored features
        return "scored every row (this selector keeps no pool features)"
    return "from the feature store (computed only where it was missing)"


__all__ = ["AddTaskSummary", "MATCH_PREFIX", "run_add_task"]
