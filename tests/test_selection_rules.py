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
