import math

import numpy as np
import pytest
import torch

from fedisguise.metrics import block_sums, misusability, pixel_gradient, psnr, region_vfe, \
    ssim, visual_privacy, vfe


def test_psnr_matches_its_definition_per_image():
    a = torch.zeros(2, 1, 4, 4)
    b = a.clone()
    b[0] += 0.1
    values = psnr(a, b)
    assert math.isclose(values[0].item(), 20.0, rel_tol=1e-5)  # 10·log10(1/0.01)
    assert math.isinf(values[1].item())


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Direct transcription of Wang et al. (2004) with an 11×11 Gaussian, valid positions."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * px * px).sum() - mx ** 2, (w * py * py).sum() - my ** 2
            cxy = (w * px * py).sum() - mx * my
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) /
                        ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_a_direct_reference_and_orders_degradations():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 16, 16, generator=gen, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    assert ssim(x, y).item() == pytest.approx(_ssim_reference(x[0, 0].numpy(),
                                                              y[0, 0].numpy()), abs=1e-10)
    assert ssim(x, x).item() == pytest.approx(1.0)
    z = (x + 0.5 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    assert ssim(x, z) < ssim(x, y) < 1


def _vfe_by_loops(image: torch.Tensor, size: int, stride: int) -> float:
    """The authors' VFE written out pixel by pixel (VisualMixer.py `vfe`, `partial_derivative`):
    every crop padded with one zero row and column, squared forward differences summed over
    the crop, the sums averaged over all crops of all channels."""
    c, h, w = image.shape
    total, crops = 0.0, 0
    for ch in range(c):
        for top in range(0, h - size + 1, stride):
            for left in range(0, w - size + 1, stride):
                crop = image[ch, top:top + size, left:left + size].tolist()
                def px(i, j):
                    return crop[i][j] if i < size and j < size else 0.0
                for i in range(size):
                    for j in range(size):
                        total += (px(i, j + 1) - px(i, j)) ** 2 + (px(i + 1, j) - px(i, j)) ** 2
                crops += 1
    return total / crops


def test_vfe_pads_every_region_as_the_authors_do():
    img = torch.tensor([[[[1.0, 0.0, 0.0, 0.0],
                          [0.0, 0.0, 1.0, 1.0],
                          [0.0, 1.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 2.0]]]])
    # Worked by hand, each 2×2 region padded with zeros on its right and bottom:
    # top-left [[1,0],[0,0]]: (0,0) 1+1, the rest 0 -> 2; top-right [[0,0],[1,1]]:
    # 1, 1, 1, 1+1 -> 5; bottom-left [[0,1],[0,0]]: 1, 1+1, 0, 0 -> 3;
    # bottom-right [[0,0],[0,2]]: 0, 4, 4, 4+4 -> 16.
    assert region_vfe(img, 2)[0, 0].tolist() == [[2.0, 5.0], [3.0, 16.0]]
    assert vfe(img, 2).item() == pytest.approx(26 / 4)
    # One region per pixel: each pixel is padded on both sides, 2·pixel².
    assert vfe(img, 1).item() == pytest.approx(2 * (1 + 1 + 1 + 1 + 4) / 16)
    # The image-border-only field (our visualmixer's plan) differs inside the image: the
    # top-left region's (1,1) differs from its right and lower neighbours.
    assert block_sums(pixel_gradient(img), 2)[0, 0, 0, 0].item() == pytest.approx(4.0)
    flat, busy = torch.full((1, 1, 8, 8), 0.5), torch.rand(1, 1, 8, 8)
    assert vfe(busy, 4) > vfe(flat, 4)


@pytest.mark.parametrize("shape, size, stride", [((2, 3, 8, 12), 4, 4), ((1, 1, 28, 28), 4, 4),
                                                 ((2, 2, 11, 13), 5, 3), ((1, 3, 16, 16), 14, 14)])
def test_vfe_equals_a_loop_transcription_of_the_authors(shape, size, stride):
    images = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    expected = [_vfe_by_loops(image, size, stride) for image in images]
    assert vfe(images, size, stride).tolist() == pytest.approx(expected, abs=1e-5)


def test_vfe_rejects_what_it_cannot_measure():
    with pytest.raises(ValueError, match="does not fit"):
        vfe(torch.rand(1, 1, 4, 4), 5)
    with pytest.raises(ValueError, match="float N×C×H×W"):
        vfe(torch.ones(1, 4, 4), 2)
    with pytest.raises(ValueError, match="float N×C×H×W"):
        vfe(torch.ones(1, 1, 4, 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="NaN"):
        vfe(torch.full((1, 1, 4, 4), float("nan")), 2)


def test_visual_privacy_and_misusability_are_accuracy_based():
    class Oracle(torch.nn.Module):  # predicts the class from the mean pixel
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot((x.mean((1, 2, 3)) * 10).long().clamp(0, 9),
                                               10).float()

    labels = torch.arange(10)
    plain = (labels.float() / 10 + 0.05).view(10, 1, 1, 1).expand(10, 1, 4, 4)
    assert visual_privacy(Oracle(), plain, labels) == 0.0
    assert visual_privacy(Oracle(), torch.zeros(10, 1, 4, 4), labels) == 0.9
    assert misusability(Oracle(), plain, labels) == 1.0


@pytest.mark.parametrize("b", [1, 2, 4, 7])
def test_block_sums_match_average_pooling(b):
    x = torch.rand(3, 2, 28, 56, generator=torch.Generator().manual_seed(b))
    expected = torch.nn.functional.avg_pool2d(x, b) * (b * b)
    assert block_sums(x, b).shape == (3, 2, 28 // b, 56 // b)
    assert torch.allclose(block_sums(x, b), expected, atol=1e-5)
    with pytest.raises(ValueError, match="does not divide"):
        block_sums(x[..., :27, :], b + 1)
