"""Pixel shuffling on torch tensors, batched and vectorised, for VisualMixer's windows and regions:
a random permutation per window of every image (drawn as sorted uniform keys), region shuffles
of 4 by riffle tables, all on the images' device."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import numpy as np
import torch

from fedisguise.disguise.blocks import from_blocks, images_per_chunk, to_blocks

_ORDERS_8 = math.factorial(8)  # orders of one half of a 4×4 region
_PAIRS_2x2 = 24 * 24  # the two 2×2 quadrants of one half, permuted independently


def shuffle_windows(images: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Permute the pixels of every size×size window, per channel (the uniform variant)."""
    if size == 4:  # the table-driven raster path
        return shuffle_regions4(images, None, rng)
    n, c, h, w = images.shape
    blocks = to_blocks(images, size).reshape(n, c, -1, size * size)  # N×C×T×s²
    order = random_permutations(tuple(blocks.shape), rng, images.device)
    return from_blocks(torch.gather(blocks, -1, order).reshape(n, c, -1, size, size), h, w)


# Temporaries over 32 MiB come straight from mmap (glibc's ceiling for its adaptive threshold)
# and page-fault on every call; the 4×4 path works in chunks of this many pixels (N·C·H·W) so
# that its largest temporary, an int64 index, stays at 16 MiB.
_CHUNK_PIXELS = 2 ** 21


_RIFFLES = math.comb(16, 8)  # ways to interleave the two halves


@functools.lru_cache(maxsize=16)
def _region4_tables(w: int, dtype: torch.dtype, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tables for shuffling the 4×4 regions of a w-wide raster, as offsets from each
    region's top-left pixel (w = 4 gives plain positions 0–15).

    `halves` (rows of 8, in `dtype`): [0, 8!) every order of the region's top half (pixels 0–7),
    [8!, 2·8!) of its bottom half (8–15), then 24² rows for the top half and 24² for the
    bottom half whose two 2×2 quadrants are permuted independently (a region split into
    four 2×2 windows is one top row plus one bottom row).
    `riffle` (int64 rows of 16): for each of the C(16, 8) choices of the positions that
    receive the top half's pixels, the column of [top order | bottom order] each takes.
    A uniform permutation of 16 is a uniform riffle of uniform orders of both halves:
    12870 · 8! · 8! = 16!, each permutation exactly once.
    """
    offset = (torch.arange(16) // 4) * w + torch.arange(16) % 4
    orders = torch.tensor(list(itertools.permutations(range(8))))
    p4 = torch.tensor(list(itertools.permutations(range(4))))
    left, right = torch.tensor([0, 1, 4, 5]), torch.tensor([2, 3, 6, 7])  # a half's quadrants
    pairs = torch.empty(24, 24, 8, dtype=torch.long)
    pairs[:, :, left] = left[p4][:, None, :]
    pairs[:, :, right] = right[p4][None, :, :]
    pairs = pairs.reshape(_PAIRS_2x2, 8)
    halves = torch.cat([offset[orders], offset[orders + 8], offset[pairs], offset[pairs + 8]])
    picks = torch.tensor(list(itertools.combinations(range(16), 8)))
    top = torch.zeros(_RIFFLES, 16, dtype=torch.bool)
    top.scatter_(1, picks, True)
    riffle = torch.where(top, top.cumsum(1) - 1, (~top).cumsum(1) + 7)
    # int64 riffle rows index the gather below without a conversion pass.
    return halves.to(device, dtype), riffle.to(device)


def _region4_rows(whole: torch.Tensor | None, count: int, rng: np.random.Generator,
                  tables: tuple[torch.Tensor, torch.Tensor],
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """count×16 source offsets, one row per 4×4 region: a uniform permutation of all 16
    pixels where `whole` is set (or everywhere when it is None), else independent uniform
    permutations of the four 2×2 quadrants. Table lookups only, no sort."""
    halves, riffle = tables
    device = halves.device

    def pairs(k: int, choices: int, first: int) -> np.ndarray:
        """k×2 rows of `halves`: a top-half row and a bottom-half row, each of `choices`."""
        pair = rng.integers(0, choices, size=(k, 2))
        pair += (first, first + choices)
        return pair

    def full(k: int, out: torch.Tensor | None) -> torch.Tensor:
        pair = torch.from_numpy(pairs(k, _ORDERS_8, 0)).to(device)
        orders = halves.index_select(0, pair.view(-1)).view(k, 16)
        interleave = torch.from_numpy(rng.integers(0, _RIFFLES, size=k)).to(device)
        return torch.gather(orders, 1, riffle.index_select(0, interleave), out=out)

    rows = torch.empty(count, 16, dtype=halves.dtype, device=device) if out is None else out
    if whole is None:
        return full(count, rows)
    if device.type == "cpu":  # NumPy finds the rows ~4× faster than torch.nonzero here
        flags = whole.numpy()
        at_whole = torch.from_numpy(np.flatnonzero(flags))
        at_split = torch.from_numpy(np.flatnonzero(~flags))
    else:
        at_whole, at_split = whole.nonzero().squeeze(1), (~whole).nonzero().squeeze(1)
    if len(at_whole):
        rows.index_copy_(0, at_whole, full(len(at_whole), None))
    if len(at_split):
        k = len(at_split)
        pair = torch.from_numpy(pairs(k, _PAIRS_2x2, 2 * _ORDERS_8)).to(device)
        rows.index_copy_(0, at_split, halves.index_select(0, pair.view(-1)).view(k, 16))
    return rows


def shuffle_regions4(images: torch.Tensor,
                     whole: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None,
                     rng: np.random.Generator) -> torch.Tensor:
    """Shuffle every 4×4 region of every image and channel: as one window where `whole`
    (N×regions, row-major) is set or `whole` is None, else as four 2×2 windows. `whole` may
    be a function giving a chunk of images' mask, so that a plan is made chunk by chunk
    while the chunk is in cache.

    The region rows hold source offsets relative to the region's corner, in the region's own
    raster order. They move into the image's raster order as whole 8-byte words (a region row
    of four int16 offsets is one int64: a quarter of the elements to move), take their
    corners' offsets in place, and are widened once into the gather's int64 index. The
    buffers are reused from chunk to chunk."""
    n, c, h, w = images.shape
    th, tw = h // 4, w // 4
    dtype = _offset_dtype(h, w)
    tables = _region4_tables(w, dtype, images.device)
    corners = _raster_corners(h, w, dtype, images.device)
    out = torch.empty(images.shape, dtype=images.dtype, device=images.device)  # contiguous
    if not n:
        return out
    step = min(n, images_per_chunk(images, _CHUNK_PIXELS))
    rows = torch.empty(step * c * th * tw, 16, dtype=dtype, device=images.device)
    local = torch.empty(step * c, h * w, dtype=dtype, device=images.device)
    index = torch.empty(step * c, h * w, dtype=torch.long, device=images.device)
    for start in range(0, n, step):
        k = min(step, n - start)
        planes, regions = k * c, k * c * th * tw
        mask = whole(images[start:start + k]) if callable(whole) else \
            None if whole is None else whole[start:start + k]
        if mask is not None:
            mask = mask.reshape(k, 1, -1).expand(k, c, -1).reshape(-1)
        _region4_rows(mask, regions, rng, tables, out=rows[:regions])
        words = rows[:regions].view(torch.int64).view(planes, th, tw, 4, -1)
        local[:planes].view(torch.int64).view(planes, th, 4, tw, -1).copy_(
            words.permute(0, 1, 3, 2, 4))
        local[:planes].add_(corners)
        index[:planes].copy_(local[:planes])
        torch.gather(images[start:start + k].reshape(planes, h * w), 1, index[:planes],
                     out=out[start:start + k].view(planes, h * w))
    return out


def _offset_dtype(h: int, w: int) -> torch.dtype:
    """The smallest type holding a pixel's offset inside one image plane (int16 or int32, so
    that a region row of four offsets is whole 8-byte words)."""
    return torch.int16 if h * w <= torch.iinfo(torch.int16).max else torch.int32


@functools.lru_cache(maxsize=16)
def _raster_corners(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """For every pixel of an h×w raster: the offset of its 4×4 region's corner."""
    y, x = torch.arange(h)[:, None], torch.arange(w)[None, :]
    return ((y - y % 4) * w + (x - x % 4)).reshape(-1).to(device, dtype)


