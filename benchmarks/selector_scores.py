"""Every selector's score columns on the demo pool, saved to one .npz, and compared with another.

A refactoring of the selectors or the model layer must leave scores bit for bit as they were.
Run this before the change (``--out before.npz``) and after (``--out after.npz --compare
before.npz``): it prints, per variant and column, whether the arrays are identical.

Variants: every registered selector with its ``test_params`` (the LM paths), EL2N/GraNd/IRT on
labelled records (the classifier-head paths, MiniLM features), CoLoR-Filter, EL2N and LESS
warming up a given model, IRT from a responses file, kMQ with a refinement round (its selection),
and the curriculum's probe answers. Small models, CPU, a few minutes on one core.

    OMP_NUM_THREADS=1 python benchmarks/selector_scores.py --out /tmp/before.npz
    OMP_NUM_THREADS=1 python benchmarks/selector_scores.py --out /tmp/after.npz --compare /tmp/before.npz
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEMO = Path(__file__).resolve().parents[1] / "tamis" / "demo"


def demo_records(n: int) -> list[dict]:
    out, seen = [], set()
    with gzip.open(DEMO / "pool.jsonl.gz", "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj.get("id"), str) and isinstance(obj.get("messages"), list) and obj["id"] not in seen:
                seen.add(obj["id"])
                out.append({"id": obj["id"], "messages": obj["messages"], "text": None, "extra": None})
            if len(out) == n:
                break
    return out


def labelled(records: list[dict]) -> list[dict]:
    with gzip.open(DEMO / "labels.jsonl.gz", "rt", encoding="utf-8") as f:
        labels = {o["id"]: o["domain"] for o in map(json.loads, f)}
    return [dict(r, extra=json.dumps({"label": labels.get(r["id"], "other").split(".")[0]})) for r in records]


def tiny_gpt2(folder: Path) -> str:
    """A ~50k-parameter GPT-2 with a byte-level BPE trained on demo text (seeded)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    texts = [m["content"] for r in demo_records(400) for m in r["messages"]]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, special_tokens=["<|endoftext|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    eos = fast.eos_token_id
    cfg = GPT2Config(vocab_size=len(fast), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    GPT2LMHeadModel(cfg).save_pretrained(folder, safe_serialization=True)
    return str(folder)


def run(work: Path) -> dict[str, np.ndarray]:
    from tamis.selectors import PoolSample, RunContext, registry

    pool = demo_records(200)
    scored = pool[:40] + [{"id": "t", "messages": None, "text": "A plain text record about bread.", "extra": None}]
    targets = {"food": [dict(r, subtask=None) for r in pool[:6]],
               "animal": [dict(r, subtask=None) for r in pool[6:12]]}
    context = RunContext(max_length=64, batch_tokens=2048, work_dir=str(work / "run"))
    model = tiny_gpt2(work / "gpt2")
    responses = work / "responses.jsonl"
    rng = np.random.default_rng(0)
    responses.write_text("".join(json.dumps({"subject": f"m{s}", "item": r["id"], "correct": int(rng.random() < 0.5)})
                                 + "\n" for s in range(6) for r in scored[:30]))

    variants: list[tuple[str, str, dict, list[dict], list[dict]]] = []
    for name in registry.available():
        variants.append((name, name, {}, pool, scored))
    for name in ("el2n", "grand", "irt"):
        variants.append((f"{name}-labelled", name, {}, labelled(pool), labelled(scored)))
    variants += [
        ("color-model", "color", {"model": model, "prior_epochs": 1}, pool, scored),
        ("el2n-model", "el2n", {"model": model}, pool, scored),
        ("grand-lora", "grand", {"model": model, "mode": "lora"}, pool, scored),
        ("less-model", "less", {"model": model, "lora_r": 2, "lora_alpha": 8.0, "proj_dim": 32}, pool, scored),
        ("irt-responses", "irt", {"responses": str(responses)}, pool, scored),
        ("kmeans-rounds", "kmeans", {"rounds": 2, "proxy": {"n_layer": 1, "n_embd": 16, "n_head": 2,
                                                            "vocab_size": 300, "context": 64, "sample_size": 80,
                                                            "epochs": 1}}, pool, scored),
    ]
    out: dict[str, np.ndarray] = {}
    for label, name, extra, sample, rows in variants:
        t0 = time.perf_counter()
        cls = registry.get(name)
        params = {**cls.test_params(), **extra}
        selector = cls.from_params(params)
        tgt = targets if cls.needs_target else None
        prepared = selector.prepare(PoolSample(lambda sample=sample: sample), tgt, context)
        selector.setup(context, prepared, tgt)
        for column, values in selector.score(rows).items():
            values = np.asarray(values)
            out[f"{label}/{column}"] = values.astype(np.float64) if values.dtype == object else values
        if name == "kmeans" and extra.get("rounds", 1) > 1:
            import pyarrow as pa

            by_id = {r["id"]: r for r in rows}
            cols = selector.score(rows)
            table = pa.table({"id": [r["id"] for r in rows], "cluster": cols["cluster"]})
            if hasattr(selector, "selection_rule"):  # rules as objects (issue 15)
                chosen = selector.selection_rule().choose(table, 10, context.seed, lambda ids: [by_id[i] for i in ids])
                ids, report = chosen.ids, chosen.report
            else:
                selector.pool_rows_ = lambda ids: [by_id[i] for i in ids]
                picked = selector.select(table, 10, context)
                ids, report = picked.column("id").to_pylist(), selector.report_
            out[f"{label}/selected"] = np.array(ids)
            out[f"{label}/loss_gap"] = np.array(report["rounds"][1]["loss_gap"])
        if name == "irt" and not extra and label == "irt":
            from tamis.curriculum import lm_probe_answers
            from tamis.models.lm import encode_records, load_causal_lm

            lm, tok = load_causal_lm(model)
            out["curriculum/probe"] = lm_probe_answers(lm, encode_records(tok, rows, 64),
                                                       prepared.loss_threshold)
            out["irt/threshold"] = np.array([prepared.loss_threshold])
        print(f"{label:<16} {time.perf_counter() - t0:6.1f}s", file=sys.stderr)
    return out


def compare(now: dict[str, np.ndarray], before_path: str) -> int:
    before = dict(np.load(before_path, allow_pickle=False))
    bad = 0
    for key in sorted(set(before) | set(now)):
        if key not in now or key not in before:
            print(f"{key:<40} only in {'before' if key in before else 'after'}")
            bad += 1
            continue
        a, b = before[key], now[key]
        same = a.dtype == b.dtype and a.shape == b.shape and (
            np.array_equal(a, b, equal_nan=True) if a.dtype.kind == "f" else np.array_equal(a, b))
        if not same:
            bad += 1
        print(f"{key:<40} {'identical' if same else 'DIFFERENT'} {a.dtype}{list(a.shape)}"
              + ("" if same or a.dtype.kind != "f" or a.shape != b.shape else
                 f" max|diff| {np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))):.3g}"))
    print(f"{len(set(before) | set(now)) - bad} identical, {bad} different")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help=".npz to write the score columns to")
    parser.add_argument("--compare", help="an earlier --out to compare with, array by array")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TAMIS_CACHE"] = str(Path(tmp) / "cache")
        scores = run(Path(tmp))
    np.savez(args.out, **scores)
    print(f"{len(scores)} arrays -> {args.out}", file=sys.stderr)
    return compare(scores, args.compare) if args.compare else 0


if __name__ == "__main__":
    sys.exit(main())
