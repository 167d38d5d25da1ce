"""Deployment kits and remote-run checks: pinned images, submit commands, option checks, remote models.

Dataflow and Flink cannot be reached from here, so the submit commands documented in deploy/*/README.md
are run as they are with --dry-run (options checked, pipeline built, nothing submitted), and the
images are checked against their lock, deploy/constraints.txt. The user's own environment may hold
any versions the declared ranges allow: nothing here compares it with the pins.
"""
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from apache_beam.io.filesystem import FileMetadata, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from typer.testing import CliRunner

import tamis
from tamis.cli import app
from tamis.models.loading import fingerprint, localize
from tamis.pipeline.launch import flex_config, flex_main
from tamis.pipeline.options import OptionsError
from tamis.schemas.config import SelectConfig

from .conftest import demo_records, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
runner = CliRunner()


def pins() -> dict[str, str]:
    """deploy/constraints.txt: the worker images' lock (and the pinned suite's install)."""
    out = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            out[name.strip().lower()] = pinned.strip()
    return out


BEAM = pins()["apache-beam"]
IMAGE_PYTHON = "3.11"  # the worker image's Python; the submitting machine needs the same one


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in dockerfile.read_text().splitlines() if not l.lstrip().startswith("#")))
    out = []
    for line in filter(str.strip, text.splitlines()):
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


KNOWN = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "ENTRYPOINT", "CMD", "LABEL", "USER", "EXPOSE"}


def test_worker_image_installs_the_wheel_with_its_lock():
    steps = instructions(DEPLOY / "dataflow" / "Dockerfile")
    assert {s for s, _ in steps} <= KNOWN
    froms = [a for s, a in steps if s == "FROM"]
    assert froms == [f"apache/beam_python{IMAGE_PYTHON}_sdk:{BEAM}"]
    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    assert requires.contains(IMAGE_PYTHON + ".0")
    args = dict(a.split("=", 1) for s, a in steps if s == "ARG")
    assert Version(args["TORCH_VERSION"]) == Version(pins()["torch"])
    assert args["TORCH_VARIANT"] == "cpu"
    run = " ".join(a for s, a in steps if s == "RUN")
    assert "cpu)" in run and "cuda)" in run and "download.pytorch.org/whl/cpu" in run
    # The lock goes in, and tamis comes from the built wheel (what a user installs), not the source tree.
    assert ("COPY", "deploy/constraints.txt ./constraints.txt") in steps
    assert "pip install -c constraints.txt ./dist/tamis-*.whl" in run
    assert not any(s == "COPY" and "tamis " in a + " " for s, a in steps)
    assert [a for s, a in steps if s == "ENTRYPOINT"] == ['["/opt/apache/beam/boot"]']
    # Everything the image copies is let through its .dockerignore.
    allowed = [l[1:] for l in (DEPLOY / "dataflow" / "Dockerfile.dockerignore").read_text().splitlines() if l.startswith("!")]
    for s, a in steps:
        if s == "COPY":
            for source in a.split()[:-1]:
                assert source in allowed, source


def test_the_lock_pins_every_dependency_inside_its_declared_range():
    locked = pins()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for req in map(Requirement, declared):
        name = req.name.lower()
        assert name in locked, f"{name} is a dependency but has no pin in deploy/constraints.txt"
        assert req.specifier.contains(locked[name], prereleases=True), (name, locked[name])
    for name, pinned in locked.items():
        assert Version(pinned).local is None, f"{name}: pin a public release, not {pinned}"


