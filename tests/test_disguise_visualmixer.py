import math

import pytest
import torch

from fedisguise.disguise import DisguiseKey, build
from fedisguise.disguise.blocks import to_blocks
from fedisguise.disguise.visualmixer import (
    lower_window_bound,
    output_bias_quantile,
    upper_window_bound,
    window_levels,
)
from fedisguise.metrics import pixel_gradient, vfe

KEY = DisguiseKey.generate(9)


def test_lower_bound_is_the_smallest_window_meeting_the_chi_square_condition():
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.75)).item()

    def meets(ws, target):
        m = 2 * ws * (ws - 1)
        return m - z * math.sqrt(2 * m) >= target * ws * ws

    for target in (0.3, 0.5, 1.0, 1.5):
        ws = lower_window_bound(target, 0.75, 64)
        assert meets(ws, target) and (ws == 2 or not meets(ws - 1, target))
    assert lower_window_bound(1.5, 0.75, 64) > lower_window_bound(0.5, 0.75, 64)
    with pytest.raises(ValueError, match="lower the target"):
        lower_window_bound(1.99, 0.99, 28)


def test_upper_bound_grows_with_the_tolerated_output_bias():
    assert output_bias_quantile(8, 0.9) > output_bias_quantile(2, 0.9)
    assert upper_window_bound(2.2, 0.9, 28) <= upper_window_bound(3.0, 0.9, 28)
    with pytest.raises(ValueError, match="raise max_bias"):
        upper_window_bound(0.01, 0.9, 28)


def test_window_levels_halve_and_divide_the_image():
    assert window_levels(28, 28, 2, 4) == [4, 2]
    assert window_levels(32, 32, 2, 16) == [16, 8, 4, 2]
    assert window_levels(28, 28, 3, 8) == [7]
    with pytest.raises(ValueError, match="lower bound 5 > upper bound 4"):
        window_levels(28, 28, 5, 4)


def _final_windows(plan):
    return {s: m for s, m in plan.items()}


def test_plan_covers_every_pixel_once_and_gives_flat_regions_larger_windows():
    img = torch.zeros(1, 1, 16, 16)
    img[..., 8:] = torch.rand(1, 1, 16, 8, generator=torch.Generator().manual_seed(0))
    d = build({"name": "visualmixer", "min_window": 2, "max_window": 8}, KEY)
    plan = d.plan(img)
    assert list(plan) == [8, 4, 2]
    covered = sum(m.sum().item() * s * s for s, m in plan.items())
    assert covered == 16 * 16
    big = plan[8][0]
    assert big[:, 0].all() and not big[:, 1].any()  # flat left half: one 8×8 window each


def test_shuffle_keeps_each_windows_pixels_per_channel_and_adds_no_noise():
    x = torch.rand(3, 2, 28, 28)
    d = build({"name": "visualmixer", "min_window": 4, "max_window": 4}, KEY)
    out, _ = d.apply(x)
    assert not torch.equal(out, x)
    a, b = to_blocks(x, 4), to_blocks(out, 4)
    assert torch.equal(a.flatten(3).sort(-1).values, b.flatten(3).sort(-1).values)


def test_channels_are_shuffled_independently_and_images_freshly():
    x = torch.rand(1, 1, 28, 28).repeat(2, 2, 1, 1)  # two identical 2-channel images
    out, _ = build("visualmixer", KEY).apply(x)
    assert not torch.equal(out[0, 0], out[0, 1])
    assert not torch.equal(out[0], out[1])


def test_same_key_same_output_and_vfe_rises():
    coarse = torch.rand(64, 1, 7, 7, generator=torch.Generator().manual_seed(1))
    x = torch.nn.functional.interpolate(coarse, size=(28, 28), mode="bilinear")  # smooth
    a, _ = build("visualmixer", KEY).apply(x)
    b, _ = build("visualmixer", KEY).apply(x)
    assert torch.equal(a, b)
    # The authors' VFE pads every 4×4 region: its padding terms (pixel² on each region's last
    # row and column) do not grow under a shuffle, so it rises by 9 % here. The differences
    # inside the image, which our plan measures (pixel_gradient), rise by half again.
    assert vfe(a, 4).mean() > 1.05 * vfe(x, 4).mean()
    assert pixel_gradient(a).mean() > 1.5 * pixel_gradient(x).mean()


