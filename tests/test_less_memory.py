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

from tamis.models.projection import RademacherProjector, StreamProjection, rademacher_bits  # noqa: E402
from tamis.models.stats import grad_param_names, per_example_grads  # noqa: E402

from .models.test_proxy_stats import lora_model, tiny  # noqa: E402,F401  (fixtures)

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


@pytest.mark.parametrize("method", ["linear", "vmap"])
def test_streamed_grads_equal_whole_grads(lora_model, method):  # noqa: F811
    """A block budget below one chunk's gradients streams them in pieces (here down to single
    weight rows); the Adam-preconditioned, projected, normalized vectors are the same."""
    model, examples = lora_model
    names = grad_param_names(model)
    named = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    moments = {k: (torch.randn(named[k].shape, generator=gen) * 1e-3, torch.rand(named[k].shape, generator=gen) * 1e-5)
               for k in names}
    dim = sum(named[k].numel() for k in names)
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
