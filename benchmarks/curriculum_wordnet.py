"""Curriculum against random order on WordNet: how many steps to reach the same held-out loss?

1. The ``irt`` selector builds its crowd (small proxies trained from scratch, checkpoints along
   the way) on the WordNet pool, fits abilities on a calibration sample and scores the
   learner's training rows and a probe set: difficulty and curriculum stage per row.
2. A learner proxy (same initial weights and tokenizer for every arm) is trained for the same
   epochs with the same optimizer and schedule on the same rows, in three orders, through a
   real ``torch.utils.data.DataLoader``:

   * ``random``: a fresh shuffle every epoch;
   * ``curriculum``: ``CurriculumSampler`` without a scheduler, easiest stage and row first;
   * ``dds-mae``: ``CurriculumSampler`` with PUDF's ``DDSMAE`` scheduler; before each epoch the
     learner answers the probe set (right when its loss is under the crowd's threshold, as the
     crowd was judged) and trains on the rows with b <= theta (at least 100).

3. Every ``--eval-every`` steps the held-out mean token loss on unseen pool rows is recorded.
   For targets at the random arm's loss after 25/50/75/100% of its steps, the first step at
   which each arm is at or under the target is reported (``null``: never reached).

    python benchmarks/curriculum_wordnet.py                     # full size (estimated 5-10 min on 2 idle cores)
    python benchmarks/curriculum_wordnet.py --tiny              # a smoke test, well under a minute
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

BENCH = Path("/work/shared/bench/wordnet")


def crowd_params(args) -> dict:
    return {"crowd_widths": tuple(args.crowd_widths), "crowd_checkpoints": args.crowd_checkpoints,
            "calibration_size": args.calibration, "irt_model": args.irt_model, "sample_size": args.crowd_rows,
            "proxy_epochs": 1, "batch_size": 32, "lr": 2e-3, "n_layer": args.layers, "n_head": 2,
            "vocab_size": args.vocab, "context": args.context}


def split_pool(pool: list[dict], train_rows: int, probe_rows: int, eval_rows: int):
    """Learner rows, probe rows and held-out rows: disjoint slices drawn by id hash (seed 99)."""
    from tamis.models.train import slice_position

    pos = np.array([slice_position(r, 99) for r in pool])
    order = np.argsort(pos, kind="stable")
    train = [pool[i] for i in order[:train_rows]]
    probe = [pool[i] for i in order[train_rows:train_rows + probe_rows]]
    held_out = [pool[i] for i in order[::-1][:eval_rows]]  # the highest positions: nobody trains on them
    return train, probe, held_out


def score_rows(selector, rows: list[dict], chunk: int = 1000) -> dict[str, np.ndarray]:
    parts = [selector.score(rows[i:i + chunk]) for i in range(0, len(rows), chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def learner_init(train: list[dict], args, cache: Path) -> str:
    """Tokenizer + initial weights of the learner (identical for every arm), cached by inputs."""
    from tamis.models.build import write_initial_model
    from tamis.schemas.proxy import ProxyModelConfig

    config = ProxyModelConfig(n_layer=args.layers, n_embd=args.learner_width, n_head=4, vocab_size=args.vocab,
                              context=args.context, seed=0)
    digest = hashlib.sha256(json.dumps([config.model_dump(mode="json"), [r["id"] for r in train]]).encode()).hexdigest()
    folder = cache / f"curriculum-learner-{digest[:16]}"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        write_initial_model(folder, config, train)
    return str(folder)


def held_out_loss(model, examples) -> float:
    from tamis.models.stats import sequence_stats

    stats = sequence_stats(model, examples, batch_tokens=8192)
    ok = stats["tokens"] > 0
    return float((stats["loss"][ok] * stats["tokens"][ok]).sum() / stats["tokens"][ok].sum())


def probe_answers(model, examples, threshold: float) -> np.ndarray:
    """The learner's 1/0 answers on the probe rows, judged as the crowd was (loss under the threshold)."""
    from tamis.models.stats import sequence_stats

    loss = sequence_stats(model, examples, batch_tokens=8192)["loss"]
    return np.where(np.isfinite(loss), (loss < threshold).astype(np.float64), np.nan)


