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
