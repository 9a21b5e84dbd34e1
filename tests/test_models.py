import pytest
import torch

from fedisguise.models import MODELS, build_model


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
