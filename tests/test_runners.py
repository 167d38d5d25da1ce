"""Portability: the same scores on every local runner, and everything workers get survives Beam's pickler.

Flink and Dataflow cannot be reached from here; the PortableRunner with an embedded job server
and LOOPBACK workers runs the same portable Fn API path they use (pipeline proto, pickled DoFns,
coders), and DirectRunner's multi_processing mode runs the work in separate worker processes.
"""
import dataclasses
import json
import subprocess
import sys

import apache_beam as beam
import pyarrow as pa
from apache_beam.internal import pickler
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.options.pipeline_options import SetupOptions

import tamis
from tamis.io.runfolder import RunFolder
from tamis.models.loading import fingerprint

from .conftest import demo_records, write_jsonl

SCORES = ["score_rds_animal", "score_rds_food"]


def read_shards(out) -> pa.Table:
    """Every row, shards joined with their selection (as tamis reads them)."""
    return RunFolder(str(out)).read_shards()


def test_portable_and_multiprocess_runners_match_the_default_bit_for_bit(tmp_path, targets_dir, tiny_encoder, one_thread):
    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(200))
    common = dict(pool=[str(pool)], target=targets_dir, budget=20, shard_rows=100, param={"model": tiny_encoder})
    runs = {
        "direct": {},
        "portable": {"runner": "PortableRunner"},  # embedded job server, LOOPBACK workers
        "multiprocess": {"workers": 2},  # DirectRunner multi_processing, 2 worker processes
    }
    tables, manifests = {}, {}
    for name, extra in runs.items():
        summary = tamis.select(**common, **extra, out=str(tmp_path / name))
        assert summary.counts["input"] == 200 and summary.counts["selected"] == 20, name
        tables[name] = read_shards(tmp_path / name)
        manifests[name] = json.loads((tmp_path / name / "manifest.json").read_text())

    reference = tables["direct"]
    for name in ("portable", "multiprocess"):
        table = tables[name]
        assert table.column("id").equals(reference.column("id")), name
        for column in SCORES:  # float32 columns compared bit for bit, not within a tolerance
            assert table.column(column).equals(reference.column(column)), (name, column)
        for column in ("selected", "rank", "selected_for"):
            assert table.column(column).equals(reference.column(column)), (name, column)

    # Every runner's workers report the model copy they loaded, in each shard's metadata.
    for name, manifest in manifests.items():
        used = manifest["worker_models"]
        assert sum(u["shards"] for u in used) == 2, name
        for u in used:
            assert u["models"]["rds.embedder"]["sha256"] == fingerprint(tiny_encoder), name
    assert manifests["multiprocess"]["config"]["workers"] == 2


def _graph(tmp_path, targets_dir, tiny_encoder):
    """The real pass-1 and pass-2 graphs of a run, built and not run."""
    from tamis.api import load_config
    from tamis.pipeline.options import pipeline_options
    from tamis.pipeline.plan import Plan
    from tamis.pipeline.run import score_pipeline
    from tamis.pipeline.selection import Driver, selection_pipeline
    from tamis.selectors.rds import RDSSelector
    from tamis.selectors.rules import Choice, TableRule

    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(30))
    config = load_config(None, pool=[str(pool)], target=targets_dir, out=str(tmp_path / "out"), param={"model": tiny_encoder})
    plan = Plan.build(config)
    plan.count_files()
    targets = plan.targets
    score = score_pipeline(plan, set())

    class FirstRows(TableRule):  # pass 2 takes another path for a rule that sees every eligible row
        def choose(self, table, k, seed, records):
            return Choice(table.column("id").to_pylist()[:k])

    class OwnRule(RDSSelector):
        def selection_rule(self):
            return FirstRows()

    pipelines = [score]
    for rule in (plan.ranking({}), dataclasses.replace(plan.ranking({}), rule=FirstRows(),
                                                       driver=Driver("rds", {"model": tiny_encoder}, None, targets,
                                                                     plan.context()))):
        select = beam.Pipeline(options=pipeline_options(config))
        selection_pipeline(select, config.out, [f"{config.out}/shards/part-0000-00000.parquet"], rule, 30)
        pipelines.append(select)
    from tamis.pipeline.add_task import task_pipeline

    pipelines.append(task_pipeline(plan, ["part-0000-00000"], {}, beam.Pipeline(options=pipeline_options(config))))
    return config, targets, pipelines


