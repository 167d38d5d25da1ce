"""Data pruning on real labelled data: EL2N and GraNd against random, on sklearn's digits.

Per seed: a stratified 75/25 train/test split; the training examples are scored by the
selectors' own classification path (:func:`tamis.models.heads.classifier_scores`, with the
selectors' default head, epochs and number of runs); then a fresh small MLP (scikit-learn's
``MLPClassifier``) is trained on the kept examples and its test accuracy reported.

Two conditions by default: clean labels, and 10% of the training labels flipped (test labels
stay clean), where the offset window is meant to help. Arms, at each kept fraction: the highest
EL2N and GraNd scores (the paper's ``keep_max_scores``);
the same with the selectors' offset window (the hardest ``skip_hardest`` of the pool left out
first, the window sliding down so exactly the kept count remains); and a random subset.
Prints a table, writes benchmarks/results/pruning_curve.json and draws pruning_curve.png.

    python benchmarks/pruning_curve.py [--seeds 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
KEEP = (1.0, 0.9, 0.7, 0.5)


def keep_by_score(scores: np.ndarray, n_keep: int, skip: float = 0.0) -> np.ndarray:
    """Indices of the highest scores after leaving out the top ``skip`` fraction; the window
    slides down when fewer than ``n_keep`` would remain (offset = min(skip * N, N - n_keep))."""
    order = np.argsort(-scores, kind="stable")
    offset = min(int(np.floor(skip * len(scores))), len(scores) - n_keep)
    return order[offset : offset + n_keep]


def test_accuracy(x_train, y_train, x_test, y_test, seed: int, hidden: int, max_iter: int) -> float:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    return float(clf.score(x_test, y_test))


def flip_labels(y: np.ndarray, fraction: float, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``y`` with a random ``fraction`` moved to another class, and the mask of those."""
    rng = np.random.default_rng([seed, 1])
    flipped = rng.random(len(y)) < fraction
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, n_classes, flipped.sum())) % n_classes
    return noisy, flipped


