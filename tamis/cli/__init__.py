"""The ``tamis`` command line (typer). Every command has a Python twin in ``tamis.api``.

Errors take one shape: :class:`TamisGroup` is the one place where a failure the user can fix
(see :mod:`tamis.cli.errors`) becomes one line ``tamis: ...`` and a non-zero exit status, and
Ctrl-C becomes one line and status 130. ``tamis --debug ...`` (or ``TAMIS_DEBUG=1``) adds the
traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup


class _BeamImportNoise(logging.Filter):
    """Drops the warning Beam logs on import when Google Cloud clients are partly installed
    ("apitools not found ..."): it concerns BigQuery, which tamis never uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


logging.getLogger().addFilter(_BeamImportNoise())


class _WorkerFailureNoise(logging.Filter):
    """Beam logs a failing DoFn's traceback before re-raising it; the error line says it once.
    Kept with ``--debug``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or debug_enabled()


# Loggers that print a worker failure's traceback on its way up to us.
_BEAM_FAILURE_LOGGERS = ("apache_beam.runners.common", "apache_beam.runners.worker.sdk_worker",
                         "apache_beam.runners.portability.fn_api_runner.fn_runner",
                         "apache_beam.runners.worker.data_plane",
                         "apache_beam.runners.portability.local_job_service")

_debug = {"on": False}  # set by --debug for this invocation


def debug_enabled() -> bool:
    return _debug["on"] or os.environ.get("TAMIS_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


console = Console(stderr=True)
out_console = Console()


def say_error(message: str) -> None:
    """One line on stderr: ``tamis: <message>`` (the message is never read as markup)."""
    console.print(Text.assemble(("tamis:", "bold red"), " ", message), highlight=False, soft_wrap=True)


class TamisGroup(TyperGroup):
    """Runs a command; the one place that turns a user-caused failure into one line."""

    def invoke(self, ctx: click.Context):
        from .errors import EXIT_INTERRUPTED, INTERRUPTED, interrupted, user_error

        def stop(line: str, status: int):
            if debug_enabled():
                traceback.print_exc()
            say_error(line)
            return typer.Exit(status)

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            raise stop(INTERRUPTED, EXIT_INTERRUPTED) from None
        except Exception as exc:
            if interrupted(exc):  # Ctrl-C inside a Beam worker arrives wrapped in a RuntimeError
                raise stop(INTERRUPTED, EXIT_INTERRUPTED) from None
            found = user_error(exc)
            if found is None:
                raise  # a bug in tamis: its traceback is what a report needs
            raise stop(*found) from None


app = typer.Typer(cls=TamisGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="tamis: pick the training data worth training on.")


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", envvar="TAMIS_DEBUG",
                               help="print a failure's traceback too, not only its one line (also TAMIS_DEBUG=1)"),
):
    """tamis: pick the training data worth training on."""
    _debug["on"] = debug
    for name in _BEAM_FAILURE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _WorkerFailureNoise) for f in logger.filters):
            logger.addFilter(_WorkerFailureNoise())
    threading.excepthook = _quiet_runner_threads


_default_thread_hook = threading.excepthook


def _quiet_runner_threads(args) -> None:
    """Beam's portable runner reads the job's messages in a thread of its own; when the job server
    stops answering, that thread dies with the same gRPC error the main thread then reports as
    one line. Its traceback is printed only with --debug."""
    if debug_enabled() or not type(args.exc_value).__module__.startswith("grpc"):
        _default_thread_hook(args)


def storage_options(ctx: typer.Context) -> None:
    """The command's extra arguments are Beam options (``--s3_endpoint_url=...``): handed to Beam's
    filesystems before the first read; a name Beam does not know fails with one line."""
    from ..errors import ConfigError
    from ..io.filesystems import use_beam_options
    from ..pipeline.options import unknown_options

    unknown = unknown_options(ctx.args)  # a bad value raises OptionsError, a ConfigError
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]}: neither tamis nor Beam knows it")
    use_beam_options(ctx.args)


def print_metrics(metrics: dict) -> None:
    """Beam's counters and per-stage times, as the runner reported them."""
    if not metrics:
        return
    shown = {k: (f"{v / 1000:.1f}s" if k.endswith("_ms_per_chunk_total") else v) for k, v in sorted(metrics.items())}
    out_console.print("  beam metrics: " + ", ".join(f"{k.replace('_ms_per_chunk_total', ' time')} {v}" for k, v in shown.items()),
                      highlight=False)