def _dofns(pipelines) -> list:
    found = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            if isinstance(node.transform, beam.ParDo):
                found.append(node.transform.fn)

    for p in pipelines:
        p.visit(Visitor())
    return found


def _subclasses(cls) -> set:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


# Runs in a fresh interpreter: no test module, no __main__ state, nothing but the pickled bytes.
_LOAD_AND_SCORE = r"""
import sys, pickle
from apache_beam.internal import pickler
payload = pickle.loads(sys.stdin.buffer.read())
fns = [pickler.loads(b) for b in payload["fns"]]
handler = pickler.loads(payload["handler"])
chunk = pickler.loads(payload["chunk"])
model = handler.load_model()
result = list(handler.run_inference([chunk], model))[0]
out = {"types": [type(f).__module__ + "." + type(f).__qualname__ for f in fns],
       "scores": {k: v.tobytes() for k, v in result.inference.items()}, "model_id": result.model_id}
sys.stdout.buffer.write(pickle.dumps(out))
"""


def test_every_dofn_and_model_handler_pickles_and_runs_in_a_fresh_interpreter(tmp_path, targets_dir, tiny_encoder, one_thread):
    from tamis.pipeline.chunks import ValidChunk

    config, targets, pipelines = _graph(tmp_path, targets_dir, tiny_encoder)
    assert pickler.is_currently_cloudpickle()  # Beam's default since 2.65: what the runs use
    assert pipelines[0].options.view_as(SetupOptions).save_main_session is False

    fns = _dofns(pipelines)
    ours = {f for f in _subclasses(beam.DoFn) if f.__module__.startswith("tamis.")}
    assert ours and ours <= {type(f) for f in fns}, "a tamis DoFn is missing from the graphs"
    inference = [f for f in fns if hasattr(f, "_model_handler")]
    assert len(inference) == 1
    handler = inference[0]._model_handler
    handlers = {h for h in _subclasses(ModelHandler) if h.__module__.startswith("tamis.")}
    assert type(handler._base) in handlers and len(handlers) == 1

    records = demo_records(12)
    chunk = ValidChunk("part-0000-00000", 12, records, [False] * 12, [])
    local = list(handler.run_inference([chunk], handler.load_model()))[0]

    payload = {"fns": [pickler.dumps(f) for f in fns], "handler": pickler.dumps(handler), "chunk": pickler.dumps(chunk)}
    import pickle

    proc = subprocess.run([sys.executable, "-c", _LOAD_AND_SCORE], input=pickle.dumps(payload), capture_output=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    remote = pickle.loads(proc.stdout)
    assert remote["types"] == [type(f).__module__ + "." + type(f).__qualname__ for f in fns]
    assert remote["scores"] == {k: v.tobytes() for k, v in local.inference.items()}  # bit for bit
    assert json.loads(remote["model_id"])["models"]["rds.embedder"]["sha256"] == fingerprint(tiny_encoder)


def test_a_job_server_run_is_not_cut_off_after_beams_five_minutes():
    """Beam's --job_server_timeout (300 s) bounds the launcher's whole wait on a job server, so
    every PortableRunner or Flink run longer than five minutes ended as 'the runner stopped
    answering' (exit 75). tamis passes a week unless the user gives their own."""
    from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions

    from tamis.pipeline.options import beam_argv

    def timeout(runner, args):
        return PipelineOptions(beam_argv(runner, 1, args)).view_as(PortableOptions).job_server_timeout

    pool = ["--environment_type=EXTERNAL", "--environment_config=localhost:50000"]
    assert timeout("PortableRunner", ["--job_endpoint=localhost:8099", *pool]) >= 86400
    assert timeout("PortableRunner", []) >= 86400  # the embedded job server too
    assert timeout("FlinkRunner", pool) >= 86400
    assert timeout("PortableRunner", ["--job_endpoint=localhost:8099", *pool, "--job_server_timeout=60"]) == 60
