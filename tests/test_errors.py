"""One shape for errors: a failure the user can fix is one line ``tamis: ...`` and a non-zero
exit status; ``--debug`` adds the traceback; Ctrl-C is one line and status 130; anything else
is a bug and keeps its traceback. Selector parameters are type-checked before anything loads.

Real CLI runs (typer's runner, or ``python -m tamis`` in a subprocess), real small pools, real
filesystems (a tiny tmpfs for disk full and read-only, where this test may mount one).
"""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import tamis
from tamis.cli import app
from tamis.errors import ConfigError
from tamis.selectors import registry

from .conftest import demo_records, install_plugin, write_jsonl

cli = CliRunner()
FOOD = str(Path(__file__).resolve().parents[1] / "tamis" / "demo" / "food_dev.jsonl")


def one_line(res) -> str:
    """The run failed with exactly one line, ``tamis: ...``, and no traceback."""
    lines = [line for line in res.output.splitlines() if line.strip() and "apitools" not in line]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("tamis: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


@pytest.fixture
def pool(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pool.jsonl", demo_records(12))


# -- typed parameters -------------------------------------------------------------------------

@pytest.mark.parametrize("param, expected", [
    ("less.lr=abc", "--param less.lr: expected a number or null, got 'abc'"),
    ("model=5", "--param rds.model: expected a string, got 5"),
    ("nlist=abc", "--param rds.nlist: expected a whole number, got 'abc'"),
    ("nlist=true", "--param rds.nlist: expected a whole number, got True"),
    ('trust_remote_code="false"', "--param rds.trust_remote_code: expected true or false, got 'false'"),
    ("trust_remote_code=yes please", "--param rds.trust_remote_code: expected true or false, got 'yes please'"),
    ("x=[1", "--param x: '[1' is not a valid YAML value"),
    ("rds.nope=1", "selector 'rds' has no parameter 'nope'"),
])
def test_a_bad_param_fails_with_one_line_before_anything_loads(tmp_path, pool, param, expected):
    selectors = ["--selector", "rds"] + (["--selector", "less"] if param.startswith("less.") else [])
    res = cli.invoke(app, ["select", "--pool", str(pool), "--target", f"food={FOOD}", *selectors,
                           "--param", param, "--out", str(tmp_path / "o")])
    assert expected in one_line(res)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["False", "false", "no", "0", "", 0, 1])
def test_a_string_or_number_never_switches_on_trust_remote_code(tmp_path, pool, value):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"pool": [str(pool)], "out": str(tmp_path / "o"), "selector": ["kmeans"],
                                   "param": {"trust_remote_code": value}}))
    line = one_line(cli.invoke(app, ["select", "--config", str(cfg)]))
    assert "--param kmeans.trust_remote_code: expected true or false" in line
    with pytest.raises(ConfigError, match="expected true or false"):
        registry.create("rds", {"trust_remote_code": value})


def test_real_booleans_and_lists_pass_the_check():
    assert registry.create("rds", {"trust_remote_code": False, "nlist": 8}).nlist == 8
    assert registry.create("irt", {"crowd_widths": [16, 32]}).crowd_widths == (16, 32)  # YAML has no tuples
    assert registry.create("less", {"lr": 1}).lr == 1.0  # a whole number is a number


def test_every_builtin_selector_annotates_every_parameter():
    from typing import Any

    for name in registry.BUILTIN:
        untyped = [k for k, t in registry.get(name).param_types().items() if t is Any]
        assert not untyped, f"{name}: parameters without an annotation: {untyped}"


def test_a_value_the_constructor_refuses_is_one_line(tmp_path, pool):
    res = cli.invoke(app, ["select", "--pool", str(pool), "--selector", "el2n", "--param", "runs=0",
                           "--out", str(tmp_path / "o")])
    assert "--param for selector 'el2n': runs must be at least 1" in one_line(res)


# -- config values and files ------------------------------------------------------------------

