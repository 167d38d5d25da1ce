"""Every Beam step declares what it takes and what it gives, and the declarations hold.

Beam checks a graph against its steps' type hints when the graph is built. A step that receives a
GroupByKey's values must take an ``Iterable``, not a ``list``. Beam 2.78 made that check strict, and
one wrong hint crashed every ``tamis select`` (issue 25). Older Beams let it pass only because
nothing upstream declared its output, so Beam saw ``Any``. Declared outputs make the build-time
check work on every Beam; ``--runtime_type_check`` shows that each declaration matches the data.
"""
import importlib
import inspect
import pkgutil
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.typehints.decorators import IOTypeHints, TypeCheckError

import tamis
import tamis.pipeline
from tamis.io.runfolder import RunFolder
from tamis.pipeline.selection import ShardIds

from .conftest import demo_records, write_jsonl


def pipeline_steps() -> list[type]:
    """Every DoFn that tamis.pipeline defines."""
    found = {}
    for info in pkgutil.iter_modules(tamis.pipeline.__path__):
        module = importlib.import_module(f"tamis.pipeline.{info.name}")
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, beam.DoFn) and obj.__module__ == module.__name__:
                found[obj.__qualname__] = obj
    return [found[k] for k in sorted(found)]


@pytest.mark.parametrize("step", pipeline_steps(), ids=lambda s: s.__qualname__)
def test_every_step_declares_its_element_types(step):
    hints = IOTypeHints.from_callable(step.process)
    element = hints.input_types[0][1]  # after self
    (output,) = hints.output_types[0]
    # A string here is an annotation Beam could not evaluate: it would check nothing.
    assert element is not Any and not isinstance(element, str), element
    assert output is not Any and not isinstance(output, str), output


def claims_a_list(item: tuple[str, list[tuple[int, int]]]):
    yield item


def test_a_wrong_hint_after_a_group_fails_when_the_graph_is_built(tmp_path):
    """The same mistake as issue 25, on the Beam installed here, whichever release it is."""
    p = beam.Pipeline()
    grouped = (p | beam.Create([(0, "part-0000-00000")]) | beam.ParDo(ShardIds(str(tmp_path)))
               | beam.GroupByKey())
    with pytest.raises(TypeCheckError, match="Iterable"):
        _ = grouped | "ClaimsAList" >> beam.FlatMap(claims_a_list)


def test_declared_types_hold_at_run_time(tmp_path, targets_dir, tiny_encoder):
    """select, add-task and reselect with Beam checking every element against its step's hints."""
    rows = demo_records(160)
    pool = write_jsonl(tmp_path / "pool.jsonl", rows + [rows[5]])  # a repeated id: the GroupByKey step has work
    out = str(tmp_path / "run")
    checks = ["--runtime_type_check"]
    summary = tamis.select(pool=[str(pool)], target={"food": targets_dir["food"]}, out=out, budget=20,
                           shard_rows=50, param={"model": tiny_encoder}, beam_args=checks)
    assert summary.counts["rejected"] == 1  # the repeated id
    tamis.add_task(out, {"animal": targets_dir["animal"]}, beam_args=checks)
    again = tamis.reselect(out, 30, beam_args=checks)
    assert again.counts["selected"] == 30
    assert set(RunFolder(out).read_manifest()["resolved"]["tasks"]) == {"food", "animal"}
