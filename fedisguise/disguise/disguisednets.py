"""DisguisedNets (Sharma & Chen 2019, papers/disguisednets-rmt-2019.txt §3).

- block permutation (§3.1): cut the image into b×b blocks and move them by one keyed
  pseudorandom permutation π, the same for every image of the key;
- RMT (§3.2): X·R + Δ with R a keyed random rotation (orthogonal, determinant +1) or
  projection matrix (entries uniform on [0, 1), as the authors draw it) and Δ ~ U[0, N]
  drawn fresh for every image on the 0–255 pixel scale (N = `noise_level`);
- block-wise RMT: one R_j per block position j;
- disguisednets: block-wise RMT followed by block permutation (the paper's MNIST setting:
  7×7 blocks, N = 100).
Outputs are on the [0, 1] scale of the inputs (X·R + Δ/255), so they may leave [0, 1].
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from fedisguise.disguise.base import Disguise, check_block_size, register
from fedisguise.disguise.blocks import CHUNK_PIXELS, from_blocks, images_per_chunk, to_blocks
from fedisguise.disguise.keys import DisguiseKey

MATRICES = ("orthogonal", "projection")


def random_matrices(gen: torch.Generator, count: int, size: int, kind: str) -> torch.Tensor:
    """`count` keyed size×size matrices, drawn as the authors draw them (DisguisedNets
    `Perturb/perturb_class.py`):
    - `orthogonal`: Haar-distributed rotations, determinant +1 (the authors' Householder
      product; here QR with the sign fix gives Haar O(n), and negating the first column of
      those with determinant −1 gives Haar SO(n));
    - `projection`: entries uniform on [0, 1), redrawn until full rank. A positive matrix
      keeps each block's mean brightness up to a scale (X·R ≈ 0.5·b·mean(X) per pixel), which
      is why the authors' projected images keep their block-mean picture."""
    if kind == "projection":
        r = torch.rand(count, size, size, generator=gen, dtype=torch.float64)
        while True:  # singular draws have probability 0; the authors check the rank anyway
            singular = torch.linalg.matrix_rank(r) < size
            if not singular.any():
                return r.float()
            r[singular] = torch.rand(int(singular.sum()), size, size, generator=gen,
                                     dtype=torch.float64)
    g = torch.randn(count, size, size, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    q[..., :, 0] *= torch.sign(torch.linalg.det(q)).unsqueeze(-1)
    return q.float()


class _DisguisedNetsBase(Disguise):
    """Shared parameters and the fresh-per-image noise stream."""

    block_affine = True  # X·R + Δ per block, blocks moved by π: known pairs solve R and π
    draws = True  # Δ, where noise_level > 0
    per_image = True

    def __init__(self, key: DisguiseKey, block_size: int = 4, noise_level: float = 0.0,
                 matrix: str = "orthogonal") -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if not 0 <= noise_level <= 255:
            raise ValueError(f"noise_level must be in [0, 255] (pixel scale), got {noise_level}")
        if matrix not in MATRICES:
            raise ValueError(f"unknown matrix {matrix!r}; valid choices: {list(MATRICES)}")
        self.key, self.block_size, self.noise_level, self.matrix = (
            key, block_size, float(noise_level), matrix)
        self._tables: dict[tuple, torch.Tensor] = {}
        self.reseed("default")

    @classmethod
    def redraws(cls, params) -> bool:  # Δ is the only draw
        noise = params.get("noise_level",
                           inspect.signature(cls.__init__).parameters["noise_level"].default)
        return noise > 0

    def _draw_from(self, source: DisguiseKey, stream: str) -> None:
        # Δ is fresh for every image but reproducible for the same secret, stream and calls.
        self._noise = source.numpy_rng(f"{self.name}:noise:{stream}")

    def _check_shape(self, chw):
        check_block_size(chw, self.block_size)

    def _add_noise_(self, x: torch.Tensor) -> torch.Tensor:
        """Add Δ to `x`, a fresh tensor of this disguise's own: in place (a strided `x` is
        made contiguous first)."""
        if not self.noise_level:
            return x
        x = x.contiguous()  # Δ is drawn in raster order, whatever the input's layout
        # Δ ~ U[0, N] on the 0–255 scale, drawn as 16-bit levels (N/65536 apart, far finer
        # than a pixel step): raw generator words are ~5× cheaper than float draws.
        scale = self.noise_level / 255.0 / 65536.0
        flat = x.view(-1)
        for start in range(0, flat.numel(), CHUNK_PIXELS):
            part = flat[start:start + CHUNK_PIXELS]
            words = self._noise.bit_generator.random_raw(-(-len(part) // 4)).view(np.uint16)
            delta = torch.from_numpy(words[:len(part)]).to(x.device, x.dtype)
            part.add_(delta, alpha=scale).add_(0.5 * scale)  # level + 0.5: mid-level
        return x

    def _permute_blocks(self, images: torch.Tensor) -> torch.Tensor:
        """Move every b×b block by the keyed π (output block t = input block π(t)), as one
        gather of pixels through a cached raster table (gather with a broadcast index is
        ~4× faster than index_select along the pixel axis and ~7× faster than moving
        block views)."""
        n, c, h, w = images.shape
        cache = ("pixels", h, w, images.device)
        if cache not in self._tables:
            raster = torch.arange(h * w, device=images.device).view(1, 1, h, w)
            blocks = to_blocks(raster, self.block_size)
            perm = self._permutation(blocks.shape[2], images.device)
            self._tables[cache] = from_blocks(blocks[:, :, perm], h, w).flatten()
        flat = images.reshape(n * c, h * w)
        return torch.gather(flat, 1, self._tables[cache].expand(n * c, -1)).view(n, c, h, w)

    def block_permutation(self, blocks: int) -> torch.Tensor | None:
        """The keyed π over `blocks` blocks where this defence moves blocks, else None.
        For the experimenter's scoring of a jigsaw attack; never for an attacker."""
        return self._permutation(blocks, torch.device("cpu")) if self.permutes_blocks else None

    def _permutation(self, blocks: int, device: torch.device) -> torch.Tensor:
        cache = ("perm", blocks, device)
        if cache not in self._tables:
            gen = self.key.generator(f"block-permutation:{blocks}")
            self._tables[cache] = torch.randperm(blocks, generator=gen).to(device)
        return self._tables[cache]

    def _block_matrices(self, blocks: int, device: torch.device) -> torch.Tensor:
        cache = ("R", blocks, device)
        if cache not in self._tables:
            gen = self.key.generator(f"block-rmt:{self.matrix}:{blocks}x{self.block_size}")
            self._tables[cache] = random_matrices(gen, blocks, self.block_size,
                                                  self.matrix).to(device)
        return self._tables[cache]

    def _row_matrices(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """Block-wise RMT as one w×w matrix per block row i: D_i = diag(R_i0, …, R_i(w/b−1)),
        so the pixel rows of block row i are multiplied by D_i, all in one batched matmul
        (2–5× faster than a matmul per b×b block; the extra zeros cost less than the
        reshuffles the per-block form needs)."""
        cache = ("D", h, w, device)
        if cache not in self._tables:
            b = self.block_size
            rows, cols = h // b, w // b
            r = self._block_matrices(rows * cols, device).view(rows, cols, b, b)
            eye = torch.eye(cols, device=device, dtype=r.dtype)
            d = torch.einsum("ij,rjac->riajc", eye, r).reshape(rows, w, w)
            self._tables[cache] = d
        return self._tables[cache]


@register
class BlockPermutation(_DisguisedNetsBase):
    permutes_blocks = True
    keeps_block_pixels = True  # no matrix per block: the jigsaw may use a public prior
    name = "block-permutation"

    def __init__(self, key: DisguiseKey, block_size: int = 4, noise_level: float = 0.0) -> None:
        super().__init__(key, block_size, noise_level)

    def _apply(self, images, labels):
        return self._add_noise_(self._permute_blocks(images)), labels


@register
class RMT(_DisguisedNetsBase):
    """Whole-image RMT: every row of every channel multiplied by one W×W matrix R."""

    name = "rmt"

    def __init__(self, key: DisguiseKey, noise_level: float = 25.0,
                 matrix: str = "orthogonal") -> None:
        super().__init__(key, 1, noise_level, matrix)

    def _apply(self, images, labels):
        w = images.shape[-1]
        cache = ("R", w, images.device)
        if cache not in self._tables:
            gen = self.key.generator(f"rmt:{self.matrix}:{w}")
            self._tables[cache] = random_matrices(gen, 1, w, self.matrix)[0].to(images.device)
        return self._add_noise_(images @ self._tables[cache].to(images.dtype)), labels


@register
class BlockRMT(_DisguisedNetsBase):
    name = "block-rmt"

    # The paper's CIFAR-10 operating point for block-wise RMT alone (Table 1: 2×2 blocks, N 25).
    def __init__(self, key: DisguiseKey, block_size: int = 2, noise_level: float = 25.0,
                 matrix: str = "orthogonal") -> None:
        super().__init__(key, block_size, noise_level, matrix)

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        """Every b×b block X_t becomes X_t·R_t: block row by block row (`_row_matrices`)."""
        n, c, h, w = images.shape
        rows, b = h // self.block_size, self.block_size
        d = self._row_matrices(h, w, images.device).to(images.dtype)
        out = torch.empty(images.shape, dtype=images.dtype, device=images.device)  # contiguous
        step = images_per_chunk(images)
        for start in range(0, n, step):
            chunk = images[start:start + step]
            k = len(chunk)
            x = chunk.reshape(k * c, rows, b, w).transpose(0, 1).reshape(rows, k * c * b, w)
            y = torch.bmm(x, d).view(rows, k * c, b, w).transpose(0, 1)
            out[start:start + k].view(k * c, rows, b, w).copy_(y)
        return out

    def _apply(self, images, labels):
        return self._add_noise_(self._transform(images)), labels


@register
class DisguisedNets(BlockRMT):
    """Block-wise RMT, then block permutation: R_j belongs to the block's source position."""

    permutes_blocks = True
    name = "disguisednets"

    # The paper's MNIST operating point (Table 1: block-wise RMT + permutation, 7×7, N 100).
    def __init__(self, key: DisguiseKey, block_size: int = 7, noise_level: float = 100.0,
                 matrix: str = "orthogonal") -> None:
        super().__init__(key, block_size, noise_level, matrix)

    def _apply(self, images, labels):
        return self._add_noise_(self._permute_blocks(self._transform(images))), labels
