"""The selection pass: a cheap second pipeline over finished shards (scores as columns).

It reads only ids and score columns, finds ids repeated across shards, takes each task's
top-k through Beam's combiners, merges tasks round-robin with dedupe (RDS+), and writes each
chunk's selection (``selected``/``rank``/``selected_for``) to a small attribute file beside
its shard, never into it. Only ids and scores cross a shuffle, never whole records, so memory
does not grow with record size, and a new selection writes bytes in proportion to the rows,
not to their text. ``tamis reselect`` runs this pass alone with a new budget.
"""

import json
from dataclasses import dataclass
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..schemas.output import REJECT_SCHEMA, selection_schema
from ..schemas.records import record_to_json
from ..selectors import registry
from ..selectors.base import RunContext
from ..selectors.rules import SELECTION_REPORT, Budget, Pick, Resolution, Rule, TableRule, TopK, query_column
from ..io.filesystems import exists, read_parquet, write_bytes
from ..io.runfolder import SELECTION, RunFolder, write_parquet


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


class ShardIds(beam.DoFn):
    """(id, (shard index, row)) for every row: the input to cross-shard duplicate detection."""

    def __init__(self, out: str):
        self.folder = RunFolder(out)

    def process(self, item: tuple[int, str]) -> Iterator[tuple[str, tuple[int, int]]]:
        index, chunk = item
        ids = self.folder.read_chunk(chunk, ["id"], sets=[]).column("id").to_pylist()
        for row, rid in enumerate(ids):
            yield rid, (index, row)


def later_duplicates(item: tuple[str, Iterable[tuple[int, int]]]) -> Iterator[tuple[tuple[int, int], tuple[str, tuple[int, int]]]]:
    """For an id seen more than once, every position after the first (input order)."""
    rid, positions = item
    if len(positions) > 1:
        first, *rest = sorted(positions)
        for pos in rest:
            yield pos, (rid, first)


@dataclass
class Candidates:
    """Rows competing for a task, as arrays: the shuffle carries one of these per shard, not a
    tuple per row. Best first means the highest score, ties to the earlier input position."""

    scores: np.ndarray  # float64
    shard: np.ndarray  # int64: the shard's position among the run's shards
    row: np.ndarray  # int64: the row within its shard
    ids: np.ndarray  # object: the rows' ids

    def best(self, k: int) -> "Candidates":
        order = np.lexsort((self.row, self.shard, -self.scores))[:k]
        return Candidates(self.scores[order], self.shard[order], self.row[order], self.ids[order])

    @staticmethod
    def concat(parts: list["Candidates"]) -> "Candidates":
        parts = [p for p in parts if len(p.ids)]
        if not parts:
            return Candidates(np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, dtype=object))
        if len(parts) == 1:
            return parts[0]
        return Candidates(np.concatenate([p.scores for p in parts]), np.concatenate([p.shard for p in parts]),
                          np.concatenate([p.row for p in parts]), np.concatenate([p.ids for p in parts]))

    def items(self) -> list[tuple[float, str]]:
        return list(zip(self.scores.tolist(), self.ids.tolist()))


class ShardCandidates(beam.DoFn):
    """Each shard's own top-k per task (or per target example): partial top-k before the global combine."""

    def __init__(self, out: str, ranking: Ranking, k: int, layout: "ScoreLayout"):
        self.folder, self.ranking, self.k, self.layout = RunFolder(out), ranking, k, layout

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

    def process(self, item: tuple[int, str], duplicates: list) -> Iterator[tuple[Any, Candidates]]:
        index, chunk = item
        cols = sorted(set(self.ranking.task_columns.values()))
        if self.ranking.rule.over == "queries":
            cols = [query_column(c) for c in cols]
        table = self.folder.read_chunk(chunk, ["id", *self.layout.matches, *cols], list(self.layout.sets))
        eligible = eligible_rows(table, index, self.ranking, duplicates)
        ids = np.array(table.column("id").to_pylist() + [None], dtype=object)[:-1]  # strings, not characters
        for key, scores in self.score_lists(table):
            rows = np.flatnonzero(eligible & ~np.isnan(scores))
            found = Candidates(scores[rows], np.full(len(rows), index, dtype=np.int64), rows.astype(np.int64),
                               ids[rows])
            yield key, found.best(self.k)  # one element per shard and key: no per-row cost in the shuffle