@pytest.mark.parametrize("budget", ["inf", "nan", "-1", "0"])
def test_a_budget_that_is_not_a_positive_finite_number_is_refused(tmp_path, pool, budget):
    res = cli.invoke(app, ["select", "--pool", str(pool), "--selector", "kmeans", "--budget", budget,
                           "--out", str(tmp_path / "o")])
    assert "bad value for 'budget'" in one_line(res)
    res = cli.invoke(app, ["reselect", str(tmp_path / "o"), "--budget", budget])
    assert "bad value for 'budget'" in one_line(res)
    with pytest.raises(ConfigError, match="bad value for 'budget'"):
        tamis.reselect(str(tmp_path / "o"), float(budget))
    with pytest.raises(ValueError, match="budget"):
        tamis.select(pool=[str(pool)], selector=["kmeans"], budget=float(budget), out=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("key, value, expected", [
    ("shard_rows", True, "bad value for 'shard_rows': expected a number, got True"),
    ("seed", False, "bad value for 'seed'"),
    ("budget", True, "bad value for 'budget'"),
    ("overwrite", "False", "bad value for 'overwrite': expected true or false, got 'False'"),
    ("decontaminate", "no", "bad value for 'decontaminate'"),
    ("device", "banana", "bad value for 'device': expected cpu, cuda, cuda:N or mps, got 'banana'"),
    ("out", 5, "bad value for 'out'"),
])
def test_yaml_values_of_the_wrong_type_are_refused(tmp_path, pool, key, value, expected):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"pool": [str(pool)], "out": str(tmp_path / "o"), "selector": ["kmeans"], key: value}))
    assert expected in one_line(cli.invoke(app, ["select", "--config", str(cfg)]))


@pytest.mark.parametrize("make, expected", [
    (lambda d: d, "is a folder; expected a YAML file"),
    (lambda d: d / "missing.yaml", "no such file"),
    (lambda d: (d / "bad.yaml", (d / "bad.yaml").write_text("pool: [a\n"))[0], "not valid YAML"),
    (lambda d: (d / "list.yaml", (d / "list.yaml").write_text("- a\n- b\n"))[0], "expected a YAML mapping"),
    (lambda d: (d / "bin.yaml", (d / "bin.yaml").write_bytes(b"pool: \xff\xfe\n"))[0], "not UTF-8"),
])
def test_a_config_file_that_cannot_be_read_is_one_line(tmp_path, make, expected):
    path = make(tmp_path)
    assert expected in one_line(cli.invoke(app, ["select", "--config", str(path)]))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_device_that_is_not_here_is_refused_before_any_model_loads(tmp_path, pool):
    res = cli.invoke(app, ["select", "--pool", str(pool), "--selector", "kmeans", "--device", "cuda",
                           "--out", str(tmp_path / "o")])
    assert "--device cuda: CUDA is not available here" in one_line(res)
    res = cli.invoke(app, ["select", "--pool", str(pool), "--selector", "kmeans", "--device", "banana",
                           "--out", str(tmp_path / "o")])
    assert "expected cpu, cuda, cuda:N or mps" in one_line(res)
    assert not (tmp_path / "o").exists()


# -- --debug, bugs, storage --------------------------------------------------------------------

def test_debug_shows_the_traceback(tmp_path, pool, monkeypatch):
    args = ["select", "--pool", str(pool), "--selector", "kmeans", "--budget", "inf", "--out", str(tmp_path / "o")]
    monkeypatch.delenv("TAMIS_DEBUG", raising=False)
    res = cli.invoke(app, ["--debug", *args])
    assert res.exit_code == 2 and "Traceback" in res.output and "tamis: bad value for 'budget'" in res.output
    res = cli.invoke(app, args, env={"TAMIS_DEBUG": "1"})
    assert res.exit_code == 2 and "Traceback" in res.output
    one_line(cli.invoke(app, args))  # and without either, one line again