def train_arm(arm: str, init: str, train_ex, eval_ex, probe_ex, difficulty, stage, probe_b, threshold, args) -> dict:
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from tamis.curriculum import DDSMAE, CurriculumSampler
    from tamis.models.lm import load_causal_lm, pad_batch, token_nll

    model, tok = load_causal_lm(init)
    model.train()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    if arm == "random":
        sampler = RandomSampler(range(len(train_ex)), generator=torch.Generator().manual_seed(0))
    elif arm == "curriculum":
        sampler = CurriculumSampler(difficulty, stage)
    else:
        sampler = CurriculumSampler(difficulty, stage, scheduler=DDSMAE(difficulty, min_items=100))
    loader = DataLoader(range(len(train_ex)), batch_size=args.batch_size, sampler=sampler, drop_last=False)
    # The same schedule for every arm: linear warmup, then linear decay over the random arm's steps.
    total = args.epochs * math.ceil(len(train_ex) / args.batch_size)
    warmup = max(1, int(0.05 * total))
    pad = tok.pad_token_id
    curve = [{"step": 0, "loss": held_out_loss(model, eval_ex)}]
    epochs, step = [], 0
    model.train()
    for epoch in range(args.epochs):
        if arm == "dds-mae":
            sampler.update(probe_answers(model, probe_ex, threshold), probe_b)
            model.train()
            epochs.append(dict(sampler.scheduler.history_[-1]))
        else:
            epochs.append({"epoch": epoch, "items": len(sampler)})
        for batch in loader:
            lr = args.lr * min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
            for group in opt.param_groups:
                group["lr"] = lr
            ids, mask, labels = pad_batch([train_ex[i] for i in batch.tolist()], pad)
            nll, scored = token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
            loss = nll.sum() / scored.sum().clamp_min(1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % args.eval_every == 0:
                curve.append({"step": step, "loss": held_out_loss(model, eval_ex)})
                model.train()
    if curve[-1]["step"] != step:
        curve.append({"step": step, "loss": held_out_loss(model, eval_ex)})
    return {"steps": step, "final_loss": curve[-1]["loss"], "curve": curve, "epochs": epochs}


def steps_to(curve: list[dict], target: float) -> int | None:
    for point in curve:
        if point["loss"] <= target + 1e-12:
            return point["step"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=str(BENCH / "pool.jsonl.gz"))
    parser.add_argument("--tiny", action="store_true", help="a smoke test at a very small size")
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--probe-rows", type=int, default=200)
    parser.add_argument("--eval-rows", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--learner-width", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--crowd-widths", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--crowd-checkpoints", type=int, default=8)
    parser.add_argument("--crowd-rows", type=int, default=3000)
    parser.add_argument("--calibration", type=int, default=1000)
    parser.add_argument("--irt-model", default="1pl")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", default="/tmp/tamis-bench-proxies")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "curriculum_wordnet.json"))
    args = parser.parse_args()
    if args.tiny:
        args.train_rows, args.probe_rows, args.eval_rows, args.epochs = 400, 60, 100, 2
        args.eval_every, args.layers, args.learner_width, args.vocab, args.context = 5, 1, 32, 512, 64
        args.crowd_widths, args.crowd_checkpoints, args.crowd_rows, args.calibration = [16, 32], 4, 300, 150

    import os

    import torch

    os.environ["TAMIS_CACHE"] = str(Path(args.cache_dir).parent / "tamis-bench-cache")
    if args.threads:
        torch.set_num_threads(args.threads)
    from tamis.models.lm import encode_records
    from tamis.pipeline.sources import read_records
    from tamis.selectors import PoolSample, RunContext
    from tamis.selectors.irt import IRTSelector

    timings = {}
    t0 = time.perf_counter()
    pool = list(read_records(args.pool))
    if args.tiny:
        pool = pool[:4000]
    train, probe, held_out = split_pool(pool, args.train_rows, args.probe_rows, args.eval_rows)
    timings["read_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    context = RunContext(max_length=args.context, batch_tokens=8192)
    selector = IRTSelector(**crowd_params(args))
    prepared = selector.prepare(PoolSample(lambda: pool), None, context)
    selector.setup(context)
    selector.fit(None, prepared)
    timings["crowd_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scored = score_rows(selector, train)
    probe_scores = score_rows(selector, probe)
    timings["score_s"] = time.perf_counter() - t0
    difficulty, stage = scored["difficulty"].astype(np.float64), scored["curriculum_stage"]
    print(f"crowd of {len(prepared['subjects'])} subjects ready in {timings['crowd_s']:.0f} s; scored "
          f"{len(train) + len(probe):,} rows in {timings['score_s']:.0f} s; {len(np.unique(difficulty))} distinct "
          f"difficulties; stage sizes {np.bincount(stage).tolist()}")

    init = learner_init(train, args, Path(args.cache_dir))
    from tamis.models.lm import load_tokenizer

    tok = load_tokenizer(init)
    train_ex = encode_records(tok, train, args.context)
    eval_ex = encode_records(tok, held_out, args.context)
    probe_ex = encode_records(tok, probe, args.context)
    arms = {}
    for arm in ("random", "curriculum", "dds-mae"):
        t0 = time.perf_counter()
        arms[arm] = train_arm(arm, init, train_ex, eval_ex, probe_ex, difficulty, stage,
                              probe_scores["difficulty"].astype(np.float64), prepared["loss_threshold"], args)
        arms[arm]["seconds"] = time.perf_counter() - t0
        print(f"{arm:>10}: {arms[arm]['steps']} steps, final held-out loss {arms[arm]['final_loss']:.4f} "
              f"({arms[arm]['seconds']:.0f} s)")

    random_curve = arms["random"]["curve"]
    targets = []
    for share in (0.25, 0.5, 0.75, 1.0):
        at = min(random_curve, key=lambda p: abs(p["step"] - share * arms["random"]["steps"]))
        row = {"random_share": share, "target_loss": at["loss"],
               **{arm: steps_to(v["curve"], at["loss"]) for arm, v in arms.items()}}
        targets.append(row)
    print(f"{'target loss':>12}" + "".join(f"{a:>12}" for a in arms) + "   (steps to reach it)")
    for row in targets:
        print(f"{row['target_loss']:>12.4f}" + "".join(f"{str(row[a]):>12}" for a in arms))
    results = {"args": vars(args), "timings": timings, "pool_rows": len(pool),
               "rows": {"train": len(train), "probe": len(probe), "held_out": len(held_out)},
               "crowd": {k: v for k, v in prepared.items() if k != "subjects"} | {"subjects": len(prepared["subjects"])},
               "difficulty": {"distinct": int(len(np.unique(difficulty))), "stage_sizes": np.bincount(stage).tolist()},
               "arms": arms, "targets": targets}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    figure = out.with_suffix(".png")
    plot(arms, targets, figure)
    print(f"wrote {out} and {figure}")


def plot(arms: dict, targets: list[dict], path: Path) -> None:
    """Held-out loss against optimizer steps for every arm, with the target losses dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"random": "#868e96", "curriculum": "#d9480f", "dds-mae": "#1c7ed6"}
    for arm, result in arms.items():
        ax.plot([p["step"] for p in result["curve"]], [p["loss"] for p in result["curve"]], label=arm,
                color=colors.get(arm), marker="o", markersize=2)
    for row in targets:
        ax.axhline(row["target_loss"], color="#adb5bd", linestyle=":", linewidth=0.8)
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("held-out mean token loss")
    ax.set_title("WordNet: curriculum (IRT difficulty) against random order")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
