"""``tamis report OUT``: one self-contained HTML page about a run, plots embedded as PNG.

Always: counts, score distributions per score column (selected rows highlighted) and score
against rank. Where the data has them: the selection by ``source`` field, cluster sizes with the
selected share, curriculum stages, and the ``tamis evaluate`` table.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(width=6.0, height=3.2, ncols=1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height))


def score_plots(table, column_tasks: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Per score column: its distribution (rows selected for its task highlighted) and score
    against rank. ``column_tasks`` maps a ranking column to its task."""
    any_selected = table.column("selected").to_numpy(zero_copy_only=False)
    selected_for = table.column("selected_for").to_pylist()
    out = []
    for name in [f.name for f in table.schema if f.name.startswith("score_")]:
        task = (column_tasks or {}).get(name)
        selected = np.array([task in t for t in selected_for]) if task else any_selected
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        ok = ~np.isnan(values)
        fig, (ax1, ax2) = _figure(10, 3.2, ncols=2)
        bins = np.histogram_bin_edges(values[ok], bins=50) if ok.any() else 10
        ax1.hist(values[ok & ~selected], bins=bins, color="#9aa5b1", label="not selected")
        ax1.hist(values[ok & selected], bins=bins, color="#d9480f", label="selected")
        ax1.set_title(f"{name}: distribution")
        ax1.set_xlabel("score")
        ax1.set_ylabel("rows")
        ax1.legend(frameon=False)
        order = np.sort(values[ok])[::-1]
        ax2.plot(np.arange(1, len(order) + 1), order, color="#1c7ed6")
        n_sel = int((ok & selected).sum())
        if n_sel:
            ax2.axvline(n_sel, color="#d9480f", linestyle="--", label=f"{n_sel} selected")
            ax2.legend(frameon=False)
        ax2.set_xscale("log")
        ax2.set_title(f"{name}: score against rank")
        ax2.set_xlabel("rank by this score (log)")
        out.append((name, _png(fig)))
    return out


def source_plot(table) -> str | None:
    extras = table.column("extra").to_pylist()
    sources = [json.loads(e).get("source") if e else None for e in extras]
    if not any(s is not None for s in sources):
        return None
    selected = table.column("selected").to_numpy(zero_copy_only=False)
    names = sorted({str(s) for s in sources})
    total = np.array([sum(str(s) == n for s in sources) for n in names])
    picked = np.array([sum(str(s) == n and sel for s, sel in zip(sources, selected)) for n in names])
    fig, ax = _figure(8, 0.4 * len(names) + 1.2)
    y = np.arange(len(names))
    ax.barh(y, total, color="#9aa5b1", label="pool")
    ax.barh(y, picked, color="#d9480f", label="selected")
    ax.set_yticks(y, names)
    ax.set_xlabel("rows")
    ax.set_title("selection by source")
    ax.legend(frameon=False)
    return _png(fig)


def cluster_plot(table) -> str | None:
    if "cluster" not in table.schema.names:
        return None
    cluster = table.column("cluster").to_numpy(zero_copy_only=False)
    selected = table.column("selected").to_numpy(zero_copy_only=False)
    ids = np.unique(cluster)
    sizes = np.array([(cluster == c).sum() for c in ids])
    share = np.array([selected[cluster == c].mean() for c in ids])
    order = np.argsort(-sizes)
    fig, ax = _figure(10, 3.2)
    ax.bar(np.arange(len(ids)), sizes[order], color="#9aa5b1", label="cluster size")
    ax.set_ylabel("rows")
    ax.set_xlabel("clusters, largest first")
    ax2 = ax.twinx()
    ax2.plot(np.arange(len(ids)), share[order], "o", color="#d9480f", markersize=3, label="selected share")
    ax2.set_ylabel("selected share")
    ax.set_title("cluster sizes and the share of each that was selected")
    return _png(fig)


def stage_plot(table) -> str | None:
    if "curriculum_stage" not in table.schema.names:
        return None
    stage = table.column("curriculum_stage").to_numpy(zero_copy_only=False)
    selected = table.column("selected").to_numpy(zero_copy_only=False)
    stages = np.unique(stage)
    fig, ax = _figure(6, 3)
    ax.bar(stages - 0.2, [(stage == s).sum() for s in stages], width=0.4, color="#9aa5b1", label="pool")
    ax.bar(stages + 0.2, [((stage == s) & selected).sum() for s in stages], width=0.4, color="#d9480f", label="selected")
    ax.set_xlabel("curriculum stage (easiest first)")
    ax.set_ylabel("rows")
    ax.legend(frameon=False)
    return _png(fig)


