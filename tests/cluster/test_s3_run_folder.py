"""A run folder on ``s3://`` (an S3 API on loopback), reached only through the options the user gives.

Every command and reader runs in its own process, as a user runs them, so nothing set by an
earlier call in the same process can stand in for the options: select, reselect, inspect,
report and ``load_selected(storage_options=...)``. No root needed (no worker pool here).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ..conftest import DEMO, demo_records, write_jsonl
from .conftest import BUCKET, ROOT


def tamis_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "tamis", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def s3_run(s3, tmp_path_factory, tiny_encoder):
    """A finished rds run whose pool, targets, model and output are all on s3://."""
    d = tmp_path_factory.mktemp("s3_run")
    pool = s3.upload(write_jsonl(d / "pool.jsonl", demo_records(60)), "s3run/pool.jsonl")
    food = s3.upload(DEMO / "food_dev.jsonl", "s3run/food_dev.jsonl")
    model = s3.upload(tiny_encoder, "s3run/tiny_encoder")
    out = f"s3://{BUCKET}/s3run/out"
    done = tamis_cli("select", "--pool", pool, "--target", f"food={food}", "--param", f"model={model}",
                     "--budget", "6", "--shard-rows", "30", "--out", out, "--no-progress", *s3.args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "input 60 = accepted 60 + rejected 0; selected 6" in done.stdout
    return out


def test_select_on_s3_reads_its_inputs_through_the_given_endpoint(s3, s3_run):
    names = {o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="s3run/out/")["Contents"]}
    assert "s3run/out/manifest.json" in names, sorted(names)
    assert len([n for n in names if n.startswith("s3run/out/shards/part-") and n.endswith(".parquet")]) == 2, sorted(names)


def test_reselect_and_inspect_take_the_s3_options(s3, s3_run):
    done = tamis_cli("reselect", s3_run, "--budget", "4", *s3.args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "selected 4 <= accepted" in done.stdout
    shown = tamis_cli("inspect", s3_run, "--top", "2", *s3.args)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "input 60 = accepted 60 + rejected 0; selected 4" in shown.stdout and "top 2 for food" in shown.stdout


def test_report_writes_to_the_s3_run_folder(s3, s3_run):
    done = tamis_cli("report", s3_run, *s3.args)
    assert done.returncode == 0, done.stderr[-3000:]
    page = s3.client().get_object(Bucket=BUCKET, Key="s3run/out/report.html")["Body"].read().decode()
    assert "<h2>Counts</h2>" in page


def test_a_typo_in_the_storage_options_is_one_line(s3, s3_run):
    done = tamis_cli("inspect", s3_run, "--s3_endpoint_ur=http://127.0.0.1:1")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "unknown option --s3_endpoint_ur" in done.stderr


def test_load_selected_reads_s3_with_storage_options(s3, s3_run):
    code = ("import json, sys, tamis; ds = tamis.load_selected(sys.argv[1], storage_options=json.loads(sys.argv[2])); "
            "print(len(ds), sorted(ds['rank'])[:3])")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code, s3_run, json.dumps(s3.options)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(s3.client().get_object(Bucket=BUCKET, Key="s3run/out/manifest.json")["Body"].read())
    assert done.stdout.split()[:2] == [str(manifest["counts"]["selected"]), "[1,"]
