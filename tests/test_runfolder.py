"""The run folder: a literal --out, nothing touched outside it, one writer at a time, a state
record readers trust, and a resume keyed by what the inputs hold (issue 14).

Runs here use two small real selector plugins (no model): ``length`` scores a row by its
characters and can hold pass 1 at a gate file; ``pick`` selects by a rule of its own and can hold
pass 2 at a gate file. Kills are real SIGKILLs of real ``python -m tamis`` processes held at a gate.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tamis.io.runfolder import RunFolder
import tamis
from tamis.cli import app
from tamis.errors import ConfigError, RunFolderError, RunLockedError, UnfinishedRunError

from .conftest import demo_records, install_plugin, write_jsonl

cli = CliRunner()

PLUGIN = '''
import itertools
import os
import time

import numpy as np
from tamis.selectors import Selector
from tamis.selectors.rules import Choice, TableRule

CALLS = itertools.count(1)


def _chars(r):
    return len(r["text"] or "") + sum(len(m["content"]) for m in r["messages"] or [])


def _wait(gate):
    open(gate + ".waiting", "w").close()
    while not os.path.exists(gate):
        time.sleep(0.05)


class Length(Selector):
    """Score = characters of content. With ``gate``: after ``free`` scoring calls in one
    process, a call waits until the file ``gate`` exists (holds pass 1)."""
    name = "length"

    def __init__(self, gate: str = "", free: int = 3):
        self.gate = gate
        self.free = free

    def score(self, records):
        if self.gate and next(CALLS) > self.free:
            _wait(self.gate)
        return {"score_length": np.array([_chars(r) for r in records], dtype=np.float32)}


class Longest(TableRule):
    """Longest rows first, seeing every eligible row. With ``gate``, waits until the file ``gate``
    exists (holds pass 2)."""
    inputs = ("score_pick",)

    def __init__(self, gate: str = ""):
        self.gate = gate

    def choose(self, table, k, seed, records):
        if self.gate:
            _wait(self.gate)
        scores = table.column("score_pick").to_numpy(zero_copy_only=False)
        order = np.argsort(-scores, kind="stable")[:k]
        return Choice(table.take(order).column("id").to_pylist())


class Pick(Selector):
    """Longest rows first, by a table rule of its own."""
    name = "pick"

    def __init__(self, gate: str = ""):
        self.gate = gate

    def score(self, records):
        return {"score_pick": np.array([_chars(r) for r in records], dtype=np.float32)}

    def selection_rule(self):
        return Longest(self.gate)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The two selectors, installed for this process and (through PYTHONPATH) for subprocesses."""
    d = tmp_path / "plugin"
    d.mkdir()
    install_plugin(d, monkeypatch, "tamis_runfolder_plugin", PLUGIN, {"length": "Length", "pick": "Pick"})
    yield {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(d), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    sys.modules.pop("tamis_runfolder_plugin", None)


def select(pool, out, **kw):
    args = dict(pool=[str(pool)], selector=["length"], budget=5, shard_rows=10, out=str(out))
    args.update(kw)
    return tamis.select(**args)


def cli_select(pool, out, *extra):
    return cli.invoke(app, ["select", "--pool", str(pool), "--out", str(out), "--selector", "length",
                            "--budget", "5", "--shard-rows", "10", "--no-progress", *extra])


def tree_bytes(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> sha256), symlinks as their target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath, name)
            key = str(p.relative_to(root))
            out[key] = ("link:" + os.readlink(p)) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def shard_table(out) -> pa.Table:
    return RunFolder(str(out)).read_shards()


def selected_ids(out) -> list[str]:
    t = shard_table(out)
    return t.filter(t.column("selected")).sort_by("rank").column("id").to_pylist()


