"""pixelflip: a keyed defence written outside fedisguise, as its plugin API asks.

Each pixel position (channel, row, column) is flipped to 1 − x or left as it is, by a mask
drawn once from the key: the same for every image under one key, so a model can still learn
from disguised images, and different under every other key. A Level-2 attacker who holds a
few (plain, disguised) pairs under the victim's key reads the mask off them.
"""

from __future__ import annotations

import torch

from fedisguise.api import Disguise, DisguiseKey, register_disguise


@register_disguise
class PixelFlip(Disguise):
    """x' = m·(1 − x) + (1 − m)·x, with m a keyed Bernoulli(`fraction`) mask."""

    name = "pixelflip"
    keyed = True  # built with the node's key, which never leaves it
    per_image = True  # each image's disguise depends on that image alone

    def __init__(self, key: DisguiseKey, fraction: float = 0.5) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.key, self.fraction = key, fraction
        self._masks: dict[tuple, torch.Tensor] = {}

    def mask(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The key's flip mask for images of `shape` (C×H×W), drawn once per shape."""
        if (shape, device) not in self._masks:
            gen = self.key.generator(f"pixelflip:{shape}")
            self._masks[shape, device] = (torch.rand(shape, generator=gen)
                                          < self.fraction).to(device)
        return self._masks[shape, device]

    def _apply(self, images: torch.Tensor, labels: torch.Tensor | None):
        flip = self.mask(tuple(images.shape[1:]), images.device)
        return torch.where(flip, 1 - images, images), labels
