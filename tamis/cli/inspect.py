"""``tamis inspect``: a run's counts, top-ranked rows per task, and score histograms, in the terminal."""
from __future__ import annotations

import json

import numpy as np
from rich.console import Console
from rich.table import Table

BARS = " ▁▂▃▄▅▆▇█"


def histogram_line(values: np.ndarray, bins: int = 30) -> str:
    """A one-line sparkline histogram, with the range it covers."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return "(no scores)"
    counts, edges = np.histogram(values, bins=bins)
    scale = counts.max() or 1
    spark = "".join(BARS[int(round(c / scale * (len(BARS) - 1)))] for c in counts)
    return f"{edges[0]:+.3f} {spark} {edges[-1]:+.3f}"


def _snippet(row: dict, width: int = 90) -> str:
    if row.get("messages"):
        text = " | ".join(m["content"] for m in row["messages"])
    else:
        text = row.get("text") or ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def inspect_run(out: str, top: int, console: Console) -> None:
    import pyarrow as pa

    from ..api import _shard_files
    from ..pipeline.run import _read_json, count_outputs

    out = out.rstrip("/")
    manifest = _read_json(f"{out}/manifest.json") or {}
    counts = count_outputs(out)
    from . import print_counts

    print_counts(counts)
    from ..io.filesystems import read_parquet

    table = pa.concat_tables(read_parquet(f) for f in _shard_files(out))
    ranking = manifest.get("resolved", {}).get("ranking_columns", {})
    score_cols = [f.name for f in table.schema if f.name.startswith("score_")]
    selected = table.filter(table.column("selected")).sort_by([("rank", "ascending")])
    rows = selected.to_pylist()
    for task, col in ranking.items():
        label = "all" if task == "None" else task
        t = Table(title=f"top {top} for {label} (by {col})", title_justify="left")
        t.add_column("rank", justify="right")
        t.add_column("id")
        t.add_column(col, justify="right")
        t.add_column("content")
        shown = [r for r in rows if label == "all" or label in r["selected_for"]][:top]
        for r in shown:
            t.add_row(str(r["rank"]), r["id"], f"{r[col]:.4f}", _snippet(r))
        console.print(t)
    for col in score_cols:
        values = table.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
        console.print(f"{col:<28} {histogram_line(values)}", highlight=False)
    if manifest.get("timings"):
        console.print("timings: " + json.dumps({k: round(v, 2) for k, v in manifest["timings"].items()}), highlight=False)
