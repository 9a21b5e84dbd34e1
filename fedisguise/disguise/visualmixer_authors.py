"""VisualMixer as its authors run it (`Edison9419/ndss`: VisualMixer.py `rank`, `shuffle`,
`vfe`; train.py), beside `visualmixer`, our reading of the paper's §IV prose.

Per batch of images, at the authors' working resolution (`size`, 224: their Resize([224, 224])):
1. an attention block (their `AttentionBlock(3, 3)`: CBAM channel attention, then a 7×7
   spatial attention) weighs the ImageNet-normalised batch;
2. each image's VFE over 14×14 crops of the weighted image picks one of three settings
   (VFE >= `high`: (8, 8, 8, 8); < `low`: (2, 4, 8, 8); else (4, 8, 8, 8));
3. the image is cut into a fixed grid of `regions`×`regions` regions (14: 16 px each at 224);
   per channel and region, the attention score (channel weight × the region's mean spatial
   weight, averaged over the batch, min–max scaled) picks n from the setting (score <= 0.1,
   <= 0.5, <= 0.9, above), and the region is cut into n×n sub-blocks (8, 4 or 2 px at 224)
   moved whole by a random permutation: per image, channel and region.
Where we differ on purpose, and why (docs/fidelity.md has the figures):
- the shuffled image is resized back to the data's own size (area averaging), since the
  federation's models take the data's resolution; `size = 0` runs at the data's own size;
- every image draws its own permutations, from the node's secret; their code draws one per
  batch and, through a loop that reshuffles `inputs[i:]` with image i's setting, shuffles
  image j j+1 times;
- a 1-channel image is shuffled as the first of the three channels their Grayscale(3) makes
  (their model sees three differently shuffled copies);
- the attention block is frozen at a seeded initialisation (or loaded from `attention_path`,
  e.g. their rank.pth). Their training never changes it: `rank` writes the shuffled batch
  under torch.no_grad() over the attention output, so no gradient reaches the block (checked
  by running their train.py loop: every attention weight's gradient is exactly 0). Their own
  checkpoints are Git LFS pointers, not available.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fedisguise.disguise.base import Disguise, register
from fedisguise.disguise.keys import DisguiseKey
from fedisguise.disguise.shuffling import random_permutations
from fedisguise.metrics import vfe

# Sub-block counts per region side, by image VFE (rows) and attention score (columns).
SETTINGS = ((8, 8, 8, 8), (4, 8, 8, 8), (2, 4, 8, 8))
SCORE_EDGES = (0.1, 0.5, 0.9)  # score <= edge picks that column; above the last, column 3
SPLIT = 8  # the finest split: every region holds 8×8 cells
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NORMALIZE = ("imagenet", "none")


class ChannelAttention(nn.Module):
    """CBAM channel attention: a shared 1×1 bottleneck over average- and max-pooled maps."""

    def __init__(self, planes: int, ratio: int) -> None:
        super().__init__()
        hidden = max(1, planes // ratio)
        self.fc1 = nn.Conv2d(planes, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)])
        both = self.fc2(F.relu(self.fc1(pooled)))
        return torch.sigmoid(both[:len(x)] + both[len(x):])


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a 7×7 convolution over the channel mean and maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv1(torch.cat([x.mean(1, keepdim=True),
                                                   x.amax(1, keepdim=True)], 1)))


class AttentionBlock(nn.Module):
    """The authors' AttentionBlock(c1, c2): its state dict keys are theirs, so their rank.pth
    loads into it. Returns the weighted input, the channel and the spatial weights."""

    def __init__(self, planes: int = 3, ratio: int = 3) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(planes, ratio)
        self.spatial_attention = SpatialAttention()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        channel = self.channel_attention(x)
        weighted = channel * x
        spatial = self.spatial_attention(weighted)
        return spatial * weighted, channel, spatial


@functools.lru_cache(maxsize=4)
def attention_block(path: str, seed: int) -> AttentionBlock:
    """The frozen block: loaded from `path`, else PyTorch's default initialisation drawn
    under `seed` (the global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        block = AttentionBlock()
    if path:
        block.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return block.eval().requires_grad_(False)


@functools.lru_cache(maxsize=4)
def _cell_sources(n: int) -> torch.Tensor:
    """For a permutation p of the n×n sub-blocks of a region: per cell t of its 8×8 cells,
    (sub-block of t, row offset, column offset) so that t's source cell is
    ((p[q] // n)·g + a, (p[q] % n)·g + b) with g = 8 / n cells per sub-block side."""
    g = SPLIT // n
    a, b = torch.arange(SPLIT).repeat_interleave(SPLIT), torch.arange(SPLIT).repeat(SPLIT)
    return torch.stack([(a // g) * n + b // g, a % g, b % g])


@register
class VisualMixerAuthors(Disguise):
    name = "visualmixer-authors"
    keyed = False  # nothing is fixed by a key: every shuffle is a draw
    draws = True

    def __init__(self, key: DisguiseKey | None = None, size: int = 224, regions: int = 14,
                 low: float = 0.5, high: float = 1.0, vfe_crop: int = 14,
                 normalize: str = "imagenet", attention_path: str = "",
                 attention_seed: int = 0) -> None:
        self.check_spec({"size": size, "regions": regions, "low": low, "high": high,
                         "vfe_crop": vfe_crop, "normalize": normalize,
                         "attention_path": attention_path})
        self.size, self.regions, self.low, self.high = size, regions, low, high
        self.vfe_crop, self.normalize = vfe_crop, normalize
        self.block = attention_block(attention_path, attention_seed)
        self.key = key
        self.reseed("default", key if key is not None else DisguiseKey.generate())

    @classmethod
    def check_spec(cls, params: dict) -> None:
        size, regions = params.get("size", 224), params.get("regions", 14)
        if size < 0 or regions < 1:
            raise ValueError(f"need size >= 0 (0 = the images' own) and regions >= 1, got "
                             f"size {size}, regions {regions}")
        if size and (size % regions or (size // regions) % SPLIT):
            raise ValueError(f"size {size} must be cut into {regions} regions per side whose "
                             f"sides are multiples of {SPLIT} pixels (the finest split)")
        low, high = params.get("low", 0.5), params.get("high", 1.0)
        if not 0 <= low < high:
            raise ValueError(f"need 0 <= low < high, got low {low}, high {high}")
        if params.get("vfe_crop", 14) < 1:
            raise ValueError(f"vfe_crop must be >= 1, got {params['vfe_crop']}")
        if params.get("normalize", "imagenet") not in NORMALIZE:
            raise ValueError(f"unknown normalize {params['normalize']!r}; valid choices: "
                             f"{list(NORMALIZE)}")
        path = params.get("attention_path", "")
        if path and not Path(path).is_file():
            raise ValueError(f"attention_path {path!r}: no such file (a state dict of the "
                             f"authors' AttentionBlock, e.g. their rank.pth)")

    def _draw_from(self, source: DisguiseKey, stream: str) -> None:
        self._rng = source.numpy_rng(f"{self.name}:{stream}")

    def _check_shape(self, chw: tuple[int, int, int]) -> None:
        c, h, w = chw
        if c not in (1, 3):
            raise ValueError(f"the authors' attention block takes 3 channels (1-channel "
                             f"images are repeated to 3, as their Grayscale(3)); got {c}")
        if not self.size and (h % self.regions or w % self.regions
                              or (h // self.regions) % SPLIT or (w // self.regions) % SPLIT):
            raise ValueError(f"at their own size (size = 0), {h}×{w} images must be cut into "
                             f"{self.regions} regions per side whose sides are multiples of "
                             f"{SPLIT} pixels; set size (the authors': 224)")
        if self.vfe_crop > (self.size or min(h, w)):
            raise ValueError(f"vfe_crop {self.vfe_crop} is larger than the working image")

    # ---- the algorithm ---------------------------------------------------------------------
    def _working(self, images: torch.Tensor) -> torch.Tensor:
        """The batch at the working resolution (their Resize to 224; bilinear)."""
        if not self.size or tuple(images.shape[-2:]) == (self.size, self.size):
            return images
        return F.interpolate(images, size=(self.size, self.size), mode="bilinear",
                             align_corners=False, antialias=self.size < images.shape[-1])

    @torch.no_grad()
    def decide(self, images: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Sub-blocks per region side, N×C×regions×regions, each batch of `sizes` deciding
        by its own attention average: steps 1–3 of the module docstring."""
        settings, scores = [], []
        for chunk in images.split(32):  # a chunk's 224-px tensors stay in memory, not the set
            x = self._working(chunk).expand(-1, 3, -1, -1)
            if self.normalize == "imagenet":
                mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
                             for v in IMAGENET)
                x = (x - mean) / std
            weighted, channel, spatial = self.block.to(x.device, x.dtype)(x)
            v = vfe(weighted, self.vfe_crop)
            settings.append(torch.where(v >= self.high, 0, torch.where(v < self.low, 2, 1)))
            region = (spatial.shape[-2] // self.regions, spatial.shape[-1] // self.regions)
            scores.append(channel * F.avg_pool2d(spatial, region))  # N×3×regions×regions
        setting, score = torch.cat(settings), torch.cat(scores)
        batch = torch.repeat_interleave(torch.arange(len(sizes), device=score.device),
                                        torch.tensor(sizes, device=score.device))
        mean = torch.zeros(len(sizes), *score.shape[1:], dtype=score.dtype,
                           device=score.device).index_add_(0, batch, score)
        mean /= torch.tensor(sizes, dtype=score.dtype, device=score.device).view(-1, 1, 1, 1)
        lo = mean.flatten(1).amin(1).view(-1, 1, 1, 1)
        span = mean.flatten(1).amax(1).view(-1, 1, 1, 1) - lo
        scaled = torch.where(span > 0, (mean - lo) / span.clamp_min(1e-30), 0.0)
        column = torch.bucketize(scaled, torch.tensor(SCORE_EDGES, dtype=scaled.dtype,
                                                      device=scaled.device))
        table = torch.tensor(SETTINGS, device=images.device)
        n = table[setting[:, None, None, None], column[batch]]  # N×3×regions×regions
        return n[:, :images.shape[1]]  # one channel: their first (R) channel's scores

    def _apply(self, images, labels):
        return self._apply_batches(images, labels, [len(images)])

    def _apply_batches(self, images, labels, sizes):
        n = self.decide(images, sizes)
        out = torch.empty_like(images)
        start = 0
        for chunk in images.split(32):
            k = len(chunk)
            shuffled = self._shuffle(self._working(chunk), n[start:start + k])
            out[start:start + k] = F.interpolate(shuffled, size=chunk.shape[-2:], mode="area") \
                if shuffled.shape[-2:] != chunk.shape[-2:] else shuffled
            start += k
        return out, labels

    def _shuffle(self, work: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Move the n×n sub-blocks of every region of every image and channel by their own
        uniform permutation, as one gather of 8×8 cells per region."""
        b, c, h, w = work.shape
        k = self.regions
        ch, cw = h // k // SPLIT, w // k // SPLIT  # a cell's pixels
        source = torch.empty(b * c * k * k, SPLIT * SPLIT, dtype=torch.long,
                             device=work.device)
        flat_n = n.reshape(-1)
        for split in (2, 4, 8):
            rows = (flat_n == split).nonzero().flatten()
            if not len(rows):
                continue
            perm = random_permutations((len(rows), split * split), self._rng, work.device)
            q, a, col = _cell_sources(split).to(work.device)
            g = SPLIT // split
            picked = perm[:, q]  # each cell's source sub-block
            source[rows] = ((picked // split) * g + a) * SPLIT + (picked % split) * g + col
        cells = work.reshape(b, c, k, SPLIT, ch, k, SPLIT, cw).permute(0, 1, 2, 5, 3, 6, 4, 7)
        cells = cells.reshape(b * c * k * k, SPLIT * SPLIT, ch * cw)
        moved = torch.gather(cells, 1, source[..., None].expand(-1, -1, ch * cw))
        moved = moved.view(b, c, k, k, SPLIT, SPLIT, ch, cw).permute(0, 1, 2, 4, 6, 3, 5, 7)
        return moved.reshape(b, c, h, w)

