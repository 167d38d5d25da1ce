"""A Rademacher random projection that every worker rebuilds identically from a seed.

Entries are ±1/sqrt(out_dim) (so squared norms are preserved in expectation), in fp32. The
matrix is defined tile by tile: rows ``[t*tile_rows, (t+1)*tile_rows)`` come from a CPU
generator seeded with a hash of ``(seed, t)``, so any tile can be made alone, on any machine,
in any order. The whole matrix is kept in memory only when it is small (``cache_bytes``);
otherwise tiles are regenerated on each call and never all held at once.
"""
from __future__ import annotations

import hashlib

DEFAULT_TILE_ROWS = 1024


def _tile_seed(seed: int, tile: int) -> int:
    digest = hashlib.sha256(f"tamis-rademacher:{seed}:{tile}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class RademacherProjector:
    """Projects [N, in_dim] rows to [N, out_dim]. ``tile_rows`` is part of the matrix's definition."""

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0, *, device: str = "cpu",
                 tile_rows: int = DEFAULT_TILE_ROWS, cache_bytes: int = 1 << 30):
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"projection dims must be positive, got {in_dim} -> {out_dim}")
        self.in_dim, self.out_dim, self.seed = in_dim, out_dim, seed
        self.tile_rows = tile_rows
        self.device = device
        self.cache_bytes = cache_bytes
        self._matrix = None

    @property
    def keeps_matrix(self) -> bool:
        """True when the whole matrix fits under ``cache_bytes`` and is kept after the first use."""
        return self.in_dim * self.out_dim * 4 <= self.cache_bytes

    @property
    def n_tiles(self) -> int:
        return -(-self.in_dim // self.tile_rows)

    def tile(self, t: int):
        """Rows of tile ``t`` as an fp32 CPU tensor [rows, out_dim]."""
        import torch

        rows = min(self.tile_rows, self.in_dim - t * self.tile_rows)
        gen = torch.Generator(device="cpu").manual_seed(_tile_seed(self.seed, t))
        bits = torch.randint(0, 2, (rows, self.out_dim), generator=gen, dtype=torch.int8)
        scale = self.out_dim ** -0.5
        return (bits.to(torch.float32) * (2 * scale) - scale)

    def dense(self):
        """The whole matrix [in_dim, out_dim] on ``device`` (for small cases and tests)."""
        import torch

        return torch.cat([self.tile(t) for t in range(self.n_tiles)]).to(self.device)

    def project(self, x):
        """``x @ R`` in fp32, x of shape [N, in_dim] (any float dtype, any device)."""
        import torch

        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected rows of {self.in_dim} values, got {x.shape[-1]}")
        x = x.to(device=self.device, dtype=torch.float32)
        if self._matrix is None and self.keeps_matrix:
            self._matrix = self.dense()
        if self._matrix is not None:
            return x @ self._matrix
        out = torch.zeros((x.shape[0], self.out_dim), dtype=torch.float32, device=self.device)
        for t in range(self.n_tiles):
            start = t * self.tile_rows
            block = x[:, start : start + self.tile_rows]
            out.addmm_(block, self.tile(t).to(self.device))
        return out
