"""A two-level U-Net (Ronneberger et al. 2015): the shape both sides of this product use.

The learnable transformation network h_θ (Ito, Kinoshita, Kiya) is a U-Net, and so is the
attacker's inverse-transformation network that tries to undo a disguise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """Two-level U-Net (Ronneberger et al. 2015) sized for 28×28 / 32×32 images; outputs in
    [0, 1] through a sigmoid. Sizes not divisible by 4 are padded and cropped back.
    `out_channels` (default: `channels`) where the input carries extra channels."""

    def __init__(self, channels: int, width: int = 32, out_channels: int = 0) -> None:
        super().__init__()
        self.down1, self.down2 = _Block(channels, width), _Block(width, 2 * width)
        self.bottom = _Block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = _Block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = _Block(2 * width, width)
        self.out = nn.Conv2d(width, out_channels or channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % 4, 0, -h % 4))
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        b = self.bottom(F.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return torch.sigmoid(self.out(u1))[..., :h, :w]