BUGGY = '''
import numpy as np
from tamis.selectors import Selector


class Buggy(Selector):
    """Divides by zero in prepare: a bug, which must keep its traceback."""
    name = "buggy"

    def prepare(self, pool, targets, context):
        return {"per_row": 1 // 0}

    def score(self, records):
        return {"score_buggy": np.zeros(len(records), dtype=np.float32)}
'''


def test_a_bug_keeps_its_traceback(tmp_path, pool, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "tamis_buggy_plugin", BUGGY, {"buggy": "Buggy"})
    res = cli.invoke(app, ["select", "--pool", str(pool), "--selector", "buggy", "--out", str(tmp_path / "o"),
                           "--no-progress"])
    assert res.exit_code != 0 and not res.output.startswith("tamis:")
    assert isinstance(res.exception, ZeroDivisionError) or "ZeroDivisionError" in str(res.exception)
    sys.modules.pop("tamis_buggy_plugin", None)


def test_an_s3_pool_that_cannot_be_reached_is_one_line(tmp_path, caplog):
    res = cli.invoke(app, ["select", "--pool", "s3://tamis-no-such-bucket/pool.jsonl", "--selector", "kmeans",
                           "--out", str(tmp_path / "o")])
    assert "s3://tamis-no-such-bucket/pool.jsonl" in one_line(res)
    # No credentials is said at once: never handed to Beam's retries (7 tries, about nine minutes).
    assert "Unable to locate credentials" in res.output
    assert "Retry with exponential backoff" not in caplog.text


def test_an_s3_out_without_credentials_is_one_line_at_once(tmp_path, caplog):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a", "text": "x"}\n')
    res = cli.invoke(app, ["select", "--pool", str(pool), "--selector", "kmeans", "--out", "s3://tamis-no-such-bucket/run"])
    assert "Unable to locate credentials" in one_line(res)
    assert "Retry with exponential backoff" not in caplog.text


def test_a_cloud_client_refusal_wrapped_by_beam_is_one_line():
    botocore = pytest.importorskip("botocore.exceptions")
    from apache_beam.io.filesystem import BeamIOError

    from tamis.cli.errors import user_error

    try:
        try:
            raise botocore.NoCredentialsError()
        except Exception as e:
            raise BeamIOError("Match operation failed", {"s3://b/p.jsonl": e}) from None
    except BeamIOError as wrapped:
        line, status = user_error(RuntimeError("wrapped").with_traceback(None)) or ("", 0)
        assert status == 0  # a bare RuntimeError is a bug
        line, status = user_error(wrapped)
    assert status == 2 and "Unable to locate credentials" in line and "\n" not in line


# -- Ctrl-C ------------------------------------------------------------------------------------

