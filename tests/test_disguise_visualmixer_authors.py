"""visualmixer-authors: the VisualMixer authors' released algorithm (Edison9419/ndss)."""

import os

import pytest
import torch

from fedisguise.config import Config, ConfigError
from fedisguise.disguise import DisguiseKey, build
from fedisguise.disguise.blocks import to_blocks
from fedisguise.disguise.visualmixer_authors import AttentionBlock
from fedisguise.metrics import vfe
from tests.conftest import DEBIAN_FMNIST

KEY = DisguiseKey.generate(8)
NATIVE = {"name": "visualmixer-authors", "size": 0, "regions": 2, "vfe_crop": 8}


def _pieces(images: torch.Tensor, region: int, piece: int) -> list[set]:
    """Per image, channel and region (in that order): the set of its piece×piece blocks."""
    regions = to_blocks(images, region)  # N×C×R×region×region
    flat = regions.reshape(-1, 1, region, region)
    pieces = to_blocks(flat, piece).reshape(len(flat), -1, piece * piece)
    return [{tuple(p.tolist()) for p in r} for r in pieces]


def test_sub_blocks_move_whole_within_their_region_per_channel():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    d = build({**NATIVE, "high": 1e-6, "low": 0.0}, KEY)  # every image above `high`: n = 8
    out, _ = d.apply(x)
    assert (d.decide(x, [4]) == 8).all()
    # 16-px regions split 8×8: 2-px sub-blocks, each moved whole inside its region
    assert _pieces(out, 16, 2) == _pieces(x, 16, 2)
    assert not torch.equal(out, x)
    assert not torch.equal(out[:, 0], out[:, 1])  # channels shuffled independently


def test_low_vfe_images_take_the_attention_scores_coarser_splits():
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    d = build({**NATIVE, "low": 1e9, "high": 2e9}, KEY)  # every image below `low`
    n = d.decide(x, [6])
    assert set(n.unique().tolist()) <= {2, 4, 8} and len(n.unique()) > 1
    out, _ = d.apply(x)
    size = {2: 8, 4: 4, 8: 2}  # sub-block side in pixels of a 16-px region split n×n
    moved, kept = _pieces(out, 16, 2), _pieces(x, 16, 2)
    for region, split in enumerate(n[:, 0].flatten().tolist()):  # image-major, one channel
        image, r = divmod(region, 4)
        whole = _pieces(x[image:image + 1], 16, size[split])[r]
        assert _pieces(out[image:image + 1], 16, size[split])[r] == whole
        assert moved[region] == kept[region]


def test_every_image_draws_its_own_shuffle_and_batches_decide_alone():
    x = torch.rand(1, 1, 32, 32).repeat(4, 1, 1, 1)
    d = build(NATIVE, KEY)
    out, _ = d.apply(x)
    assert not torch.equal(out[0], out[1])
    y = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    together = d.decide(y, [3, 5])
    assert torch.equal(together[:3], d.decide(y[:3], [3]))  # the attention mean per batch
    assert torch.equal(together[3:], d.decide(y[3:], [5]))


def test_the_default_is_the_authors_224_pixel_pipeline_resized_back():
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    out, _ = build("visualmixer-authors", KEY).apply(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_the_attention_block_loads_the_authors_checkpoint_keys(tmp_path):
    keys = {"channel_attention.fc1.weight", "channel_attention.fc2.weight",
            "spatial_attention.conv1.weight"}  # the authors' rank.pth
    assert set(AttentionBlock().state_dict()) == keys
    trained = AttentionBlock()
    for weight in (trained.spatial_attention.conv1.weight,
                   trained.channel_attention.fc2.weight):
        torch.nn.init.constant_(weight, 0.0)  # every weight sigmoid(0): all scores equal
    path = tmp_path / "rank.pth"
    torch.save(trained.state_dict(), path)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    flat = build({**NATIVE, "attention_path": str(path), "low": 1e9, "high": 2e9}, KEY)
    assert (flat.decide(x, [2]) == 2).all()  # equal scores scale to 0: the coarsest split
    torch.save({"fc.weight": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="state_dict"):
        build({**NATIVE, "attention_path": str(path), "attention_seed": 1}, KEY)
    with pytest.raises(ValueError, match="no such file"):
        build({**NATIVE, "attention_path": str(tmp_path / "absent.pth")}, KEY)
    with pytest.raises(ConfigError, match=r"^disguise.attention_path \(visualmixer-authors\)"):
        Config.from_dict({"disguise": {"name": "visualmixer-authors",
                                       "attention_path": str(tmp_path / "absent.pth")}})


@pytest.mark.parametrize("spec, shape, message", [
    ({}, (1, 2, 28, 28), "takes 3 channels"),
    ({"size": 0}, (1, 1, 28, 28), "multiples of 8"),
    ({"size": 200}, None, "size 200 must be cut"),
    ({"low": 1.0, "high": 0.5}, None, "low < high"),
    ({"normalize": "cifar"}, None, "unknown normalize"),
])
def test_bad_parameters_and_images_are_errors(spec, shape, message):
    with pytest.raises(ValueError, match=message):
        d = build({"name": "visualmixer-authors", **spec}, KEY)
        d.apply(torch.rand(shape))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(DEBIAN_FMNIST), reason="dataset-fashion-mnist not installed")
def test_on_fashion_mnist_every_image_passes_the_top_threshold_as_with_the_authors_code():
    from fedisguise.data.datasets import load_dataset

    x = load_dataset("fashion-mnist", "test").images[:100]
    d = build("visualmixer-authors", KEY)
    # Their image VFE on these images (ImageNet-normalised, weighted, 224 px) lies in
    # 2.7–7.3: above `high` = 1, so every region is split into 8×8 sub-blocks of 2 px.
    assert (d.decide(x, [100]) == 8).all()
    out, _ = d.apply(x)
    assert vfe(out).mean() < vfe(x).mean()  # resized back, the shuffle reads as a blur
