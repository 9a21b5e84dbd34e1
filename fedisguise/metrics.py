"""Privacy and similarity figures, batched: one value per image, any device.

- `psnr`, `ssim`: reconstruction quality (Wang et al. 2004 SSIM, 11×11 Gaussian window,
  σ = 1.5, K1 = 0.01, K2 = 0.03, valid filtering);
- `vfe`, `region_vfe`: visual feature entropy as the VisualMixer authors' code computes it
  (`Edison9419/ndss`, VisualMixer.py `vfe`/`partial_derivative`: every region zero-padded on
  its own right and bottom before the differences); `pixel_gradient` is the one other
  gradient field, padded at the image border only, which our `visualmixer` plans with;
- `visual_privacy` (DisguisedNets §4): 1 − accuracy of a DNN examiner trained on plain images,
  tested on disguised ones; `misusability`: accuracy of a disguise-trained model on plain images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"expected two N×C×H×W tensors of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if not (a.is_floating_point() and b.is_floating_point()):
        raise ValueError("psnr/ssim need float tensors")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (inf where the images are equal)."""
    _pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image, averaged over channels and window positions."""
    _pair(a, b)
    c = a.shape[1]
    window = min(window, a.shape[-1], a.shape[-2])
    g = _gaussian_window(window, sigma, a.device, a.dtype)
    gx = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    gy = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, gx, groups=c), gy, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) *
                                                      (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def pixel_gradient(images: torch.Tensor) -> torch.Tensor:
    """(I[x+1,y] − I[x,y])² + (I[x,y+1] − I[x,y])² per pixel, zero padding past the *image*
    border only: the gradient field our `visualmixer` plans its windows with (§IV-D density).
    It is not the authors' VFE, which pads every region (`region_vfe`): a region's last row
    and column here take differences with the next region's pixels instead of with zero.

    Written into preallocated outputs: a padded copy and temporaries cost 4× the time.
    """
    grad = torch.empty_like(images)
    torch.sub(images[..., 1:, :], images[..., :-1, :], out=grad[..., :-1, :])
    torch.neg(images[..., -1:, :], out=grad[..., -1:, :])
    grad.square_()
    across = torch.empty_like(images)
    torch.sub(images[..., :, 1:], images[..., :, :-1], out=across[..., :, :-1])
    torch.neg(images[..., :, -1:], out=across[..., :, -1:])
    return grad.addcmul_(across, across)


def block_sums(x: torch.Tensor, b: int) -> torch.Tensor:
    """Sums over the b×b blocks of the last two dims (…×H×W -> …×H/b×W/b), as b − 1 strided
    adds per axis: on the CPU avg_pool2d takes ~2.5× as long for the small blocks used here."""
    *lead, h, w = x.shape
    if b < 1 or h % b or w % b:
        raise ValueError(f"a {h}×{w} array does not divide into {b}×{b} blocks")
    if b == 1:
        return x.clone()
    rows = x.reshape(-1, h // b, b, w)
    acc = torch.add(rows[:, :, 0], rows[:, :, 1])
    for i in range(2, b):
        acc += rows[:, :, i]
    cols = acc.view(-1, h // b, w // b, b)
    out = torch.add(cols[..., 0], cols[..., 1])
    for i in range(2, b):
        out += cols[..., i]
    return out.view(*lead, h // b, w // b)


def region_vfe(images: torch.Tensor, region: int, stride: int = 0) -> torch.Tensor:
    """The authors' VFE of every region -> N×C×rows×cols: the crops of region×region pixels
    `stride` apart (0 = `region`: a tiling), each zero-padded on its right and bottom, the
    squared forward differences summed over the crop. As in the authors' code, crops that
    would pass the image's edge are not taken (a remainder narrower than a crop is left out).
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float N×C×H×W tensor, got {images.dtype} "
                         f"{tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf")
    stride = stride or region
    h, w = images.shape[-2:]
    if region < 1 or stride < 1 or region > min(h, w):
        raise ValueError(f"region {region} (stride {stride}) does not fit a {h}×{w} image")
    crops = images.unfold(2, region, stride).unfold(3, region, stride)  # N×C×r×c×R×R views
    # zero padding: the last row and column differ from 0, i.e. contribute pixel²
    down = F.pad(crops[..., 1:, :], (0, 0, 0, 1)) - crops
    right = F.pad(crops[..., :, 1:], (0, 1)) - crops
    return (down.square_() + right.square_()).sum((-1, -2))


def vfe(images: torch.Tensor, region: int = 4, stride: int = 0) -> torch.Tensor:
    """Image VFE as the authors compute it: `region_vfe` averaged over regions and channels,
    one value per image."""
    return region_vfe(images, region, stride).flatten(1).mean(1)


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy via the training module's batched evaluation, on the model's device."""
    from fedisguise.data.datasets import ImageDataset
    from fedisguise.training import evaluate

    if labels.ndim == 2:  # soft labels (InstaHide): score against the dominant class
        labels = labels.argmax(1)
    device = next(model.parameters()).device
    data = ImageDataset(images, labels.long(), num_classes=0)  # evaluate never reads it
    return evaluate(model, data, device=device)[1]


def visual_privacy(examiner: nn.Module, disguised: torch.Tensor, labels: torch.Tensor) -> float:
    """1 − accuracy of a plain-trained examiner on disguised images (higher = more private)."""
    return 1.0 - _accuracy(examiner, disguised, labels)


def misusability(model: nn.Module, plain: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of the disguise-trained model on plain images (lower = harder to misuse)."""
    return _accuracy(model, plain, labels)