class TopCandidates(beam.CombineFn):
    """The best ``k`` of every shard's candidates for one key (a task, or a target example).

    Blocks are kept as they come and cut to the best ``k`` only when they hold twice that many,
    so a large budget sorts a few times in all, not once per shard."""

    def __init__(self, k: int):
        self.k = k

    def create_accumulator(self) -> list[Candidates]:
        return []

    def _compact(self, parts: list[Candidates]) -> list[Candidates]:
        if sum(len(p.ids) for p in parts) > 2 * self.k:
            return [Candidates.concat(parts).best(self.k)]
        return parts

    def add_input(self, acc: list[Candidates], found: Candidates) -> list[Candidates]:
        return self._compact([*acc, found])

    def merge_accumulators(self, accs) -> list[Candidates]:
        return self._compact([p for acc in accs for p in acc])

    def extract_output(self, acc: list[Candidates]) -> Candidates:
        return Candidates.concat(acc).best(self.k)


def eligible_rows(table: pa.Table, index: int, ranking: Ranking, duplicates: list) -> np.ndarray:
    """Rows that may be selected: not a target match (unless allowed), not a later duplicate."""
    eligible = np.ones(table.num_rows, dtype=bool)
    if ranking.exclude_matches_target:  # the run's targets, and each added task's (matches_target_<task>)
        for name in table.column_names:
            if name.startswith("matches_target"):
                eligible &= ~table.column(name).to_numpy(zero_copy_only=False)
    for (shard, row), _ in duplicates:
        if shard == index:
            eligible[row] = False
    return eligible


def merge_selection(top: list[tuple[Any, Candidates]], ranking: Ranking, eligible: int) -> pa.Table:
    """The rule's picks from each task's global candidates, best first."""
    picks = ranking.rule.pick({task: found.items() for task, found in top}, ranking.resolve(eligible))
    return picks_table(picks, rule_fields(ranking))


def rule_fields(ranking: Ranking) -> tuple[pa.Field, ...]:
    """The driving rule's own selection fields (kMQ's round), or none."""
    return tuple(ranking.rule.fields) if isinstance(ranking.rule, TableRule) else ()


def picks_table(picks: dict[str, Pick], fields: tuple[pa.Field, ...] = ()) -> pa.Table:
    """The picks as one table (id, rank, selected_for, the rule's fields): it goes to every shard's
    writer as a side input, which a dict of a million small objects would make slow to pass."""
    ids = list(picks)
    data = {"id": pa.array(ids, pa.string()), "rank": pa.array([picks[i].rank for i in ids], pa.int64()),
            "selected_for": pa.array([list(picks[i].tasks) for i in ids], pa.list_(pa.string()))}
    for f in fields:
        data[f.name] = pa.array([picks[i].fields.get(f.name) for i in ids], f.type)
    return pa.table(data)


@dataclass(frozen=True)
class ScoreLayout:
    """Where a run's scores lie, listed once when the pass is built (not once per shard and step):
    the attribute sets that hold scores (tasks added later; not the selection being replaced), and
    the target-match columns (``matches_target`` and each added task's)."""

    sets: tuple[str, ...]
    matches: tuple[str, ...]

    @classmethod
    def of(cls, folder: RunFolder) -> "ScoreLayout":
        return cls(tuple(n for n in folder.attribute_sets() if n != SELECTION), tuple(folder.match_columns()))


def empty_lists(n: int) -> pa.Array:
    """``n`` empty lists of strings (a row picked for no task), built without a Python list."""
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()))


