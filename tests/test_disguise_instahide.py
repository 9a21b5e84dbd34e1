import pytest
import torch

from fedisguise.disguise import DisguiseKey, build

KEY = DisguiseKey.generate(4)


def test_mixed_labels_are_distributions_and_weights_respect_the_upper_bound():
    x, y = torch.rand(200, 1, 8, 8), torch.randint(0, 10, (200,))
    d = build({"name": "instahide", "k": 4, "upper": 0.65}, KEY)
    out, soft = d.apply(x, y)
    assert out.min() >= -1 and out.max() <= 1
    assert soft.shape == (200, 10) and torch.allclose(soft.sum(1), torch.ones(200))
    assert soft[torch.arange(200), y].min() > 0  # the private image's own class is present
    lam = build({"name": "instahide", "k": 4}, KEY)._weights(1000)
    assert lam.max() <= 0.65 and torch.allclose(lam.sum(1), torch.ones(1000))


def test_k1_is_a_sign_flip_of_the_rescaled_image():
    x = torch.rand(3, 1, 8, 8)
    out, _ = build({"name": "instahide", "k": 1}, KEY).apply(x)
    assert torch.allclose(out.abs(), (2 * x - 1).abs())
    flipped = (out * (2 * x - 1) < 0).float().mean()
    assert 0.4 < flipped < 0.6  # σ is a fair coin per pixel


def test_mask_is_fresh_per_image():
    x = torch.rand(1, 1, 8, 8).repeat(2, 1, 1, 1)
    out, _ = build({"name": "instahide", "k": 1}, KEY).apply(x)
    assert not torch.equal(out[0], out[1])


def test_cross_dataset_mixes_with_public_images_and_keeps_private_labels():
    x, y = torch.rand(50, 1, 8, 8), torch.randint(0, 10, (50,))
    public = torch.rand(20, 1, 8, 8)
    d = build({"name": "instahide", "k": 3, "mode": "cross", "public": public}, KEY)
    out, soft = d.apply(x, y)
    assert torch.equal(soft, torch.nn.functional.one_hot(y, 10).float())
    with pytest.raises(ValueError, match="needs public_dataset"):
        build({"name": "instahide", "mode": "cross"}, KEY)


def test_bad_labels_are_errors():
    d = build({"name": "instahide", "k": 2, "num_classes": 10}, KEY)
    with pytest.raises(ValueError, match="class indices"):
        d.apply(torch.rand(2, 1, 8, 8), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="labels must be a tensor with 2 rows"):
        d.apply(torch.rand(2, 1, 8, 8), torch.tensor([0, 1, 2]))


def test_batches_are_mixed_within_themselves_in_one_call():
    d = build({"name": "instahide", "k": 3}, DisguiseKey.generate(4))
    x, y = torch.rand(30, 1, 8, 8), torch.arange(30) % 10
    labels = torch.arange(30)  # one class per image: the soft label names the partners
    wide = build({"name": "instahide", "k": 3, "num_classes": 30}, DisguiseKey.generate(4))
    _, soft = wide.apply_batches(x, labels, [12, 18])
    batch = (torch.arange(30) >= 12).long()
    for row, members in enumerate(soft > 0):
        assert (batch[members] == batch[row]).all()  # partners from the row's own batch
        assert members[row]  # and the row's own image leads it
    out, _ = d.apply_batches(x, y, [12, 18])
    assert out.shape == x.shape and out.abs().max() <= 1
    with pytest.raises(ValueError, match="do not cut 30 images"):
        d.apply_batches(x, y, [12, 17])
