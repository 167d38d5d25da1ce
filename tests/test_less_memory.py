"""LESS's memory is bounded by design: per-example gradients stream through the projection a
block at a time when a chunk's gradients do not fit the block budget, with the same vectors as
the whole route; and a memory-capped run of the paper preset on a mid-size model finishes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tamis.models.projection import RademacherProjector, rademacher_bits  # noqa: E402
from tamis.models.stats import grad_param_names, per_example_grads  # noqa: E402

from .models.test_proxy_stats import lora_model, random_moments, tiny  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fast_tiles_are_the_defined_signs():
    """Tiles come from a byte table now; they must stay the signs of ``rademacher_bits``."""
    for out_dim, tile_rows in ((8192, 64), (1000, 100), (8, 7)):
        p = RademacherProjector(3000, out_dim, seed=5, tile_rows=tile_rows)
        scale = out_dim ** -0.5
        for t in (0, 3, p.n_tiles - 1):
            rows = torch.arange(t * tile_rows, min((t + 1) * tile_rows, 3000))
            expected = rademacher_bits(rows, out_dim, 5).to(torch.float32) * (2 * scale) - scale
            assert torch.equal(p.tile(t), expected)


def test_stream_projection_of_pieces_equals_project_bit_for_bit():
    from tamis.models.projection import StreamProjection

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1000, generator=gen)
    p = RademacherProjector(1000, 64, seed=2, tile_rows=128, cache_bytes=0)
    whole = p.project(x)
    for widths in ([1000], [1, 127, 128, 300, 444], [129] * 7 + [97], [7] * 142 + [6]):
        acc, start = StreamProjection(p, 5), 0
        for w in widths:
            acc.add(x[:, start : start + w])
            start += w
        assert torch.equal(acc.result(), whole), widths
    acc = StreamProjection(p, 5)
    acc.add(x[:, :999])
    with pytest.raises(ValueError, match="999 of 1000"):
        acc.result()
    with pytest.raises(ValueError, match="more than 1000"):
        acc.add(x[:, :2])


def test_bf16_projection_is_fp32_within_its_rounding_and_the_same_on_every_route():
    """``dtype="bfloat16"`` rounds inputs and each tile's partial sum to bf16: every coordinate
    stays within a few 2**-9 of fp32's, relative to the row's scale; tiled, kept and streamed
    routes add the same tiles in the same order, so tiled and streamed agree bit for bit."""
    from tamis.models.projection import StreamProjection

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3000, generator=gen) * torch.logspace(-12, 2, 3000)[torch.randperm(3000, generator=gen)]
    exact = RademacherProjector(3000, 256, seed=4, tile_rows=128, cache_bytes=0).project(x.double().float())
    tiled = RademacherProjector(3000, 256, seed=4, tile_rows=128, cache_bytes=0, dtype="bfloat16")
    kept = RademacherProjector(3000, 256, seed=4, tile_rows=128, dtype="bfloat16")
    assert not tiled.keeps_matrix and kept.keeps_matrix
    got = tiled.project(x)
    assert got.dtype == torch.float32 and got.shape == (6, 256)

    def error(y):  # per row, relative to the row's norm
        return ((y - exact).norm(dim=1) / exact.norm(dim=1)).max()

    assert 0 < error(got) < 2 ** -9 * 3  # rounded (bf16 was used), by about 2**-9
    assert 0 < error(kept.project(x)) < 2 ** -9 * 3
    acc, start = StreamProjection(tiled, 6), 0
    for w in (5, 500, 1000, 1495):
        acc.add(x[:, start : start + w])
        start += w
    assert torch.equal(acc.result(), got)
    # The matrix is the same; only the product changes, and the features' key says so.
    assert torch.equal(tiled.dense(), RademacherProjector(3000, 256, seed=4).dense())
    assert tiled.definition == {**RademacherProjector(3000, 256, seed=4).definition, "dtype": "bfloat16"}
    assert RademacherProjector(3000, 256, seed=4).definition == {
        "kind": "rademacher", "version": "hash32x32-v1", "in_dim": 3000, "out_dim": 256, "seed": 4}
    with pytest.raises(ValueError, match="dtype"):
        RademacherProjector(10, 4, dtype="float16")


def test_bf16_buffered_grads_equal_the_streamed_ones_and_round_fp32s(lora_model):  # noqa: F811
    """Buffered rows wait in bf16 (what the product casts them to anyway): the same vectors as
    the streamed route, and within bf16's rounding of fp32's. (That they take half the bytes
    is not checked here; it shows in the peak RSS of benchmarks/less_memory.py.)"""
    model, examples = lora_model
    _, moments, dim = random_moments(model)
    projector = RademacherProjector(dim, 48, seed=3, tile_rows=100, cache_bytes=0, dtype="bfloat16")
    kwargs = dict(adam_moments=moments, projector=projector, normalize=True, chunk_size=4)
    buffered = per_example_grads(model, examples[:10], block_bytes=2 * 10 * dim, project_buffer_bytes=2 * 10 * dim,
                                 **kwargs)
    streamed = per_example_grads(model, examples[:10], block_bytes=4 * dim, **kwargs)
    np.testing.assert_array_equal(buffered, streamed)
    fp32 = RademacherProjector(dim, 48, seed=3, tile_rows=100, cache_bytes=0)
    exact = per_example_grads(model, examples[:10], **{**kwargs, "projector": fp32})
    np.testing.assert_allclose(buffered, exact, rtol=0, atol=0.02)
    assert np.abs(buffered - exact).max() > 0


@pytest.mark.parametrize("method", ["linear", "vmap"])
def test_streamed_grads_equal_whole_grads(lora_model, method):  # noqa: F811
    """A block budget below one chunk's gradients streams them in pieces (here down to single
    weight rows); the Adam-preconditioned, projected, normalized vectors are the same."""
    model, examples = lora_model
    _, moments, dim = random_moments(model)
    projector = RademacherProjector(dim, 48, seed=3, tile_rows=100, cache_bytes=0)
    kwargs = dict(adam_moments=moments, projector=projector, normalize=True, chunk_size=4, method=method)
    whole = per_example_grads(model, examples[:10], project_buffer_bytes=0, **kwargs)
    # A quarter of a chunk: every weight fits a piece whole; the same floats, bit for bit.
    streamed = per_example_grads(model, examples[:10], block_bytes=4 * dim, **kwargs)
    np.testing.assert_array_equal(streamed, whole)
    # One weight row per piece: the per-example weight gradient is made a few rows at a time,
    # and a smaller matmul may round its sums in another order (see README, "Memory").
    rows = per_example_grads(model, examples[:10], block_bytes=4 * 4 * 40, **kwargs)
    np.testing.assert_allclose(rows, whole, rtol=0, atol=1e-6)
    assert np.abs(whole).max() > 0.05


# -- memory-capped runs ------------------------------------------------------------------------------
# RLIMIT_DATA caps a process's private writable memory (heap and anonymous mappings), which is what
# tensors take; torch, Beam and the interpreter take a fixed part of it first.
CAPPED = textwrap.dedent("""
    import resource, runpy, sys
    cap = int(sys.argv.pop(1))
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__") if sys.argv[0].endswith(".py") else runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
""")


LINUX = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA covers mmap'd memory on Linux only")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_capped(cap_mb: int, args: list[str], tmp_path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python ARGS`` (a script, or a module name) with its private memory capped at ``cap_mb``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TAMIS_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", CAPPED, str(cap_mb << 20), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path)


GRADS = textwrap.dedent("""
    import sys, torch
    from peft import LoraConfig, get_peft_model
    from tamis.models.build import build_model, train_tokenizer
    from tamis.models.lm import encode_records
    from tamis.models.projection import RademacherProjector
    from tamis.models.stats import grad_param_names, per_example_grads
    from tamis.models.text import render_plain
    from tamis.schemas.proxy import ProxyModelConfig
    from tests.models.test_proxy_stats import make_records

    torch.set_num_threads(1)
    records = make_records(64)
    cfg = ProxyModelConfig(n_layer=8, n_embd=256, n_head=4, vocab_size=300, context=64)
    tok = train_tokenizer((render_plain(r) for r in records), cfg.vocab_size, 1, cfg.context)
    torch.manual_seed(0)
    model = get_peft_model(build_model(cfg, tok), LoraConfig(r=128, lora_alpha=512, target_modules=["c_attn", "attn.c_proj"],
                                                            fan_in_fan_out=True)).eval()
    named = dict(model.named_parameters())
    names = grad_param_names(model)
    moments = {k: (torch.full(named[k].shape, 1e-3), torch.full(named[k].shape, 1e-6)) for k in names}
    dim = sum(named[k].numel() for k in names)
    feats = per_example_grads(model, encode_records(tok, records, 64), chunk_size=64, adam_moments=moments,
                              projector=RademacherProjector(dim, 64, seed=0), normalize=True)
    print("DIM", dim, "OK", feats.shape, float(abs(feats).sum()))