def _tamis(args, env, **kw):
    """``python -m tamis`` as a terminal starts it: its own process group, SIGINT not ignored."""
    return subprocess.Popen([sys.executable, "-m", "tamis", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


def test_ctrl_c_is_one_line_and_the_next_call_resumes(tmp_path, gate_plugin):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(40))
    gate, out = tmp_path / "open", tmp_path / "out"
    args = ["select", "--pool", str(pool), "--out", str(out), "--selector", "gate", "--param", f"gate={gate}",
            "--param", "free=1", "--budget", "3", "--shard-rows", "10", "--no-progress"]
    proc = _tamis(args, gate_plugin)
    try:
        deadline = time.time() + 120
        while not glob.glob(str(out / "shards" / "*.parquet")) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # the second chunk is now held at the gate
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in err.splitlines() if line.strip() and "apitools" not in line]
    assert proc.returncode == 130, err
    assert lines == ["tamis: interrupted; rerun the same command to resume (finished work is kept)"], err
    gate.touch()
    done = subprocess.run([sys.executable, "-m", "tamis", *args], env=gate_plugin, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "input 40 = accepted 40 + rejected 0" in done.stdout and "reused from an earlier run" in done.stdout
    assert "0 reused" not in done.stdout


# -- disk full, read-only (a real tmpfs, where this process may mount one) --------------------

@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a tiny tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_and_read_only_are_one_line_in_either_pass(tmp_path, tiny_fs, gate_plugin):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(40))
    (tmp_path / "open").touch()
    common = ["--pool", str(pool), "--selector", "gate", "--param", f"gate={tmp_path / 'open'}", "--budget", "3",
              "--shard-rows", "10", "--no-progress"]

    def run(*args):
        res = subprocess.run([sys.executable, "-m", "tamis", *args], env=gate_plugin, capture_output=True, text=True,
                             timeout=300)
        return res.returncode, [line for line in res.stderr.splitlines() if line.strip() and "apitools" not in line]

    assert run("select", "--out", str(tiny_fs / "fits"), *common)[0] == 0
    code, lines = run("select", "--out", str(tiny_fs / "full"), *common)  # pass 1 fills the disk
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tamis: disk full"), lines
    subprocess.run(["rm", "-rf", str(tiny_fs / "full")], check=True)
    # Worker processes send their failure as traceback text (and print it themselves): the
    # last line is still the one line, and the status 2.
    code, lines = run("select", "--out", str(tiny_fs / "full"), *common, "--workers", "2")
    assert code == 2 and lines[-1].startswith("tamis: disk full"), lines[-3:]
    subprocess.run(["rm", "-rf", str(tiny_fs / "full")], check=True)
    filler = tiny_fs / "filler"
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * 200_000)
        except OSError:
            pass
    code, lines = run("reselect", str(tiny_fs / "fits"), "--budget", "5")  # pass 2 on a full disk
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tamis: disk full"), lines
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    code, lines = run("select", "--out", str(tiny_fs / "ro"), *common)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tamis: read-only file system"), lines
    code, lines = run("reselect", str(tiny_fs / "fits"), "--budget", "5")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tamis: read-only file system"), lines


# -- an empty or all-rejected pool finishes, with its rejects and a note -----------------------

@pytest.mark.parametrize("selector, extra", [
    ("kmeans", ["--param", "kmeans.sample_size=50"]),
    ("el2n", ["--param", "el2n.runs=1", "--param", "el2n.n_layer=1", "--param", "el2n.n_embd=16",
              "--param", "el2n.vocab_size=300", "--param", "el2n.positions=64"]),
])
@pytest.mark.parametrize("lines", [[], [b"not json\n", b'{"id": "x"}\n', b'{"messages": []}\n']],
                         ids=["empty", "all-rejected"])
def test_an_empty_or_all_rejected_pool_writes_its_rejects_and_a_note(tmp_path, tiny_encoder, selector, extra, lines):
    pool = write_jsonl(tmp_path / "pool.jsonl", lines)
    if selector == "kmeans":
        extra = extra + ["--param", f"kmeans.model={tiny_encoder}"]
    res = cli.invoke(app, ["select", "--pool", str(pool), "--selector", selector, "--out", str(tmp_path / "o"),
                           "--no-progress", *extra])
    assert res.exit_code == 0, res.output
    assert f"input {len(lines)} = accepted 0 + rejected {len(lines)}" in res.output
    assert "note: no accepted rows" in res.output
    import pyarrow.parquet as pq

    rejects = [pq.read_table(p) for p in glob.glob(str(tmp_path / "o" / "rejects" / "*.parquet"))]
    assert sum(t.num_rows for t in rejects) == len(lines)


def test_a_number_in_exponent_form_is_a_number_though_yaml_reads_it_as_a_string():
    """PyYAML (YAML 1.1) reads `2e-5` as a string; strict typing must still take it as the number
    users mean (`--param less.lr=2e-5`), while a word stays refused."""
    from tamis.errors import ConfigError
    from tamis.schemas.config import parse_param_pairs
    from tamis.selectors import registry

    params = parse_param_pairs(["lr=2e-5"])
    assert params == {"lr": "2e-5"}  # what YAML gives
    assert registry.get("less").check_params(params) == {"lr": 2e-5}
    with pytest.raises(ConfigError, match="expected a number"):
        registry.get("less").check_params({"lr": "2e-5x"})
