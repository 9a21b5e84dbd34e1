"""VisualMixer (papers/visualmixer-vfe.txt §IV): VFE-guided, non-uniform pixel shuffling.

1. Lower window bound (§IV-B): after shuffling a WS×WS window its standardised neighbour
   differences are i.i.d., so S = Σ (z_a − z_b)²/2 over the window's m = 2·WS·(WS−1)
   neighbour pairs follows χ²(m), which the paper approximates by N(m, 2m). The smallest WS
   whose normalised VFE S/WS² reaches `target_vfe` with probability `confidence`:
   m − Φ⁻¹(confidence)·√(2m) ≥ target_vfe·WS². (A fully random window tends to 2.)
2. Upper window bound (§IV-C): the model's output bias. Monte Carlo over the paper's base
   case: N(0, 1) pixels, a 3×3 N(0, 1) kernel (stride 1) and 2×2 max-pooling; d is the largest
   |output(original) − output(shuffled)|, in units of the conv output's std (3). The largest
   WS with P(d ≤ `max_bias`) ≥ `bias_confidence`. Model-free, computed once per image size.
3. Non-uniform partition (§IV-D, Algorithm 1): cut the image into regions of the largest
   admissible size; a region whose VFE density is not above the image's median (over the
   initial regions) is shuffled as one window; otherwise it is split into quadrants and
   checked again, down to the smallest admissible size, which is always shuffled. Low-VFE
   regions thus get large windows, high-VFE regions small ones, all within the bounds.
4. Shuffle: the pixels of each window are permuted in space, independently per channel,
   with fresh permutations for every image drawn from the key. No noise is added.
Admissible sizes divide the image and halve from one level to the next (28×28 with bounds
[2, 4] uses windows of 4 and 2). `min_window`/`max_window` pin the bounds instead.

The paper's text has lost its equations (1)–(21) and Algorithm 1, and the authors' released
code implements a different, attention-based scheme; the bounds above are our reconstruction
from the surviving prose. The lower bound is a per-window guarantee, stricter than an
image-level χ² over all windows (whose tiny variance reduces to the mean condition).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from fedisguise.disguise.base import Disguise, register
from fedisguise.disguise.blocks import from_blocks, to_blocks
from fedisguise.disguise.keys import DisguiseKey
from fedisguise.disguise.shuffling import (
    random_permutations,
    shuffle_regions4,
    shuffle_windows,
    window_layout,
)
from fedisguise.metrics import block_sums, pixel_gradient


@functools.lru_cache(maxsize=64)
def lower_window_bound(target_vfe: float, confidence: float, limit: int) -> int:
    """§IV-B: the smallest WS reaching `target_vfe` with probability `confidence`."""
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(confidence)).item()
    for ws in range(2, limit + 1):
        m = 2 * ws * (ws - 1)
        if m - z * math.sqrt(2 * m) >= target_vfe * ws * ws:
            return ws
    raise ValueError(f"no window up to {limit} reaches target_vfe {target_vfe} with confidence "
                     f"{confidence}; shuffled windows approach 2, so lower the target")


@functools.lru_cache(maxsize=64)
def output_bias_quantile(ws: int, confidence: float, samples: int = 4000) -> float:
    """§IV-C Monte Carlo: the `confidence` quantile of the max output bias d for WS (in units
    of the conv output's standard deviation). Fixed seed: a property of WS, not of a key."""
    gen = torch.Generator().manual_seed(20240 + ws)
    z = torch.randn(samples, ws, ws, generator=gen)
    kernels = torch.randn(samples, 1, 3, 3, generator=gen)
    order = torch.argsort(torch.rand(samples, ws * ws, generator=gen), dim=1)
    shuffled = torch.gather(z.view(samples, -1), 1, order).view(samples, ws, ws)

    def block(x: torch.Tensor) -> torch.Tensor:  # conv (3×3, stride 1) + 2×2 max-pool
        y = F.conv2d(x.unsqueeze(0), kernels, padding=1, groups=samples)
        return F.max_pool2d(y, 2, ceil_mode=True)[0].reshape(samples, -1)

    d = (block(z) - block(shuffled)).abs().max(dim=1).values / 3.0
    return torch.quantile(d, confidence).item()


def upper_window_bound(max_bias: float, confidence: float, limit: int) -> int:
    """§IV-C: the largest WS whose output bias stays under `max_bias` with `confidence`."""
    best = 0
    for ws in range(2, limit + 1):
        if output_bias_quantile(ws, confidence) <= max_bias:
            best = ws
        else:
            break  # the bias grows with WS: the first violation ends the search
    if not best:
        raise ValueError(f"even 2×2 windows exceed max_bias {max_bias} at confidence "
                         f"{confidence}; raise max_bias")
    return best


def window_levels(h: int, w: int, low: int, high: int) -> list[int]:
    """Window sizes from largest to smallest: each divides the image and halves the last."""
    if low > high:
        raise ValueError(f"window bounds conflict: lower bound {low} > upper bound {high}")
    best: list[int] = []
    for top in range(high, low - 1, -1):
        if h % top or w % top:
            continue
        chain = [top]
        while chain[-1] % 2 == 0 and chain[-1] // 2 >= low:
            chain.append(chain[-1] // 2)
        if len(chain) > len(best):
            best = chain
    if not best:
        raise ValueError(f"no window size in [{low}, {high}] divides a {h}×{w} image")
    return best


def vfe_density(images: torch.Tensor, sizes: list[int]) -> dict[int, torch.Tensor]:
    """Per size s: every s×s region's VFE per pixel (N×H/s×W/s), so that regions of
    different sizes compare; the gradient is averaged over channels (eq. 4)."""
    grad = pixel_gradient(images)
    if images.shape[1] > 1:
        grad = grad.mean(1, keepdim=True)
    return {s: block_sums(grad[:, 0], s).div_(s * s) for s in sizes}


def _lower_median(rows: torch.Tensor) -> torch.Tensor:
    """torch.median along dim 1 (the lower of the two middle values for even lengths); on the
    CPU through NumPy's partition, ~3× faster for the plan's short rows."""
    if rows.device.type != "cpu":
        return rows.median(dim=1).values
    kth = (rows.shape[1] - 1) // 2
    return torch.from_numpy(np.partition(rows.numpy(), kth, axis=1)[:, kth])


class _Shuffler(Disguise):
    draws = True  # every image's shuffle is a draw; the key fixes nothing
    shuffles_windows = True
    per_image = True

    def __init__(self, key: DisguiseKey) -> None:
        self.key = key
        self.reseed("default")

    def _draw_from(self, source: DisguiseKey, stream: str) -> None:
        self._rng = source.numpy_rng(f"{self.name}:{stream}")


@register
class VisualMixer(_Shuffler):
    name = "visualmixer"

    def __init__(self, key: DisguiseKey, target_vfe: float = 0.5, confidence: float = 0.75,
                 max_bias: float = 2.2, bias_confidence: float = 0.9, min_window: int = 0,
                 max_window: int = 0) -> None:
        if not 0 < target_vfe < 2:
            raise ValueError(f"target_vfe must be in (0, 2) (a shuffled window's normalised "
                             f"VFE tends to 2), got {target_vfe}")
        for name, value in (("confidence", confidence), ("bias_confidence", bias_confidence)):
            if not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if max_bias <= 0 or min_window < 0 or max_window < 0:
            raise ValueError("need max_bias > 0 and window bounds >= 0 (0 = derive)")
        self.target_vfe, self.confidence = target_vfe, confidence
        self.max_bias, self.bias_confidence = max_bias, bias_confidence
        self.min_window, self.max_window = min_window, max_window
        super().__init__(key)

    def bounds(self, h: int, w: int) -> tuple[int, int]:
        """(WS_min, WS_max) for an h×w image: derived from the paper's bounds unless pinned."""
        limit = min(h, w)
        low = self.min_window or lower_window_bound(self.target_vfe, self.confidence, limit)
        high = self.max_window or upper_window_bound(self.max_bias, self.bias_confidence, limit)
        return low, high

    def _check_shape(self, chw):
        window_levels(chw[1], chw[2], *self.bounds(chw[1], chw[2]))

    def plan(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per level size s: an N×(H/s)×(W/s) mask of the windows shuffled at that size."""
        n, c, h, w = images.shape
        levels = window_levels(h, w, *self.bounds(h, w))
        # The last level takes every remaining region, so its density is never needed.
        density = vfe_density(images, levels[:-1] or levels)
        median = _lower_median(density[levels[0]].flatten(1)).view(n, 1, 1)
        active = torch.ones(n, h // levels[0], w // levels[0], dtype=torch.bool,
                            device=images.device)
        plan = {}
        for i, s in enumerate(levels):
            last = i == len(levels) - 1
            final = active if last else active & (density[s] <= median)
            plan[s] = final
            if not last:
                r, (rows, cols) = s // levels[i + 1], active.shape[1:]
                active = (active & ~final)[:, :, None, :, None].expand(n, rows, r, cols, r)
                active = active.reshape(n, rows * r, cols * r)  # each window -> its r×r children
        return plan

    def _apply(self, images, labels):
        """All levels in one gather: every window lies inside one top-level region, so each
        region's pixels get one source index map, built level by level, applied once."""
        n, c, h, w = images.shape
        if window_levels(h, w, *self.bounds(h, w)) == [4, 2]:  # default bounds, 28² and 32²
            # Planned chunk by chunk as the shuffle reaches it: the gradients stay in cache.
            # plan()[4], without the 2×2 level's mask: the shuffle reads it off the first.
            def whole(chunk: torch.Tensor) -> torch.Tensor:
                density = vfe_density(chunk, [4])[4].flatten(1)
                return density <= _lower_median(density).unsqueeze(1)

            return shuffle_regions4(images, whole, self._rng), labels
        plan = self.plan(images)
        top = next(iter(plan))
        blocks = to_blocks(images, top).reshape(n, c, -1, top * top)  # N×C×T×L
        # Every pixel lies in exactly one final window, so every entry below gets written.
        source = torch.empty(blocks.shape, dtype=torch.long, device=images.device)
        self._fill(source, plan, (h, w), top)
        out = torch.gather(blocks, -1, source)
        return from_blocks(out.reshape(n, c, -1, top, top), h, w), labels

    def _fill(self, source: torch.Tensor, plan: dict[int, torch.Tensor], hw: tuple[int, int],
              top: int) -> None:
        """Any chain of levels: scatter each final window's permuted positions into its
        region's source map."""
        n, c, regions, _ = source.shape
        channels = torch.arange(c, device=source.device)
        for size, mask in plan.items():
            img, window = mask.flatten(1).nonzero(as_tuple=True)
            if not len(img):
                continue
            region_of, positions = window_layout(*hw, top, size, source.device)
            pos = positions[window]  # K×L: the window's pixels inside its region's raster
            perm = random_permutations((len(img), c, size * size), self._rng, source.device)
            moved = torch.gather(pos[:, None, :].expand(-1, c, -1), -1, perm)
            plane = (img * c)[:, None] + channels[None, :]  # K×C planes of N·C
            flat = ((plane * regions + region_of[window][:, None]) * (top * top))[..., None] + \
                pos[:, None, :]
            source.view(-1)[flat.view(-1)] = moved.reshape(-1)


@register
class VisualMixerUniform(_Shuffler):
    """The fixed-window variant, for comparison: every window has the same size."""

    name = "visualmixer-uniform"

    def __init__(self, key: DisguiseKey, window: int = 4) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        super().__init__(key)

    def _check_shape(self, chw):
        if chw[1] % self.window or chw[2] % self.window:
            raise ValueError(f"image size {chw[1]}×{chw[2]} is not divisible by window "
                             f"{self.window}")

    def _apply(self, images, labels):
        return shuffle_windows(images, self.window, self._rng), labels
