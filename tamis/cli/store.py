"""``tamis store``: how large the pool-feature store is, by kind, and pruning it.

The store (``--feature-store``, default ``$TAMIS_CACHE/features``) keeps what selectors compute
from the pool alone (see :mod:`tamis.models.features`). Deleting an entry never changes a
result: the next run that needs it computes it again. ``prune`` lists what it would delete and
deletes only with ``--yes``; it deletes only the store's own entry files under ROOT, by their
literal paths.
"""
from __future__ import annotations

import time
from typing import Optional

import typer

store_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="size and pruning of the pool-feature store")

_ROOT_HELP = "the store: a folder or URL (default $TAMIS_CACHE/features, else ~/.cache/tamis/features)"
_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def human(n: float) -> str:
    """Bytes in binary units, three significant figures: 1.23 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """``500M``, ``2G``, ``1.5GiB``, ``1000000`` -> bytes (binary units)."""
    from ..errors import ConfigError

    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(raw[-1:], 1)
    number = raw[:-1] if scale > 1 else raw
    try:
        value = float(number)
    except ValueError:
        raise ConfigError(f"--max-size: expected a size such as 500M or 2G, got {text!r}") from None
    if value < 0:
        raise ConfigError(f"--max-size: a size cannot be negative, got {text!r}")
    return int(value * scale)


def _store(ctx: typer.Context, root: Optional[str]):
    from ..models.features import FeatureStore
    from . import storage_options

    storage_options(ctx)
    return FeatureStore(root)


def _age(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:.1f} d" if days >= 1 else f"{seconds / 3600:.1f} h"


@store_app.command("du", context_settings=_EXTRA)
def du(ctx: typer.Context, root: Optional[str] = typer.Argument(None, help=_ROOT_HELP)):
    """Size of the store by kind: entries, rows, bytes, bytes per row, age."""
    from rich.table import Table

    from ..models.features import usage
    from . import out_console

    store = _store(ctx, root)
    found = usage(store)
    now = time.time()
    table = Table("kind", "entries", "rows", "bytes", "bytes/row", "oldest", "newest", title=f"feature store {store.root}")
    for kind, u in found.items():
        per_row = f"{u['bytes'] / u['rows']:.0f}" if u["rows"] else "-"
        rows = f"{u['rows']:,}" + (f" ({u['unreadable']} unreadable)" if u["unreadable"] else "")
        table.add_row(kind, f"{u['entries']:,}", rows if kind != "legacy" else "-", human(u["bytes"]), per_row,
                      _age(now - u["oldest"]), _age(now - u["newest"]))
    total = sum(u["bytes"] for u in found.values())
    table.add_row("total", f"{sum(u['entries'] for u in found.values()):,}",
                  f"{sum(u['rows'] for u in found.values()):,}", human(total), "", "", "")
    out_console.print(table)


@store_app.command("prune", context_settings=_EXTRA)
def prune(
    ctx: typer.Context,
    root: Optional[str] = typer.Argument(None, help=_ROOT_HELP),
    older_than: Optional[float] = typer.Option(None, "--older-than", help="entries written more than DAYS ago"),
    kind: Optional[list[str]] = typer.Option(None, "--kind", help="only entries of this kind (repeatable): "
                                                                   "embedding, less-grads, prior-loss, el2n, grand, irt, legacy"),
    max_size: Optional[str] = typer.Option(None, "--max-size", help="then the oldest entries until the store fits SIZE (500M, 20G)"),
    yes: bool = typer.Option(False, "--yes", help="delete; without it, only list what would be deleted"),
):
    """Delete stored features: by age, by kind, or down to a size (oldest first). A dry run
    without --yes. A pruned entry is computed again by the next run that needs it."""
    from ..errors import ConfigError
    from ..models.features import prune_plan
    from . import out_console

    if older_than is None and not kind and max_size is None:
        raise ConfigError("say what to prune: --older-than DAYS, --kind KIND or --max-size SIZE")
    if older_than is not None and older_than < 0:
        raise ConfigError(f"--older-than: expected days >= 0, got {older_than}")
    store = _store(ctx, root)
    doomed = prune_plan(store, older_than_days=older_than, kinds=kind or (),
                        max_bytes=parse_size(max_size) if max_size is not None else None)
    size = sum(e.size for e in doomed)
    by_kind: dict[str, list[int]] = {}
    for e in doomed:
        by_kind.setdefault(e.kind, [0, 0])
        by_kind[e.kind][0] += 1
        by_kind[e.kind][1] += e.size
    for name, (n, b) in sorted(by_kind.items()):
        out_console.print(f"  {name}: {n:,} entries, {human(b)}", highlight=False)
    if not yes:
        out_console.print(f"would delete {len(doomed):,} entries ({human(size)}) from {store.root}; "
                          "run again with --yes to delete them", highlight=False)
        return
    store.delete(doomed)
    out_console.print(f"deleted {len(doomed):,} entries ({human(size)}) from {store.root}", highlight=False)
