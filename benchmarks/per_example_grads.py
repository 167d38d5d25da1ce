"""Per-example gradients: torch.func vmap against a loop of batch-1 backward passes.

Times both on a small GPT-2 proxy (the default built size) at 32 examples x 64 tokens, for LoRA
parameters and for all parameters, checks they agree, and writes
benchmarks/results/per_example_grads.json.

    python benchmarks/per_example_grads.py [--threads 1] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from tamis.models.lm import Encoded, pad_batch, token_nll
from tamis.models.stats import grad_param_names, per_example_grads
from tamis.schemas.proxy import ProxyModelConfig


def small_gpt2(config: ProxyModelConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2Config(vocab_size=config.vocab_size, n_positions=config.context, n_embd=config.n_embd,
                      n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=0, eos_token_id=0, pad_token_id=1)
    gpt2._attn_implementation = "eager"
    return GPT2LMHeadModel(gpt2).eval()


def loop_grads(model, examples, names):
    named = dict(model.named_parameters())
    rows = []
    for e in examples:
        model.zero_grad(set_to_none=True)
        ids, mask, labels = pad_batch([e], 1)
        nll, scored = token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
        (nll.sum() / scored.sum()).backward()
        rows.append(torch.cat([named[k].grad.reshape(-1) for k in names]))
    return torch.stack(rows).numpy()


def best_time(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def measure(model, examples, params, repeats: int, chunk_sizes) -> dict:
    names = grad_param_names(model, params)
    for p in model.parameters():
        p.requires_grad_(False)
    named = dict(model.named_parameters())
    for k in names:
        named[k].requires_grad_(True)
    loop_s, reference = best_time(lambda: loop_grads(model, examples, names), repeats)
    result = {"params": params, "grad_dim": int(sum(named[k].numel() for k in names)), "loop_s": loop_s, "vmap": []}
    for chunk in chunk_sizes:
        vmap_s, fast = best_time(lambda: per_example_grads(model, examples, params=names, chunk_size=chunk,
                                                          batch_tokens=64 * chunk), repeats)
        result["vmap"].append({"chunk_size": chunk, "seconds": vmap_s, "speedup": loop_s / vmap_s,
                               "max_abs_diff": float(np.abs(fast - reference).max())})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "per_example_grads.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ProxyModelConfig()  # the default built proxy: 4 layers, width 128, vocabulary 4096
    gen = torch.Generator().manual_seed(0)
    examples = [Encoded(torch.randint(2, config.vocab_size, (args.tokens,), generator=gen).tolist(), [True] * args.tokens)
                for _ in range(args.examples)]
    chunk_sizes = [8, 16, 32]

    from peft import LoraConfig, get_peft_model

    base = small_gpt2(config)
    full = measure(base, examples, "all", args.repeats, chunk_sizes)
    torch.manual_seed(1)
    lora_model = get_peft_model(small_gpt2(config), LoraConfig(r=16, lora_alpha=32, target_modules=["c_attn", "attn.c_proj"],
                                                             fan_in_fan_out=True, lora_dropout=0.0)).eval()
    with torch.no_grad():
        for name, p in lora_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    lora = measure(lora_model, examples, "trainable", args.repeats, chunk_sizes)

    results = {
        "model": {"n_layer": config.n_layer, "n_embd": config.n_embd, "vocab_size": config.vocab_size,
                  "parameters": int(sum(p.numel() for p in base.parameters()))},
        "examples": args.examples, "tokens": args.tokens, "threads": args.threads, "repeats": args.repeats,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "lora": lora, "full": full,
    }
    for label, r in (("LoRA", lora), ("full", full)):
        print(f"{label} params ({r['grad_dim']:,} values): loop of batch-1 backward {r['loop_s']:.3f} s")
        for v in r["vmap"]:
            print(f"  vmap chunk {v['chunk_size']:>2}: {v['seconds']:.3f} s  speedup x{v['speedup']:.2f}  "
                  f"max abs diff {v['max_abs_diff']:.2e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
