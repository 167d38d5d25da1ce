"""The ``tamis`` command line (typer). Every command has a Python twin in ``tamis.api``."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


class _BeamImportNoise(logging.Filter):
    """Drops the warning Beam logs on import when Google Cloud clients are partly installed
    ("apitools not found ..."): it concerns BigQuery, which tamis never uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


logging.getLogger().addFilter(_BeamImportNoise())

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="tamis: pick the training data worth training on.")
console = Console(stderr=True)
out_console = Console()


def fail(message: str) -> None:
    """One clear line on stderr, exit status 2."""
    console.print(f"[bold red]tamis:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _user_errors():
    from pydantic import ValidationError

    from ..schemas.config import config_error_line
    from ..schemas.records import RecordError

    return ValidationError, config_error_line, (ValueError, KeyError, FileNotFoundError, FileExistsError, RecordError, TypeError)


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
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check the options and build the pipeline; read and run nothing"),
):
    """Score a pool with selectors and write shards, rejects and a manifest to --out.

    Options Beam knows (--project, --region, --temp_location, ...) pass through to the runner.
    """
    from ..api import load_config
    from ..pipeline.run import run_select
    from ..schemas.config import parse_param_pairs, parse_target_pairs

    ValidationError, error_line, user_errors = _user_errors()
    try:
        overrides = dict(pool=pool or None, selector=selector or None, select_by=select_by, budget=budget, out=out,
                         budget_per_task=budget_per_task, duplicates=duplicates,
                         shard_rows=shard_rows, batch_tokens=batch_tokens, max_length=max_length,
                         decontaminate=decontaminate, seed=seed, device=device, dtype=dtype, runner=runner,
                         workers=workers, overwrite=overwrite, score_attempts=score_attempts, beam_args=list(ctx.args) or None)
        if target:
            overrides["target"] = parse_target_pairs(target)
        if param:
            overrides["param"] = parse_param_pairs(param)
        cfg = load_config(config, **overrides)
    except ValidationError as e:
        fail(error_line(e))
    except user_errors as e:
        fail(str(e).strip("'\""))
    if dry_run:
        from ..pipeline.launch import dry_run as check_run

        try:
            plan = check_run(cfg)
        except user_errors as e:
            fail(str(e).strip("'\""))
        out_console.print("\n".join(plan.lines()), highlight=False, markup=False, soft_wrap=True)
        return
    try:
        summary = run_select(cfg, progress=progress and sys.stderr.isatty())
    except user_errors as e:
        fail(str(e).strip("'\""))
    out_console.print(f"[bold]tamis select[/] -> {cfg.out}", highlight=False)
    print_counts(summary.counts, summary.timings, summary.chunks, summary.manifest.get("notes"))
    print_metrics(summary.manifest.get("metrics", {}))


@app.command()
def reselect(
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

    ValidationError, error_line, user_errors = _user_errors()
    try:
        summary = run_reselect(out, budget, runner=runner, workers=workers, tasks=task or None,
                               budget_per_task=budget_per_task, duplicates=duplicates)
    except ValidationError as e:
        fail(error_line(e))
    except user_errors as e:
        fail(str(e).strip("'\""))
    print_counts(summary.counts, notes=summary.manifest.get("notes"))


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


@app.command()
def inspect(
    out: str = typer.Argument(..., help="a run folder"),
    top: int = typer.Option(5, "--top", help="top-ranked examples shown per task"),
):
    """Print a run's counts, its top-ranked examples per task, and score histograms."""
    from .inspect import inspect_run

    try:
        inspect_run(out, top, out_console)
    except (FileNotFoundError, KeyError, ValueError) as e:
        fail(str(e).strip("'\""))


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


@app.command()
def evaluate(
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

    ValidationError, error_line, user_errors = _user_errors()
    try:
        evals = parse_target_pairs(eval_)
        label_of = parse_target_pairs(label) if label else {}
        results = evaluate_run(out, evals, baselines=tuple(b.strip() for b in baselines.split(",") if b.strip()),
                               seeds=seeds, settings=EvalSettings(steps=steps, batch_size=batch_size),
                               labels=labels, label_field=label_field, label_of=label_of, k=k,
                               progress=progress and sys.stderr.isatty())
    except ValidationError as e:
        fail(error_line(e))
    except user_errors as e:
        fail(str(e).strip("'\""))
    out_console.print(format_table(results))
    out_console.print(f"written {out.rstrip('/')}/evaluate.json ({results['total_s']:.0f}s)", highlight=False)


@app.command()
def report(out: str = typer.Argument(..., help="a run folder")):
    """Write OUT/report.html: score plots, selection breakdowns and the evaluate table."""
    from ..report import write_report

    try:
        path = write_report(out)
    except (FileNotFoundError, KeyError, ValueError) as e:
        fail(str(e).strip("'\""))
    out_console.print(f"written {path}", highlight=False)


def _register_optional() -> None:
    """Commands from other layers, registered where their modules exist."""
    try:
        from .proxy import train_proxy
    except ImportError:
        return
    app.command("train-proxy")(train_proxy)


_register_optional()


def main() -> None:
    app()
