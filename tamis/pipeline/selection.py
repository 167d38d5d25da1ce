"""The selection pass: a cheap second pipeline over finished shards (scores as columns).

It reads only ids and score columns, finds ids repeated across shards, takes each task's
top-k through Beam's combiners, merges tasks round-robin with dedupe (RDS+), and rewrites
each shard's ``selected``/``rank``/``selected_for`` columns. Only ids and scores cross a
shuffle, never whole records, so memory does not grow with record size. ``tamis reselect``
runs this pass alone with a new budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..schemas.output import REJECT_SCHEMA
from ..schemas.records import record_to_json
from ..io.filesystems import read_parquet, write_bytes
from ..io.runfolder import RunFolder, write_parquet

# A custom rule's report (JSON bytes in the returned table's schema metadata) and its file in the work folder.
SELECTION_REPORT_KEY = b"tamis.selection_report"
SELECTION_REPORT = "selection_report.json"


@dataclass(frozen=True)
class Ranking:
    """How one run ranks rows: the column per task, and what is not eligible."""

    task_columns: dict[str | None, str]  # task (None when untargeted) -> score column
    exclude_matches_target: bool = True
    skip_top: float = 0.0  # fraction of eligible rows left out from the top (offset window)
    # A selector with a rule of its own: (name, params, prepared, targets, context, input columns).
    custom: tuple | None = None


def resolve_budget(budget: float, eligible: int) -> int:
    """Rows to select: below 1 a fraction of eligible rows (floored), else a count, capped."""
    k = math.floor(budget * eligible) if budget < 1 else int(budget)
    return max(0, min(k, eligible))


def round_robin(candidates: dict[str | None, list[tuple[float, str]]], k: int) -> dict[str, tuple[int, list[str]]]:
    """Take tasks in turn, each its best remaining id, skipping ids already taken, until k.

    ``candidates`` holds each task's (score, id) list, best first. Returns id -> (rank from 1,
    tasks it was picked for, including tasks that met it already taken). One task is plain top-k.
    """
    tasks = sorted(candidates, key=lambda t: "" if t is None else t)
    pointers = {t: 0 for t in tasks}
    chosen: dict[str, tuple[int, list[str]]] = {}
    active = list(tasks)
    while len(chosen) < k and active:
        for task in list(active):
            if len(chosen) >= k:
                break
            items = candidates[task]
            i = pointers[task]
            while i < len(items) and items[i][1] in chosen:
                if task is not None and task not in chosen[items[i][1]][1]:
                    chosen[items[i][1]][1].append(task)
                i += 1
            if i >= len(items):
                active.remove(task)
                pointers[task] = i
                continue
            chosen[items[i][1]] = (len(chosen) + 1, [] if task is None else [task])
            pointers[task] = i + 1
    return chosen


def read_columns(path: str, columns: list[str]) -> pa.Table:
    return read_parquet(path, columns)


class ShardIds(beam.DoFn):
    """(id, (shard index, row)) for every row: the input to cross-shard duplicate detection."""

    def process(self, item: tuple[int, str]):
        index, path = item
        ids = read_columns(path, ["id"]).column("id").to_pylist()
        for row, rid in enumerate(ids):
            yield rid, (index, row)


def later_duplicates(item: tuple[str, list[tuple[int, int]]]):
    """For an id seen more than once, every position after the first (input order)."""
    rid, positions = item
    if len(positions) > 1:
        first, *rest = sorted(positions)
        for pos in rest:
            yield pos, (rid, first)


class ShardCandidates(beam.DoFn):
    """Each shard's own top-k per task: partial top-k before the global combine."""

    def __init__(self, ranking: Ranking, k: int):
        self.ranking, self.k = ranking, k

    def process(self, item: tuple[int, str], duplicates: list):
        index, path = item
        cols = sorted(set(self.ranking.task_columns.values()))
        table = read_columns(path, ["id", "matches_target", *cols])
        eligible = eligible_rows(table, index, self.ranking, duplicates)
        ids = table.column("id").to_pylist()
        for task, col in self.ranking.task_columns.items():
            scores = table.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
            ok = eligible & ~np.isnan(scores)
            rows = np.flatnonzero(ok)
            if len(rows) > self.k:
                rows = rows[np.argpartition(-scores[rows], self.k - 1)[: self.k]]
            for row in rows:
                # Ties break by input position (earlier wins), so the selection is deterministic.
                yield task, (float(scores[row]), (-index, -int(row)), ids[row])


