"""A Rademacher random projection that every worker rebuilds identically from a seed, on any device.

Entries are ±1/sqrt(out_dim) (so squared norms are preserved in expectation), in fp32. Entry
(i, j) is a pure function of (seed, i, j): the sign is one bit of a 32-bit integer hash of the
entry's index, computed with wrapping int64 arithmetic that CPUs and GPUs do alike. So any block
of rows can be made alone, in any order, directly on the device that multiplies it (no random
generator state, no host-to-device copy), and a CPU worker and a GPU worker agree bit for bit.
The whole matrix is kept in memory only when it is small (``cache_bytes``); otherwise blocks of
``tile_rows`` rows are regenerated on each call and never all held at once (at LoRA r=128 and
d=8192 a dense fp32 matrix would take terabytes for a 7B model).
"""
from __future__ import annotations

import hashlib

DEFAULT_TILE_ROWS = 1024
VERSION = "hash32x32-v1"  # part of the definition: feature stores key on it
_MASK32 = 0xFFFFFFFF


def _seed32(seed: int) -> int:
    digest = hashlib.sha256(f"tamis-rademacher:{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _mix32(x):
    """A 32-bit integer hash (the "lowbias32" mixer) on int64 tensors holding values < 2**32.
    Products may wrap around 2**64; only their low 32 bits are kept, which wrapping preserves."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def rademacher_bits(rows, out_dim: int, seed: int, device=None):
    """Sign bits (1 = +) as uint8, shape [len(rows), out_dim], for the given global row indices.

    One 32-bit hash per (row, block of 32 columns) gives that block's 32 signs, bit j for
    column 32*block + j: a few integer operations per entry instead of a whole hash each."""
    import torch

    rows = torch.as_tensor(rows, dtype=torch.int64, device=device)
    n_blocks = -(-out_dim // 32)
    blocks = torch.arange(n_blocks, dtype=torch.int64, device=rows.device)
    index = rows[:, None] * n_blocks + blocks[None, :]
    lo, hi = index & _MASK32, index >> 32
    words = _mix32(_mix32((lo * 0x9E3779B1 + hi * 0x85EBCA77 + _seed32(seed)) & _MASK32))
    shifts = torch.arange(32, dtype=torch.int64, device=rows.device)
    bits = (words[:, :, None] >> shifts) & 1
    return bits.reshape(len(rows), n_blocks * 32)[:, :out_dim].to(torch.uint8)


class RademacherProjector:
    """Projects [N, in_dim] rows to [N, out_dim]."""

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0, *, device: str = "cpu",
                 tile_rows: int = DEFAULT_TILE_ROWS, cache_bytes: int = 1 << 30):
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"projection dims must be positive, got {in_dim} -> {out_dim}")
        self.in_dim, self.out_dim, self.seed = in_dim, out_dim, seed
        self.tile_rows = tile_rows  # block size only: the matrix does not depend on it
        self.device = device
        self.cache_bytes = cache_bytes
        self._matrix = None

    @property
    def definition(self) -> dict:
        """What fixes the matrix: a feature computed with it is keyed by this."""
        return {"kind": "rademacher", "version": VERSION, "in_dim": self.in_dim, "out_dim": self.out_dim,
                "seed": self.seed}

    @property
    def keeps_matrix(self) -> bool:
        """True when the whole matrix fits under ``cache_bytes`` and is kept after the first use."""
        return self.in_dim * self.out_dim * 4 <= self.cache_bytes

    @property
    def n_tiles(self) -> int:
        return -(-self.in_dim // self.tile_rows)

    def tile(self, t: int):
        """Rows ``[t*tile_rows, (t+1)*tile_rows)`` as fp32 on ``device``."""
        import torch

        start = t * self.tile_rows
        rows = torch.arange(start, min(start + self.tile_rows, self.in_dim), device=self.device)
        scale = self.out_dim ** -0.5
        return rademacher_bits(rows, self.out_dim, self.seed).to(torch.float32) * (2 * scale) - scale

    def dense(self):
        """The whole matrix [in_dim, out_dim] on ``device`` (for small cases and tests)."""
        import torch

        return torch.cat([self.tile(t) for t in range(self.n_tiles)])

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
            out.addmm_(x[:, start : start + self.tile_rows], self.tile(t))
        return out