def test_flex_and_flink_kits_use_the_same_versions():
    flex = instructions(DEPLOY / "dataflow" / "flex" / "Dockerfile")
    assert {s for s, _ in flex} <= KNOWN
    launcher = [a for s, a in flex if s == "FROM"][0]
    assert f"python{IMAGE_PYTHON.replace('.', '')}-template-launcher-base" in launcher
    assert [a for s, a in flex if s == "ENTRYPOINT"] == ['["/opt/apache/beam/boot"]']
    assert ("ENV", "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py") in flex
    accepted = set(SelectConfig.model_fields) | {"config"}
    params = [p["name"] for p in json.loads((DEPLOY / "dataflow" / "flex" / "metadata.json").read_text())["parameters"]]
    assert params and set(params) <= accepted

    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    compose = yaml.safe_load((DEPLOY / "flink" / "docker-compose.yml").read_text())["services"]
    job_server = compose["job-server"]["image"]
    flink = re.match(r"apache/beam_flink([\d.]+)_job_server:(.+)", job_server)
    assert flink and flink.group(2) == BEAM and flink.group(1) in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    for name in ("jobmanager", "taskmanager"):
        assert compose[name]["image"].startswith(f"flink:{flink.group(1)}")
    pool = compose["worker-pool"]
    assert pool["build"]["dockerfile"] == "deploy/dataflow/Dockerfile" and pool["command"] == ["--worker_pool"]
    assert pool["network_mode"] == "service:taskmanager"


def readme_commands(path: Path) -> list[list[str]]:
    """Every `tamis select` command in a README's bash blocks, as argv, with the example values."""
    env = {"PROJECT": "my-project", "REGION": "us-central1", "BUCKET": "my-bucket", "TAMIS_DATA": "/tmp/tamis-data",
           "IMAGE": "us-central1-docker.pkg.dev/my-project/tamis/worker:0.1.0-cpu",
           "GPU_IMAGE": "us-central1-docker.pkg.dev/my-project/tamis/worker:0.1.0-cuda"}
    out = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if re.match(r"\s*tamis select\s", line):
                line = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], line)
                out.append(shlex.split(line)[1:])
    return out


@pytest.mark.parametrize("readme, runners", [
    ("deploy/dataflow/README.md", {"DataflowRunner", "DirectRunner"}),
    ("deploy/flink/README.md", {"PortableRunner", "FlinkRunner"}),
    ("README.md", {"DataflowRunner", "DirectRunner"}),
])
def test_documented_submit_commands_pass_a_dry_run(readme, runners):
    commands = readme_commands(ROOT / readme)
    seen = set()
    for argv in commands:
        argv = argv if "--dry-run" in argv else argv + ["--dry-run"]
        res = runner.invoke(app, argv)
        assert res.exit_code == 0, (argv, res.output)
        assert "nothing was read or submitted" in res.output
        found = re.search(r"runner: (\w+)", res.output).group(1)
        seen.add(found)
        if found == "DataflowRunner":
            assert "--project=my-project" in res.output and "--sdk_container_image=" in res.output
        if "--device" in argv:  # the GPU command: its accelerator option reached Beam intact
            assert "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" in res.output
    assert seen == runners


DATAFLOW = ["--runner", "DataflowRunner", "--project=my-project", "--region=us-central1",
            "--temp_location=gs://my-bucket/tmp", "--sdk_container_image=us-docker.pkg.dev/my-project/tamis/w:1"]
REMOTE = ["--pool", "gs://my-bucket/pool.jsonl", "--target", "food=gs://my-bucket/food.jsonl", "--out", "gs://my-bucket/r1"]


