"""A Rademacher random projection that every worker rebuilds identically from a seed, on any device.

Entries are ±1/sqrt(out_dim) (so squared norms are preserved in expectation), in fp32. Entry
(i, j) is a pure function of (seed, i, j): the sign is one bit of a 32-bit integer hash of the
entry's index, computed with wrapping int64 arithmetic that CPUs and GPUs do alike. So any block
of rows can be made alone, in any order, directly on the device that multiplies it (no random
generator state, no host-to-device copy), and a CPU worker and a GPU worker agree bit for bit.
The whole matrix is kept in memory only when it is small (``cache_bytes``); otherwise blocks of
``tile_rows`` rows are regenerated on each call and never all held at once (at LoRA r=128 and
d=8192 a dense fp32 matrix would take terabytes for a 7B model).

The product is computed in fp32 by default. ``dtype="bfloat16"`` multiplies bf16 inputs by the
signs (±1, exact in bf16) with fp32 accumulation inside each tile, adds the tiles' bf16 partial
sums in fp32 and scales at the end: 1.5-1.9x the fp32 projection's speed at the same rows per tile
on a 2-core CPU with AVX-512 bf16 (``benchmarks/less_memory.py``), and more on a GPU's tensor cores. Each projected coordinate then carries a relative error of about
2**-9 (the rounding of the inputs and of each tile's partial sum), as LESS's own code accepts when
it casts gradients to fp16 before projecting; bf16 keeps fp32's exponent range, so small
gradients do not underflow as they can in fp16.
"""
from __future__ import annotations

import hashlib
import sys

import torch

DEFAULT_TILE_ROWS = 1024
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # the product's compute dtype
VERSION = "hash32x32-v1"  # part of the definition: feature stores key on it
_MASK32 = 0xFFFFFFFF


def _seed32(seed: int) -> int:
    digest = hashlib.sha256(f"tamis-rademacher:{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _mix32_(x, tmp):
    """The "lowbias32" 32-bit integer hash, in place, on int64 tensors holding values < 2**32.
    Products may wrap around 2**64; only their low 32 bits are kept, which wrapping preserves.
    In place with one scratch tensor: a tile's words are megabytes, and fresh tensors of that
    size cost a page fault per 4 KiB, more than the arithmetic."""
    x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=tmp))
    x.mul_(0x7FEB352D).bitwise_and_(_MASK32)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 15, out=tmp))
    x.mul_(0x846CA68B).bitwise_and_(_MASK32)
    return x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=tmp))


