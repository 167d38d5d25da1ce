"""Selection rules: how pass 2 turns score columns into selected rows, as plain data.

A selector declares its rule (:meth:`tamis.selectors.Selector.selection_rule`); the pipeline
(``tamis/pipeline/selection.py``) runs it with Beam. Everything here is pure: the same rule gives
the same rows whatever the runner, sharding or row order.

* :class:`Budget` resolves ``--budget`` (a fraction or a count) against the eligible rows, in this
  one place: the selection and the run's notes both use :meth:`Budget.resolve`.
* :class:`SkipWindow`: leave out the highest-scored fraction of the eligible rows first (EL2N's
  offset window: the very top is often label noise).
* :class:`TopK`: the best rows by score. With several tasks, tasks take turns (RDS+'s round-robin),
  or each task takes its own top share (``budget_per_task``, as the LESS and CoLoR-Filter
  references do).
* :class:`TableRule`: a rule that sees every eligible row's input columns at once, such as
  kMQ's per-cluster quotas (:class:`tamis.selectors.kmeans.ClusterQuotas`).
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

# The JSON report of a rule (per-round weights and the like), in the work folder and the manifest.
SELECTION_REPORT = "selection_report.json"


@dataclass(frozen=True)
class SkipWindow:
    """Leave out this fraction of the eligible rows from the top before taking the budget."""

    fraction: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"the skip window is a fraction in [0, 1), got {self.fraction!r}")

    def rows(self, eligible: int) -> int:
        return math.floor(self.fraction * eligible)


@dataclass(frozen=True)
class Resolution:
    """What a budget came to on one run: the eligible rows, the rows skipped, the rows to select."""

    budget: float
    eligible: int  # accepted rows that may be selected: not a target match, not a later duplicate
    skipped: int  # the skip window: highest-scored eligible rows left out
    rows: int  # rows to select (per task when the budget is per task)
    skip_fraction: float = 0.0
    per_task: bool = False

    def notes(self) -> list[str]:
        """Outcomes a user may not expect, in words (the CLI prints them, the manifest keeps them)."""
        each = " per task" if self.per_task else ""
        if self.budget >= 1 and int(self.budget) > self.eligible - self.skipped:
            return [f"budget {int(self.budget)} is more than the {self.eligible - self.skipped} eligible rows"
                    + (" left after the skip window" if self.skipped else "")
                    + f": at most {self.rows} can be selected{each}"]
        if self.rows == 0:
            return [f"budget {self.budget:g} of {self.eligible} eligible rows rounds down to 0 rows: nothing selected "
                    "(give a row count instead)"]
        if self.skipped:
            return [f"budget {self.budget:g} of {self.eligible} eligible rows: {self.rows} row"
                    f"{'s' if self.rows != 1 else ''} selected{each}, after leaving out the {self.skipped} "
                    f"highest-scored (skip window {self.skip_fraction:g})"]
        return []


@dataclass(frozen=True)
class Budget:
    """``--budget``: below 1 a fraction of the eligible rows (floored), else a row count.

    The skip window comes off the top and does not change what the fraction is of; the rows
    selected are capped by the eligible rows left after it.
    """

    value: float

    def __post_init__(self):
        if not self.value >= 0:
            raise ValueError(f"the budget must be a fraction or a count >= 0, got {self.value!r}")

    def resolve(self, eligible: int, skip: SkipWindow = SkipWindow(), per_task: bool = False) -> Resolution:
        skipped = skip.rows(eligible)
        wanted = math.floor(self.value * eligible) if self.value < 1 else int(self.value)
        return Resolution(self.value, eligible, skipped, max(0, min(wanted, eligible - skipped)), skip.fraction,
                          per_task)

    def upper_bound(self, rows: int, skip: SkipWindow = SkipWindow()) -> int:
        """Candidates each task needs per shard, before the eligible count is known (``rows`` >= eligible)."""
        return self.resolve(rows, skip).rows + skip.rows(rows)


@dataclass(frozen=True)
class Pick:
    """One selected row: its rank (from 1), the tasks it was picked for, and rule-set fields."""

    rank: int
    tasks: tuple[str, ...] = ()
    fields: dict = field(default_factory=dict)


class Rule:
    """Base of the selection rules."""

    skip: SkipWindow = SkipWindow()
    budget_per_task: bool = False


def query_column(score_column: str) -> str:
    """The list column of a row's score against each target example, beside a task's score column."""
    return "queries_" + score_column.removeprefix("score_")


@dataclass(frozen=True)
class TopK(Rule):
    """The best rows by score: global top-k for one column; with several tasks, by turns.

    ``over="queries"`` goes round-robin over every target example of a task instead (the RDS+
    reference's main recipe: each target example takes its best remaining row in turn); the
    selector writes a row's score against each example in ``query_column(score column)``.
    ``duplicate`` says what a task (or target example) does when its best remaining row was
    already taken: ``"next"`` takes its next row (tamis's default), ``"turn"`` gives up its
    turn (the RDS+ reference). ``budget_per_task`` gives each task the whole budget
    independently (the LESS and CoLoR-Filter references); a row picked by several tasks counts once.
    """

    skip: SkipWindow = SkipWindow()
    duplicate: Literal["next", "turn"] = "next"
    budget_per_task: bool = False
    over: Literal["tasks", "queries"] = "tasks"

    def __post_init__(self):
        if self.duplicate not in ("next", "turn"):
            raise ValueError(f"duplicate must be 'next' or 'turn', got {self.duplicate!r}")
        if self.over not in ("tasks", "queries"):
            raise ValueError(f"over must be 'tasks' or 'queries', got {self.over!r}")

    def pick(self, candidates: dict, resolution: Resolution) -> dict[str, Pick]:
        """``candidates``: (score, id) lists, best first, skip window not yet taken off, keyed by
        task (``None`` when untargeted), or by (task, target example) with ``over="queries"``."""
        ranked = {t: items[resolution.skipped:] for t, items in candidates.items()}
        turn = self.duplicate == "turn"
        if self.budget_per_task:
            return per_task(ranked, resolution.rows, uses_turn=turn)
        return round_robin(ranked, resolution.rows, uses_turn=turn)


def _task(key):
    """The task of a candidate list's key: the task itself, or the task of a (task, example) pair."""
    return key[0] if isinstance(key, tuple) else key


def _task_order(candidates) -> list:
    return sorted(candidates, key=lambda t: ("" if _task(t) is None else _task(t), t[1] if isinstance(t, tuple) else 0))


def round_robin(candidates: dict[str | None, list[tuple[float, str]]], k: int,
                uses_turn: bool = False) -> dict[str, Pick]:
    """Tasks in turn (sorted by name), each its best remaining id, until k ids are taken.

    A task that meets an id already taken records itself on it, then takes its next id, or with
    ``uses_turn`` ends its turn there. One task is plain top-k. Keys may be (task, example)
    pairs: every target example then takes its turn, and the pick records its task.
    """
    pointers = {t: 0 for t in candidates}
    chosen: dict[str, Pick] = {}
    active = _task_order(candidates)
    while len(chosen) < k and active:
        for task in list(active):
            if len(chosen) >= k:
                break
            items, name = candidates[task], _task(task)
            while pointers[task] < len(items):
                rid = items[pointers[task]][1]
                pointers[task] += 1
                if rid not in chosen:
                    chosen[rid] = Pick(len(chosen) + 1, () if name is None else (name,))
                    break
                if name is not None and name not in chosen[rid].tasks:
                    chosen[rid] = Pick(chosen[rid].rank, chosen[rid].tasks + (name,))
                if uses_turn:
                    break
            else:
                active.remove(task)
    return chosen


def per_task(candidates: dict, k: int, uses_turn: bool = False) -> dict[str, Pick]:
    """Each task's own k rows (its top k, or round-robin over its target examples); ranks
    interleave the tasks (each task's 1st, then each one's 2nd)."""
    groups: dict = {}
    for key in candidates:
        groups.setdefault(_task(key), {})[key] = candidates[key]
    own = {task: sorted(round_robin(group, k, uses_turn).items(), key=lambda kv: kv[1].rank)
           for task, group in groups.items()}
    chosen: dict[str, Pick] = {}
    for j in range(k):
        for task in _task_order(own):
            if j >= len(own[task]):
                continue
            rid = own[task][j][0]
            if rid in chosen:
                if task is not None and task not in chosen[rid].tasks:
                    chosen[rid] = Pick(chosen[rid].rank, chosen[rid].tasks + (task,))
            else:
                chosen[rid] = Pick(len(chosen) + 1, () if task is None else (task,))
    return chosen


@dataclass(frozen=True)
class Choice:
    """What a :class:`TableRule` chose: ids best first, the rule-set fields per chosen id, a JSON report."""

    ids: list[str]
    fields: dict[str, list] = field(default_factory=dict)
    report: dict | None = None

    def picks(self) -> dict[str, Pick]:
        return {rid: Pick(rank, (), {f: v[i] for f, v in self.fields.items()})
                for i, (rank, rid) in enumerate(enumerate(self.ids, start=1))}


class TableRule(Rule):
    """A rule that sees every eligible row at once: ``id`` and the columns in ``inputs``.

    Subclasses set ``inputs`` (columns read) and ``fields`` (columns the rule sets on chosen
    rows; the selector declares them among its columns, written null by scoring) and implement
    :meth:`choose`. ``records`` reads whole rows by id from the run's shards, for a rule that
    trains on its picks.
    """

    inputs: tuple[str, ...] = ()
    fields: tuple[pa.Field, ...] = ()

    def choose(self, table: pa.Table, k: int, seed: int, records: Callable[[list[str]], list[dict]]) -> Choice:
        raise NotImplementedError


# -- kMQ: per-cluster quotas (Yu et al., 2024) -------------------------------------------------------
@dataclass(frozen=True)
class ClusterQuotas(TableRule):
    """Equal quotas per cluster (redistributed when a cluster runs short), drawn within each
    cluster with probability proportional to exp(quality / temperature) (Gumbel-top-k, keys
    fixed by (seed, id)). With ``rounds > 1``, later rounds weight the clusters by a softmax of
    their loss gaps (``loss_ratios``: the selector's proxy trained on the picks so far)."""

    quality: str | None = None  # another selector's score column, or None (uniform)
    temperature: float = 1.0
    standardize: bool = True
    rounds: int = 1
    gap_temperature: float = 0.1
    n_clusters: int = 0  # the fitted k (at least every cluster id seen)
    loss_ratios: Callable[[list[dict]], np.ndarray] | None = field(default=None, compare=False, repr=False)
    fields = (pa.field("selection_round", pa.int32()),)

    @property
    def inputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("cluster",) + (() if self.quality is None else (self.quality,))

    def choose(self, table: pa.Table, k: int, seed: int, records: Callable[[list[str]], list[dict]]) -> Choice:
        table = table.sort_by("id")  # the rows arrive in shard order; the draw must not depend on it
        ids = table.column("id").to_pylist()
        clusters = table.column("cluster").to_numpy(zero_copy_only=False).astype(np.int64)
        if self.quality is None:
            logits = np.zeros(len(ids))
        elif self.quality not in table.column_names:
            raise ValueError(f"kmeans: quality column {self.quality!r} is not in this run "
                             f"(it has: {', '.join(c for c in table.column_names if c != 'id')})")
        else:
            quality = table.column(self.quality).to_numpy(zero_copy_only=False)
            logits = quality_logits(quality, self.temperature, self.standardize)
        keys = logits + gumbel_keys(ids, seed)
        n_clusters = max(self.n_clusters, int(clusters.max()) + 1 if len(ids) else 0)
        rounds = max(1, min(self.rounds, k))
        sizes = [k // rounds + (r < k % rounds) for r in range(rounds)]
        taken = np.zeros(len(ids), dtype=bool)
        order: list[np.ndarray] = []
        report = []
        weights, gaps = np.full(n_clusters, 1.0 / n_clusters), None
        for r, size in enumerate(sizes, start=1):
            if r > 1:
                if self.loss_ratios is None:
                    raise ValueError("kmeans: refinement needs the selector's loss_ratios (a set-up selector)")
                chosen = np.concatenate(order)
                gaps = cluster_gaps(clusters[chosen], self.loss_ratios(records([ids[i] for i in chosen])), n_clusters)
                weights = softmax(gaps, self.gap_temperature)
            picked, quotas = draw(clusters, keys, taken, size, weights, n_clusters)
            taken[picked] = True
            order.append(picked)
            report.append({"round": r, "selected": int(len(picked)), "cluster_weights": [float(w) for w in weights],
                           "quotas": [int(q) for q in quotas],
                           "loss_gap": None if gaps is None else [float(g) for g in gaps]})
        chosen = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
        rounds_of = [r for r, p in enumerate(order, start=1) for _ in range(len(p))]
        return Choice([ids[i] for i in chosen], {"selection_round": rounds_of},
                      {"selector": "kmeans", "k": int(n_clusters), "budget": int(k), "eligible": len(ids),
                       "quality": self.quality or "uniform", "temperature": self.temperature, "rounds": report})


def allocate(budget: int, capacity, weights) -> np.ndarray:
    """Integer quotas summing to min(budget, total capacity), each at most its cluster's capacity,
    as close to proportional to ``weights`` as integers allow.

    Clusters that cannot take their share are filled and leave the rest to the others
    (repeatedly), then the largest remainders get the last units (ties: lower cluster id).
    Zero-weight clusters take rows only when nothing else has room, so the budget always fills.
    """
    capacity = np.asarray(capacity, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if capacity.shape != weights.shape or (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError("capacity and weights must have one finite, non-negative value per cluster")
    counts = np.zeros_like(capacity)
    target = int(min(budget, capacity.sum()))
    while counts.sum() < target:
        left = target - int(counts.sum())
        room = capacity - counts
        open_ = room > 0
        w = np.where(open_, weights, 0.0)
        if w.sum() <= 0:  # only zero-weight clusters have room: share evenly among them
            w = open_.astype(np.float64)
        share = left * w / w.sum()
        full = open_ & (share >= room)
        if full.any():
            counts[full] = capacity[full]
            continue
        base = np.floor(share).astype(np.int64)
        rest = left - int(base.sum())
        order = [i for i in np.lexsort((np.arange(len(share)), -(share - base))) if open_[i]]
        counts += base
        counts[order[:rest]] += 1
    return counts


def softmax(values, temperature: float = 1.0) -> np.ndarray:
    """Max-shifted softmax of values / temperature (the reference's has no shift and overflows)."""
    z = np.asarray(values, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


def gumbel_keys(ids, seed: int) -> np.ndarray:
    """One standard Gumbel number per id, fixed by (seed, id): independent of row order."""
    u = np.empty(len(ids), dtype=np.float64)
    for i, rid in enumerate(ids):
        digest = hashlib.blake2b(f"{seed}\x00{rid}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
        u[i] = (int.from_bytes(digest, "big") + 0.5) / 2**64
    return -np.log(-np.log(u))


def quality_logits(quality, temperature: float, standardize: bool = True) -> np.ndarray:
    """log of the sampling weights, quality / temperature; missing quality counts as the lowest."""
    q = np.asarray(quality, dtype=np.float64)
    finite = np.isfinite(q)
    if not finite.any():
        return np.zeros(len(q))
    q = np.where(finite, q, q[finite].min())
    if standardize:
        sd = q.std()
        q = (q - q.mean()) / sd if sd > 0 else np.zeros_like(q)
    return q / temperature


def draw(clusters: np.ndarray, keys: np.ndarray, taken: np.ndarray, n: int, weights, k: int):
    """One round: quotas from ``weights`` over the clusters' untaken rows, then each cluster's
    highest keys. With keys = log w + Gumbel this samples without replacement with p ∝ w
    (Gumbel-top-k), and later rounds continue the same draw. Returns (rows in round-robin order
    over clusters, quotas)."""
    capacity = np.bincount(clusters[~taken], minlength=k)
    quotas = allocate(n, capacity, weights)
    picks = []
    for c in np.flatnonzero(quotas):
        rows = np.flatnonzero((clusters == c) & ~taken)
        best = rows[np.lexsort((rows, -keys[rows]))[: quotas[c]]]
        picks.extend((j, int(c), int(r)) for j, r in enumerate(best))
    # Round-robin over clusters: any prefix of the selection is spread over the clusters too.
    return np.array([r for _, _, r in sorted(picks)], dtype=np.int64), quotas


def cluster_gaps(clusters: np.ndarray, ratios: np.ndarray, k: int) -> np.ndarray:
    """Mean loss ratio per cluster over its rows with a ratio; clusters without one get the mean."""
    ok = np.isfinite(ratios)
    sums = np.bincount(clusters[ok], weights=ratios[ok], minlength=k)
    counts = np.bincount(clusters[ok], minlength=k)
    gaps = np.full(k, np.nan)
    gaps[counts > 0] = sums[counts > 0] / counts[counts > 0]
    fill = np.nanmean(gaps) if (counts > 0).any() else 0.0
    return np.where(np.isnan(gaps), fill, gaps)


