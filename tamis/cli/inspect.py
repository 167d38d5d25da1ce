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


def inspect_run(out: str, top: int, console: Console) -> bool:
    """Print the run; for an unfinished one, say so plainly and what is on disk. True when finished."""
    from ..io.runfolder import RunFolder
    from ..pipeline.run import count_outputs

    folder = RunFolder(out)
    folder.require_exists()
    missing = folder.unfinished()
    if missing is not None:
        holder = folder.running_holder()
        console.print(f"unfinished: {missing}" + (f" (a run by {holder} may still be writing it)" if holder else ""),
                      highlight=False, markup=False, soft_wrap=True)
        c = count_outputs(folder.path)
        console.print(f"  on disk so far: {len(folder.shards())} shards, {c['accepted']} rows scored, "
                      f"{c['rejected']} rejected; {folder.finish_hint()}", highlight=False, markup=False, soft_wrap=True)
        return False
    manifest = folder.read_manifest() or {}
    counts = count_outputs(folder.path)
    from . import print_counts

    print_counts(counts)
    tasks = manifest.get("tasks") or {}
    if tasks:
        console.print("tasks: " + ", ".join(f"{t} ({info.get('made_by', '?')}, {info.get('targets', '?')} targets)"
                                            for t, info in sorted(tasks.items())), highlight=False, markup=False)
    table = folder.read_shards()
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
    return True
