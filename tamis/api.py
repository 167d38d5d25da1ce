"""The Python API: the same runs as the CLI, and the trainer-side reader."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def load_config(config: str | Path | dict | None = None, **overrides: Any):
    """A validated SelectConfig from a YAML file or mapping, with keyword overrides on top."""
    from .pipeline.plan import load_config

    return load_config(config, **overrides)


def select(config: str | Path | dict | None = None, *, progress: bool = False, **overrides: Any):
    """Score the pool and select: ``tamis.select(pool=[...], target={...}, budget=0.05, out=...)``.

    Returns a RunSummary with the counts (input, accepted, rejected, selected) and timings.
    """
    from .dependencies import require_supported

    require_supported()  # before Beam is imported: an unsupported Beam fails in one line, not in its import
    from .pipeline.run import run_select

    return run_select(load_config(config, **overrides), progress=progress)


def reselect(out: str, budget: float, **kwargs: Any):
    """Select again on a finished run with a new budget, without scoring again."""
    from .dependencies import require_supported

    require_supported()
    from .pipeline.run import run_reselect
    from .schemas.config import check_budget

    return run_reselect(out, check_budget(budget), **kwargs)


def add_task(out: str, target: dict[str, str], **kwargs: Any):
    """Add target tasks (task -> examples file) to a finished run, from its stored pool features;
    then select again over all its tasks. See ``tamis add-task``."""
    from .dependencies import require_supported

    require_supported()
    from .pipeline.add_task import run_add_task

    return run_add_task(out, target, **kwargs)


def store_usage(root: str | None = None, storage_options: dict[str, Any] | list[str] | None = None) -> dict:
    """The feature store's size per kind (entries, rows, bytes, oldest, newest): ``tamis store du``."""
    from .io.filesystems import use_beam_options
    from .models.features import FeatureStore, usage

    use_beam_options(storage_options)
    return usage(FeatureStore(root))


def prune_store(root: str | None = None, *, older_than_days: float | None = None, kinds: tuple[str, ...] = (),
                max_bytes: int | None = None, dry_run: bool = True,
                storage_options: dict[str, Any] | list[str] | None = None) -> list[str]:
    """Delete stored features by age, kind or down to a size (oldest first): ``tamis store prune``.
    Returns the entries' paths; deletes them only with ``dry_run=False``."""
    from .io.filesystems import use_beam_options
    from .models.features import FeatureStore, prune_plan

    use_beam_options(storage_options)
    store = FeatureStore(root)
    doomed = prune_plan(store, older_than_days=older_than_days, kinds=kinds, max_bytes=max_bytes)
    if not dry_run:
        store.delete(doomed)
    return [e.path for e in doomed]


def read_run(out: str, columns: list[str] | None = None,
             storage_options: dict[str, Any] | list[str] | None = None):
    """Every row of a finished run as one pyarrow Table: the shards' columns joined with the columns
    kept beside them (the selection, tasks added later), in shard order."""
    from .io.filesystems import use_beam_options
    from .io.runfolder import RunFolder

    use_beam_options(storage_options)
    folder = RunFolder(out)
    folder.require_finished()
    return folder.read_shards(columns)


def load_selected(out: str, task: str | None = None, curriculum: bool = False,
                  storage_options: dict[str, Any] | list[str] | None = None):
    """The selected rows of a run as a ``datasets.Dataset``, in rank order (1 = best).

    With ``task``, only rows selected for that task. With ``curriculum``, the rows come easiest
    first instead: by ``curriculum_stage``, then ``difficulty``, then rank (the ``irt`` selector
    writes both columns; :class:`tamis.curriculum.CurriculumSampler` schedules them). The shards
    are plain Parquet: ``datasets.load_dataset("parquet", data_files=f"{out}/shards/*.parquet")``
    reads every row with its first scores, and ``{out}/attributes/selection/*.parquet`` holds the
    selection row for row (README, "Output"). A run that is unfinished (killed, or still running) raises
    :class:`tamis.errors.UnfinishedRunError` naming what is missing; a task the run does not
    have raises :class:`tamis.errors.ConfigError` naming the tasks it has.

    ``storage_options`` are Beam options for a run on an object store, as a mapping
    (``{"s3_endpoint_url": ..., "s3_access_key_id": ...}``) or as ``--name=value`` arguments:
    the shards are read through Beam's filesystems with them, never through another S3 client.
    """
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc

    from .errors import ConfigError
    from .io.filesystems import use_beam_options
    from .io.runfolder import RunFolder

    use_beam_options(storage_options)
    folder = RunFolder(out)
    manifest = folder.require_finished()
    if task is not None:
        tasks = manifest.get("resolved", {}).get("tasks") or []
        if task not in tasks:
            has = f"its tasks: {', '.join(tasks)}" if tasks else "it was made without targets, so it has no tasks"
            raise ConfigError(f"task {task!r} is not in the run {folder.path} ({has})")
    table = folder.read_shards()
    mask = table.column("selected")
    if task is not None:
        mask = pc.and_(mask, pa.array([task in v for v in table.column("selected_for").to_pylist()]))
    order = [("rank", "ascending")]
    if curriculum:
        missing = [c for c in ("curriculum_stage", "difficulty") if c not in table.column_names]
        if missing:
            raise ValueError(f"{out} has no {' or '.join(missing)} column: curriculum order needs a run "
                             "with the irt selector (--selector irt)")
        order = [("curriculum_stage", "ascending"), ("difficulty", "ascending")] + order
    table = table.filter(mask).sort_by(order)
    return datasets.Dataset(table.replace_schema_metadata(None))