def eligible_rows(table: pa.Table, index: int, ranking: Ranking, duplicates: list) -> np.ndarray:
    """Rows that may be selected: not a target match (unless allowed), not a later duplicate."""
    eligible = np.ones(table.num_rows, dtype=bool)
    if ranking.exclude_matches_target:
        eligible &= ~table.column("matches_target").to_numpy(zero_copy_only=False)
    for (shard, row), _ in duplicates:
        if shard == index:
            eligible[row] = False
    return eligible


def merge_selection(top: list[tuple[str | None, list]], budget: float, eligible: int, skip_top: float = 0.0) -> dict:
    skip = math.floor(skip_top * eligible)
    k = resolve_budget(budget, eligible - skip)
    candidates = {task: [(s, rid) for s, _, rid in items][skip:] for task, items in top}
    return round_robin(candidates, k)


class RewriteShard(beam.DoFn):
    """Set the selection columns of one shard; move later duplicates of an id to the rejects."""

    def __init__(self, out: str, fields: tuple[str, ...] = ()):
        self.folder = RunFolder(out)
        self.fields = tuple(fields)  # the driver's selection fields: rewritten in every shard (null unless picked)

    def process(self, item: tuple[int, str], selection: dict, duplicates: list):
        index, path = item
        table = read_parquet(path)
        metadata = table.schema.metadata
        drop = {row: (rid, first) for (shard, row), (rid, first) in duplicates if shard == index}
        name = path.rsplit("/", 1)[-1]
        if drop:
            keep = np.ones(table.num_rows, dtype=bool)
            keep[list(drop)] = False
            dropped = table.filter(pa.array(~keep))
            rejects = [{"id": rid, "raw": record_to_json(r), "reason": f"duplicate id (first in shard {first[0]}, row {first[1]})",
                        "source": f"{name} row {row}"}
                       for (row, (rid, first)), r in zip(sorted(drop.items()), dropped.to_pylist())]
            write_parquet(self.folder.reject_path(f"duplicates-{name}"),
                          pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA))
            table = table.filter(pa.array(keep))
        ids = table.column("id").to_pylist()
        picked = [selection.get(rid) for rid in ids]
        for field in set(self.fields) | {f for p in picked if p is not None and len(p) > 2 for f in p[2]}:
            i = table.schema.get_field_index(field)
            table = table.set_column(i, table.schema.field(field),
                                     pa.array([p[2].get(field) if p else None for p in picked], table.schema.field(field).type))
        table = table.set_column(table.schema.get_field_index("selected"), table.schema.field("selected"),
                                 pa.array([p is not None for p in picked], pa.bool_()))
        table = table.set_column(table.schema.get_field_index("rank"), table.schema.field("rank"),
                                 pa.array([p[0] if p else None for p in picked], pa.int64()))
        table = table.set_column(table.schema.get_field_index("selected_for"), table.schema.field("selected_for"),
                                 pa.array([p[1] if p else [] for p in picked], pa.list_(pa.string())))
        write_parquet(path, table.replace_schema_metadata(metadata))
        yield int(pc.sum(table.column("selected")).as_py() or 0)


def selection_pipeline(p: beam.Pipeline, out: str, shard_paths: list[str], ranking: Ranking,
                       budget: float, rows: int):
    """Add the selection pass to pipeline ``p`` over the given shard files."""
    from apache_beam.transforms import combiners

    shards = p | "Shards" >> beam.Create(list(enumerate(shard_paths)))
    duplicates = (shards
                  | "Ids" >> beam.ParDo(ShardIds())
                  | "GroupIds" >> beam.GroupByKey()
                  | "LaterDuplicates" >> beam.FlatMap(later_duplicates))
    dup_list = beam.pvalue.AsList(duplicates)
    n_dups = duplicates | "CountDuplicates" >> beam.combiners.Count.Globally()
    # An upper bound: the exact k needs the eligible count, which the pipeline computes.
    k_max = resolve_budget(budget, rows) + math.floor(ranking.skip_top * rows)
    eligible = rows_eligible(shards, ranking, dup_list)
    if ranking.custom is not None:
        selection = (shards
                     | "GatherInputs" >> beam.ParDo(EligibleColumns(ranking), dup_list)
                     | "AllRows" >> beam.combiners.ToList()
                     | "CustomSelect" >> beam.Map(custom_selection, ranking.custom, budget, shard_paths))
    else:
        top = (shards
               | "Candidates" >> beam.ParDo(ShardCandidates(ranking, max(k_max, 1)), dup_list)
               | "TopPerTask" >> combiners.Top.LargestPerKey(max(k_max, 1))
               | "AllTasks" >> beam.combiners.ToList())
        selection = top | "RoundRobin" >> beam.Map(merge_selection, budget, beam.pvalue.AsSingleton(eligible),
                                                   ranking.skip_top)
    written = shards | "Rewrite" >> beam.ParDo(RewriteShard(out, selection_field_names(ranking)),
                                               beam.pvalue.AsSingleton(selection), dup_list)
    return written, n_dups


