"""Curriculum against random order on WordNet: how many steps to reach the same held-out loss?

1. The ``irt`` selector builds its crowd (small proxies trained from scratch, checkpoints along
   the way, one subject each) on a slice of the WordNet pool, fits abilities on a calibration
   sample and scores the learner's training rows and a probe set: difficulty and stage per row.
   The crowd's own training rows are kept out of every split below (they look easy to it).
2. A learner proxy is trained from the same initial weights, with the crowd's tokenizer (so its
   mean token loss is on the crowd's scale), for the same fixed budget of optimizer steps, with
   the same AdamW and the same schedule (linear warmup over 5%, then linear decay to 0 at the
   budget), through a real ``torch.utils.data.DataLoader``, in these orders:

   * ``random``: a fresh shuffle every pass over the rows (``random-seed1``: another shuffle
     seed, the noise floor of "steps to reach a loss");
   * ``curriculum``: ``CurriculumSampler`` without a scheduler: every pass easiest stage and row
     first (what ``tamis.load_selected(out, curriculum=True)`` gives);
   * ``dds-mae``: ``CurriculumSampler`` with PUDF's ``DDSMAE``: before each pass the learner
     answers the probe set (right when its mean token loss is under the crowd's threshold, as
     the crowd was judged), theta is its MAP estimate (N(0, 1) prior), and the pass is the rows
     with b <= theta (at least 100, easiest first), or the threshold rises by 0.1 when theta
     does not improve. Its passes are short, so it runs as many as the budget allows (PUDF
     runs up to 100 epochs, each one the admitted subset).

3. Every ``--eval-every`` steps: held-out mean token loss (pool rows nobody trains on), and the
   learner's ability theta on the probe (on the crowd's scale; recorded for every arm). For
   targets at the ``random`` arm's loss after 25/50/75/100% of the budget, the first evaluated
   step at which each arm is at or under the target is reported (``null``: never reached).

    OMP_NUM_THREADS=1 python benchmarks/curriculum_wordnet.py --threads 1   # about 10-15 min on a busy 2-core box
    python benchmarks/curriculum_wordnet.py --crowd-only                    # the crowd's diagnostics, no learner
    python benchmarks/curriculum_wordnet.py --tiny                          # a smoke test, well under a minute
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "wordnet"  # ../shared/bench/wordnet beside the checkout
ARMS = ("random", "random-seed1", "curriculum", "dds-mae")


def crowd_params(args) -> dict:
    return {"crowd_widths": tuple(args.crowd_widths), "crowd_checkpoints": args.crowd_checkpoints,
            "calibration_size": args.calibration, "irt_model": args.irt_model, "sample_size": args.crowd_rows,
            "proxy_epochs": args.crowd_epochs, "batch_size": 32, "lr": args.crowd_lr, "n_layer": args.layers,
            "n_head": 2, "vocab_size": args.vocab, "positions": args.context}


def split_pool(pool: list[dict], exclude: set[str], train_rows: int, probe_rows: int, eval_rows: int):
    """Learner rows, probe rows and held-out rows: disjoint slices drawn by id hash (seed 99),
    none of them a row the crowd trained on."""
    from tamis.models.train import slice_position

    rows = [r for r in pool if r["id"] not in exclude]
    pos = np.array([slice_position(r, 99) for r in rows])
    order = np.argsort(pos, kind="stable")
    train = [rows[i] for i in order[:train_rows]]
    probe = [rows[i] for i in order[train_rows:train_rows + probe_rows]]
    held_out = [rows[i] for i in order[::-1][:eval_rows]]  # the highest positions: nobody trains on them
    return train, probe, held_out


def score_rows(selector, rows: list[dict], chunk: int = 1000) -> dict[str, np.ndarray]:
    parts = [selector.score(rows[i:i + chunk]) for i in range(0, len(rows), chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def learner_init(tokenizer_dir: str, args, cache: Path) -> str:
    """Initial weights of the learner (identical for every arm) with the crowd's tokenizer."""
    from tamis.models.build import build_model
    from tamis.models.loading import load_tokenizer
    from tamis.schemas.proxy import ProxyModelConfig

    config = ProxyModelConfig(n_layer=args.layers, n_embd=args.learner_width, n_head=4, vocab_size=args.vocab,
                              context=args.context, seed=0)
    digest = hashlib.sha256(json.dumps([config.model_dump(mode="json"), tokenizer_dir]).encode()).hexdigest()
    folder = cache / f"curriculum-learner-{digest[:16]}"
    if not folder.is_dir():
        tokenizer = load_tokenizer(tokenizer_dir)
        tmp = folder.with_name(folder.name + ".tmp")
        build_model(config, tokenizer).save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        tmp.replace(folder)
    return str(folder)