def run_condition(x_all, y_all, noise: float, a, defaults: dict) -> dict:
    """Every arm at every kept fraction, over the seeds, with ``noise`` of the training labels flipped."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from tamis.models.heads import classifier_scores

    arms = arm_names(a.skip)
    acc: dict[str, dict[float, list[float]]] = {arm: {k: [] for k in KEEP} for arm in arms}
    flipped_in_top: dict[str, list[float]] = {"el2n": [], "grand": []}
    start, score_s = time.perf_counter(), 0.0
    for seed in range(a.seeds):
        x_train, x_test, y_train, y_test = train_test_split(x_all, y_all, test_size=0.25, stratify=y_all,
                                                            random_state=seed)
        scaler = StandardScaler().fit(x_train)
        x_train, x_test = scaler.transform(x_train).astype(np.float32), scaler.transform(x_test).astype(np.float32)
        y_train, flipped = flip_labels(y_train, noise, 10, seed)  # the test labels stay clean
        t0 = time.perf_counter()
        common = dict(runs=a.runs, epochs=a.head_epochs, hidden=a.head_hidden, lr=defaults["head_lr"],
                      batch_size=defaults["head_batch_size"])
        scores = {kind: classifier_scores(x_train, y_train, kind, seed=seed, **common) for kind in ("el2n", "grand")}
        score_s += time.perf_counter() - t0
        n = len(x_train)
        if noise > 0:
            for kind in scores:
                top = keep_by_score(scores[kind], int(round(a.skip * n)))
                flipped_in_top[kind].append(float(flipped[top].mean()))
        rng = np.random.default_rng(seed)
        full = test_accuracy(x_train, y_train, x_test, y_test, seed, a.mlp_hidden, a.mlp_iter)
        for keep in KEEP:
            n_keep = int(round(keep * n))
            subsets = {"random": rng.permutation(n)[:n_keep]}
            for kind in ("el2n", "grand"):
                subsets[kind] = keep_by_score(scores[kind], n_keep)
                subsets[f"{kind}+skip{a.skip:g}"] = keep_by_score(scores[kind], n_keep, a.skip)
            for arm, rows in subsets.items():
                acc[arm][keep].append(full if n_keep == n else test_accuracy(
                    x_train[rows], y_train[rows], x_test, y_test, seed, a.mlp_hidden, a.mlp_iter))
        print(f"label noise {noise:g}: seed {seed} done ({time.perf_counter() - start:.0f}s)", flush=True)
    table = {arm: {str(k): {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}
                   for k, v in by_keep.items()} for arm, by_keep in acc.items()}
    out = {"label_noise": noise, "n_train": n, "n_test": len(x_test), "accuracy": table,
           "scoring": {"function": "tamis.models.heads.classifier_scores", **common},
           "seconds": {"total": time.perf_counter() - start, "scoring": score_s}}
    if noise > 0:
        out[f"flipped_share_of_top{a.skip:g}"] = {k: float(np.mean(v)) for k, v in flipped_in_top.items()}
    return out


def arm_names(skip: float) -> list[str]:
    return ["random", "el2n", "grand", f"el2n+skip{skip:g}", f"grand+skip{skip:g}"]


def print_table(result: dict, a) -> None:
    table = result["accuracy"]
    print(f"\ndigits, {result['label_noise']:.0%} training labels flipped: test accuracy (mean ± std over {a.seeds}"
          f" seeds) of a {a.mlp_hidden}-unit MLP trained on the kept fraction of {result['n_train']} examples")
    print(f"{'arm':<16}" + "".join(f"{f'keep {k:.0%}':>16}" for k in KEEP))
    for arm in arm_names(a.skip):
        print(f"{arm:<16}" + "".join(f"{table[arm][str(k)]['mean']:>10.4f} ±{table[arm][str(k)]['std']:.3f}"
                                     for k in KEEP))
    for key, value in result.items():
        if key.startswith("flipped_share"):
            print(f"share of flipped labels among the top {a.skip:.0%} by score: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in value.items()) + f" (base rate {result['label_noise']:.2f})")


def main() -> None:
    from tamis.selectors.el2n import EL2NSelector

    defaults = EL2NSelector.param_defaults()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    ap.add_argument("--label-noise", type=float, nargs="+", default=[0.0, 0.1],
                    help="fractions of training labels flipped, one condition (and panel) each")
    ap.add_argument("--runs", type=int, default=defaults["runs"], help="scoring runs averaged (selector default)")
    ap.add_argument("--head-epochs", type=int, default=defaults["head_epochs"])
    ap.add_argument("--head-hidden", type=int, default=defaults["head_hidden"])
    ap.add_argument("--skip", type=float, default=defaults["skip_hardest"], help="offset window of the '+skip' arms")
    ap.add_argument("--mlp-hidden", type=int, default=64, help="hidden units of the MLP trained on each subset")
    ap.add_argument("--mlp-iter", type=int, default=300)
    ap.add_argument("--out", default=str(RESULTS / "pruning_curve.json"))
    a = ap.parse_args()

    import torch
    from sklearn.datasets import load_digits
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(a.threads)
    threadpool_limits(a.threads)  # numpy's BLAS too: a busy 2-core machine runs small fits faster on one thread
    x_all, y_all = load_digits(return_X_y=True)
    conditions = [run_condition(x_all, y_all, noise, a, defaults) for noise in a.label_noise]
    for result in conditions:
        print_table(result, a)
    result = {"dataset": "sklearn digits", "seeds": a.seeds, "skip": a.skip, "keep": list(KEEP),
              "evaluator": {"model": "sklearn MLPClassifier", "hidden": a.mlp_hidden, "max_iter": a.mlp_iter},
              "threads": a.threads, "conditions": conditions}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(conditions, arm_names(a.skip), out.with_suffix(".png"), a.seeds)
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(conditions: list[dict], arms: list[str], path: Path, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(conditions), figsize=(6 * len(conditions), 4), squeeze=False)
    xs = [100 * k for k in KEEP]
    for ax, result in zip(axes[0], conditions):
        table = result["accuracy"]
        for arm in arms:
            means = np.array([table[arm][str(k)]["mean"] for k in KEEP])
            stds = np.array([table[arm][str(k)]["std"] for k in KEEP])
            line, = ax.plot(xs, 100 * means, marker="o", label=arm, linestyle="--" if "skip" in arm else "-")
            ax.fill_between(xs, 100 * (means - stds), 100 * (means + stds), color=line.get_color(), alpha=0.12)
        ax.set_xlabel(f"training data kept (% of {result['n_train']})")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"digits, {result['label_noise']:.0%} labels flipped (MLP, ± std, {seeds} seeds)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