class EligibleColumns(beam.DoFn):
    """A shard's eligible rows, ``id`` and the custom rule's input columns only."""

    def __init__(self, ranking: Ranking):
        self.ranking = ranking

    def process(self, item: tuple[int, str], duplicates: list):
        index, path = item
        columns = ["id", *ranking_inputs(self.ranking)]
        table = read_columns(path, sorted(set(columns) | {"matches_target"}))
        yield table.filter(pa.array(eligible_rows(table, index, self.ranking, duplicates))).select(columns)


def ranking_inputs(ranking: Ranking) -> list[str]:
    return list(ranking.custom[5])


def selection_field_names(ranking: Ranking) -> tuple[str, ...]:
    """The columns the driving selector sets at selection time (none for plain top-k)."""
    if ranking.custom is None:
        return ()
    from ..selectors import registry

    return tuple(f.name for f in registry.create(ranking.custom[0], ranking.custom[1]).selection_fields())


class ShardRows:
    """Whole records by id, read from the run's shards: for a rule that trains on its picks."""

    def __init__(self, paths: list[str]):
        self.paths = list(paths)

    def __call__(self, ids: list[str]) -> list[dict]:
        wanted = pa.array(sorted(set(ids)), pa.string())
        found: dict[str, dict] = {}
        for path in self.paths:
            table = read_columns(path, ["id", "messages", "text", "extra"])
            for row in table.filter(pc.is_in(table.column("id"), value_set=wanted)).to_pylist():
                found.setdefault(row["id"], row)  # a later duplicate of an id is never eligible
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"ids not in the shards: {missing[:5]}")
        return [found[i] for i in ids]


def custom_selection(tables: list[pa.Table], custom: tuple, budget: float, shard_paths: list[str] = ()) -> dict:
    """Run the driving selector's own rule over every eligible row; id -> (rank, [], extra fields).

    Before ``select`` the selector gets ``pool_rows_``, a :class:`ShardRows` over the shards
    (ids -> records), for rules that need whole records. A JSON report that ``select`` attaches to
    the returned table's schema metadata under ``SELECTION_REPORT_KEY`` is written to
    ``{work_dir}/selection_report.json``, which the run merges into its manifest.
    """
    from ..selectors import registry

    name, params, prepared, targets, context, _ = custom
    selector = registry.create(name, params)
    selector.setup(context)
    selector.fit(targets, prepared)
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        return {}
    selector.pool_rows_ = ShardRows(shard_paths)
    chosen = selector.select(table, resolve_budget(budget, table.num_rows), context)
    report = (chosen.schema.metadata or {}).get(SELECTION_REPORT_KEY)
    if report is not None and context.work_dir:
        write_bytes(f"{context.work_dir.rstrip('/')}/{SELECTION_REPORT}", report)
    extra = [f.name for f in selector.selection_fields()]
    ids = chosen.column("id").to_pylist()
    values = {f: chosen.column(f).to_pylist() for f in extra}
    return {rid: (rank, [], {f: values[f][i] for f in extra}) for i, (rank, rid) in enumerate(enumerate(ids, start=1))}


def rows_eligible(shards, ranking: Ranking, dup_list):
    """How many rows may be selected: not a target match, not a later duplicate."""

    def count(item, duplicates):
        index, path = item
        return int(eligible_rows(read_columns(path, ["matches_target"]), index, ranking, duplicates).sum())

    return (shards | "Eligible" >> beam.Map(count, dup_list)
            | "SumEligible" >> beam.CombineGlobally(sum))
