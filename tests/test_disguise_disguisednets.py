import os

import pytest
import torch

from fedisguise.disguise import DisguiseKey, build
from fedisguise.disguise.blocks import from_blocks, to_blocks
from fedisguise.disguise.disguisednets import random_matrices
from tests.conftest import DEBIAN_FMNIST

KEY = DisguiseKey.generate(11)


def test_blocks_round_trip():
    x = torch.rand(3, 2, 12, 8)
    assert torch.equal(from_blocks(to_blocks(x, 4), 12, 8), x)
    assert torch.equal(to_blocks(x, 4)[0, 1, 1], x[0, 1, 0:4, 4:8])  # row-major block order


def test_block_permutation_moves_whole_blocks_by_one_keyed_permutation():
    x = torch.rand(4, 1, 28, 28)
    out, _ = build({"name": "block-permutation", "block_size": 7}, KEY).apply(x)
    src, dst = to_blocks(x, 7), to_blocks(out, 7)
    # every output block equals exactly one input block at the same permuted position
    match = (dst[0, 0, :, None] == src[0, 0, None, :]).flatten(2).all(-1)
    assert (match.sum(1) == 1).all()
    perm = match.float().argmax(1)
    assert not torch.equal(perm, torch.arange(16))
    assert torch.equal(dst, src[:, :, perm])  # the same permutation for every image


def test_orthogonal_rmt_preserves_row_norms_and_projection_does_not():
    x = torch.rand(5, 1, 28, 28)
    ortho, _ = build({"name": "rmt", "noise_level": 0.0}, KEY).apply(x)
    assert torch.allclose(ortho.norm(dim=-1), x.norm(dim=-1), atol=1e-4)
    proj, _ = build({"name": "rmt", "noise_level": 0.0, "matrix": "projection"}, KEY).apply(x)
    assert not torch.allclose(proj.norm(dim=-1), x.norm(dim=-1), atol=1e-2)


def test_matrices_are_drawn_as_the_authors_draw_them():
    gen = torch.Generator().manual_seed(3)
    rot = random_matrices(gen, 200, 7, "orthogonal").double()
    assert torch.allclose(rot @ rot.mT, torch.eye(7, dtype=torch.float64).expand(200, 7, 7),
                          atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(200, dtype=torch.float64),
                          atol=1e-5)  # rotations only (the authors' Householder product)
    proj = random_matrices(gen, 200, 7, "projection")
    assert proj.min() >= 0 and proj.max() < 1  # uniform [0, 1) entries
    assert abs(proj.mean().item() - 0.5) < 0.01 and abs(proj.var().item() - 1 / 12) < 0.005
    assert (torch.linalg.matrix_rank(proj.double()) == 7).all()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(DEBIAN_FMNIST), reason="dataset-fashion-mnist not installed")
def test_the_authors_projection_keeps_each_blocks_mean_brightness_on_fashion_mnist():
    from fedisguise.data.datasets import load_dataset

    images = load_dataset("fashion-mnist", "test").images[:100]
    means = torch.nn.functional.avg_pool2d(images, 7).flatten()

    def block_mean_correlation(matrix: str) -> float:
        spec = {"name": "block-rmt", "block_size": 7, "noise_level": 100.0, "matrix": matrix}
        out = torch.nn.functional.avg_pool2d(build(spec, KEY).apply(images)[0], 7).flatten()
        return torch.corrcoef(torch.stack([out, means]))[0, 1].item()

    # Uniform [0, 1) entries: each disguised block's mean is ~0.5·b times the original's,
    # plus the noise's mean; a rotation mixes signs and keeps no such picture.
    assert block_mean_correlation("projection") > 0.95
    assert abs(block_mean_correlation("orthogonal")) < 0.5


def test_block_rmt_uses_one_matrix_per_block_and_is_invertible_with_the_key():
    x = torch.rand(2, 1, 28, 28)
    d = build({"name": "block-rmt", "block_size": 7, "noise_level": 0.0}, KEY)
    out, _ = d.apply(x)
    r = d._block_matrices(16, x.device)
    assert not torch.allclose(r[0], r[1])
    restored = torch.einsum("nctik,tjk->nctij", to_blocks(out, 7), r)  # R orthogonal: R⁻¹ = Rᵀ
    assert torch.allclose(from_blocks(restored, 28, 28), x, atol=1e-5)


def test_noise_is_uniform_on_the_pixel_scale_and_fresh_per_image():
    x = torch.zeros(64, 1, 28, 28)
    out, _ = build({"name": "block-permutation", "block_size": 7, "noise_level": 100.0},
                   KEY).apply(x)
    assert out.min() >= 0 and out.max() <= 100 / 255
    assert abs(out.mean().item() - 50 / 255) < 0.01  # U[0, 100] has mean 50
    assert not torch.equal(out[0], out[1])  # two identical images, different Δ


@pytest.mark.parametrize("name", ["block-rmt", "disguisednets"])
def test_noise_level_is_range_checked(name):
    with pytest.raises(ValueError, match="noise_level must be in"):
        build({"name": name, "noise_level": 300.0}, KEY)


def test_disguisednets_is_block_rmt_then_permutation():
    x = torch.rand(3, 1, 28, 28)
    spec = {"block_size": 7, "noise_level": 0.0}
    rmt, _ = build({"name": "block-rmt", **spec}, KEY).apply(x)
    full = build({"name": "disguisednets", **spec}, KEY)
    out, _ = full.apply(x)
    perm = full._permutation(16, x.device)
    assert torch.allclose(to_blocks(out, 7), to_blocks(rmt, 7)[:, :, perm])


def test_aes_is_deterministic_per_position_and_differs_across_positions():
    x = torch.zeros(2, 1, 8, 8)
    x[1, 0, :4, :4] = 0.5
    d = build({"name": "aes", "block_size": 4}, KEY)
    out, _ = d.apply(x)
    blocks = to_blocks(out, 4)
    assert torch.equal(blocks[0, :, 1], blocks[1, :, 1])  # same content, same position
    assert not torch.equal(blocks[0, :, 0], blocks[1, :, 0])  # changed content
    assert not torch.equal(blocks[0, :, 1], blocks[0, :, 2])  # same content, other position
    assert 0 <= out.min() and out.max() <= 1
    again, _ = build({"name": "aes", "block_size": 4}, KEY).apply(x)
    assert torch.equal(out, again)


def test_aes_rejects_blocks_that_are_not_whole_aes_blocks():
    with pytest.raises(ValueError, match="multiple of 16 bytes"):
        build({"name": "aes", "block_size": 7}, KEY).apply(torch.rand(1, 1, 28, 28))