def random_permutations(shape: tuple[int, ...], rng: np.random.Generator,
                        device: torch.device) -> torch.Tensor:
    """Independent uniform permutations (int64) of range(shape[-1]) for every leading index.

    Up to 5 elements: one draw from the table of all permutations. 16 (4×4 windows): the
    riffle tables of `_region4_tables`. Otherwise: sort keys whose high bits are random and
    whose low bits hold the position, then keep the low bits; rows whose random parts tie
    are redrawn, so every order is exactly equally likely. NumPy sorts these short rows ~4×
    faster than torch on the CPU.
    """
    length = shape[-1]
    if length == 16:
        tables = _region4_tables(4, torch.int16, device)  # w = 4: plain positions 0–15
        return _region4_rows(None, int(np.prod(shape[:-1])), rng, tables).long().reshape(shape)
    if length <= 5:
        table = torch.tensor(list(itertools.permutations(range(length))), device=device)
        return table[torch.from_numpy(rng.integers(0, len(table), size=shape[:-1])).to(device)]
    low = (length - 1).bit_length()
    # 16-bit keys while they leave >= 12 random bits (windows up to 4×4), else 32-bit.
    dtype = np.uint16 if low <= 4 else np.uint32
    per_word = 8 // np.dtype(dtype).itemsize
    rows = int(np.prod(shape[:-1]))
    positions = np.arange(length, dtype=dtype)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        raw = rng.bit_generator.random_raw(-(-count * length // per_word)).view(dtype)
        keys = (raw[:count * length].reshape(count, length) >> dtype(low) << dtype(low)) | \
            positions
        keys.sort(axis=-1)
        return keys, ((keys[:, 1:] ^ keys[:, :-1]) < (1 << low)).any(axis=-1)

    order, tied = draw(rows)
    redo = np.flatnonzero(tied)
    while len(redo):  # rows whose random parts tie are redrawn: accepted orders are uniform
        keys, tied = draw(len(redo))
        order[redo[~tied]] = keys[~tied]
        redo = redo[tied]
    order &= dtype((1 << low) - 1)
    return torch.from_numpy(order.astype(np.int64).reshape(shape)).to(device)


@functools.lru_cache(maxsize=32)
def window_layout(h: int, w: int, top: int, size: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """For every size×size window of an h×w image (row-major): the top-level region holding
    it, and its pixels' positions in that region's top×top raster."""
    wy, wx = torch.meshgrid(torch.arange(h // size), torch.arange(w // size), indexing="ij")
    y0, x0 = wy.reshape(-1) * size, wx.reshape(-1) * size
    region = (y0 // top) * (w // top) + x0 // top
    local = torch.arange(size)
    pos = ((y0 % top)[:, None, None] + local[None, :, None]) * top + \
        (x0 % top)[:, None, None] + local[None, None, :]
    return region.to(device), pos.reshape(len(y0), -1).to(device)
