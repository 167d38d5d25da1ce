"""The selection pass: a cheap second pipeline over finished shards (scores as columns).

It reads only ids and score columns, finds ids repeated across shards, takes each task's
top-k through Beam's combiners, merges tasks round-robin with dedupe (RDS+), and rewrites
each shard's ``selected``/``rank``/``selected_for`` columns. Only ids and scores cross a
shuffle, never whole records, so memory does not grow with record size. ``tamis reselect``
runs this pass alone with a new budget.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..schemas.output import REJECT_SCHEMA
from ..schemas.records import record_to_json
from ..selectors import registry
from ..selectors.base import RunContext
from ..selectors.rules import SELECTION_REPORT, Budget, Pick, Resolution, Rule, TableRule, TopK, query_column
from ..io.filesystems import read_parquet, write_bytes
from ..io.runfolder import RunFolder, write_parquet



@dataclass(frozen=True)
class Driver:
    """What pass 2 needs to rebuild the driving selector for a :class:`TableRule` (set up as on a worker)."""

    name: str
    params: dict
    prepared: Any
    targets: dict | None
    context: RunContext


@dataclass(frozen=True)
class Ranking:
    """What pass 2 runs: the score column per task, the driving selector's rule, the budget."""

    task_columns: dict[str | None, str]  # task (None when untargeted) -> score column
    rule: Rule = TopK()
    budget: Budget = Budget(0.05)
    exclude_matches_target: bool = True
    driver: Driver | None = None  # for a TableRule

    def resolve(self, eligible: int) -> Resolution:
        return self.budget.resolve(eligible, self.rule.skip, self.rule.budget_per_task)


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
    """Each shard's own top-k per task (or per target example): partial top-k before the global combine."""

    def __init__(self, ranking: Ranking, k: int):
        self.ranking, self.k = ranking, k

    def score_lists(self, table: pa.Table):
        """(key, scores) per candidate list: per task, or per (task, target example)."""
        for task, col in self.ranking.task_columns.items():
            if self.ranking.rule.over == "queries":
                column = table.column(query_column(col)).combine_chunks()
                matrix = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
                matrix = matrix.reshape(table.num_rows, -1) if table.num_rows else matrix.reshape(0, 0)
                for j in range(matrix.shape[1]):
                    yield (task, j), matrix[:, j]
            else:
                yield task, table.column(col).to_numpy(zero_copy_only=False).astype(np.float64)

    def process(self, item: tuple[int, str], duplicates: list):
        index, path = item
        cols = sorted(set(self.ranking.task_columns.values()))
        if self.ranking.rule.over == "queries":
            cols = [query_column(c) for c in cols]
        table = read_columns(path, ["id", "matches_target", *cols])
        eligible = eligible_rows(table, index, self.ranking, duplicates)
        ids = table.column("id").to_pylist()
        for key, scores in self.score_lists(table):
            ok = eligible & ~np.isnan(scores)
            rows = np.flatnonzero(ok)
            if len(rows) > self.k:
                rows = rows[np.argpartition(-scores[rows], self.k - 1)[: self.k]]
            for row in rows:
                # Ties break by input position (earlier wins), so the selection is deterministic.
                yield key, (float(scores[row]), (-index, -int(row)), ids[row])


def eligible_rows(table: pa.Table, index: int, ranking: Ranking, duplicates: list) -> np.ndarray:
    """Rows that may be selected: not a target match (unless allowed), not a later duplicate."""
    eligible = np.ones(table.num_rows, dtype=bool)
    if ranking.exclude_matches_target:
        eligible &= ~table.column("matches_target").to_numpy(zero_copy_only=False)
    for (shard, row), _ in duplicates:
        if shard == index:
            eligible[row] = False
    return eligible


def merge_selection(top: list[tuple[str | None, list]], ranking: Ranking, eligible: int) -> dict[str, Pick]:
    """The rule's picks from each task's global candidates (score, tie key, id), best first."""
    return ranking.rule.pick({task: [(s, rid) for s, _, rid in items] for task, items in top}, ranking.resolve(eligible))


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
        for field in set(self.fields) | {f for p in picked if p is not None for f in p.fields}:
            i = table.schema.get_field_index(field)
            table = table.set_column(i, table.schema.field(field),
                                     pa.array([p.fields.get(field) if p else None for p in picked], table.schema.field(field).type))
        table = table.set_column(table.schema.get_field_index("selected"), table.schema.field("selected"),
                                 pa.array([p is not None for p in picked], pa.bool_()))
        table = table.set_column(table.schema.get_field_index("rank"), table.schema.field("rank"),
                                 pa.array([p.rank if p else None for p in picked], pa.int64()))
        table = table.set_column(table.schema.get_field_index("selected_for"), table.schema.field("selected_for"),
                                 pa.array([list(p.tasks) if p else [] for p in picked], pa.list_(pa.string())))
        write_parquet(path, table.replace_schema_metadata(metadata))
        yield int(pc.sum(table.column("selected")).as_py() or 0)