@pytest.mark.parametrize("args, message", [
    (REMOTE + ["--runner", "DataflowRunner"], "DataflowRunner needs --project, --region, --temp_location"),
    (REMOTE + DATAFLOW[:4], "DataflowRunner needs --temp_location"),
    (REMOTE + DATAFLOW[:-1], "workers must be able to import tamis: pass --sdk_container_image"),
    (REMOTE + DATAFLOW + ["--device", "cuda"], "needs GPU workers: pass --dataflow_service_options=worker_accelerator"),
    (REMOTE + DATAFLOW + ["--temp_location=/tmp/x"], "--temp_location must be a gs:// path"),
    (["--pool", "data/pool.jsonl", "--target", "food=f.jsonl", "--out", "gs://b/r"] + DATAFLOW,
     "--pool data/pool.jsonl is on this machine's disk, which workers on Dataflow cannot read"),
    (REMOTE[:4] + ["--out", "runs/r1"] + DATAFLOW, "--out runs/r1 is on this machine's disk"),
    (REMOTE + DATAFLOW + ["--param", f"model={ROOT / 'tamis'}"], f"--param model={ROOT / 'tamis'} is on this machine's disk"),
    (REMOTE + DATAFLOW + ["--projct=x"], "unknown option --projct: neither tamis nor Beam knows it; did you mean --project?"),
    (REMOTE + DATAFLOW + ["--budjet", "3"], "unknown option --budjet: neither tamis nor Beam knows it; did you mean --budget?"),
    (REMOTE + DATAFLOW + ["--num_workers=many"], "bad Beam option value: argument --num_workers: invalid int value"),
    (REMOTE + ["--runner", "FlinkRunner"], "FlinkRunner needs --flink_master=host:8081"),
    (REMOTE + ["--runner", "FlinkRunner", "--flink_master=flink:8081"], "workers would run Beam's default SDK image"),
    (["--pool", "p.jsonl", "--target", "a=t.jsonl", "--out", "o", "--runner", "FlinkRunner", "--flink_master=flink.example.com:8081",
      "--environment_type=EXTERNAL", "--environment_config=localhost:50000"], "workers on the Flink cluster at flink.example.com:8081"),
    (REMOTE + ["--runner", "PortableRunner", "--job_endpoint=localhost:8099", "--environment_type=PROCESS"],
     "Beam rejects the options: Option process_command is required for environment type PROCESS"),
    (REMOTE + ["--runner", "DataflowRunner", "--workers", "4"] + DATAFLOW[2:], "--workers sets local DirectRunner processes"),
    (REMOTE + ["--runner", "NoSuchRunner"], "Unexpected pipeline runner: NoSuchRunner"),
    (REMOTE + ["--dry_run=True"], "tamis's flag is --dry-run"),
])
def test_bad_options_fail_before_anything_runs_with_one_line(args, message, monkeypatch):
    from tamis import cli

    monkeypatch.setattr(cli.console, "width", 10_000)  # no wrapping at the test terminal's 80 columns
    res = runner.invoke(app, ["select", *args, "--dry-run"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tamis: ") and message in lines[0], res.output


def test_options_are_checked_before_any_data_is_read(tmp_path, targets_dir):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(10))
    with pytest.raises(OptionsError, match="unknown option --max_num_worker: .*did you mean --max_num_workers"):
        tamis.select(pool=[str(pool)], target=targets_dir, out=str(tmp_path / "out"), beam_args=["--max_num_worker=3"])
    assert not (tmp_path / "out").exists()


# -- remote model paths ---------------------------------------------------------------------------


class SchemeFileSystem(LocalFileSystem):
    """Beam's local filesystem behind a URI scheme: stands in for gs:// or s3://, unreachable here."""

    PREFIX = "tamistest://"

    @classmethod
    def scheme(cls):
        return "tamistest"

    def match(self, patterns, limits=None):
        results = super().match([p.removeprefix(self.PREFIX) for p in patterns], limits)
        return [MatchResult(p, [FileMetadata(self.PREFIX + m.path, m.size_in_bytes, m.last_updated_in_seconds)
                                for m in r.metadata_list]) for p, r in zip(patterns, results)]

    def open(self, path, *args, **kwargs):
        return super().open(path.removeprefix(self.PREFIX), *args, **kwargs)


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    cache = tmp_path / "model_cache"
    monkeypatch.setenv("TAMIS_MODEL_CACHE", str(cache))
    return cache


def test_localize_copies_a_remote_model_once_and_again_when_it_changes(tmp_path, tiny_encoder, model_cache):
    import shutil

    source = tmp_path / "bucket" / "encoder"
    shutil.copytree(tiny_encoder, source)
    uri = f"tamistest://{source}"
    local = localize(uri)
    assert Path(local).parent == model_cache and fingerprint(local) == fingerprint(tiny_encoder)
    inode = Path(local).stat().st_ino
    assert localize(uri + "/") == local and Path(local).stat().st_ino == inode  # reused, not copied again
    assert not list(model_cache.glob(".*partial*"))

    with open(source / "config.json", "a") as f:  # the model at that URI is replaced
        f.write("\n")
    changed = localize(uri)
    assert changed != local and fingerprint(changed) == fingerprint(str(source)) != fingerprint(local)

    single = localize(f"tamistest://{source}/config.json")
    assert Path(single).name == "config.json" and Path(single).read_bytes() == (source / "config.json").read_bytes()
    for plain in (tiny_encoder, "minilm", "org/some-model"):  # local paths, aliases and hub ids need no copy
        assert localize(plain) == plain
    with pytest.raises(FileNotFoundError, match="no files there"):
        localize(f"tamistest://{tmp_path}/nothing-here")


def test_a_remote_model_scores_like_the_local_one_and_the_manifest_names_the_copy(tmp_path, targets_dir, tiny_encoder, model_cache):
    import shutil

    import numpy as np
    import pyarrow.parquet as pq

    from tamis.selectors.base import RunContext
    from tamis.selectors.rds import RDSSelector
    from tamis.pipeline.sources import read_targets

    source = tmp_path / "bucket" / "encoder"
    shutil.copytree(tiny_encoder, source)
    rows = demo_records(40)
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    tamis.select(pool=[str(pool)], target=targets_dir, out=str(tmp_path / "out"), budget=5,
                 param={"model": f"tamistest://{source}"})
    table = pq.read_table(next((tmp_path / "out" / "shards").glob("part-*.parquet")))

    reference = RDSSelector(model=tiny_encoder)
    reference.setup(RunContext(), None, read_targets(targets_dir))
    expected = reference.score(rows)
    for column, values in expected.items():
        assert np.array_equal(table.column(column).to_numpy(), values), column

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (used,) = manifest["worker_models"]
    embedder = used["models"]["rds.embedder"]
    assert used["shards"] == 1 and used["host"]
    assert embedder["model"] == f"tamistest://{source}" and Path(embedder["path"]).parent == model_cache
    assert embedder["sha256"] == fingerprint(tiny_encoder)


# -- Flex Template ---------------------------------------------------------------------------------


def test_flex_parameters_become_a_config_and_the_beam_options_pass_through(tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump({"budget": 0.1, "shard_rows": 500, "param": {"pooling": "mean"}}))
    config = flex_config([f"--config={run_yaml}", "--pool=gs://b/a.jsonl,gs://b/b.jsonl", "--target=math=gs://b/m.jsonl,code=gs://b/c.jsonl",
                          "--out=gs://b/r1", "--selector=rds", "--param=model=gs://b/enc", "--shard_rows", "100",
                          "--project=p", "--region=us-central1", "--temp_location=gs://b/tmp", "--sdk_container_image=img"])
    assert config.pool == ["gs://b/a.jsonl", "gs://b/b.jsonl"] and config.target == {"math": "gs://b/m.jsonl", "code": "gs://b/c.jsonl"}
    assert config.budget == 0.1 and config.shard_rows == 100 and config.param == {"model": "gs://b/enc"}
    assert config.runner == "DataflowRunner"
    assert config.beam_args == ["--project=p", "--region=us-central1", "--temp_location=gs://b/tmp", "--sdk_container_image=img"]


def test_flex_launch_scores_then_a_rerun_only_selects(tmp_path, targets_dir, tiny_encoder):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(120))
    out = tmp_path / "out"
    # What the launcher runs (here on the DirectRunner, which returns when the job is done).
    flex_main([f"--pool={pool}", f"--target=food={targets_dir['food']}", f"--out={out}", "--budget=10",
               "--shard_rows=60", f"--param=model={tiny_encoder}", "--runner=DirectRunner"])
    assert len(list((out / "shards").glob("part-*.parquet"))) == 2 and not (out / "manifest.json").exists()
    summary = tamis.select(pool=[str(pool)], target={"food": targets_dir["food"]}, out=str(out), budget=10,
                           shard_rows=60, param={"model": tiny_encoder})
    assert summary.chunks == {"planned": 2, "reused": 2, "computed": 0}
    assert summary.counts["input"] == 120 and summary.counts["selected"] == 10
    assert "scored" not in summary.manifest["metrics"]  # no scoring pass ran the second time
    assert sum(u["shards"] for u in summary.manifest["worker_models"]) == 2


def test_every_registered_selector_builds_a_dataflow_graph_in_a_dry_run():
    from tamis.selectors import registry

    for name in registry.available():
        res = runner.invoke(app, ["select", *REMOTE, "--selector", name, *DATAFLOW, "--dry-run"])
        assert res.exit_code == 0 and f"selectors: {name} -> " in res.output, (name, res.output)