def print_counts(counts: dict, timings: dict | None = None, chunks: dict | None = None,
                 notes: list[str] | None = None) -> None:
    c = counts
    ok = c["input"] == c["accepted"] + c["rejected"] and c["selected"] <= c["accepted"]
    mark = "[green]ok[/]" if ok else "[bold red]BROKEN[/]"
    out_console.print(f"input {c['input']} = accepted {c['accepted']} + rejected {c['rejected']}; "
                      f"selected {c['selected']} <= accepted  {mark}", highlight=False)
    out_console.print(f"  matches_target {c.get('matches_target', 0)} (left out), duplicate ids {c.get('duplicates', 0)} (rejected)",
                      highlight=False)
    if chunks:
        out_console.print(f"  chunks: {chunks.get('computed', 0)} scored, {chunks.get('reused', 0)} reused from an earlier run",
                          highlight=False)
    for note in notes or []:
        out_console.print(f"  note: {note}", highlight=False, markup=False)
    if timings:
        out_console.print("  time: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in timings.items()), highlight=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def select(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with the same keys as these flags"),
    pool: Optional[list[str]] = typer.Option(None, "--pool", help="pool file or glob (repeatable)"),
    target: Optional[list[str]] = typer.Option(None, "--target", help="task=path of target examples (repeatable)"),
    selector: Optional[list[str]] = typer.Option(None, "--selector", help="selector name (repeatable); see `tamis selectors`"),
    select_by: Optional[str] = typer.Option(None, "--select-by", help="the selector whose scores drive the selection"),
    budget: Optional[float] = typer.Option(None, "--budget", help="rows to select: <1 a fraction of the eligible rows (accepted, not a target match; a skip window comes off the top), >=1 a count"),
    budget_per_task: Optional[bool] = typer.Option(None, "--budget-per-task/--shared-budget", help="each task takes the whole budget (LESS, CoLoR-Filter references), or tasks share it round-robin (default)"),
    duplicates: Optional[str] = typer.Option(None, "--duplicates", help="round-robin: a task whose best row is taken takes its next (next, default) or loses its turn (turn, RDS+ reference)"),
    param: Optional[list[str]] = typer.Option(None, "--param", help="selector parameter key=value or name.key=value (repeatable)"),
    out: Optional[str] = typer.Option(None, "--out", help="output folder"),
    shard_rows: Optional[int] = typer.Option(None, "--shard-rows", help="rows per work unit and output shard"),
    batch_tokens: Optional[int] = typer.Option(None, "--batch-tokens", help="padded tokens per model batch"),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="tokens kept per example"),
    decontaminate: Optional[bool] = typer.Option(None, "--decontaminate/--no-decontaminate", help="leave out rows equal to a target example"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ..."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16 or float16"),
    runner: Optional[str] = typer.Option(None, "--runner", help="DirectRunner (default), PortableRunner, DataflowRunner, FlinkRunner"),
    workers: Optional[int] = typer.Option(None, "--workers", help="local worker processes"),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="replace a run with another config in --out"),
    score_attempts: Optional[int] = typer.Option(None, "--score-attempts", help="tries per scoring call before its rows are rejected"),
    feature_store: Optional[str] = typer.Option(None, "--feature-store", help="where pool features are kept (folder or URL; 'none': nowhere); default $TAMIS_CACHE/features"),
    feature_dtype: Optional[str] = typer.Option(None, "--feature-dtype", help="stored embeddings and gradients: float32 (default) or float16"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check the options and build the pipeline; read and run nothing"),
):
    """Score a pool with selectors and write shards, rejects and a manifest to --out.

    Options Beam knows (--project, --region, --temp_location, ...) pass through to the runner.
    """
    from ..api import load_config
    from ..pipeline.run import run_select
    from ..schemas.config import parse_param_pairs, parse_target_pairs

    overrides = dict(pool=pool or None, selector=selector or None, select_by=select_by, budget=budget, out=out,
                     budget_per_task=budget_per_task, duplicates=duplicates,
                     shard_rows=shard_rows, batch_tokens=batch_tokens, max_length=max_length,
                     decontaminate=decontaminate, seed=seed, device=device, dtype=dtype, runner=runner,
                     workers=workers, overwrite=overwrite, score_attempts=score_attempts,
                     feature_store=feature_store, feature_dtype=feature_dtype, beam_args=list(ctx.args) or None)
    if target:
        overrides["target"] = parse_target_pairs(target)
    if param:
        overrides["param"] = parse_param_pairs(param)
    cfg = load_config(config, **overrides)
    if dry_run:
        from ..pipeline.launch import dry_run as check_run

        plan = check_run(cfg)
        out_console.print("\n".join(plan.lines()), highlight=False, markup=False, soft_wrap=True)
        return
    summary = run_select(cfg, progress=progress and sys.stderr.isatty())
    out_console.print(f"[bold]tamis select[/] -> {cfg.out}", highlight=False)
    print_counts(summary.counts, summary.timings, summary.chunks, summary.manifest.get("notes"))
    print_metrics(summary.manifest.get("metrics", {}))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def reselect(
    ctx: typer.Context,
    out: str = typer.Argument(..., help="a finished run folder"),
    budget: float = typer.Option(..., "--budget", help="rows to select: <1 a fraction, >=1 a count"),
    runner: str = typer.Option("DirectRunner", "--runner"),
    workers: int = typer.Option(1, "--workers"),
    task: Optional[list[str]] = typer.Option(None, "--task", help="select for these tasks only (repeatable)"),
    budget_per_task: Optional[bool] = typer.Option(None, "--budget-per-task/--shared-budget", help="as tamis select; default: as the run was made"),
    duplicates: Optional[str] = typer.Option(None, "--duplicates", help="as tamis select (next or turn); default: as the run was made"),
):
    """Select again with a new budget, reusing the scores (no model runs)."""
    from ..pipeline.run import run_reselect
    from ..schemas.config import check_budget

    summary = run_reselect(out, check_budget(budget), runner=runner, workers=workers, beam_args=list(ctx.args),
                           tasks=task or None, budget_per_task=budget_per_task, duplicates=duplicates)
    print_counts(summary.counts, notes=summary.manifest.get("notes"))


