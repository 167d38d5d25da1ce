"""Throughput of the model work behind the LM-based selectors, on CPU or GPU.

For a GPT-2-style proxy of a given size, on WordNet texts, in examples per second:
- RDS+ embedding (position-weighted mean of the last hidden layer), HiddenStateEmbedder;
- forward statistics (mean token loss, EL2N) as CoLoR-Filter and EL2N use, sequence_stats;
- LESS featurization: per-example LoRA gradients by vmap, Adam-preconditioned, projected and
  normalized, against a batch-1 loop of backward passes doing the same.
Weights are randomly initialized: throughput does not depend on what the model learned.
Prints JSON and writes it to --out (default benchmarks/results/model_throughput_<device>.json).

    python benchmarks/model_throughput.py --device cuda --size gpt2 --records texts.jsonl
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SIZES = {  # layers, width, heads
    "tiny": (2, 128, 4),
    "small": (4, 256, 4),
    "gpt2": (12, 768, 12),
}


def timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", required=True, help="JSONL of tamis records")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-tokens", type=int, default=16_384)
    ap.add_argument("--grad-n", type=int, default=256, help="examples for the gradient benchmark")
    ap.add_argument("--proj-dim", type=int, default=1024)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model

    from tamis.models.build import build_model, train_tokenizer
    from tamis.models.embedder import HiddenStateEmbedder
    from tamis.models.lm import encode_records, load_causal_lm
    from tamis.models.projection import RademacherProjector
    from tamis.models.stats import grad_dim, per_example_grads, sequence_stats
    from tamis.models.text import render_plain
    from tamis.schemas.proxy import ProxyModelConfig

    records = [json.loads(line) for line in open(a.records)][: a.n]
    layers, width, heads = SIZES[a.size]
    config = ProxyModelConfig(n_layer=layers, n_embd=width, n_head=heads, vocab_size=4096, context=256)
    folder = Path(tempfile.mkdtemp()) / "model"
    tok = train_tokenizer((render_plain(r) for r in records), config.vocab_size, 2, config.context)
    torch.manual_seed(0)
    build_model(config, tok).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    result = {"device": a.device, "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None,
              "size": a.size, "params": None, "n": len(records), "dtype": a.dtype, "threads": torch.get_num_threads()}

    emb = HiddenStateEmbedder(str(folder), batch_tokens=a.batch_tokens, device=a.device, dtype=a.dtype, max_length=256)
    texts = [render_plain(r) for r in records]
    emb.embed(texts[:64])
    _, t = timed(lambda: emb.embed(texts), sync)
    result["rds_embed_per_s"] = len(texts) / t

    model, tokenizer = load_causal_lm(str(folder), device=a.device, dtype=a.dtype)
    result["params"] = sum(p.numel() for p in model.parameters())
    examples = encode_records(tokenizer, records, 256)
    sequence_stats(model, examples[:64], batch_tokens=a.batch_tokens)
    _, t = timed(lambda: sequence_stats(model, examples, batch_tokens=a.batch_tokens), sync)
    result["loss_el2n_per_s"] = len(examples) / t

    model, tokenizer = load_causal_lm(str(folder), device=a.device, dtype="float32")
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True))
    names_dim = grad_dim(lora)
    projector = RademacherProjector(names_dim, a.proj_dim, seed=0, device=a.device)
    moments = {n: (torch.zeros_like(p), torch.full_like(p, 1e-4)) for n, p in lora.named_parameters() if p.requires_grad}
    sub = examples[: a.grad_n]
    per_example_grads(lora, sub[:16], projector=projector, normalize=True, adam_moments=moments)
    _, t = timed(lambda: per_example_grads(lora, sub, projector=projector, normalize=True, adam_moments=moments,
                                           chunk_size=32), sync)
    result["less_vmap_per_s"] = len(sub) / t

    # The reference code's way: one backward per example, then the same preconditioning and projection.
    from tamis.models.lm import pad_batch, token_nll
    from tamis.models.stats import adam_precondition

    params = [p for p in lora.parameters() if p.requires_grad]
    pad = tokenizer.pad_token_id or 0

    def loop():
        out = []
        for e in sub:
            ids, mask, labels = pad_batch([e], pad, a.device)
            nll, scored = token_nll(lora(input_ids=ids, attention_mask=mask).logits, labels)
            loss = nll.sum() / scored.sum().clamp_min(1)
            grads = torch.autograd.grad(loss, params)
            g = torch.cat([x.reshape(-1) for x in grads])
            m = torch.cat([mm.reshape(-1) for mm, _ in moments.values()])
            v = torch.cat([vv.reshape(-1) for _, vv in moments.values()])
            p = projector.project(adam_precondition(g, m, v)[None])
            out.append(torch.nn.functional.normalize(p, dim=-1))
        return out

    lora.eval()
    _, t = timed(loop, sync)
    result["less_batch1_per_s"] = len(sub) / t
    result["less_speedup"] = result["less_vmap_per_s"] / result["less_batch1_per_s"]
    print(json.dumps(result, indent=2))
    dest = Path(a.out) if a.out else Path(__file__).parent / "results" / f"model_throughput_{a.device.split(':')[0]}_{a.size}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
