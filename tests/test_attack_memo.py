"""One computation per process for identical attack inputs (fedisguise.attacks.memo): what is
reused must be what would have been computed, and nothing else may be reused."""

import pytest
import torch

from fedisguise.attacks import memo
from fedisguise.attacks.gradient_inversion import invert
from fedisguise.attacks.inverse import train_inverse
from fedisguise.models import build_model


@pytest.fixture(autouse=True)
def _fresh():
    memo.clear()
    yield
    memo.clear()


def _update(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("lenet", 1, 10, 28)
    images, labels = torch.rand(2, 1, 28, 28), torch.tensor([3, 7])
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    delta = {n: 0.05 * g for (n, _), g in zip(model.named_parameters(), grads, strict=True)}
    return model, delta


def test_fingerprint_follows_content_not_identity():
    a = torch.arange(12.0).view(3, 4)
    assert memo.fingerprint(a) == memo.fingerprint(a.clone())
    assert memo.fingerprint(a) != memo.fingerprint(a.t().contiguous())  # same bytes set
    b = a.clone()
    b[1, 2] += 1e-6
    assert memo.fingerprint(a) != memo.fingerprint(b)
    assert memo.fingerprint(a) != memo.fingerprint(a.double())
    m1, m2 = build_model("lenet", 1, 10, 28), build_model("lenet", 1, 10, 28)
    m2.load_state_dict(m1.state_dict())
    assert memo.fingerprint(m1) == memo.fingerprint(m2)
    with torch.no_grad():
        next(m2.parameters()).add_(1e-3)
    assert memo.fingerprint(m1) != memo.fingerprint(m2)
    assert memo.fingerprint({"x": 1, "y": 2}) == memo.fingerprint({"y": 2, "x": 1})
    assert memo.fingerprint(1) != memo.fingerprint(1.0)


def test_an_identical_inversion_is_reused_as_a_copy():
    model, delta = _update()
    settings = {"batch_size": 2, "image_shape": (1, 28, 28), "lr": 0.05, "iterations": 30,
                "progress": False}
    first = invert(model, delta, **settings)
    again = invert(model, delta, **settings)
    assert "reused" not in first and again["reused"] is True
    assert torch.equal(first["images"], again["images"]) and first["loss"] == again["loss"]
    again["images"].zero_()  # the caller's copy, not the stored answer
    assert torch.equal(invert(model, delta, **settings)["images"], first["images"])
    with memo.disabled():
        fresh = invert(model, delta, **settings)
    assert "reused" not in fresh and torch.equal(fresh["images"], first["images"])


@pytest.mark.parametrize("change", [{"seed": 1}, {"iterations": 31}, {"tv_weight": 0.01},
                                    {"box": (0.0, 2.0)}, {"labels": torch.tensor([3, 3])}])
def test_any_other_setting_inverts_again(change):
    model, delta = _update()
    settings = {"batch_size": 2, "image_shape": (1, 28, 28), "lr": 0.05, "iterations": 30,
                "progress": False}
    invert(model, delta, **settings)
    assert "reused" not in invert(model, delta, **{**settings, **change})


def test_another_update_or_model_inverts_again():
    model, delta = _update()
    settings = {"batch_size": 2, "image_shape": (1, 28, 28), "lr": 0.05, "iterations": 30,
                "progress": False}
    invert(model, delta, **settings)
    other = dict(delta)
    other["classifier.5.bias"] = other["classifier.5.bias"] * 2
    assert "reused" not in invert(model, other, **settings)
    model2, _ = _update(seed=1)
    assert "reused" not in invert(model2, delta, **settings)


def test_a_reused_network_leaves_the_global_generator_as_training_would():
    x, y = torch.rand(64, 2, 8, 8), torch.rand(64, 1, 8, 8)
    settings = {"epochs": 1, "batch_size": 32, "width": 4, "seed": 3, "progress": False}
    net, info = train_inverse(x, y, **settings)
    after_training = torch.rand(4)
    torch.manual_seed(123)  # the generator elsewhere now
    net2, info2 = train_inverse(x, y, **settings)
    assert info2["reused"] is True and "reused" not in info
    assert torch.equal(torch.rand(4), after_training)
    assert torch.equal(net(x[:4]), net2(x[:4]))
    _, info3 = train_inverse(x, y * 0.5, **settings)  # other pairs: trained anew
    assert "reused" not in info3


def test_the_store_is_bounded():
    for i in range(memo.MAX_ENTRIES + 3):
        memo.once("k", (i,), lambda i=i: i)
    assert len(memo._results) == memo.MAX_ENTRIES
    assert memo.once("k", (0,), lambda: "again") == ("again", False)  # the oldest went
    assert memo.once("k", (memo.MAX_ENTRIES + 2,), lambda: "x")[1] is True
