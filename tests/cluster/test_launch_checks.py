"""Workers that share no disk with the launcher are never handed a path on the launcher's disk.

A job server on ``localhost`` does not make its workers local: with ``--environment_type=EXTERNAL``
(a worker pool, a sidecar container) or ``DOCKER`` they see none of this machine's files.
"""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tamis.api import load_config
from tamis.cli import app
from tamis.pipeline.options import OptionsError, check_options, check_prepared, local_paths

POOL_SERVER = ["--runner", "PortableRunner", "--job_endpoint=localhost:8099"]
EXTERNAL = POOL_SERVER + ["--environment_type=EXTERNAL", "--environment_config=localhost:50000"]
DOCKER = POOL_SERVER + ["--environment_type=DOCKER", "--environment_config=tamis-worker:local"]
REMOTE = ["--pool", "s3://b/pool.jsonl", "--target", "food=s3://b/food.jsonl", "--out", "s3://b/r1"]


@pytest.mark.parametrize("args, message", [
    (["--pool", "s3://b/pool.jsonl", "--target", "food=f.jsonl", "--out", "runs/r1"] + EXTERNAL,
     "--out runs/r1 is on this machine's disk, which workers on the worker pool at localhost:50000 cannot read or write"),
    (["--pool", "data/pool.jsonl", "--target", "food=f.jsonl", "--out", "s3://b/r1"] + DOCKER,
     "--pool data/pool.jsonl is on this machine's disk, which workers on Docker containers (tamis-worker:local) cannot read"),
])
def test_a_local_job_server_with_external_or_docker_workers_refuses_local_paths(args, message, monkeypatch):
    from tamis import cli

    monkeypatch.setattr(cli.console, "width", 10_000)
    res = CliRunner().invoke(app, ["select", *args, "--dry-run"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tamis: ") and message in lines[0], res.output


def test_a_local_model_folder_is_refused_for_a_worker_pool(tmp_path):
    config = load_config(None, pool=["s3://b/pool.jsonl"], out="s3://b/r1", param={"model": str(tmp_path)},
                         runner="PortableRunner", beam_args=EXTERNAL[2:])
    with pytest.raises(OptionsError, match=f"--param model={tmp_path} is on this machine's disk"):
        check_options(config)


def test_loopback_workers_of_a_local_job_server_share_the_disk():
    config = load_config(None, pool=["data/pool.jsonl"], out="runs/r1", runner="PortableRunner",
                         beam_args=POOL_SERVER[2:] + ["--environment_type=LOOPBACK"])
    check_options(config)
    check_prepared(config, {"color": {"proxy": "/home/me/.cache/tamis/proxies/abc"}})


@pytest.mark.parametrize("prepared", [
    {"color": {"proxy": "/root/.cache/tamis/proxies/abc", "steps": 3}},
    {"el2n": {"data_kind": "lm", "proxies": ["s3://b/r1/_work/p0", "/tmp/tamis/proxies/p1"]}},
])
def test_prepare_handing_workers_a_launcher_path_is_refused_with_one_line(prepared):
    config = load_config(None, pool=["s3://b/pool.jsonl"], out="s3://b/r1", runner="PortableRunner",
                         beam_args=EXTERNAL[2:])
    (name, record), = prepared.items()
    with pytest.raises(OptionsError) as err:
        check_prepared(config, prepared)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"selector {name}: prepare() hands the workers /")
    assert "worker pool at localhost:50000" in message


def test_what_prepare_may_hand_workers():
    # URIs on a shared filesystem, names, numbers and hub ids are fine; only this machine's paths are not.
    assert local_paths({"centroids": "s3://b/r1/_work/centroids.npy", "model": "sentence-transformers/all-MiniLM-L6-v2",
                        "k": 4, "pooling": "mean", "rows": [1, 2]}) == []
    assert local_paths({"a": {"b": ["x", "/abs/path"]}, "c": "./rel"}) == ["/abs/path", "./rel"]
