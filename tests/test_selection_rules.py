from tamis.io.runfolder import RunFolder
from tamis.selectors.rules import Budget, Pick, SkipWindow, TopK, per_task, round_robin


def test_budget_fraction_and_count():
    assert Budget(0.05).resolve(1000).rows == 50
    assert Budget(0.999).resolve(3).rows == 2
    assert Budget(20).resolve(1000).rows == 20
    assert Budget(5000).resolve(300).rows == 300  # more than the pool: everything eligible


def test_the_fraction_is_of_the_eligible_rows_and_the_skip_window_caps_it():
    r = Budget(0.05).resolve(21, SkipWindow(0.1))
    assert (r.eligible, r.skipped, r.rows) == (21, 2, 1)
    assert Budget(0.95).resolve(20, SkipWindow(0.1)).rows == 18  # 19 wanted, 18 left after the 2 skipped
    assert Budget(0.05).resolve(10).notes() == ["budget 0.05 of 10 eligible rows rounds down to 0 rows: nothing "
                                                "selected (give a row count instead)"]


def test_single_task_is_top_k():
    chosen = round_robin({None: [(0.9, "a"), (0.8, "b"), (0.1, "c")]}, 2)
    assert chosen == {"a": Pick(1), "b": Pick(2)}


def test_round_robin_alternates_and_dedupes():
    cands = {
        "math": [(0.9, "x"), (0.8, "y"), (0.7, "z")],
        "code": [(0.95, "x"), (0.5, "w"), (0.4, "v")],
    }
    chosen = round_robin(cands, 4)
    # code goes first (sorted task order) and takes x; math meets x taken and moves to y.
    assert [rid for rid, _ in sorted(chosen.items(), key=lambda kv: kv[1].rank)] == ["x", "y", "w", "z"]
    assert chosen["x"] == Pick(1, ("code", "math"))
    assert chosen["y"].tasks == ("math",)


def test_a_duplicate_can_use_up_the_turn_as_in_the_rds_reference():
    cands = {
        "math": [(0.9, "x"), (0.8, "y"), (0.7, "z")],
        "code": [(0.95, "x"), (0.5, "w"), (0.4, "v")],
    }
    chosen = round_robin(cands, 4, uses_turn=True)
    # math meets x taken: its turn is over; code takes w, math y, code v.
    assert [rid for rid, _ in sorted(chosen.items(), key=lambda kv: kv[1].rank)] == ["x", "w", "y", "v"]
    assert chosen["x"].tasks == ("code", "math")


def test_budget_per_task_gives_each_task_its_own_top_k():
    cands = {"a": [(0.9, "x"), (0.8, "y"), (0.7, "z")], "b": [(0.95, "x"), (0.5, "w"), (0.4, "v")]}
    chosen = per_task(cands, 2)
    assert [rid for rid, _ in sorted(chosen.items(), key=lambda kv: kv[1].rank)] == ["x", "y", "w"]
    assert chosen["x"].tasks == ("a", "b")
    r = Budget(2).resolve(10, per_task=True)
    assert TopK(budget_per_task=True).pick(cands, r) == chosen


def test_round_robin_stops_when_candidates_run_out():
    chosen = round_robin({"a": [(1.0, "p")], "b": [(1.0, "p")]}, 10)
    assert list(chosen) == ["p"]
    assert list(round_robin({"a": [(1.0, "p")], "b": [(1.0, "p")]}, 10, uses_turn=True)) == ["p"]


def test_offset_window_skips_the_hardest_fraction():
    cands = {None: [(float(10 - i), f"r{i}") for i in range(10)]}
    rule = TopK(skip=SkipWindow(0.2))
    chosen = rule.pick(cands, Budget(3).resolve(10, rule.skip))
    assert sorted(chosen, key=lambda r: chosen[r].rank) == ["r2", "r3", "r4"]


def test_notes_and_selection_resolve_the_budget_the_same_way(tmp_path, one_thread):
    """21 eligible rows, --budget 0.05, el2n's default skip window 0.1 (issue 15): the run's notes
    and its selection come from one resolution, and the note says what was selected."""
    import tamis

    from .conftest import demo_records, write_jsonl
    from .test_loss_selectors import TINY_LM

    path = write_jsonl(tmp_path / "pool.jsonl", demo_records(21))
    summary = tamis.select(pool=[str(path)], selector=["el2n"], out=str(tmp_path / "out"), budget=0.05,
                           max_length=64, param=dict(TINY_LM, sample_size=21))
    resolved = summary.manifest["resolved"]["selection"]
    assert (resolved["eligible"], resolved["skipped"], resolved["rows"]) == (21, 2, 1)
    assert summary.counts["selected"] == resolved["rows"] == 1
    assert summary.manifest["notes"] == [
        "budget 0.05 of 21 eligible rows: 1 row selected, after leaving out the 2 highest-scored "
        "(skip window 0.1)"]