def fake_run(folder: Path) -> None:
    """A folder that looks like another user's run: shards, rejects, a manifest."""
    (folder / "shards").mkdir(parents=True)
    (folder / "rejects").mkdir()
    pq.write_table(pa.table({"id": ["x"]}), folder / "shards" / "part-0000-00000.parquet")
    (folder / "rejects" / "part-0000-00000.parquet").write_bytes(b"not mine")
    (folder / "manifest.json").write_text('{"someone": "else"}')


# -- --out is a literal path ---------------------------------------------------------------------

def test_a_star_in_out_never_touches_the_folder_it_would_glob_to(tmp_path, plugin):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(30))
    runs = tmp_path / "runs"
    select(pool, runs / "starQx")
    before = tree_bytes(runs / "starQx")

    first = select(pool, runs / "star*x")  # used to refuse: starQx's shards matched "star*x/shards/part-*"
    assert first.counts["input"] == 30 and first.counts["selected"] == 5
    other = write_jsonl(tmp_path / "other.jsonl", demo_records(20))
    again = select(other, runs / "star*x", overwrite=True)  # used to delete starQx/shards
    assert again.counts["input"] == 20
    assert tree_bytes(runs / "starQx") == before
    assert sorted(p.name for p in runs.iterdir()) == ["star*x", "starQx"]


def test_brackets_in_out_count_the_right_input(tmp_path, plugin):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(30))
    res = cli_select(pool, tmp_path / "runs" / "weird[1]")
    assert res.exit_code == 0, res.output
    assert "input 30 = accepted 30 + rejected 0; selected 5" in res.output  # was "input 0"
    assert len(tamis.load_selected(str(tmp_path / "runs" / "weird[1]"))) == 5


SPECIAL = "ab*?[]{}!^-_. #%$~,é"


def _siblings(name: str) -> set[str]:
    """Names that a glob reading of ``name`` could match, or that share its prefix."""
    plain = "".join(c if c.isalnum() else "Q" for c in name)
    names = {plain, plain + "x", name + "x", "Q" + name, name.replace("*", ""), name.replace("[", "").replace("]", "")}
    names |= {name.replace(c, "1") for c in "*?[]{}"}
    return {n for n in names if n and n not in (".", "..", name) and "/" not in n}


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.text(alphabet=SPECIAL, min_size=1, max_size=7).filter(lambda s: s.strip(". ") and not s.startswith("~")))
def test_any_out_name_leaves_every_sibling_folder_byte_for_byte(tmp_path_factory, name, plugin_for_property):
    root = tmp_path_factory.mktemp("prop")
    pool = write_jsonl(root / "pool.jsonl", demo_records(20))
    runs = root / "runs"
    for sibling in _siblings(name):
        fake_run(runs / sibling)
    before = {s: tree_bytes(runs / s) for s in _siblings(name)}
    out = runs / name
    first = select(pool, out)
    again = select(write_jsonl(root / "pool2.jsonl", demo_records(12)), out, overwrite=True)
    assert (first.counts["input"], again.counts["input"]) == (20, 12)
    assert {s: tree_bytes(runs / s) for s in _siblings(name)} == before
    assert len(tamis.load_selected(str(out))) == 5
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def plugin_for_property(tmp_path_factory):
    """The plugin for the property test (hypothesis runs one test function many times)."""
    d = tmp_path_factory.mktemp("plugin")
    mp = pytest.MonkeyPatch()
    install_plugin(d, mp, "tamis_runfolder_plugin", PLUGIN, {"length": "Length", "pick": "Pick"})
    yield
    mp.undo()
    sys.modules.pop("tamis_runfolder_plugin", None)


# -- a run acts where it lies ----------------------------------------------------------------------

