import pytest
import torch

from fedisguise.api import register_dataset
from fedisguise.config import Config, ConfigError
from fedisguise.data.datasets import DATASETS, ImageDataset, load_dataset
from fedisguise.models import MODELS, build_model, min_size
from fedisguise.preflight import check_model


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("channels,size,classes", [(1, 28, 10), (3, 32, 7)])
def test_output_shape_for_any_channels_and_classes(name, channels, size, classes):
    model = build_model(name, channels, classes, size).eval()
    out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'vit'.*lenet.*resnet20"):
        build_model("vit", 1, 10, 28)


def test_models_are_trainable_end_to_end():
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]  # it can fit a tiny batch


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_lenet_dlg_is_the_dlg_papers_sigmoid_lenet_with_its_uniform_init(channels, size):
    torch.manual_seed(0)
    model = build_model("lenet-dlg", channels, 10, size)
    assert model(torch.rand(2, channels, size, size)).shape == (2, 10)
    side = -(-size // 4)  # two stride-2 convolutions with padding 2: 28 -> 7, 32 -> 8
    assert model.classifier[-1].in_features == 12 * side * side
    assert sum(isinstance(m, torch.nn.Sigmoid) for m in model.modules()) == 3
    for name, p in model.named_parameters():  # weights and biases alike, U(-0.5, 0.5)
        assert p.min() >= -0.5 and p.max() <= 0.5, name
        if p.numel() >= 100:  # wide enough to tell U(-0.5, 0.5) from the fan-in default
            assert p.min() < -0.4 and p.max() > 0.4, name
    biases = torch.cat([p for n, p in model.named_parameters() if n.endswith("bias")])
    assert biases.std() > 0.2  # U(-0.5, 0.5) has 0.29; the default's fan-in bound is 0.2


def test_image_sizes_below_a_models_minimum_are_errors():
    with pytest.raises(ValueError, match="lenet needs images of at least 12"):
        build_model("lenet", 1, 10, 8)
    with pytest.raises(ValueError, match="image_size must be >= 1"):
        build_model("lenet-dlg", 1, 10, 0)
    assert build_model("lenet-dlg", 1, 10, 1)(torch.rand(1, 1, 1, 1)).shape == (1, 10)


SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 48), (1, 25, 25)]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_model_trains_a_step_on_any_size_and_channels(name, shape):
    c, h, w = shape
    torch.manual_seed(0)
    model = build_model(name, c, 5, (h, w))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.rand(4, c, h, w), torch.tensor([0, 1, 2, 4])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.isfinite(loss)
    assert model(x).shape == (4, 5)
    moved = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert moved == len(before)  # every layer learns, the head included


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_one_side_and_a_square_pair_build_the_same_model(name, channels, size):
    torch.manual_seed(0)
    a = build_model(name, channels, 10, size).state_dict()
    torch.manual_seed(0)
    b = build_model(name, channels, 10, (size, size)).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_side_below_the_minimum_is_named_with_both_sides():
    with pytest.raises(ValueError, match=r"lenet needs images of at least 12×12, got 12×11"):
        build_model("lenet", 1, 10, (12, 11))
    with pytest.raises(ValueError, match=r"cnn-small needs images of at least 4×4, got 3×40"):
        build_model("cnn-small", 3, 10, (3, 40))
    with pytest.raises(ValueError, match="image_size must be one side or"):
        build_model("lenet", 1, 10, (28, 28, 1))
    assert min_size("lenet") == (12, 12) and min_size("resnet20") == (1, 1)


def test_the_preflight_names_the_model_and_its_minimum():
    saved = dict(DATASETS)

    @register_dataset("tiny-10x10")
    def tiny(split: str, data_dir: str) -> ImageDataset:
        gen = torch.Generator().manual_seed(0 if split == "train" else 1)
        return ImageDataset(torch.rand(40, 1, 10, 10, generator=gen), torch.arange(40) % 4, 4)

    try:
        cfg = Config().with_overrides(["data.dataset=tiny-10x10", "model.name=lenet",
                                       "experiment.clients=2", "data.test_samples=20"])
        with pytest.raises(ConfigError, match=r"model.name: lenet needs images of at least "
                                              r"12×12; tiny-10x10 images are 1×10×10"):
            check_model(cfg, load_dataset("tiny-10x10", "train"))
        ok = Config().with_overrides(["data.dataset=tiny-10x10", "model.name=lenet-dlg"])
        check_model(ok, load_dataset("tiny-10x10", "train"))  # takes any size
    finally:
        DATASETS.clear()
        DATASETS.update(saved)
