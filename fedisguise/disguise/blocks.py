"""Cutting images into b×b blocks and back, as views where possible (no per-block loops)."""

from __future__ import annotations

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