def test_reselect_of_a_copy_changes_only_the_copy(tmp_path, plugin):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(40))
    original = tmp_path / "r1"
    select(pool, original)
    before = tree_bytes(original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    summary = tamis.reselect(str(copy), 3)
    assert summary.counts["selected"] == 3 and len(selected_ids(copy)) == 3
    assert tree_bytes(original) == before  # used to rewrite the original's shards
    res = cli.invoke(app, ["inspect", str(copy)])
    assert res.exit_code == 0 and "selected 3" in res.output


def test_reselect_from_another_working_directory(tmp_path, plugin, monkeypatch):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(40))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    select(pool, "r1")  # a relative --out, recorded as given
    monkeypatch.chdir(tmp_path / "b")
    res = cli.invoke(app, ["reselect", str(tmp_path / "a" / "r1"), "--budget", "3"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "b" / "r1").exists()  # used to write into ./r1 here
    assert len(selected_ids(tmp_path / "a" / "r1")) == 3
    manifest = json.loads((tmp_path / "a" / "r1" / "manifest.json").read_text())
    assert manifest["counts"]["selected"] == 3 and manifest["resolved"]["budget"] == 3


# -- the state record: a killed run is never served as finished ---------------------------------------

def _wait_for(predicate, proc, what: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stdout.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _kill(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _start(args, env):
    return subprocess.Popen([sys.executable, "-m", "tamis", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_a_run_killed_in_pass_1_is_unfinished_for_every_reader(tmp_path, plugin, one_thread):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(70))  # 7 chunks of 10 rows
    gate = tmp_path / "gate"
    out = tmp_path / "out"
    args = ["select", "--pool", str(pool), "--selector", "length", "--param", f"gate={gate}", "--param", "free=3",
            "--budget", "5", "--shard-rows", "10", "--no-progress", "--out", str(out)]
    proc = _start(args, plugin)
    try:
        _wait_for(lambda: Path(f"{gate}.waiting").exists(), proc, "pass 1 reached the gate")
        _wait_for(lambda: len(list((out / "shards").glob("part-*.parquet"))) >= 3, proc, "3 shards")
    finally:
        _kill(proc)
    assert len(list((out / "shards").glob("part-*.parquet"))) == 3

    with pytest.raises(UnfinishedRunError, match="3 of 7 chunks scored") as err:
        tamis.load_selected(str(out))
    assert "\n" not in str(err.value)
    res = cli.invoke(app, ["inspect", str(out)])
    assert "unfinished: 3 of 7 chunks scored" in res.output and " ok" not in res.output
    with pytest.raises(UnfinishedRunError, match="3 of 7 chunks scored"):
        tamis.reselect(str(out), 3)

    gate.touch()
    res = cli.invoke(app, args)  # a rerun of select resumes it
    assert res.exit_code == 0, res.output
    assert "chunks: 4 scored, 3 reused" in res.output
    assert len(tamis.load_selected(str(out))) == 5


def test_a_run_killed_in_pass_2_is_unfinished_until_select_runs_again(tmp_path, plugin, one_thread):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(40))
    gate = tmp_path / "gate"
    out = tmp_path / "out"
    args = ["select", "--pool", str(pool), "--selector", "pick", "--param", f"gate={gate}", "--shard-rows", "10",
            "--no-progress", "--out", str(out)]
    gate.touch()
    res = cli.invoke(app, args + ["--budget", "5"])
    assert res.exit_code == 0, res.output
    assert len(tamis.load_selected(str(out))) == 5

    gate.unlink()
    Path(f"{gate}.waiting").unlink()
    proc = _start(args + ["--budget", "12"], plugin)  # the same scores, a new budget: pass 2 only
    try:
        _wait_for(lambda: Path(f"{gate}.waiting").exists(), proc, "pass 2 reached the gate")
    finally:
        _kill(proc)
    # The old manifest (budget 5) is still there: it must not be served as this run's result.
    with pytest.raises(UnfinishedRunError, match="selection interrupted") as err:
        tamis.load_selected(str(out))
    assert "\n" not in str(err.value)
    res = cli.invoke(app, ["inspect", str(out)])
    assert "unfinished: selection interrupted" in res.output
    with pytest.raises(UnfinishedRunError, match="selection interrupted"):
        tamis.reselect(str(out), 3)

    gate.touch()
    res = cli.invoke(app, args + ["--budget", "12"])
    assert res.exit_code == 0, res.output
    assert "chunks: 0 scored, 4 reused" in res.output
    assert len(tamis.load_selected(str(out))) == 12


def test_an_interrupted_reselect_is_unfinished_and_reselect_finishes_it(tmp_path, plugin, one_thread):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(40))
    gate = tmp_path / "gate"
    out = tmp_path / "out"
    gate.touch()
    select(pool, out, selector=["pick"], param={"gate": str(gate)})
    gate.unlink()
    Path(f"{gate}.waiting").unlink()
    proc = _start(["reselect", str(out), "--budget", "7"], plugin)
    try:
        _wait_for(lambda: Path(f"{gate}.waiting").exists(), proc, "the reselect reached the gate")
    finally:
        _kill(proc)
    with pytest.raises(UnfinishedRunError, match="selection interrupted"):
        tamis.load_selected(str(out))
    gate.touch()
    assert tamis.reselect(str(out), 7).counts["selected"] == 7  # the scores are whole: a reselect redoes pass 2
    assert len(tamis.load_selected(str(out))) == 7


# -- one writer at a time ----------------------------------------------------------------------------

def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path, plugin):
    from tamis.io.runfolder import RunFolder

    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(20))
    out = tmp_path / "out"
    with RunFolder(str(out)).lock():
        t0 = time.monotonic()
        with pytest.raises(RunLockedError) as err:
            select(pool, out)
        assert time.monotonic() - t0 < 10
        line = str(err.value)
        assert "\n" not in line and f"pid {os.getpid()}" in line and socket.gethostname() in line
        with pytest.raises(RunLockedError):
            tamis.reselect(str(out), 3)
    assert select(pool, out).counts["selected"] == 5  # released: the next run goes ahead


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, plugin):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(20))
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out.mkdir()
    (out / ".tamis.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                 "started": "2026-01-01T00:00:00Z"}))
    assert select(pool, out).counts["selected"] == 5


def test_the_object_store_lock_rule(tmp_path):
    """The best-effort rule used where there is no flock, run against a local folder."""
    from tamis.io.runfolder import RunFolder

    out = tmp_path / "out"
    out.mkdir()
    lock_file = out / ".tamis.lock"
    fresh = {"host": "worker-7", "pid": 4242, "started": "2026-01-01T00:00:00Z", "token": "t1",
             "heartbeat": time.time()}
    lock_file.write_text(json.dumps(fresh))
    with pytest.raises(RunLockedError, match="worker-7.*4242"):
        RunFolder(str(out), object_lock=True).lock().acquire()
    lock_file.write_text(json.dumps({**fresh, "heartbeat": time.time() - 3600}))  # no heartbeat for an hour
    lock = RunFolder(str(out), object_lock=True).lock().acquire()
    mine = json.loads(lock_file.read_text())
    assert mine["pid"] == os.getpid() and mine["token"] != "t1"
    with pytest.raises(RunLockedError):
        RunFolder(str(out), object_lock=True).lock().acquire()
    lock.release()
    assert not lock_file.exists()


def test_racing_writers_one_writes_and_the_folder_ends_as_a_clean_run(tmp_path, plugin, one_thread):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(308))
    gate = tmp_path / "gate"
    out = tmp_path / "out"
    base = ["select", "--pool", str(pool), "--selector", "length", "--param", f"gate={gate}", "--param", "free=3",
            "--shard-rows", "10", "--no-progress", "--out", str(out)]
    budgets = [5, 6, 7]
    procs = [_start(base + ["--budget", str(b)], plugin) for b in budgets]
    try:
        # The winner holds pass 1 at the gate until every loser has given up.
        deadline = time.monotonic() + 300
        while sum(p.poll() is not None for p in procs) < 2:
            assert time.monotonic() < deadline, "the losers did not fail in time"
            time.sleep(0.1)
        gate.touch()
        outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    codes = [p.returncode for p in procs]
    assert sorted(c == 0 for c in codes) == [False, False, True], list(zip(codes, outputs))
    winner = codes.index(0)
    for code, text in zip(codes, outputs):
        if code != 0:
            assert "is in use by another tamis run" in text and "pid" in text, text
    reference = select(pool, tmp_path / "ref", param={"gate": str(gate)}, budget=budgets[winner])
    assert shard_table(out).equals(shard_table(tmp_path / "ref"))
    assert sorted(p.name for p in (out / "rejects").iterdir()) == sorted(p.name for p in (tmp_path / "ref" / "rejects").iterdir())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == reference.counts and manifest["counts"]["selected"] == budgets[winner]
    assert manifest["counts"]["input"] == 308


