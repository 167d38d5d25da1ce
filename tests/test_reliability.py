"""Reliability beyond the fuzz, fault and runner suites: a run killed mid-pass resumes to the same
output, edge inputs end with a clear outcome and message, and no user- or data-controlled string
can steer a file path or load code."""
import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import FileMetadata, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem
from pydantic import ValidationError
from typer.testing import CliRunner

import tamis
from tamis.io.runfolder import RunFolder
from tamis.cli import app
from tamis.schemas import SelectConfig, config_error_line
from tamis.schemas.records import MAX_RECORD_BYTES
from tamis.selectors import registry

from .conftest import demo_records, write_jsonl

cli = CliRunner()


def read_shards(out) -> pa.Table:
    """Every row, shards joined with their selection (as tamis reads them)."""
    return RunFolder(str(out)).read_shards()


# -- resume after a real kill --------------------------------------------------------------------

def test_a_killed_run_resumes_reusing_its_shards_and_matches_an_uninterrupted_run(tmp_path, gate_plugin, targets_dir,
                                                                                    tiny_encoder, one_thread):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(120))  # 12 chunks of 10 rows
    gate = tmp_path / "gate.open"
    args = ["select", "--pool", str(pool), "--target", f"food={targets_dir['food']}", "--selector", "rds",
            "--selector", "gate", "--param", f"rds.model={tiny_encoder}", "--param", f"gate.gate={gate}",
            "--param", "gate.free=3", "--budget", "15", "--shard-rows", "10", "--no-progress"]
    out = tmp_path / "out"

    # A real `python -m tamis select` process scores 3 chunks, then waits at the closed gate: it
    # cannot finish, so the kill always lands with some shards written and some not.
    proc = subprocess.Popen([sys.executable, "-m", "tamis", *args, "--out", str(out)], env=gate_plugin,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list((out / "shards").glob("part-*.parquet"))) < 3:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the first run wrote no shards in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = sorted(p.name for p in (out / "shards").glob("part-*.parquet"))
    assert len(finished) == 3 and not (out / "manifest.json").exists()
    # A shard torn by the kill, as a kill during a write leaves it: never taken for a finished one.
    torn = next(f"part-0000-{k:05d}" for k in range(12) if f"part-0000-{k:05d}.parquet" not in finished)
    (out / "shards" / f"{torn}.parquet.inprogress").write_bytes(b"PAR1 torn")

    gate.touch()
    # The rerun and the uninterrupted reference run in this process (one torch thread, as the
    # killed one had): the 3 reused shards must match scores computed elsewhere, bit for bit.
    resumed = cli.invoke(app, args + ["--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert "chunks: 9 scored, 3 reused from an earlier run" in resumed.output
    reference = tamis.select(pool=[str(pool)], target={"food": targets_dir["food"]}, selector=["rds", "gate"],
                             param={"rds.model": tiny_encoder, "gate.gate": str(gate), "gate.free": 3}, budget=15,
                             shard_rows=10, out=str(tmp_path / "ref"))
    assert reference.chunks == {"planned": 12, "reused": 0, "computed": 12}

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chunks"] == {"planned": 12, "reused": 3, "computed": 9}
    assert manifest["metrics"]["lines_read"] == 90 and manifest["metrics"]["scored"] == 90  # Beam's own counters
    assert not list((out / "shards").glob("*.inprogress"))
    assert manifest["counts"] == reference.counts == {**reference.counts, "input": 120, "accepted": 120,
                                                      "rejected": 0, "selected": 15}
    a, b = read_shards(out), read_shards(tmp_path / "ref")
    assert a.equals(b)  # every column: ids, records, both selectors' scores bit for bit, the selection
    picked = a.filter(a.column("selected")).sort_by("rank").column("id").to_pylist()
    assert len(picked) == 15 and picked == b.filter(b.column("selected")).sort_by("rank").column("id").to_pylist()


# -- edge cases ----------------------------------------------------------------------------------


def select_cli(tmp_path, pool, out, *extra, target=None, encoder=None):
    args = ["select", "--pool", str(pool), "--out", str(tmp_path / out), "--no-progress", *extra]
    if target:
        args += ["--target", target]
    if encoder:
        args += ["--param", f"model={encoder}"]
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


def test_empty_pool_one_row_pool_and_oversized_budgets_say_what_happened(tmp_path, targets_dir, tiny_encoder, one_thread):
    food = f"food={targets_dir['food']}"
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    output = select_cli(tmp_path, empty, "e", "--budget", "10", target=food, encoder=tiny_encoder)
    assert "input 0 = accepted 0 + rejected 0; selected 0" in output
    assert "note: no accepted rows (an empty pool, or every line rejected)" in output

    one = write_jsonl(tmp_path / "one.jsonl", demo_records(1))
    output = select_cli(tmp_path, one, "o", "--budget", "5", target=food, encoder=tiny_encoder)
    assert "input 1 = accepted 1 + rejected 0; selected 1" in output
    assert "note: budget 5 is more than the 1 eligible rows: at most 1 can be selected" in output
    assert tamis.load_selected(str(tmp_path / "o"))["id"] == [demo_records(1)[0]["id"]]

    res = cli.invoke(app, ["reselect", str(tmp_path / "o"), "--budget", "0.05"])  # the selector's default budget
    assert res.exit_code == 0 and "selected 0" in res.output
    assert "note: budget 0.05 of 1 eligible rows rounds down to 0 rows: nothing selected" in res.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["notes"] == ["budget 0.05 of 1 eligible rows rounds down to 0 rows: nothing selected "
                                 "(give a row count instead)"]

    blank = tmp_path / "no_targets.jsonl"
    blank.write_text("\n")
    res = cli.invoke(app, ["select", "--pool", str(one), "--out", str(tmp_path / "x"), "--target", f"food={blank}"])
    assert res.exit_code == 2 and "target 'food' has no examples" in res.output


def test_a_target_set_of_one_example_works(tmp_path, targets_dir, tiny_encoder, one_thread):
    """RDS+ takes each row's max cosine over the targets: with one target, its cosine to it."""
    target = json.loads(Path(targets_dir["food"]).read_text().splitlines()[0])
    one_target = write_jsonl(tmp_path / "one_target.jsonl", [target])
    rows = demo_records(40) + [{"id": "copy", "messages": target["messages"]}]
    pool = write_jsonl(tmp_path / "p.jsonl", rows)
    output = select_cli(tmp_path, pool, "o", "--budget", "5", "--shard-rows", "20", target=f"food={one_target}",
                        encoder=tiny_encoder)
    assert "selected 5" in output and "note:" not in output
    table = read_shards(tmp_path / "o")
    scores = dict(zip(table.column("id").to_pylist(), table.column("score_rds_food").to_pylist()))
    assert scores["copy"] == pytest.approx(1.0, abs=1e-5)  # its own embedding: cosine 1
    assert len(set(scores.values())) > 30 and all(-1.0 - 1e-5 <= s <= 1.0 + 1e-5 for s in scores.values())
    picked = table.filter(table.column("selected")).to_pylist()
    assert len(picked) == 5 and "copy" not in {r["id"] for r in picked}  # decontaminated, not selected
    assert min(r["score_rds_food"] for r in picked) >= sorted(v for k, v in scores.items() if k != "copy")[-5]


def test_a_1mb_text_is_kept_whole_and_scored_on_its_first_tokens(tmp_path, targets_dir, tiny_encoder, one_thread):
    """README: longer text keeps its first ``max_length`` tokens when scored, the stored row is never
    cut; a line over the 8 MiB record limit is rejected with its size."""
    words = " ".join(m["content"] for r in demo_records(50) for m in r["messages"])
    big = (words + " ") * (1_000_000 // len(words) + 1)
    big = big[:1_000_000]
    rows = demo_records(20) + [{"id": "big", "text": big}, {"id": "head", "text": big[:6000]}]
    lines = [(json.dumps(r) + "\n").encode() for r in rows]
    too_big = b'{"id": "too-big", "text": "' + b"y" * MAX_RECORD_BYTES + b'"}'
    lines.append(too_big + b"\n")
    pool = tmp_path / "p.jsonl"
    pool.write_bytes(b"".join(lines))
    s = tamis.select(pool=[str(pool)], target={"food": targets_dir["food"]}, out=str(tmp_path / "o"), budget=5,
                     max_length=64, param={"model": tiny_encoder})
    assert s.counts == {**s.counts, "input": 23, "accepted": 22, "rejected": 1}
    table = read_shards(tmp_path / "o")
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert len(by_id["big"]["text"]) == 1_000_000 and by_id["big"]["text"] == big
    # Only the first 64 tokens count: the 1 MB row scores as its first 6,000 characters do.
    assert by_id["big"]["score_rds_food"] == pytest.approx(by_id["head"]["score_rds_food"], abs=1e-6)
    reject = pq.read_table(next((tmp_path / "o" / "rejects").glob("*.parquet"))).to_pylist()[0]
    assert reject["reason"] == f"record is {len(too_big)} bytes, over the {MAX_RECORD_BYTES}-byte limit"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "first `max_length` tokens" in readme and "8 MiB" in readme


# -- safety: names never become paths outside OUT, code never loads from a path -------------------

BAD_NAMES = ["../evil", "a/b", "..", ".hidden", "/etc/passwd", "food\n", "a\\b", "", "x:y"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_task_and_selector_names_cannot_hold_paths(name):
    for kw, what in ((dict(target={name: "t.jsonl"}), "task name"), (dict(selector=[name]), "selector name")):
        with pytest.raises(ValidationError) as e:
            SelectConfig(pool=["p"], out="o", **kw)
        msg = config_error_line(e.value)
        assert f"{what} {name!r} must be letters" in msg and "\n" not in msg


def test_cli_refuses_a_path_as_task_name_before_writing_anything(tmp_path):
    pool = write_jsonl(tmp_path / "p.jsonl", demo_records(3))
    res = cli.invoke(app, ["select", "--pool", str(pool), "--out", str(tmp_path / "o"), "--target", f"../evil={pool}"])
    assert res.exit_code == 2 and "task name '../evil' must be letters" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_data_controlled_strings_never_name_output_files(tmp_path, targets_dir, tiny_encoder, one_thread):
    """Input file names and record ids with path characters: everything lands in OUT under fixed names."""
    folder = tmp_path / "in"
    folder.mkdir()
    rows = demo_records(30)
    rows[0]["id"], rows[1]["id"] = "../../escape", "/abs/id"
    rows.append(b'{"id": "../rejected/../../x", "text": 5}\n')
    pool = write_jsonl(folder / "..evil name;rm -rf.jsonl", rows)
    before = {p for p in tmp_path.rglob("*") if "_tmp" not in p.parts}
    s = tamis.select(pool=[str(pool)], target={"food": targets_dir["food"]}, out=str(tmp_path / "out"), budget=30,
                     shard_rows=10, param={"model": tiny_encoder})
    assert s.counts == {**s.counts, "accepted": 30, "rejected": 1, "selected": 30}
    created = {p for p in tmp_path.rglob("*") if "_tmp" not in p.parts} - before
    out = tmp_path / "out"
    assert all(out in p.parents or p == out for p in created)
    names = sorted(str(p.relative_to(out)) for p in created if p.is_file())
    pattern = re.compile(r"(shards|rejects|attributes/selection)/part-\d{4}-\d{5}\.parquet|_work/(plan|state|targets|selection_report|unique_ids)\.json"
                         r"|manifest\.json|\.tamis\.lock")
    assert all(pattern.fullmatch(n) for n in names), names
    assert {"../../escape", "/abs/id"} <= set(read_shards(out).column("id").to_pylist())


EVIL = '''
from pathlib import Path
from tamis.selectors import Selector

Path(__file__).with_name("IMPORTED").write_text("code from a config ran")


class Evil(Selector):
    name = "evil"

    def score(self, records):
        raise AssertionError("never")
'''


def test_a_config_cannot_load_a_selector_from_a_path_or_module(tmp_path, monkeypatch):
    (tmp_path / "tamis_evil_mod.py").write_text(EVIL)
    monkeypatch.syspath_prepend(str(tmp_path))  # importable, but registered nowhere
    pool = write_jsonl(tmp_path / "p.jsonl", demo_records(3))
    for ref in ("tamis_evil_mod:Evil", str(tmp_path / "tamis_evil_mod.py"), "tamis_evil_mod"):
        with pytest.raises((ValidationError, KeyError)):
            tamis.select(pool=[str(pool)], selector=[ref], out=str(tmp_path / "o"))
        with pytest.raises(KeyError, match="unknown selector"):
            registry.create(ref)
        res = cli.invoke(app, ["select", "--pool", str(pool), "--out", str(tmp_path / "o"), "--selector", ref])
        assert res.exit_code == 2
    assert "tamis_evil_mod" not in sys.modules and not (tmp_path / "IMPORTED").exists()
    assert not (tmp_path / "o").exists()


def test_model_loading_refuses_pickled_weights_and_remote_code_is_off(tmp_path, tiny_encoder):
    import torch
    from transformers import AutoConfig, BertModel

    from tamis.models.embedder import HiddenStateEmbedder
    from tamis.models.lm import load_causal_lm
    from tamis.models.loading import load_backbone, load_tokenizer

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in Path(tiny_encoder).iterdir():
        if f.suffix != ".safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    torch.save(BertModel(AutoConfig.from_pretrained(tiny_encoder)).state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(OSError):
        load_backbone(str(pickled))
    with pytest.raises(OSError):  # the embedder every embedding selector (rds, kmeans, ...) loads through
        HiddenStateEmbedder(str(pickled))
    assert load_backbone(tiny_encoder).config.hidden_size == 32  # the same folder with safetensors loads

    import inspect

    for fn in (load_tokenizer, load_backbone, load_causal_lm):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
    for name in registry.BUILTIN:
        defaults = registry.get(name).param_defaults()
        assert defaults.get("trust_remote_code", False) is False, name


def test_no_code_path_unpickles_weights():
    """Weights load from safetensors; a third-party ``torch.load`` must pass ``weights_only=True``."""
    root = Path(__file__).resolve().parents[1] / "tamis"
    bad = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            fn = ast.unparse(node.func)
            if fn in ("pickle.load", "pickle.loads", "torch.load", "joblib.load", "dill.load"):
                safe = fn == "torch.load" and any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                                                  and k.value.value is True for k in node.keywords)
                if not safe:
                    bad.append(f"{path.relative_to(root)}:{node.lineno} {fn}")
    assert not bad, bad


class EscapingFileSystem(LocalFileSystem):
    """A remote store whose listing holds an object named ``model/../escaped`` (object stores allow it)."""

    PREFIX = "tamisescape://"

    @classmethod
    def scheme(cls):
        return "tamisescape"

    def match(self, patterns, limits=None):
        results = super().match([p.removeprefix(self.PREFIX) for p in patterns], limits)
        out = []
        for p, r in zip(patterns, results):
            found = [FileMetadata(self.PREFIX + m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in r.metadata_list]
            if p.endswith("/**") and found:
                base = p.removesuffix("/**")
                found.append(FileMetadata(f"{base}/../escaped.txt", 3, 0.0))
            out.append(MatchResult(p, found))
        return out

    def open(self, path, *args, **kwargs):
        return super().open(path.removeprefix(self.PREFIX), *args, **kwargs)


def test_a_remote_model_listing_cannot_write_outside_the_model_cache(tmp_path, tiny_encoder, monkeypatch):
    from tamis.models.loading import localize

    cache = tmp_path / "cache"
    monkeypatch.setenv("TAMIS_MODEL_CACHE", str(cache))
    bucket = tmp_path / "bucket" / "model"
    bucket.mkdir(parents=True)
    (bucket / "config.json").write_text("{}")
    (bucket.parent / "escaped.txt").write_text("pwn")
    with pytest.raises(ValueError, match="would be copied outside the model folder"):
        localize(f"tamisescape://{bucket}")
    with pytest.raises(ValueError, match="outside the model folder"):
        localize(f"tamisescape://{bucket}/..")
    assert not cache.exists() or not any(cache.iterdir())  # nothing copied, nowhere
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("escaped.txt")] == [Path("bucket/escaped.txt")]
