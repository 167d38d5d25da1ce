"""Launches that do not run a whole selection here: ``--dry-run`` and the Dataflow Flex Template.

:func:`dry_run` checks the options and builds both passes' graphs (Beam pickles every DoFn and
the model handler into the portable proto) without reading data or contacting a service.

:func:`submit_score_pass` is what the Flex Template's launcher runs. A Flex launcher captures
the one job its program submits and needs the program to exit without waiting, so it plans,
prepares and submits pass 1 only. Rerunning the same ``tamis select`` once that job is done
reuses every shard and runs only the cheap selection pass and the manifest.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from ..io.runfolder import RunFolder
from ..schemas.config import SelectConfig
from .artifacts import prepare_for_workers
from .options import beam_argv, check_options, resolved_options
from .plan import Plan, load_config
from .run import begin_scoring, score_pipeline
from .selection import ScoreLayout, selection_pipeline


@dataclass
class DryRun:
    """What ``tamis select --dry-run`` found: the options as Beam parsed them and the graphs."""

    runner: str
    options: dict
    columns: dict[str, list[str]]  # selector -> its output columns
    transforms: dict[str, int]  # pass -> transforms in its portable graph
    graph_bytes: int  # both graphs as portable protos (pickled DoFns included)

    def option_flags(self) -> list[str]:
        flags = []
        for key, value in self.options.items():
            for v in value if isinstance(value, list) else [value]:
                flags.append(f"--{key}" if v is True else f"--{key}={v}")
        return flags

    def lines(self) -> list[str]:
        return [
            "dry run: options and pipeline are valid; nothing was read or submitted",
            f"  runner: {self.runner}",
            "  beam options: " + " ".join(self.option_flags()),
            "  selectors: " + "; ".join(f"{name} -> {', '.join(cols)}" for name, cols in self.columns.items()),
            f"  graph: score pass {self.transforms['score']} transforms, selection pass {self.transforms['select']}, "
            f"{self.graph_bytes / 1024:.0f} KiB as portable protos",
        ]


def dry_run(config: SelectConfig) -> DryRun:
    """Check the options and build both pipelines (no data read, no job submitted)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, TestOptions

    options = check_options(config)
    plan = Plan.build(config, read=False)  # task names stand in for targets, patterns for files: nothing read
    columns = {s.name: [f.name for f in s.columns(s.task_names(plan.targets))] for s in plan.selectors}

    def pipeline():
        probe = PipelineOptions(beam_argv(config.runner, config.workers, config.beam_args))
        probe.view_as(TestOptions).dry_run = True  # Beam's own checks make no cloud calls
        return beam.Pipeline(options=probe)

    score = score_pipeline(plan, set(), pipeline=pipeline())
    select = pipeline()
    selection_pipeline(select, config.out.rstrip("/"), [f"{config.out.rstrip('/')}/shards/part-0000-00000.parquet"],
                       plan.ranking({}), 1,
                       layout=ScoreLayout((), ("matches_target",)))  # a dry run lists nothing
    protos = {"score": score.to_runner_api(), "select": select.to_runner_api()}
    return DryRun(config.runner, resolved_options(options), columns,
                  {k: len(p.components.transforms) for k, p in protos.items()},
                  sum(p.ByteSize() for p in protos.values()))


def submit_score_pass(config: SelectConfig):
    """Plan, prepare and submit pass 1 without waiting; returns Beam's PipelineResult.

    The run folder's lock is held while planning and submitting; the state record says
    "scoring" until a later ``tamis select`` into the same folder selects and finishes it.
    """
    folder = RunFolder(config.out)
    check_options(config)
    plan = Plan.build(config)
    with folder.lock():
        done = begin_scoring(plan, folder)
        prepared, _ = prepare_for_workers(plan, folder)  # Dataflow workers read them from OUT/_work/artifacts
        return score_pipeline(plan, done, prepared).run()


# Flex Template parameters that are lists: comma-separated in one value.
_LIST_KEYS = {"pool", "selector"}
_PAIR_KEYS = {"target", "param"}


def flex_config(argv: list[str]) -> SelectConfig:
    """A SelectConfig from a Flex launcher's ``--name=value`` arguments.

    tamis keys (metadata.json's parameters; ``config`` a YAML on any Beam filesystem) are
    taken out, everything else is a Beam option; the runner defaults to DataflowRunner.
    """
    import yaml
    from apache_beam.io.filesystems import FileSystems

    from ..schemas.config import parse_param_pairs, parse_target_pairs

    keys = set(SelectConfig.model_fields) - {"beam_args"} | {"config"}
    values: dict[str, str] = {}
    beam_args: list[str] = []
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].removeprefix("--").partition("=")
        if argv[i].startswith("--") and name in keys:
            if not eq:  # "--name value"
                i += 1
                value = argv[i] if i < len(argv) else ""
            values[name] = value
        else:
            beam_args.append(argv[i])
        i += 1
    base = None
    if "config" in values:
        with FileSystems.open(values.pop("config")) as f:
            base = yaml.safe_load(f.read().decode("utf-8")) or {}
    overrides: dict = {}
    for name, value in values.items():
        parts = [v.strip() for v in value.split(",") if v.strip()]
        if name in _LIST_KEYS:
            overrides[name] = parts
        elif name == "target":
            overrides[name] = parse_target_pairs(parts)
        elif name == "param":
            overrides[name] = parse_param_pairs(parts)
        else:
            overrides[name] = value
    overrides.setdefault("runner", "DataflowRunner")
    return load_config(base, **overrides, beam_args=beam_args)


def flex_main(argv: list[str] | None = None) -> None:
    """The Flex Template's entry point: submit pass 1 and exit (see the module docstring)."""
    import logging

    logging.getLogger().setLevel(logging.INFO)
    config = flex_config(list(sys.argv[1:] if argv is None else argv))
    submit_score_pass(config)
    print(f"tamis: pass 1 submitted; when it is done, rerun `tamis select` with the same pool, targets and "
          f"--out {config.out} to select and write the manifest")