# -- resume by content ---------------------------------------------------------------------------------

def test_a_pool_that_shrank_is_never_served_from_old_shards(tmp_path, plugin):
    rows = demo_records(300)
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    out = tmp_path / "out"
    assert select(pool, out, shard_rows=100).counts["input"] == 300
    write_jsonl(pool, rows[:120])
    with pytest.raises(RunFolderError, match="pool.jsonl.*changed"):
        select(pool, out, shard_rows=100)
    assert select(pool, out, shard_rows=100, overwrite=True).counts["input"] == 120


def test_an_edited_pool_line_of_the_same_size_is_scored_again(tmp_path, plugin):
    rows = demo_records(30)
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    out = tmp_path / "out"
    select(pool, out)
    data = pool.read_bytes()
    stat = pool.stat()
    edited = data.replace(b'"content": "', b'"content": "X', 1)[:-1]  # same size: one byte in, one out
    edited = edited[:-2] + edited[-1:] + b"\n"
    assert len(edited) == len(data) and edited != data
    pool.write_bytes(edited)
    os.utime(pool, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    with pytest.raises(RunFolderError, match="changed"):
        select(pool, out)


def test_a_replaced_target_file_is_never_served_from_old_shards(tmp_path, plugin, targets_dir):
    pool_rows = demo_records(30)
    pool = write_jsonl(tmp_path / "pool.jsonl", pool_rows)
    target = tmp_path / "target.jsonl"
    shutil.copy(targets_dir["food"], target)
    out = tmp_path / "out"
    select(pool, out, target={"food": str(target)})
    # The new target holds a pool row: the old shards say matches_target false for it.
    write_jsonl(target, [{"messages": pool_rows[0]["messages"]}])
    with pytest.raises(RunFolderError, match="target"):
        select(pool, out, target={"food": str(target)})
    summary = select(pool, out, target={"food": str(target)}, overwrite=True)
    assert summary.counts["matches_target"] == 1


def test_overwrite_starts_from_an_empty_folder_and_foreign_shards_are_refused(tmp_path, plugin):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(20))
    out = tmp_path / "out"
    fake_run(out)
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(RunFolderError, match="--overwrite"):
        select(pool, out)
    summary = select(pool, out, overwrite=True)  # shards but no plan: used to be reused
    assert summary.counts == {**summary.counts, "input": 20, "accepted": 20, "rejected": 0}
    assert "x" not in shard_table(out).column("id").to_pylist()
    assert sorted(p.name for p in (out / "rejects").iterdir()) == []
    assert (out / "notes.txt").read_text() == "the user's own file"  # not tamis's: kept