class WriteSelection(beam.DoFn):
    """Write one chunk's selection beside its shard; move later duplicates of an id to the rejects.

    The shard itself is rewritten only when it holds a later duplicate, which only the first
    selection of a run can find: after that every id is unique, so a reselect writes the small
    selection files alone.
    """

    def __init__(self, out: str, rule_fields: tuple[pa.Field, ...] = ()):
        self.folder = RunFolder(out)
        self.rule_fields = tuple(rule_fields)  # the driver's own selection fields (null unless picked)

    def process(self, item: tuple[int, str], selection: pa.Table, duplicates: list) -> Iterator[int]:
        index, chunk = item
        drop = {row: (rid, first) for (shard, row), (rid, first) in duplicates if shard == index}
        if drop:
            self.drop_rows(chunk, drop)
        ids = self.folder.read_chunk(chunk, ["id"], sets=[]).column("id")
        where = pc.index_in(ids, value_set=selection.column("id"))  # null: not selected
        selected = pc.is_valid(where)
        schema = selection_schema(list(self.rule_fields))
        n = len(ids)
        if selection.num_rows and n:
            picked = selection.take(pc.fill_null(where, 0))  # each row's pick (any, where not selected)
            columns = {"rank": pc.if_else(selected, picked.column("rank"), pa.scalar(None, pa.int64())),
                       "selected_for": pc.if_else(selected, picked.column("selected_for"), empty_lists(n))}
            for field in self.rule_fields:
                columns[field.name] = pc.if_else(selected, picked.column(field.name).cast(field.type),
                                                 pa.scalar(None, field.type))
        else:
            columns = {"rank": pa.nulls(n, pa.int64()), "selected_for": empty_lists(n),
                       **{f.name: pa.nulls(n, f.type) for f in self.rule_fields}}
        columns.update({"id": ids, "selected": selected})
        write_parquet(self.folder.attribute_path(SELECTION, chunk),
                      pa.table([columns[f.name] for f in schema], schema=schema))
        yield int(pc.sum(selected).as_py() or 0)

    def drop_rows(self, chunk: str, drop: dict) -> None:
        """Move rows to the rejects (a later duplicate of an id), from the shard and every attribute set."""
        path = self.folder.shard_path(chunk)
        table = read_parquet(path)
        keep = np.ones(table.num_rows, dtype=bool)
        keep[list(drop)] = False
        dropped = table.filter(pa.array(~keep))
        name = path.rsplit("/", 1)[-1]
        rejects = [{"id": rid, "raw": record_to_json(r), "reason": f"duplicate id (first in shard {first[0]}, row {first[1]})",
                    "source": f"{name} row {row}"}
                   for (row, (rid, first)), r in zip(sorted(drop.items()), dropped.to_pylist())]
        write_parquet(self.folder.reject_path(f"duplicates-{name}"), pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA))
        for attribute in self.folder.attribute_sets():
            other = self.folder.attribute_path(attribute, chunk)
            if exists(other):
                part = read_parquet(other)
                if part.num_rows == table.num_rows:
                    write_parquet(other, part.filter(pa.array(keep)).replace_schema_metadata(part.schema.metadata))
        write_parquet(path, table.filter(pa.array(keep)).replace_schema_metadata(table.schema.metadata))


def chunk_name(path_or_name: str) -> str:
    """``part-0000-00001`` from a shard's path or its name."""
    return path_or_name.rsplit("/", 1)[-1].removesuffix(".parquet")


def selection_pipeline(p: beam.Pipeline, out: str, chunks: list[str], ranking: Ranking, rows: int,
                       unique_ids: bool = False, layout: ScoreLayout | None = None):
    """Add the selection pass to pipeline ``p`` over the given chunks (names, or their shards'
    paths; ``rows``: all their rows). ``unique_ids``: the shards are known to repeat no id (an
    earlier selection removed the repeats and they have not changed since), so none is searched for.
    ``layout``: where the scores lie; by default listed from the run folder now."""
    chunks = [chunk_name(c) for c in chunks]
    shards = p | "Shards" >> beam.Create(list(enumerate(chunks)))
    if unique_ids:
        duplicates = p | "NoDuplicates" >> beam.Create([])
    else:
        duplicates = (shards
                      | "Ids" >> beam.ParDo(ShardIds(out))
                      | "GroupIds" >> beam.GroupByKey()
                      | "LaterDuplicates" >> beam.FlatMap(later_duplicates))
    dup_list = beam.pvalue.AsList(duplicates)
    n_dups = duplicates | "CountDuplicates" >> beam.combiners.Count.Globally()
    layout = layout or ScoreLayout.of(RunFolder(out))
    eligible = beam.pvalue.AsSingleton(rows_eligible(out, shards, ranking, dup_list, layout))
    if isinstance(ranking.rule, TableRule):
        selection = (shards
                     | "GatherInputs" >> beam.ParDo(EligibleColumns(out, ranking, layout), dup_list)
                     | "AllRows" >> beam.combiners.ToList()
                     | "TableRule" >> beam.Map(table_selection, ranking, out, chunks))
    else:
        # An upper bound on each task's candidates: the exact k needs the eligible count, which the pipeline computes.
        k_max = max(ranking.budget.upper_bound(rows, ranking.rule.skip), 1)
        top = (shards
               | "Candidates" >> beam.ParDo(ShardCandidates(out, ranking, k_max, layout), dup_list)
               | "TopPerTask" >> beam.CombinePerKey(TopCandidates(k_max))
               | "AllTasks" >> beam.combiners.ToList())
        selection = top | "TopK" >> beam.Map(merge_selection, ranking, eligible)
    written = shards | "WriteSelection" >> beam.ParDo(WriteSelection(out, rule_fields(ranking)),
                                                      beam.pvalue.AsSingleton(selection), dup_list)
    return written, n_dups