def test_uniform_variant_and_parameter_errors():
    x = torch.rand(2, 1, 28, 28)
    out, _ = build({"name": "visualmixer-uniform", "window": 7}, KEY).apply(x)
    assert torch.equal(to_blocks(x, 7).flatten(3).sort(-1).values,
                       to_blocks(out, 7).flatten(3).sort(-1).values)
    with pytest.raises(ValueError, match="not divisible by window 8"):
        build({"name": "visualmixer-uniform", "window": 8}, KEY).apply(x)
    with pytest.raises(ValueError, match="target_vfe must be in"):
        build({"name": "visualmixer", "target_vfe": 2.5}, KEY)
    with pytest.raises(ValueError, match="no window size in"):
        build({"name": "visualmixer", "min_window": 5, "max_window": 6}, KEY).apply(x)


@pytest.mark.parametrize("length", [4, 16, 64])
def test_random_permutations_are_uniform_permutations(length):
    import numpy as np

    from fedisguise.disguise.shuffling import random_permutations

    perms = random_permutations((20000, length), np.random.default_rng(3), torch.device("cpu"))
    assert torch.equal(perms.sort(-1).values, torch.arange(length).expand(20000, length))
    counts = torch.bincount(perms[:, length // 2], minlength=length).float()
    expected = 20000 / length
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < length + 6 * (2 * length) ** 0.5  # far inside a χ²(length−1) tail


def test_default_two_level_path_keeps_split_regions_within_their_quadrants():
    import numpy as np

    from fedisguise.disguise.shuffling import _region4_rows, _region4_tables

    tables = _region4_tables(4, torch.int16, torch.device("cpu"))  # w = 4: plain positions
    whole = torch.arange(40000) % 2 == 0
    rows = _region4_rows(whole, 40000, np.random.default_rng(5), tables).long()
    assert torch.equal(rows.sort(-1).values, torch.arange(16).expand(40000, 16))
    quadrant = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3])
    split = rows[~whole]
    assert torch.equal(quadrant[split], quadrant.expand(len(split), 16))  # never leaves it
    assert (quadrant[rows[whole]] != quadrant).any(-1).float().mean() > 0.99
    for sample in (split, rows[whole]):  # every allowed source equally likely at position 5
        counts = torch.bincount(sample[:, 5], minlength=16).float()
        allowed = counts > 0
        expected = len(sample) / allowed.sum()
        assert ((counts[allowed] - expected) ** 2 / expected).sum() < 40

    x = torch.rand(4, 3, 28, 28)
    d = build("visualmixer", KEY)
    plan = d.plan(x)
    assert list(plan) == [4, 2]
    out, _ = d.apply(x)
    a, b = to_blocks(x, 2), to_blocks(out, 2)
    split = ~plan[4].repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(4, -1)
    same = (a.flatten(3).sort(-1).values == b.flatten(3).sort(-1).values).all(-1).all(1)
    assert same[split].all()  # 2×2 windows keep their own pixels, channel by channel
    assert torch.equal(to_blocks(x, 4).flatten(3).sort(-1).values,
                       to_blocks(out, 4).flatten(3).sort(-1).values)


def test_default_path_holds_beyond_int16_offsets_and_across_chunks(monkeypatch):
    """184×184 planes need int32 offsets (two 8-byte words per region row), and a chunk
    of two images leaves a short last chunk: the shuffle must still follow plan() region by
    region (split regions keep their 2×2 quadrants, whole ones mix them) and every 4×4
    region keep its pixels."""
    from fedisguise.disguise import shuffling

    monkeypatch.setattr(shuffling, "_CHUNK_PIXELS", 2 * 2 * 184 * 184)
    x = torch.rand(5, 2, 184, 184, generator=torch.Generator().manual_seed(4))
    d = build({"name": "visualmixer", "min_window": 2, "max_window": 4}, KEY)
    plan = d.plan(x)
    assert list(plan) == [4, 2] and shuffling._offset_dtype(184, 184) == torch.int32
    out, _ = d.apply(x)
    split = ~plan[4].repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(5, -1)
    a, b = to_blocks(x, 2), to_blocks(out, 2)
    same = (a.flatten(3).sort(-1).values == b.flatten(3).sort(-1).values).all(-1).all(1)
    assert same[split].all()
    assert (~same[~split]).float().mean() > 0.99  # the plan's whole regions mix quadrants
    assert torch.equal(to_blocks(x, 4).flatten(3).sort(-1).values,
                       to_blocks(out, 4).flatten(3).sort(-1).values)
