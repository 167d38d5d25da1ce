"""IRT parameter recovery on synthetic data, and agreement with girth's Rasch JML.

Part 1 draws a crowd of 50 subjects x 100k items (theta ~ N(0,1), b ~ U(-3,3),
a ~ LogNormal(0, 0.3)), fits 1PL and 2PL with ``tamis.irt.fit_irt`` (joint MAP, N(0,1) priors)
and reports the Spearman correlation of the fitted difficulties (and abilities, discriminations)
with the true ones, and the fit time. It also refits the items chunk by chunk given the fitted
abilities (``fit_items``, what the ``irt`` selector does per pool chunk) and checks the chunks
agree with the joint fit.

Part 2 fits a smaller Rasch matrix (default 50 x 2,000) with tamis and with girth's
``rasch_jml`` and reports their agreement and the speed ratio. girth is NOT a tamis dependency:
``pip install girth`` into the venv to run this part; without it the part is skipped.

    python benchmarks/irt_recovery.py [--items 100000] [--threads 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np


def simulate(rng, n_subjects: int, n_items: int, a_sd: float):
    theta = rng.normal(size=n_subjects)
    b = rng.uniform(-3, 3, size=n_items)
    a = rng.lognormal(0.0, a_sd, size=n_items) if a_sd > 0 else np.ones(n_items)
    p = 1 / (1 + np.exp(-a * (theta[:, None] - b)))
    return (rng.random((n_subjects, n_items)) < p).astype(np.float64), theta, b, a


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y)[0])


def best_of(fn, repeats: int = 3):
    """(result, fastest wall time of ``repeats`` calls): small fits are too quick for one timing."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, min(times)


def recovery(args, plots: dict) -> dict:
    from tamis.irt import fit_irt, fit_items

    rng = np.random.default_rng(args.seed)
    y, theta, b, a = simulate(rng, args.subjects, args.items, 0.3)
    unanimous = int(((y.sum(0) == 0) | (y.sum(0) == args.subjects)).sum())
    out = {"subjects": args.subjects, "items": args.items, "unanimous_items": unanimous, "models": {}}
    for model in ("1pl", "2pl"):
        t0 = time.perf_counter()
        fit = fit_irt(y, model=model, device=args.device)
        seconds = time.perf_counter() - t0
        chunks = np.array_split(np.arange(args.items), args.chunks)
        t0 = time.perf_counter()
        chunked = np.concatenate([fit_items(y[:, c], fit.theta, model=model, device=args.device).b for c in chunks])
        chunk_s = time.perf_counter() - t0
        row = {
            "fit_seconds": seconds, "iterations": fit.iterations, "converged": fit.converged,
            "spearman_b": spearman(fit.b, b), "spearman_theta": spearman(fit.theta, theta),
            "spearman_a": spearman(fit.a, a) if model == "2pl" else None,
            "all_finite": bool(np.isfinite(fit.b).all() and np.isfinite(fit.se_b).all()),
            "b_range": [float(fit.b.min()), float(fit.b.max())],
            "median_se_b": float(np.median(fit.se_b)),
            "items_given_theta_seconds": chunk_s, "chunks": args.chunks,
            "max_abs_diff_chunked_vs_joint_b": float(np.abs(chunked - fit.b).max()),
        }
        out["models"][model] = row
        plots[model] = (b, fit.b, a, fit.a)
        print(f"{model}: {args.subjects} x {args.items:,} fit in {seconds:.1f} s ({fit.iterations} steps, "
              f"converged={fit.converged}); Spearman b {row['spearman_b']:.4f}, theta {row['spearman_theta']:.4f}"
              + (f", a {row['spearman_a']:.4f}" if model == "2pl" else "")
              + f"; items given theta in {args.chunks} chunks: {chunk_s:.1f} s, max |b - joint b| "
              f"{row['max_abs_diff_chunked_vs_joint_b']:.1e}")
    print(f"items every subject got right or wrong: {unanimous:,} (all estimates finite: "
          f"{all(r['all_finite'] for r in out['models'].values())})")
    return out