def held_out_loss(model, examples) -> float:
    from tamis.models.stats import sequence_stats

    stats = sequence_stats(model, examples, batch_tokens=8192)
    ok = stats["tokens"] > 0
    return float((stats["loss"][ok] * stats["tokens"][ok]).sum() / stats["tokens"][ok].sum())


def probe_answers(model, examples, threshold: float) -> np.ndarray:
    """The learner's 1/0 answers on the probe rows, judged exactly as the crowd was: the same
    mean-token-loss function, the same tokenizer, the same threshold."""
    from tamis.curriculum import lm_probe_answers

    return lm_probe_answers(model, examples, threshold, batch_tokens=8192)


def train_arm(arm: str, init: str, data: dict, args) -> dict:
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from tamis.curriculum import DDSMAE, CurriculumSampler
    from tamis.irt import estimate_theta
    from tamis.models.lm import load_causal_lm, pad_batch, token_nll

    seed = 1 if arm == "random-seed1" else 0
    model, tok = load_causal_lm(init)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    n = len(data["train"])
    if arm.startswith("random"):
        sampler = RandomSampler(range(n), generator=torch.Generator().manual_seed(seed))
    elif arm == "curriculum":
        sampler = CurriculumSampler(data["difficulty"], data["stage"])
    else:
        sampler = CurriculumSampler(data["difficulty"], data["stage"],
                                    scheduler=DDSMAE(data["difficulty"], min_items=args.min_items))
    loader = DataLoader(range(n), batch_size=args.batch_size, sampler=sampler, drop_last=False)
    # The same schedule for every arm, over the same budget of optimizer steps.
    total, warmup = args.steps, max(1, int(0.05 * args.steps))
    pad = tok.pad_token_id

    def point(step: int, seen: int) -> dict:
        answers = probe_answers(model, data["probe"], data["threshold"])
        theta, _ = estimate_theta(answers, data["probe_b"])
        return {"step": step, "examples": seen, "loss": held_out_loss(model, data["held_out"]),
                "probe_theta": float(theta), "probe_correct": float(np.nanmean(answers))}

    model.train()
    curve = [point(0, 0)]
    passes, step, seen = [], 0, 0
    while step < total:
        if arm == "dds-mae":
            sampler.update(probe_answers(model, data["probe"], data["threshold"]), data["probe_b"])
            passes.append(dict(sampler.scheduler.history_[-1]) | {"start_step": step})
        else:
            passes.append({"pass": len(passes), "items": len(sampler), "start_step": step})
        for batch in loader:
            lr = args.lr * min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
            for group in opt.param_groups:
                group["lr"] = lr
            ids, mask, labels = pad_batch([data["train"][i] for i in batch.tolist()], pad)
            nll, scored = token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
            loss = nll.sum() / scored.sum().clamp_min(1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            seen += len(batch)
            if step % args.eval_every == 0 or step == total:
                curve.append(point(step, seen))
                model.train()
            if step >= total:
                break
    return {"steps": step, "examples": seen, "final_loss": curve[-1]["loss"], "curve": curve, "passes": passes}


def steps_to(curve: list[dict], target: float) -> int | None:
    for p in curve:
        if p["loss"] <= target + 1e-12:
            return p["step"]
    return None


def crowd_summary(prepared, difficulty: np.ndarray) -> dict:
    """How informative the crowd is: ability spread, subjects that answer everything alike, and
    how many distinct difficulties the training rows get."""
    theta = np.asarray(prepared.theta)
    cal = prepared.calibration
    return {"subjects": len(theta), "theta_min": float(theta.min()), "theta_max": float(theta.max()),
            "theta_sd": float(theta.std()), "all_wrong": cal.get("subjects_all_wrong"),
            "all_right": cal.get("subjects_all_right"), "subject_correct": cal.get("subject_correct"),
            "distinct_difficulties": len(np.unique(difficulty)),
            "difficulty_quantiles": np.quantile(difficulty, [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1]).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=str(BENCH / "pool.jsonl.gz"))
    parser.add_argument("--tiny", action="store_true", help="a smoke test at a very small size")
    parser.add_argument("--crowd-only", action="store_true", help="build and score the crowd, print its diagnostics, stop")
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--probe-rows", type=int, default=200)
    parser.add_argument("--eval-rows", type=int, default=500)
    parser.add_argument("--steps", type=int, default=375, help="optimizer steps for every arm (3 passes of 4000 rows)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=15)
    parser.add_argument("--min-items", type=int, default=100, help="DDS-MAE's floor (PUDF's --min-train-length)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--learner-width", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--crowd-widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--crowd-checkpoints", type=int, default=8)
    parser.add_argument("--crowd-epochs", type=int, default=2)
    parser.add_argument("--crowd-lr", type=float, default=2e-3)
    parser.add_argument("--crowd-rows", type=int, default=3000)
    parser.add_argument("--calibration", type=int, default=1000)
    parser.add_argument("--irt-model", default="1pl")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", default="/tmp/tamis-bench-proxies")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "curriculum_wordnet.json"))
    args = parser.parse_args()
    if args.tiny:
        args.train_rows, args.probe_rows, args.eval_rows, args.steps = 400, 60, 100, 30
        args.eval_every, args.layers, args.learner_width, args.vocab, args.context = 5, 1, 32, 512, 64
        args.crowd_widths, args.crowd_checkpoints, args.crowd_rows, args.calibration = [16, 32], 4, 300, 150
        args.min_items = 50

    import os

    import torch

    os.environ["TAMIS_CACHE"] = str(Path(args.cache_dir).parent / "tamis-bench-cache")
    if args.threads:
        torch.set_num_threads(args.threads)
    from tamis.models.lm import encode_records, load_tokenizer
    from tamis.pipeline.sources import read_records
    from tamis.selectors import PoolSample, RunContext
    from tamis.selectors.irt import IRTSelector

    timings = {}
    t0 = time.perf_counter()
    pool = list(read_records(args.pool))
    if args.tiny:
        pool = pool[:4000]
    timings["read_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    context = RunContext(max_length=args.context, batch_tokens=8192)
    selector = IRTSelector(**crowd_params(args))
    sample = PoolSample(lambda: pool)
    prepared = selector.prepare(sample, None, context)
    selector.setup(context, prepared, None)
    timings["crowd_s"] = time.perf_counter() - t0
    crowd_rows = {r["id"] for r in sample.sample(1.0, args.crowd_rows)}  # what prepare trained the crowd on
    train, probe, held_out = split_pool(pool, crowd_rows, args.train_rows, args.probe_rows, args.eval_rows)
    t0 = time.perf_counter()
    scored = score_rows(selector, train)
    probe_scores = score_rows(selector, probe)
    timings["score_s"] = time.perf_counter() - t0
    difficulty, stage = scored["difficulty"].astype(np.float64), scored["curriculum_stage"]
    crowd = crowd_summary(prepared, difficulty)
    print(f"crowd of {crowd['subjects']} subjects in {timings['crowd_s']:.0f} s (theta {crowd['theta_min']:.2f}.."
          f"{crowd['theta_max']:.2f}, {crowd['all_wrong']} all wrong, {crowd['all_right']} all right, threshold "
          f"{prepared.loss_threshold:.3f}); scored {len(train) + len(probe):,} rows in {timings['score_s']:.0f} s: "
          f"{crowd['distinct_difficulties']} distinct difficulties, quantiles "
          f"{np.round(crowd['difficulty_quantiles'], 2).tolist()}, stage sizes {np.bincount(stage).tolist()}",
          flush=True)
    print("subject (width, step): theta, share right: " + ", ".join(
        f"({s['width']},{s['step']}): {t:.2f}, {c:.2f}" for s, t, c in
        zip(prepared.subjects, prepared.theta, crowd["subject_correct"] or [np.nan] * crowd["subjects"])))
    if args.crowd_only:
        return

    # The learner shares the crowd's tokenizer (every crowd run trains the same one on the same rows).
    init = learner_init(prepared.subjects[-1]["path"], args, Path(args.cache_dir))
    tok = load_tokenizer(init)
    data = {"train": encode_records(tok, train, args.context), "held_out": encode_records(tok, held_out, args.context),
            "probe": encode_records(tok, probe, args.context), "difficulty": difficulty, "stage": stage,
            "probe_b": probe_scores["difficulty"].astype(np.float64), "threshold": prepared.loss_threshold}
    arms = {}
    for arm in args.arms:
        t0 = time.perf_counter()
        arms[arm] = train_arm(arm, init, data, args)
        arms[arm]["seconds"] = time.perf_counter() - t0
        thetas = [p["probe_theta"] for p in arms[arm]["curve"]]
        print(f"{arm:>13}: {arms[arm]['steps']} steps ({arms[arm]['examples']:,} rows) in "
              f"{len(arms[arm]['passes'])} passes, final held-out loss {arms[arm]['final_loss']:.4f}, probe theta "
              f"{thetas[0]:.2f} -> {thetas[-1]:.2f} ({arms[arm]['seconds']:.0f} s)", flush=True)

    targets = []
    if "random" in arms:
        random_curve = arms["random"]["curve"]
        for share in (0.25, 0.5, 0.75, 1.0):
            at = min(random_curve, key=lambda p: abs(p["step"] - share * args.steps))
            targets.append({"random_share": share, "target_loss": at["loss"],
                            **{arm: steps_to(v["curve"], at["loss"]) for arm, v in arms.items()}})
        print(f"{'target loss':>12}" + "".join(f"{a:>14}" for a in arms) + "   (steps to reach it)")
        for row in targets:
            print(f"{row['target_loss']:>12.4f}" + "".join(f"{row[a]!s:>14}" for a in arms))
        print(f"{'final loss':>12}" + "".join(f"{v['final_loss']:>14.4f}" for v in arms.values()))
    results = {"args": vars(args), "timings": timings, "pool_rows": len(pool),
               "rows": {"train": len(train), "probe": len(probe), "held_out": len(held_out),
                        "crowd_training_rows_excluded": len(crowd_rows)},
               "crowd": {k: v for k, v in prepared.to_json().items() if k != "subjects"}
               | {"subjects": prepared.subjects, "summary": crowd},
               "difficulty": {"distinct": crowd["distinct_difficulties"], "stage_sizes": np.bincount(stage).tolist()},
               "arms": arms, "targets": targets}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    figure = out.with_suffix(".png")
    plot(arms, targets, figure)
    print(f"wrote {out} and {figure}")


def plot(arms: dict, targets: list[dict], path: Path) -> None:
    """Held-out loss (left) and the learner's probe ability (right) against optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"random": "#868e96", "random-seed1": "#ced4da", "curriculum": "#d9480f", "dds-mae": "#1c7ed6"}
    for arm, result in arms.items():
        steps = [p["step"] for p in result["curve"]]
        ax.plot(steps, [p["loss"] for p in result["curve"]], label=arm, color=colors.get(arm), marker="o", markersize=2)
        bx.plot(steps, [p["probe_theta"] for p in result["curve"]], label=arm, color=colors.get(arm))
        if arm == "dds-mae":
            bx.step([p["start_step"] for p in result["passes"]], [p["threshold"] for p in result["passes"]],
                    where="post", color=colors[arm], linestyle="--", linewidth=0.8, label="dds-mae threshold")
    for row in targets:
        ax.axhline(row["target_loss"], color="#adb5bd", linestyle=":", linewidth=0.8)
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("held-out mean token loss")
    ax.set_title("WordNet: IRT curriculum against random order")
    ax.legend(frameon=False)
    bx.set_xlabel("optimizer steps")
    bx.set_ylabel("learner ability theta on the probe (crowd scale)")
    bx.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