""")


@LINUX
def test_per_example_grads_of_a_large_lora_fit_under_a_memory_cap(tmp_path):
    """LoRA r=128 on an 8 x 256 GPT-2: 1.57 M gradient values per example, so a chunk of 64 is
    400 MB whole, more than the default block (256 MB): it streams, a weight at a time. Before,
    the chunk was kept whole with Adam temporaries and an autograd graph over all of it (peak
    private memory 4.3 GB measured); now 1.7 GB, most of it the chunk's activations. Capped at 2.6 GB."""
    script = tmp_path / "grads.py"
    script.write_text(GRADS)
    done = run_capped(2600, [str(script)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DIM 1572864 OK (64, 64)" in done.stdout


LESS_CAP_MB = 3000  # passes at 2,300 (measured); before the fix it failed at 3,000


@LINUX
def test_less_paper_preset_on_a_built_model_runs_under_a_memory_cap(tmp_path, targets_dir):
    """`tamis select` with LESS's paper preset (LoRA r=128, projection to 8192) on a built 2 x 64
    GPT-2: 98 k LoRA parameters, so the dense projection is 3.2 GB. Before, every tile of it
    stayed alive (the autograd graph of the projected gradients saved each one) and the run died
    under this cap; now it holds one 32 MB tile at a time."""
    from tamis.pipeline.sources import read_targets

    from .conftest import demo_records, write_jsonl

    pool = write_jsonl(tmp_path / "pool.jsonl", demo_records(16))
    food = write_jsonl(tmp_path / "food.jsonl", read_targets(targets_dir)["food"][:8])
    params = {"preset": "paper", "n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 400, "positions": 64,
              "sample_size": 16, "build_epochs": 1, "epochs": 1, "fraction": 0.5, "batch_size": 8}
    args = ["tamis", "select", "--pool", str(pool), "--target", f"food={food}", "--selector", "less",
            "--budget", "0.5", "--max-length", "64", "--out", str(tmp_path / "out"), "--no-progress"]
    for k, v in params.items():
        args += ["--param", f"less.{k}={v}"]
    done = run_capped(LESS_CAP_MB, args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["models"]["less.warmup"]["proj_dim"] == 8192
    assert manifest["models"]["less.warmup"]["lora_r"] == 128


def test_smollm2_streams_the_paper_lora_gradients_like_the_whole_route(smollm2):
    """The SmolLM2 fixture is a plain safetensors folder that tamis's own loader reads, and its
    paper-size LoRA gradients (r=128 on q, k, v, o: 14.7 M per row) stream to the same
    projected vectors as the whole route."""
    from peft import LoraConfig, get_peft_model

    from tamis.models.lm import encode_records, load_causal_lm

    from .conftest import demo_records

    model, tok = load_causal_lm(smollm2)
    assert type(model).__name__ == "LlamaForCausalLM"
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=128, lora_alpha=512, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    model.eval()
    names = grad_param_names(model)
    dim = sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert dim == 14_745_600
    examples = encode_records(tok, demo_records(4), 48)
    tiles = RademacherProjector(dim, 16, seed=0, cache_bytes=0)  # regenerated tile by tile, as LESS does here
    whole = per_example_grads(model, examples, chunk_size=4, projector=tiles, normalize=True)
    streamed = per_example_grads(model, examples, chunk_size=4, projector=tiles, normalize=True, block_bytes=64 << 20)
    np.testing.assert_array_equal(streamed, whole)
    assert np.isfinite(whole).all() and np.abs(whole).max() > 0.1


def test_warmup_forward_holds_no_more_tokens_than_a_featurization_pass():
    """The warm-up's micro-batches follow ``chunk_size`` as featurization's passes do: a step of
    32 rows used to go through whole (up to 8,192 padded tokens) whatever the chunk size."""
    from tamis.models.batching import token_batches
    from tamis.selectors.base import RunContext
    from tamis.selectors.less import LessSelector

    for chunk, max_length in ((1, 512), (4, 512), (16, 512), (16, 128)):
        config = LessSelector(model="some/lm", chunk_size=chunk).warmup_config(RunContext(max_length=max_length))
        assert config.micro_batch_tokens == chunk * min(max_length, 256)
        for batch in token_batches([max_length] * 32, config.micro_batch_tokens):
            assert len(batch) <= max(1, chunk * min(max_length, 256) // max_length)
    with pytest.raises(ValueError, match="chunk_size"):
        LessSelector(chunk_size=0)