class EligibleColumns(beam.DoFn):
    """A chunk's eligible rows, ``id`` and the table rule's input columns only."""

    def __init__(self, out: str, ranking: Ranking, layout: ScoreLayout):
        self.folder, self.ranking, self.layout = RunFolder(out), ranking, layout

    def process(self, item: tuple[int, str], duplicates: list) -> Iterator[pa.Table]:
        index, chunk = item
        columns = ["id", *self.ranking.rule.inputs]
        table = self.folder.read_chunk(chunk, sorted(set(columns) | set(self.layout.matches)), list(self.layout.sets))
        yield table.filter(pa.array(eligible_rows(table, index, self.ranking, duplicates))).select(columns)


class ShardRows:
    """Whole records by id, read from the run's shards: for a rule that trains on its picks."""

    def __init__(self, out: str, chunks: list[str]):
        self.folder, self.chunks = RunFolder(out), list(chunks)

    def __call__(self, ids: list[str]) -> list[dict]:
        wanted = pa.array(sorted(set(ids)), pa.string())
        found: dict[str, dict] = {}
        for chunk in self.chunks:
            table = self.folder.read_chunk(chunk, ["id", "messages", "text", "extra"], sets=[])
            for row in table.filter(pc.is_in(table.column("id"), value_set=wanted)).to_pylist():
                found.setdefault(row["id"], row)  # a later duplicate of an id is never eligible
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"ids not in the shards: {missing[:5]}")
        return [found[i] for i in ids]


def table_selection(tables: list[pa.Table], ranking: Ranking, out: str, chunks: list[str] = ()) -> pa.Table:
    """Run a :class:`TableRule` over every eligible row; its report goes to ``{work_dir}/selection_report.json``.

    The driving selector is rebuilt and set up as on a worker, and declares its rule again: a rule
    that trains on its picks (kMQ's refinement) uses the selector's prepared models.
    """
    driver = ranking.driver
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        return picks_table({}, rule_fields(ranking))
    selector = registry.create(driver.name, driver.params)
    selector.setup(driver.context, driver.prepared, driver.targets)
    choice = selector.selection_rule().choose(table, ranking.resolve(table.num_rows).rows, driver.context.seed,
                                              ShardRows(out, chunks))
    if choice.report is not None and driver.context.work_dir:
        write_bytes(f"{driver.context.work_dir.rstrip('/')}/{SELECTION_REPORT}", json.dumps(choice.report).encode())
    return picks_table(choice.picks(), rule_fields(ranking))


def rows_eligible(out: str, shards, ranking: Ranking, dup_list, layout: ScoreLayout):
    """How many rows may be selected: not a target match, not a later duplicate."""
    folder = RunFolder(out)

    def count(item: tuple[int, str], duplicates: list) -> int:
        index, chunk = item
        table = folder.read_chunk(chunk, list(layout.matches), list(layout.sets))
        return int(eligible_rows(table, index, ranking, duplicates).sum())

    return (shards | "Eligible" >> beam.Map(count, dup_list)
            | "SumEligible" >> beam.CombineGlobally(sum))