def test_demo_does_not_replace_another_run(tmp_path, plugin):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(20))
    out = tmp_path / "mine"
    select(pool, out)
    before = tree_bytes(out)
    res = cli.invoke(app, ["demo", "--out", str(out), "--no-progress"])
    assert res.exit_code != 0
    assert "--overwrite" in str(res.exception or "") + res.output
    assert tree_bytes(out) == before


# -- an --out that cannot be used -----------------------------------------------------------------------

def test_unusable_out_paths_fail_with_one_line(tmp_path, plugin):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(20))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = {str(a_file): "not a folder", "": "empty", str(a_file / "sub"): "not a folder",
             "/sys/tamis-cannot-write-here": "cannot write"}
    for out, expected in cases.items():
        with pytest.raises(RunFolderError, match=expected) as err:
            tamis.select(pool=[str(pool)], selector=["length"], budget=5, out=out)
        assert "\n" not in str(err.value)
    assert a_file.read_text() == "x"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.parquet").write_bytes(b"precious")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "shards").symlink_to(elsewhere, target_is_directory=True)
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match="symlink"):
            select(pool, linked, overwrite=overwrite)
    assert (elsewhere / "keep.parquet").read_bytes() == b"precious"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_out_fails_with_one_line(tmp_path, plugin):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(20))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(RunFolderError, match="cannot write"):
            select(pool, ro)
    finally:
        ro.chmod(0o755)


