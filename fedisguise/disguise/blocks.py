"""Cutting images into b×b blocks and back, as views where possible (no per-block loops),
and cutting batches into chunks that stay in cache."""

from __future__ import annotations

import math

import torch


def to_blocks(images: torch.Tensor, b: int) -> torch.Tensor:
    """N×C×H×W -> N×C×T×b×b with T = (H/b)·(W/b) blocks in row-major order."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // b, b, w // b, b).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(n, c, (h // b) * (w // b), b, b)


def from_blocks(blocks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of `to_blocks`."""
    n, c, _, b, _ = blocks.shape
    x = blocks.reshape(n, c, h // b, w // b, b, b).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(n, c, h, w)


# Pixels (N·C·H·W) a disguise takes at a time: a chunk's float32 temporaries (4 MiB) stay in
# cache instead of streaming whole-batch copies through memory.
CHUNK_PIXELS = 2 ** 20


def images_per_chunk(images: torch.Tensor, pixels: int = CHUNK_PIXELS) -> int:
    """How many images of the batch make one chunk of about `pixels` pixels (at least one)."""
    return max(1, pixels // math.prod(images.shape[1:]))