def _words(rows, out_dim: int, seed: int, out=None, tmp=None):
    """The 32-bit hash words [len(rows), ceil(out_dim / 32)] (int64) that hold the signs.
    ``out`` and ``tmp``, int64 tensors of that shape, are written over when given."""
    n_blocks = -(-out_dim // 32)
    blocks = torch.arange(n_blocks, dtype=torch.int64, device=rows.device)
    x = torch.add(blocks[None, :], rows[:, None] * n_blocks, out=out)  # the entry block's global index
    tmp = torch.bitwise_right_shift(x, 32, out=tmp)
    x.bitwise_and_(_MASK32).mul_(0x9E3779B1).add_(tmp.mul_(0x85EBCA77)).add_(_seed32(seed)).bitwise_and_(_MASK32)
    return _mix32_(_mix32_(x, tmp), tmp)


def rademacher_bits(rows, out_dim: int, seed: int, device=None):
    """Sign bits (1 = +) as uint8, shape [len(rows), out_dim], for the given global row indices.

    One 32-bit hash per (row, block of 32 columns) gives that block's 32 signs, bit j for
    column 32*block + j: a few integer operations per entry instead of a whole hash each.
    This is the definition; :meth:`RademacherProjector.tile` makes the same signs faster."""
    rows = torch.as_tensor(rows, dtype=torch.int64, device=device)
    words = _words(rows, out_dim, seed)
    shifts = torch.arange(32, dtype=torch.int64, device=rows.device)
    bits = (words[:, :, None] >> shifts) & 1
    return bits.reshape(len(rows), words.shape[1] * 32)[:, :out_dim].to(torch.uint8)


class RademacherProjector:
    """Projects [N, in_dim] rows to [N, out_dim]."""

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0, *, device: str = "cpu",
                 tile_rows: int = DEFAULT_TILE_ROWS, cache_bytes: int = 1 << 30, dtype: str = "float32"):
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"projection dims must be positive, got {in_dim} -> {out_dim}")
        if dtype not in DTYPES:
            raise ValueError(f"projection dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.in_dim, self.out_dim, self.seed = in_dim, out_dim, seed
        self.dtype = dtype  # how the product is computed (module docstring); the matrix is the same
        self.tile_rows = tile_rows  # block size only: the matrix does not depend on it
        self.device = device
        self.cache_bytes = cache_bytes
        self._matrix = None
        self._scratch = None  # the reused tile buffer of scratch_rows
        self._tables = {}  # sign tables of _fill, by dtype

    @property
    def definition(self) -> dict:
        """What fixes the projected values: a feature computed with it is keyed by this. The fp32
        product adds no key, so features stored before ``dtype`` existed are still found."""
        definition = {"kind": "rademacher", "version": VERSION, "in_dim": self.in_dim, "out_dim": self.out_dim,
                      "seed": self.seed}
        return definition if self.dtype == "float32" else {**definition, "dtype": self.dtype}

    @property
    def compute_dtype(self):
        """The torch dtype that inputs are cast to and tiles are made in."""
        return DTYPES[self.dtype]

    @property
    def keeps_matrix(self) -> bool:
        """True when the whole matrix fits under ``cache_bytes`` and is kept after the first use."""
        return self.in_dim * self.out_dim * self.compute_dtype.itemsize <= self.cache_bytes

    @property
    def n_tiles(self) -> int:
        return -(-self.in_dim // self.tile_rows)

    def tile(self, t: int):
        """Rows ``[t*tile_rows, (t+1)*tile_rows)`` as fp32 on ``device``."""
        start = t * self.tile_rows
        return self.rows(start, min(start + self.tile_rows, self.in_dim))

    def rows(self, start: int, stop: int):
        """Rows ``[start, stop)`` of the matrix as fp32 on ``device``, made alone (a new tensor)."""
        if self._matrix is not None and self.dtype == "float32":
            return self._matrix[start:stop]
        return self._fill(start, stop, torch.empty((stop - start, self.out_dim), dtype=torch.float32,
                                                   device=self.device))

    def scratch_rows(self, start: int, stop: int):
        """Rows ``[start, stop)`` in the compute dtype (fp32: as :meth:`rows`; bf16: the signs,
        ±1, unscaled), written into buffers that the next call overwrites: for callers that use
        a tile once and drop it (the projection loops). A tile is tens of megabytes, and a fresh
        one each time costs more in page faults than making it."""
        if self._matrix is not None:
            return self._matrix[start:stop]
        n, n_blocks = stop - start, -(-self.out_dim // 32)
        if self._scratch is None or self._scratch[0].shape[0] < n:
            self._scratch = (torch.empty((n, self.out_dim), dtype=self.compute_dtype, device=self.device),
                             torch.empty((2, n, n_blocks), dtype=torch.int64, device=self.device),
                             torch.empty((n, n_blocks, 4), dtype=torch.int64, device=self.device))
        tile, words, octets = self._scratch
        return self._fill(start, stop, tile[:n], words[:, :n], octets[:n])

    def accumulate(self, out, x, start: int, stop: int) -> None:
        """``out += x @ R[start:stop]`` for x [n, stop - start], out [n, out_dim] fp32, in the
        compute dtype; a bf16 sum is unscaled until :meth:`finish`."""
        tile = self.scratch_rows(start, stop)
        if self.dtype == "float32":
            out.addmm_(x.to(torch.float32), tile)
        else:
            out.add_(torch.mm(x.to(tile.dtype), tile))

    def finish(self, out):
        """The projection from a sum of :meth:`accumulate` calls (in place)."""
        return out if self.dtype == "float32" else out.mul_(self.out_dim ** -0.5)

    def _fill(self, start: int, stop: int, out, words=None, octets=None):
        """Writes rows ``[start, stop)`` into ``out`` [stop - start, out_dim] and returns it:
        ±1/sqrt(out_dim) when ``out`` is fp32, the signs ±1 when it is bf16.

        Each hash word's four bytes index a [256, 8] table of signed scales, so a row block
        costs one hash per 32 entries and one gather (the signs of :func:`rademacher_bits`,
        about 30x faster than expanding its bits one by one). ``words`` ([2, n, blocks]) and
        ``octets`` ([n, blocks, 4]) are int64 buffers to work in, when given."""
        rows = torch.arange(start, stop, dtype=torch.int64, device=self.device)
        words = _words(rows, self.out_dim, self.seed, *(() if words is None else (words[0], words[1])))
        if sys.byteorder == "little":  # a word's low four bytes, in order, are its octets 0..3
            low = words.view(torch.uint8).reshape(len(rows), -1, 8)[:, :, :4]
            octets = low.to(torch.int64) if octets is None else octets.copy_(low)
        else:
            octets = (words[:, :, None] >> torch.tensor([0, 8, 16, 24], device=rows.device)) & 0xFF
        table = self._table(out.dtype)
        if self.out_dim % 32 == 0:
            torch.index_select(table, 0, octets.reshape(-1), out=out.view(-1, 8))
        else:
            out.copy_(table.index_select(0, octets.reshape(-1)).reshape(len(rows), -1)[:, : self.out_dim])
        return out

    def _table(self, dtype=torch.float32):
        """[256, 8]: entry (b, j) is positive when bit j of byte b is set, else negative; in fp32
        ±scale, in bf16 ±1 (the scale is not a bf16 number; :meth:`finish` applies it)."""
        if dtype not in self._tables:
            bits = (torch.arange(256, device=self.device)[:, None] >> torch.arange(8, device=self.device)) & 1
            if dtype == torch.float32:
                scale = self.out_dim ** -0.5
                self._tables[dtype] = bits.to(torch.float32) * (2 * scale) - scale  # the same expression as ever
            else:
                self._tables[dtype] = (bits * 2 - 1).to(dtype)
        return self._tables[dtype]

    def dense(self):
        """The whole matrix [in_dim, out_dim] on ``device``, fp32 (for small cases and tests)."""
        return self._whole(torch.float32)

    def _whole(self, dtype):
        """The whole matrix made tile by tile into one tensor of ``dtype`` (see :meth:`_fill`)."""
        matrix = torch.empty((self.in_dim, self.out_dim), dtype=dtype, device=self.device)
        for t in range(self.n_tiles):
            start = t * self.tile_rows
            self._fill(start, min(start + self.tile_rows, self.in_dim), matrix[start : start + self.tile_rows])
        return matrix

    def _kept(self):
        """The whole matrix in the compute dtype (bf16: the signs), made once when it is kept."""
        if self._matrix is None:
            self._matrix = self._whole(self.compute_dtype)
        return self._matrix

    def project(self, x):
        """``x @ R`` as fp32 [N, out_dim], x of shape [N, in_dim] (any float dtype, any device)."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected rows of {self.in_dim} values, got {x.shape[-1]}")
        x = x.to(device=self.device)  # cast to the compute dtype by the product itself
        if self.keeps_matrix:
            return self.finish(torch.mm(x.to(self.compute_dtype), self._kept()).float())
        out = torch.zeros((x.shape[0], self.out_dim), dtype=torch.float32, device=self.device)
        for t in range(self.n_tiles):
            start = t * self.tile_rows
            stop = min(start + self.tile_rows, self.in_dim)
            self.accumulate(out, x[:, start:stop], start, stop)
        return self.finish(out)


class StreamProjection:
    """``x @ R`` for a few rows whose ``in_dim`` coordinates arrive in order, a piece at a time.

    Per-example gradients of a large model do not fit whole; this takes them a piece at a time
    (any widths, in coordinate order), and adds ``x[:, tile] @ R[tile]`` tile by tile, with the
    projector's tile boundaries, in the same order as :meth:`RademacherProjector.project` on the
    whole rows. Pieces that end inside a tile wait in a carry of at most one tile of columns. It
    holds the [rows, out_dim] result, that carry and one tile of R (regenerated, or a slice of a
    kept matrix).
    """

    def __init__(self, projector: RademacherProjector, n_rows: int):
        self.projector = projector
        self.out = torch.zeros((n_rows, projector.out_dim), dtype=torch.float32, device=projector.device)
        self.done = 0  # coordinates already projected: a tile boundary
        self.carry: list = []
        self.carried = 0

    def add(self, values) -> None:
        """The next ``values.shape[1]`` coordinates of every row, [n_rows, width]."""
        p = self.projector
        values = values.to(device=p.device, dtype=torch.float32)
        width, pos = values.shape[1], 0
        if self.done + self.carried + width > p.in_dim:
            raise ValueError(f"more than {p.in_dim} coordinates given")
        while pos < width:
            end = min(self.done + p.tile_rows, p.in_dim)
            need = end - self.done - self.carried
            if not self.carried and width - pos >= need:
                x, pos = values[:, pos : pos + need], pos + need
            else:
                take = min(need, width - pos)
                self.carry.append(values[:, pos : pos + take].clone())  # not a view: frees the piece
                self.carried, pos = self.carried + take, pos + take
                if take < need:
                    return
                x = torch.cat(self.carry, dim=1)
                self.carry, self.carried = [], 0
            p.accumulate(self.out, x, self.done, end)
            self.done = end

    def result(self):
        if self.done != self.projector.in_dim:
            raise ValueError(f"got {self.done + self.carried} of {self.projector.in_dim} coordinates")
        return self.projector.finish(self.out)
