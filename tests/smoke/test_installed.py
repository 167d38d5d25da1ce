"""The smoke suite: what a user runs first, against tamis as pip installed it.

It imports nothing from the repository (no ``tests`` package, no source tree), so it runs from
any folder against a wheel installed in a clean venv. `.ci/run` runs it in two environments
beside the pinned one: resolved to the newest releases ``pyproject.toml`` allows, and to the
lowest (see README, "Development"). Every command goes through the installed entry points.
With ``TAMIS_SMOKE_INSTALLED=1`` it also checks that tamis was imported from site-packages,
not from a checkout.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from importlib.metadata import distribution, version
from pathlib import Path

import pyarrow.parquet as pq
import pytest

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
POOL_LINES = 240  # the demo pool's first lines (a few of them broken on purpose)


def tamis(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN / "tamis"), *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"tamis {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(autouse=True)
def _tmp(tmp_path, monkeypatch):
    monkeypatch.setitem(ENV, "TMPDIR", str(tmp_path))
    monkeypatch.setitem(ENV, "TAMIS_CACHE", str(tmp_path / "cache"))


def test_tamis_is_the_installed_distribution():
    import tamis

    print("versions:", {n: version(n) for n in ("tamis", "apache-beam", "torch", "transformers", "peft", "pyarrow",
                                                  "numpy", "pydantic", "datasets", "typer", "faiss-cpu")})
    if os.environ.get("TAMIS_SMOKE_INSTALLED") == "1":
        site = Path(distribution("tamis").locate_file("tamis")).resolve()
        assert Path(tamis.__file__).resolve().parent == site, (tamis.__file__, site)
        assert not (site.parent / "pyproject.toml").exists(), "tamis was imported from a source checkout"
    assert tamis.__version__ == version("tamis")


def test_entry_points_and_bundled_data(tmp_path):
    from tamis.demo import demo_dir
    from tamis.selectors import registry

    listed = tamis("selectors", cwd=tmp_path).stdout
    for name in registry.available():
        assert name in listed
    assert {"rds", "less", "color", "kmeans", "el2n", "grand", "irt"} <= set(registry.available())
    for name in ("pool.jsonl.gz", "food_dev.jsonl", "animal_dev.jsonl", "labels.jsonl.gz", "NOTICE"):
        assert (Path(demo_dir()) / name).is_file(), name
    boot = subprocess.run([str(BIN / "tamis-worker-boot"), "--help"], env=ENV, capture_output=True, text=True, timeout=120)
    assert boot.returncode == 0 and "--provision_endpoint" in boot.stdout, boot.stdout + boot.stderr
    done = subprocess.run([sys.executable, "-m", "tamis", "--help"], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "select" in done.stdout


def test_demo_runs_and_every_line_is_counted(tmp_path):
    import tamis as api

    out = tmp_path / "runs" / "demo"
    tamis("demo", "--out", str(out), "--no-progress", cwd=tmp_path)
    counts = manifest(out)["counts"]
    assert counts["input"] == counts["accepted"] + counts["rejected"] and counts["rejected"] > 0
    rows = sum(pq.read_metadata(p).num_rows for p in (out / "shards").glob("*.parquet"))
    assert rows == counts["accepted"]
    selected = api.load_selected(str(out))
    assert len(selected) == counts["selected"] > 0


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    from tamis.demo import demo_dir

    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    with gzip.open(Path(demo_dir()) / "pool.jsonl.gz", "rb") as f:
        path.write_bytes(b"".join(line for _, line in zip(range(POOL_LINES), f)))
    return path


def selector_flags() -> list[str]:
    """Every registered selector, each at its own tiny test settings."""
    from tamis.selectors import registry

    flags = []
    for name in registry.available():
        flags += ["--selector", name]
        for key, value in registry.get(name).test_params().items():
            flags += ["--param", f"{name}.{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}"]
    return flags


def test_every_selector_in_one_select_then_reselect_add_task_load_evaluate(pool, tmp_path):
    import tamis as api
    from tamis.demo import demo_dir
    from tamis.selectors import registry

    d = Path(demo_dir())
    out = tmp_path / "multi"
    tamis("select", "--pool", str(pool), "--target", f"food={d / 'food_dev.jsonl'}", "--budget", "0.1",
          "--shard-rows", "80", "--out", str(out), "--no-progress", *selector_flags(), cwd=tmp_path)
    first = manifest(out)
    counts = first["counts"]
    assert counts["input"] == counts["accepted"] + counts["rejected"]
    table = pq.read_table(out / "shards")
    for name in registry.available():
        assert any(c.startswith(f"score_{name}") for c in table.column_names), name

    tamis("reselect", str(out), "--budget", "0.2", cwd=tmp_path)
    assert manifest(out)["counts"]["selected"] > counts["selected"]

    tamis("add-task", str(out), "--target", f"animal={d / 'animal_dev.jsonl'}", cwd=tmp_path)
    animal = api.load_selected(str(out), task="animal")
    food = api.load_selected(str(out), task="food")
    assert len(animal) > 0 and len(food) > 0

    done = tamis("evaluate", str(out), "--eval", f"food={d / 'food_dev.jsonl'}", "--steps", "3", "--seeds", "1",
                 "--batch-size", "4", "--no-progress", cwd=tmp_path)
    assert (out / "evaluate.json").is_file(), done.stdout
    losses = json.loads((out / "evaluate.json").read_text())["summary"]["food"]
    assert {"selected", "random", "full"} <= set(losses) and all(v["mean"] > 0 for v in losses.values())


def test_worker_pool_entry_point_serves(tmp_path):
    """``tamis-worker-boot --pool`` (what a Flink or cluster worker pool runs) starts and listens."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "pool.log", "wb")
    proc = subprocess.Popen([str(BIN / "tamis-worker-boot"), "--pool", f"--service_port={port}"], env=ENV,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "pool.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the worker pool never listened"
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