def test_load_selected_with_an_unknown_task_names_the_runs_tasks(tmp_path, plugin, targets_dir):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(20))
    out = tmp_path / "out"
    select(pool, out, target={"food": targets_dir["food"], "animal": targets_dir["animal"]})
    with pytest.raises(ConfigError, match="typo.*animal, food"):
        tamis.load_selected(str(out), task="typo")


# -- the same rules on an object store -------------------------------------------------------------

from apache_beam.io.filesystem import FileMetadata, MatchResult  # noqa: E402
from apache_beam.io.localfilesystem import LocalFileSystem  # noqa: E402


class PrefixedFileSystem(LocalFileSystem):
    """``tamisobj:///abs/path`` is the local ``/abs/path``: listing, delete and rename behave as
    Beam's local ones do (delete matches its argument as a pattern, like GCS's)."""

    PREFIX = "tamisobj://"

    @classmethod
    def scheme(cls):
        return "tamisobj"

    def _strip(self, path):
        return path[len(self.PREFIX):] if path.startswith(self.PREFIX) else path

    def match(self, patterns, limits=None):
        results = super().match([self._strip(p) for p in patterns], limits)
        out = []
        for p, r in zip(patterns, results):
            prefix = self.PREFIX if p.startswith(self.PREFIX) else ""
            out.append(MatchResult(p, [FileMetadata(prefix + m.path, m.size_in_bytes, m.last_updated_in_seconds)
                                       for m in r.metadata_list]))
        return out

    def create(self, path, *args, **kwargs):
        return super().create(self._strip(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return super().open(self._strip(path), *args, **kwargs)

    def exists(self, path):
        return os.path.isfile(self._strip(path))  # an object store has objects, not folders

    def _list(self, dir_or_prefix):
        for root, _, files in os.walk(dir_or_prefix):
            for name in files:
                p = os.path.join(root, name)
                yield FileMetadata(p, os.path.getsize(p), os.path.getmtime(p))

    def mkdirs(self, path):
        return super().mkdirs(self._strip(path))

    def rename(self, sources, destinations):
        return super().rename([self._strip(p) for p in sources], [self._strip(p) for p in destinations])

    def delete(self, paths):
        return super().delete([self._strip(p) for p in paths])


def test_an_object_store_out_follows_the_same_rules(tmp_path, plugin, monkeypatch):
    from tamis.io.runfolder import RunLock

    monkeypatch.setattr(RunLock, "SETTLE_S", 0.1)
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(30))
    runs = tmp_path / "runs"
    fake_run(runs / "starQx")
    before = tree_bytes(runs / "starQx")
    out = f"tamisobj://{runs}/star*x"
    assert select(pool, out).counts["input"] == 30
    assert not (runs / "star*x" / ".tamis.lock").exists()  # the lock object is deleted when the run ends
    assert select(write_jsonl(tmp_path / "p2.jsonl", demo_records(20)), out, overwrite=True).counts["input"] == 20
    assert tamis.reselect(out, 3).counts["selected"] == 3
    assert len(tamis.load_selected(out)) == 3
    assert tree_bytes(runs / "starQx") == before
    (runs / "star*x" / ".tamis.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                            "started": "now", "token": "x", "heartbeat": time.time()}))
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        tamis.reselect(out, 4)