def girth_agreement(args) -> dict:
    try:
        import girth
    except ImportError:
        print("girth not installed (pip install girth; it is not a tamis dependency): skipping the comparison")
        return {"skipped": "girth not installed"}
    from tamis.irt import fit_irt

    rng = np.random.default_rng(args.seed + 1)
    y, theta, b, _ = simulate(rng, args.subjects, args.girth_items, 0.0)  # Rasch data: a = 1
    ours, ours_s = best_of(lambda: fit_irt(y, model="1pl", device=args.device))
    vague, vague_s = best_of(lambda: fit_irt(y, model="1pl", prior_sd=10.0, device=args.device))
    # girth wants [items, participants]
    with warnings.catch_warnings():  # girth's starting guess divides by zero on unanimous items
        warnings.simplefilter("ignore", RuntimeWarning)
        theirs, girth_s = best_of(lambda: girth.rasch_jml(y.T.astype(bool))["Difficulty"])
    inner = (np.abs(theirs) < 5.99) & (y.sum(0) > 0) & (y.sum(0) < args.subjects)  # not at JML's +-6 bound
    out = {
        "subjects": args.subjects, "items": args.girth_items, "girth_version": getattr(girth, "__version__", "?"),
        "girth_seconds": girth_s, "tamis_seconds": ours_s, "speed_ratio": girth_s / ours_s,
        "spearman_tamis_vs_girth": spearman(ours.b, theirs),
        "pearson_tamis_vs_girth_interior": float(np.corrcoef(ours.b[inner], theirs[inner])[0, 1]),
        "pearson_vague_prior_vs_girth_interior": float(np.corrcoef(vague.b[inner], theirs[inner])[0, 1]),
        "vague_prior_seconds": vague_s, "timing": "fastest of 3 calls each",
        "spearman_truth": {"tamis": spearman(ours.b, b), "girth": spearman(theirs, b)},
        "interior_items": int(inner.sum()),
    }
    print(f"girth rasch_jml on {args.subjects} x {args.girth_items:,}: {girth_s:.2f} s; tamis 1PL {ours_s:.3f} s "
          f"({out['speed_ratio']:.0f}x faster); Spearman(tamis, girth) {out['spearman_tamis_vs_girth']:.4f}; "
          f"Pearson on {out['interior_items']} interior items {out['pearson_tamis_vs_girth_interior']:.4f} "
          f"(prior sd 10: {out['pearson_vague_prior_vs_girth_interior']:.4f}); Spearman with truth: tamis "
          f"{out['spearman_truth']['tamis']:.4f}, girth {out['spearman_truth']['girth']:.4f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=50)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--girth-items", type=int, default=2_000)
    parser.add_argument("--chunks", type=int, default=10, help="pool chunks for the items-given-theta refit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-girth", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "irt_recovery.json"))
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    plots: dict = {}
    results = {"machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                           "device": args.device, "torch": torch.__version__},
               "recovery": recovery(args, plots)}
    results["girth"] = {"skipped": "--skip-girth"} if args.skip_girth else girth_agreement(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    figure = out.with_suffix(".png")
    plot(plots, results["recovery"], figure)
    print(f"wrote {out} and {figure}")


def plot(plots: dict, recovery: dict, path: Path, points: int = 5000) -> None:
    """True against fitted difficulty (1PL, 2PL) and discrimination (2PL), on a random subsample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    rng = np.random.default_rng(0)
    for ax, (model, which) in zip(axes, [("1pl", "b"), ("2pl", "b"), ("2pl", "a")]):
        true_b, fit_b, true_a, fit_a = plots[model]
        x, y = (true_b, fit_b) if which == "b" else (true_a, fit_a)
        keep = rng.choice(len(x), size=min(points, len(x)), replace=False)
        ax.scatter(x[keep], y[keep], s=2, alpha=0.3, color="#d9480f")
        row = recovery["models"][model]
        rho = row["spearman_b"] if which == "b" else row["spearman_a"]
        ax.set_title(f"{model.upper()} {'difficulty' if which == 'b' else 'discrimination'}: Spearman {rho:.3f}"
                     + (f", fit {row['fit_seconds']:.1f} s" if which == "b" else ""))
        ax.set_xlabel(f"true {which}")
        ax.set_ylabel(f"fitted {which}")
    fig.suptitle(f"{recovery['subjects']} subjects x {recovery['items']:,} items")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