def selection_pipeline(p: beam.Pipeline, out: str, shard_paths: list[str], ranking: Ranking, rows: int):
    """Add the selection pass to pipeline ``p`` over the given shard files (``rows``: all their rows)."""
    from apache_beam.transforms import combiners

    shards = p | "Shards" >> beam.Create(list(enumerate(shard_paths)))
    duplicates = (shards
                  | "Ids" >> beam.ParDo(ShardIds())
                  | "GroupIds" >> beam.GroupByKey()
                  | "LaterDuplicates" >> beam.FlatMap(later_duplicates))
    dup_list = beam.pvalue.AsList(duplicates)
    n_dups = duplicates | "CountDuplicates" >> beam.combiners.Count.Globally()
    eligible = beam.pvalue.AsSingleton(rows_eligible(shards, ranking, dup_list))
    if isinstance(ranking.rule, TableRule):
        selection = (shards
                     | "GatherInputs" >> beam.ParDo(EligibleColumns(ranking), dup_list)
                     | "AllRows" >> beam.combiners.ToList()
                     | "TableRule" >> beam.Map(table_selection, ranking, shard_paths))
    else:
        # An upper bound on each task's candidates: the exact k needs the eligible count, which the pipeline computes.
        k_max = max(ranking.budget.upper_bound(rows, ranking.rule.skip), 1)
        top = (shards
               | "Candidates" >> beam.ParDo(ShardCandidates(ranking, k_max), dup_list)
               | "TopPerTask" >> combiners.Top.LargestPerKey(k_max)
               | "AllTasks" >> beam.combiners.ToList())
        selection = top | "TopK" >> beam.Map(merge_selection, ranking, eligible)
    fields = tuple(f.name for f in ranking.rule.fields) if isinstance(ranking.rule, TableRule) else ()
    written = shards | "Rewrite" >> beam.ParDo(RewriteShard(out, fields), beam.pvalue.AsSingleton(selection), dup_list)
    return written, n_dups


class EligibleColumns(beam.DoFn):
    """A shard's eligible rows, ``id`` and the table rule's input columns only."""

    def __init__(self, ranking: Ranking):
        self.ranking = ranking

    def process(self, item: tuple[int, str], duplicates: list):
        index, path = item
        columns = ["id", *self.ranking.rule.inputs]
        table = read_columns(path, sorted(set(columns) | {"matches_target"}))
        yield table.filter(pa.array(eligible_rows(table, index, self.ranking, duplicates))).select(columns)


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


def table_selection(tables: list[pa.Table], ranking: Ranking, shard_paths: list[str] = ()) -> dict[str, Pick]:
    """Run a :class:`TableRule` over every eligible row; its report goes to ``{work_dir}/selection_report.json``.

    The driving selector is rebuilt and set up as on a worker, and declares its rule again: a rule
    that trains on its picks (kMQ's refinement) uses the selector's prepared models.
    """
    driver = ranking.driver
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        return {}
    selector = registry.create(driver.name, driver.params)
    selector.setup(driver.context, driver.prepared, driver.targets)
    choice = selector.selection_rule().choose(table, ranking.resolve(table.num_rows).rows, driver.context.seed,
                                              ShardRows(shard_paths))
    if choice.report is not None and driver.context.work_dir:
        write_bytes(f"{driver.context.work_dir.rstrip('/')}/{SELECTION_REPORT}", json.dumps(choice.report).encode())
    return choice.picks()


def rows_eligible(shards, ranking: Ranking, dup_list):
    """How many rows may be selected: not a target match, not a later duplicate."""

    def count(item, duplicates):
        index, path = item
        return int(eligible_rows(read_columns(path, ["matches_target"]), index, ranking, duplicates).sum())

    return (shards | "Eligible" >> beam.Map(count, dup_list)
            | "SumEligible" >> beam.CombineGlobally(sum))