def evaluate_html(out) -> str | None:
    from .io.runfolder import EVALUATE, RunFolder

    res = RunFolder(str(out)).read_json(EVALUATE)
    if res is None:
        return None
    arms = [a for a in ("selected", "random", "full") if any(a in v for v in res["summary"].values())]
    head = "".join(f"<th>{a}</th>" for a in arms)
    rows = []
    for task, by_arm in res["summary"].items():
        best = min(by_arm[a]["mean"] for a in arms)
        cells = "".join(
            f"<td class='{'best' if by_arm[a]['mean'] == best else ''}'>{by_arm[a]['mean']:.4f} ± {by_arm[a]['std']:.4f}</td>"
            for a in arms)
        rows.append(f"<tr><td>{html.escape(task)}</td>{cells}</tr>")
    p_at_k = res.get("precision_at_k") or {}
    extra = "".join(f"<li>{html.escape(t)}: P@{p['k']} = {p['precision']:.3f} (base rate {p['base_rate']:.4f})</li>"
                    for t, p in p_at_k.items())
    return (f"<p>Held-out mean token loss of a small proxy trained for the same steps on each arm, over "
            f"{res['seeds']} seeds (mean ± std; lower is better). Selected n={res['n_selected']}, pool n={res['n_pool']}.</p>"
            f"<table><tr><th>task</th>{head}</tr>{''.join(rows)}</table>" + (f"<ul>{extra}</ul>" if extra else ""))


def write_report(out: str) -> Path:
    """Write ``OUT/report.html`` and return its path."""
    from .io.runfolder import REPORT, RunFolder

    folder = RunFolder(out)
    manifest = folder.require_finished("report on")
    table = folder.read_shards()
    root = folder.path
    c = manifest["counts"]
    sections = [("Counts", "<table>" + "".join(f"<tr><td>{k}</td><td>{v:,}</td></tr>" for k, v in c.items()) + "</table>"
                 + f"<p>input = accepted + rejected: <b>{'holds' if c['input'] == c['accepted'] + c['rejected'] else 'BROKEN'}</b></p>")]
    column_tasks = {c: t for t, c in manifest["resolved"].get("ranking_columns", {}).items() if t != "None"}
    for name, img in score_plots(table, column_tasks):
        sections.append((name, f"<img alt='{name}' src='{img}'>"))
    for title, img in (("Selection by source", source_plot(table)), ("Clusters", cluster_plot(table)),
                       ("Curriculum stages", stage_plot(table))):
        if img:
            sections.append((title, f"<img alt='{title}' src='{img}'>"))
    ev = evaluate_html(root)
    if ev:
        sections.append(("tamis evaluate", ev))
    cfg = manifest["config"]
    title = f"tamis run: {', '.join(cfg['selector'])} on {', '.join(manifest['resolved'].get('tasks') or ['no target'])}"
    body = "".join(f"<section><h2>{html.escape(t)}</h2>{s}</section>" for t, s in sections)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#212529}}
h1{{font-size:1.5em}} h2{{font-size:1.15em;border-bottom:1px solid #dee2e6;padding-bottom:.2em}}
table{{border-collapse:collapse}} td,th{{border:1px solid #dee2e6;padding:.25em .6em;text-align:right}}
td:first-child{{text-align:left}} td.best{{font-weight:bold;background:#fff4e6}} img{{max-width:100%}}
.meta{{color:#868e96;font-size:.9em}}</style></head><body>
<h1>{html.escape(title)}</h1><p class="meta">{html.escape(str(root))} · budget {manifest['resolved']['budget']} ·
tamis {manifest['versions'].get('tamis', '?')} · {manifest['timings'].get('total_s', 0):.0f}s</p>{body}</body></html>"""
    folder.write_bytes(REPORT, page.encode("utf-8"))
    return Path(folder.join(REPORT)) if not folder.remote else folder.join(REPORT)