def test_budget_per_task_and_duplicates_turn_through_the_pipeline(tmp_path, targets_dir, tiny_encoder, one_thread):
    """Each task's own top 8 (the LESS/CoLoR references) against the shared round-robin budget,
    read back from the shards; the rule options are in the manifest."""
    import numpy as np

    import tamis

    from .conftest import demo_records, write_jsonl

    path = write_jsonl(tmp_path / "pool.jsonl", demo_records(60))
    common = dict(pool=[str(path)], target=targets_dir, budget=8, param={"model": tiny_encoder})
    shared = tamis.select(out=str(tmp_path / "shared"), **common)
    per = tamis.select(out=str(tmp_path / "per"), budget_per_task=True, **common)
    turn = tamis.select(out=str(tmp_path / "turn"), duplicates="turn", **common)
    assert shared.counts["selected"] == turn.counts["selected"] == 8
    assert per.manifest["resolved"]["rule"] == {"rule": "TopK", "skip": {"fraction": 0.0}, "duplicate": "next",
                                                "budget_per_task": True, "over": "tasks"}
    table = RunFolder(str(tmp_path / "per")).read_shards()
    eligible = ~table.column("matches_target").to_numpy(zero_copy_only=False)
    ids = np.array(table.column("id").to_pylist())
    for task in ("animal", "food"):
        scores = table.column(f"score_rds_{task}").to_numpy()
        top = set(ids[eligible][np.argsort(-scores[eligible], kind="stable")[:8]])
        mine = {rid for rid, tasks in zip(ids, table.column("selected_for").to_pylist()) if task in tasks}
        assert mine == top
    assert 8 < per.counts["selected"] <= 16
    # The same options on reselect, from the CLI: the shared run, reselected per task, picks the same rows.
    from typer.testing import CliRunner

    from tamis.cli import app

    res = CliRunner().invoke(app, ["reselect", str(tmp_path / "shared"), "--budget", "8", "--budget-per-task"])
    assert res.exit_code == 0, res.output
    again = RunFolder(str(tmp_path / "shared")).read_shards()
    assert again.column("selected").to_pylist() == table.column("selected").to_pylist()
    assert again.column("selected_for").to_pylist() == table.column("selected_for").to_pylist()


def test_round_robin_over_target_examples_gives_each_its_share(tmp_path, targets_dir, tiny_encoder, one_thread):
    """rds with per_query: every target example in turn takes its best remaining row (the RDS+
    reference's main recipe), recomputed here from the per-example cosines in the shards."""
    import numpy as np

    import tamis

    from .conftest import demo_records, write_jsonl

    path = write_jsonl(tmp_path / "pool.jsonl", demo_records(60))
    summary = tamis.select(pool=[str(path)], target={"food": targets_dir["food"]}, budget=12,
                           out=str(tmp_path / "q"), param={"model": tiny_encoder, "per_query": True})
    assert summary.counts["selected"] == 12 and summary.manifest["resolved"]["rule"]["over"] == "queries"
    table = RunFolder(str(tmp_path / "q")).read_shards()
    cosines = np.array(table.column("queries_rds_food").to_pylist(), dtype=np.float32)
    assert cosines.shape == (60, 32)
    np.testing.assert_array_equal(cosines.max(axis=1), table.column("score_rds_food").to_numpy())
    eligible = ~table.column("matches_target").to_numpy(zero_copy_only=False)
    ids = table.column("id").to_pylist()
    order = [np.lexsort((np.arange(60), -cosines[:, j])) for j in range(32)]  # best first, ties by position
    taken, pointer = [], [0] * 32
    while len(taken) < 12:
        for j in range(32):
            while pointer[j] < 60 and (ids[order[j][pointer[j]]] in taken or not eligible[order[j][pointer[j]]]):
                pointer[j] += 1
            if len(taken) < 12:
                taken.append(ids[order[j][pointer[j]]])
                pointer[j] += 1
    ranked = sorted((r, i) for i, r, s in zip(ids, table.column("rank").to_pylist(),
                                              table.column("selected").to_pylist()) if s)
    assert [i for _, i in ranked] == taken
