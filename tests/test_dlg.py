"""DLG (Zhu et al. 2019) on its own sigmoid LeNet recovers single images near-exactly."""

import os

import pytest
import torch
import torch.nn.functional as F

from fedisguise.attacks.base import Evidence, GroundTruth, Knowledge, Runtime, ServerView
from fedisguise.attacks.gradient_inversion import GradientInversion, invert
from fedisguise.attacks.scoring import Scorer
from fedisguise.attacks.update_algebra import update_delta
from fedisguise.data.datasets import ImageDataset, load_dataset
from fedisguise.metrics import psnr
from fedisguise.models import build_model

from .conftest import DEBIAN_FMNIST

needs_fmnist = pytest.mark.skipif(not os.path.exists(DEBIAN_FMNIST),
                                  reason="dataset-fashion-mnist not installed")


def sgd_delta(model, images, labels, lr=0.05):
    """θ_before − θ_after of one plain SGD step on a copy of `model`, as a client uploads it."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = torch.autograd.grad(F.cross_entropy(model(images), labels),
                                list(model.parameters()))
    after = {n: p.detach() - lr * g for (n, p), g in zip(model.named_parameters(), grads, strict=True)}
    return update_delta(model, before, after)


def dlg_psnr(model, image, label, iterations):
    size = image.shape[-1]
    out = invert(model, sgd_delta(model, image, label), batch_size=1,
                 image_shape=(1, size, size), lr=0.05, method="dlg", iterations=iterations,
                 progress=False)  # labels=None: iDLG reads them off the update
    assert out["labels"].tolist() == label.tolist()
    assert out["images"].min() >= 0 and out["images"].max() <= 1
    return psnr(out["images"], image).item()


def test_dlg_recovers_random_small_images_near_exactly():
    torch.manual_seed(0)
    model = build_model("lenet-dlg", 1, 10, 8)
    gen = torch.Generator().manual_seed(1)
    for label in range(3):
        image = torch.rand(1, 1, 8, 8, generator=gen)
        assert dlg_psnr(model, image, torch.tensor([label]), iterations=60) >= 40.0


@needs_fmnist
def test_dlg_recovers_fashion_mnist_test_images_near_exactly_on_the_papers_lenet():
    data = load_dataset("fashion-mnist", "test")
    torch.manual_seed(0)
    model = build_model("lenet-dlg", 1, 10, 28)
    for i in (0, 1):
        assert dlg_psnr(model, data.images[i:i + 1], data.labels[i:i + 1],
                        iterations=300) >= 40.0


def test_step_size_defaults_per_method_and_is_validated():
    assert GradientInversion(method="dlg").step_size is None  # invert picks L-BFGS's 1.0
    for bad in (0, -0.1, "1", True):
        with pytest.raises(ValueError, match="step_size"):
            GradientInversion(method="dlg", step_size=bad)
    model = build_model("lenet-dlg", 1, 10, 8)
    delta = sgd_delta(model, torch.rand(1, 1, 8, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match="step_size must be > 0"):
        invert(model, delta, batch_size=1, image_shape=(1, 8, 8), lr=0.05, method="dlg",
               step_size=0.0, progress=False)


def test_the_gradient_inversion_attack_runs_dlg_with_its_own_step_size():
    torch.manual_seed(0)
    model = build_model("lenet-dlg", 1, 10, 8)
    image = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    label = torch.tensor([3])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after = {k: before[k] - v for k, v in sgd_delta(model, image, label).items()}
    view = ServerView(server_round=1, partition_id=0, num_examples=1, global_state=before,
                      client_state=after, model_name="lenet-dlg", image_shape=(1, 8, 8),
                      num_classes=10, lr=0.05, local_steps=1, local_epochs=1, batch_size=1)
    public = ImageDataset(torch.rand(16, 1, 8, 8), torch.arange(16) % 10, 10)
    attack = GradientInversion(method="dlg", iterations=60)
    rec = attack.reconstruct(Evidence(view), Knowledge(level=0, public=public),
                             Runtime(device=torch.device("cpu"), seed=0, progress=False))
    truth = GroundTruth(batch_plain=image, batch_disguised=image, batch_labels=label,
                        train_plain=ImageDataset(image, label, 10), train_disguised=image,
                        disguise_spec=None, disguise_key=None)
    figures = attack.score(rec, truth, Scorer(public, "lenet-dlg", torch.device("cpu"), 0,
                                              epochs=1, progress=False))
    assert figures["status"] == "ok" and figures["label_accuracy"] == 1.0
    assert figures["psnr_vs_original"] >= 40.0
