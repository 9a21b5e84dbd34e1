"""Every registered defence on images of any size and channels (issue 40 pt 5): it disguises
3×32×32 and 1×25×25 images, or the preflight says why it cannot and which sizes would do."""

import re

import pytest
import torch

from fedisguise.config import Config, ConfigError
from fedisguise.data.datasets import DATASETS, ImageDataset, register_dataset
from fedisguise.disguise import DISGUISES, DisguiseKey
from fedisguise.disguise.spec import DisguiseSpec
from fedisguise.disguise.transform_net_training import save_transform_net, train_transform_net
from fedisguise.models import build_model
from fedisguise.preflight import check_disguise

SHAPES = [(3, 32, 32), (1, 25, 25)]


@pytest.fixture
def sized_dataset():
    """A dataset of 8-bit random images of one shape, registered for the test's length."""
    saved = dict(DATASETS)

    def make(shape):
        name = "sized-" + "x".join(map(str, shape))

        @register_dataset(name)
        def load(split: str, data_dir: str) -> ImageDataset:
            gen = torch.Generator().manual_seed(0 if split == "train" else 1)
            images = torch.randint(0, 256, (24, *shape), generator=gen).float() / 255
            return ImageDataset(images, torch.arange(24) % 3, 3)

        return name, load("train", "")

    yield make
    DATASETS.clear()
    DATASETS.update(saved)


def _spec(name, shape, tmp_path):
    if name != "transform-net":
        return {"name": name}
    # h_θ trained for these images' shape, briefly: the defence under test is its application
    torch.manual_seed(0)
    images, labels = torch.rand(16, *shape), torch.arange(16) % 3
    psi = build_model("cnn-small", shape[0], 3, shape[1:])
    net, info = train_transform_net(images, labels, psi, features="vgg16-random", epochs=1,
                                    batch_size=8, width=4, validation=0.25, progress=False)
    path = tmp_path / "h.pt"
    save_transform_net(path, net, info)
    return {"name": name, "path": str(path)}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(DISGUISES))
def test_every_defence_disguises_any_size_or_the_preflight_names_the_sizes_that_would(
        name, shape, sized_dataset, tmp_path):
    dataset, train = sized_dataset(shape)
    spec = _spec(name, shape, tmp_path)
    cfg = Config().with_overrides([f"data.dataset={dataset}", "experiment.clients=2",
                                   f"disguise={spec!r}".replace("'", '"')])
    cfg.validate()
    try:
        check_disguise(cfg, train)
    except ConfigError as err:  # not applicable: the reason, and what would do
        message = str(err)
        assert re.search(r"divisible|divides|multiple of", message), message
        listed = re.search(r"values that work on \d+×\d+: \[([\d, ]+)\]", message)
        if listed:  # the first size it names works
            param = re.search(r"(block_size|window) values", message).group(1)
            size = int(listed.group(1).split(",")[0])
            spec = {**spec, param: size}
        else:
            pytest.skip(f"{name} on {shape}: {message}")
    built = DisguiseSpec.parse({**spec, **({"num_classes": 3} if name == "instahide" else {})})
    disguise = built.build(DisguiseKey.generate(seed="t") if built.keyed else None)
    out = disguise.apply(train.images[:8], train.labels[:8])[0]
    assert out.shape == (8, *shape) and torch.isfinite(out).all()
    if name != "none":
        assert not torch.equal(out, train.images[:8])  # it disguised something
