from tamis.pipeline.selection import resolve_budget, round_robin


def test_budget_fraction_and_count():
    assert resolve_budget(0.05, 1000) == 50
    assert resolve_budget(0.999, 3) == 2
    assert resolve_budget(20, 1000) == 20
    assert resolve_budget(5000, 300) == 300  # more than the pool: everything eligible


def test_single_task_is_top_k():
    chosen = round_robin({None: [(0.9, "a"), (0.8, "b"), (0.1, "c")]}, 2)
    assert chosen == {"a": (1, []), "b": (2, [])}


def test_round_robin_alternates_and_dedupes():
    cands = {
        "math": [(0.9, "x"), (0.8, "y"), (0.7, "z")],
        "code": [(0.95, "x"), (0.5, "w"), (0.4, "v")],
    }
    chosen = round_robin(cands, 4)
    # code goes first (sorted task order) and takes x; math meets x taken and moves to y.
    assert [rid for rid, _ in sorted(chosen.items(), key=lambda kv: kv[1][0])] == ["x", "y", "w", "z"]
    assert chosen["x"] == (1, ["code", "math"])
    assert chosen["y"][1] == ["math"]


def test_round_robin_stops_when_candidates_run_out():
    chosen = round_robin({"a": [(1.0, "p")], "b": [(1.0, "p")]}, 10)
    assert list(chosen) == ["p"]


def test_offset_window_skips_the_hardest_fraction():
    from tamis.pipeline.selection import merge_selection

    top = [(None, [(float(10 - i), (0, -i), f"r{i}") for i in range(10)])]
    chosen = merge_selection(top, 3, eligible=10, skip_top=0.2)
    assert sorted(chosen, key=lambda r: chosen[r][0]) == ["r2", "r3", "r4"]


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