@app.command("add-task", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def add_task(
    ctx: typer.Context,
    out: str = typer.Argument(..., help="a finished run folder"),
    target: list[str] = typer.Option(..., "--target", help="task=path of the new task's target examples (repeatable)"),
    replace: bool = typer.Option(False, "--replace", help="score a task the run already has again, with these targets"),
    select: bool = typer.Option(True, "--select/--no-select", help="select again over every task afterwards (the run's budget)"),
    runner: Optional[str] = typer.Option(None, "--runner", help="default: the run's"),
    workers: Optional[int] = typer.Option(None, "--workers", help="default: the run's"),
):
    """Add target tasks to a finished run from its stored features: no pool rescoring.

    The run's targeted selectors score its rows for the new tasks only (RDS+ and LESS take the
    pool side from the feature store; CoLoR-Filter fine-tunes a conditional on the new targets,
    which scores every row). The new columns go beside the shards; the shards are not rewritten.
    """
    from ..pipeline.add_task import run_add_task
    from ..schemas.config import parse_target_pairs

    summary = run_add_task(out, parse_target_pairs(target), replace=replace, runner=runner, workers=workers,
                           beam_args=list(ctx.args) or None, reselect=select)
    out_console.print(f"[bold]tamis add-task[/] {', '.join(summary.tasks)} -> {summary.out}", highlight=False)
    print_counts(summary.counts, summary.timings, notes=summary.notes + (summary.manifest.get("notes") or []))


@app.command("selectors")
def list_selectors():
    """List every registered selector with its parameters and defaults."""
    from rich.table import Table

    from ..selectors import registry

    table = Table("selector", "target", "parameters (defaults)", "what it does")
    for name in registry.available():
        try:
            cls = registry.get(name)
        except Exception as e:  # a broken plugin must not hide the others
            table.add_row(name, "?", f"[red]failed to load: {e}[/]", "")
            continue
        params = ", ".join(f"{k}={v!r}" for k, v in cls.param_defaults().items())
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        table.add_row(name, "required" if cls.needs_target else "no", params or "-", doc)
    out_console.print(table)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def inspect(
    ctx: typer.Context,
    out: str = typer.Argument(..., help="a run folder"),
    top: int = typer.Option(5, "--top", help="top-ranked examples shown per task"),
):
    """Print a run's counts, its top-ranked examples per task, and score histograms."""
    from .inspect import inspect_run

    storage_options(ctx)
    inspect_run(out, top, out_console)


@app.command()
def demo(
    out: str = typer.Option("runs/demo", "--out", help="output folder"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace another run in --out"),
):
    """Run RDS+ on the bundled demo pool (2,000 WordNet definitions, a few broken lines)."""
    from ..demo import demo_config
    from ..pipeline.run import run_select
    from .inspect import inspect_run

    run_select(demo_config(out, overwrite=overwrite), progress=progress and sys.stderr.isatty())
    out_console.print(f"[bold]tamis demo[/] -> {out}", highlight=False)
    inspect_run(out, 3, out_console)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def evaluate(
    ctx: typer.Context,
    out: str = typer.Argument(..., help="a finished run folder"),
    eval_: list[str] = typer.Option(..., "--eval", help="task=path of held-out eval examples (repeatable)"),
    baselines: str = typer.Option("random,full", "--baselines", help="comma-separated: random, full"),
    seeds: int = typer.Option(3, "--seeds", help="trainings per arm, with different seeds"),
    steps: int = typer.Option(400, "--steps", help="optimizer steps per training (the same for every arm)"),
    batch_size: int = typer.Option(16, "--batch-size"),
    labels: Optional[str] = typer.Option(None, "--labels", help="JSONL(.gz) of {id, <field>} for P@k"),
    label_field: str = typer.Option("domain", "--label-field"),
    label: Optional[list[str]] = typer.Option(None, "--label", help="task=label value counted as a hit for P@k (repeatable)"),
    k: int = typer.Option(500, "--k", help="k for P@k"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Train a small proxy on the selection, on random rows and on the full pool; compare held-out loss."""
    from ..evaluate import EvalSettings, evaluate_run, format_table
    from ..schemas.config import parse_target_pairs

    storage_options(ctx)

    evals = parse_target_pairs(eval_)
    label_of = parse_target_pairs(label) if label else {}
    results = evaluate_run(out, evals, baselines=tuple(b.strip() for b in baselines.split(",") if b.strip()),
                           seeds=seeds, settings=EvalSettings(steps=steps, batch_size=batch_size),
                           labels=labels, label_field=label_field, label_of=label_of, k=k,
                           progress=progress and sys.stderr.isatty())
    out_console.print(format_table(results))
    out_console.print(f"written {out.rstrip('/')}/evaluate.json ({results['total_s']:.0f}s)", highlight=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def report(ctx: typer.Context, out: str = typer.Argument(..., help="a run folder")):
    """Write OUT/report.html: score plots, selection breakdowns and the evaluate table."""
    from ..report import write_report

    storage_options(ctx)
    path = write_report(out)
    out_console.print(f"written {path}", highlight=False)


def _register_optional() -> None:
    """Commands from other layers, registered where their modules exist."""
    try:
        from .proxy import train_proxy
    except ImportError:
        return
    app.command("train-proxy")(train_proxy)


from .store import store_app  # noqa: E402  (the `tamis store` group: du, prune)

app.add_typer(store_app, name="store")


_register_optional()


def main() -> None:
    app()
