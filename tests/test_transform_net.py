"""Learnable transformation network (Ito, Kinoshita, Kiya): training against a frozen ψ, the
keyless disguise built from its file, and the inverse-network attack against it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedisguise.attacks.inverse import apply_inverse, train_inverse
from fedisguise.config import Config, ConfigError
from fedisguise.data.datasets import load_dataset
from fedisguise.disguise import DisguiseKey, build
from fedisguise.disguise.transform_net_training import (
    feature_distance,
    feature_extractor,
    load_transform_net,
    save_transform_net,
    train_transform_net,
)
from fedisguise.metrics import psnr
from fedisguise.models import build_model
from fedisguise.training import train_local

from .conftest import DEBIAN_FMNIST, synthetic_config

# A budget that trains in seconds on a CPU and still separates α = 0 from α > 0.
SMALL = {"features": "vgg16-random", "epochs": 3, "batch_size": 20, "width": 8, "lr": 1e-2}


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", "train").subset(torch.arange(200))


@pytest.fixture(scope="module")
def psi(data):
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    train_local(model, data, epochs=3, batch_size=32, optimizer="adam", lr=3e-3)
    return model


@pytest.fixture(scope="module")
def trained(data, psi, tmp_path_factory):
    net, info = train_transform_net(data.images, data.labels, psi, alpha=0.0, progress=False,
                                    **SMALL)
    path = tmp_path_factory.mktemp("tn") / "h.pt"
    save_transform_net(path, net, info)
    return path, net, info


def test_keyless_disguise_from_a_file_keeps_shape_and_range_and_is_deterministic(trained,
                                                                                  data):
    path, net, info = trained
    x = data.images[:16]
    d = build({"name": "transform-net", "path": str(path)})
    out, labels = d.apply(x, data.labels[:16])
    assert out.shape == x.shape and out.dtype == x.dtype and torch.equal(labels,
                                                                          data.labels[:16])
    assert 0 <= out.min() and out.max() <= 1 and not torch.allclose(out, x, atol=0.05)
    keyed = build({"name": "transform-net", "path": str(path)}, DisguiseKey.generate(seed=3))
    assert torch.equal(keyed.apply(x)[0], out) and torch.equal(d.apply(x)[0], out)
    with torch.no_grad():
        assert torch.allclose(net(x), out)
    assert info["features_used"] == "vgg16-random" and info["training"]["alpha"] == 0.0
    assert 1 <= info["selected_epoch"] <= 3 and len(info["history"]) == 3


def test_save_load_round_trip_and_bad_files(trained, data, tmp_path):
    path, net, info = trained
    loaded, loaded_info = load_transform_net(path)
    with torch.no_grad():
        assert torch.equal(loaded(data.images[:8]), net(data.images[:8]))
    assert loaded_info["training"] == info["training"]
    # A spec that repeats a training parameter must agree with the file.
    build({"name": "transform-net", "path": str(path), "alpha": 0.0, "width": 8, "lr": 1e-2})
    with pytest.raises(ValueError, match="other parameters.*alpha"):
        build({"name": "transform-net", "path": str(path), "alpha": 0.01})
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build({"name": "transform-net", "path": str(tmp_path / "nope.pt")})
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="broken.pt"):
        build({"name": "transform-net", "path": str(broken)})
    with pytest.raises(ValueError, match="needs a trained"):
        build("transform-net")
    with pytest.raises(ValueError, match="3-channel|1-channel"):
        build({"name": "transform-net", "path": str(path)}).apply(torch.rand(2, 3, 28, 28))


def test_a_run_given_a_file_checks_it_before_anything_starts(trained, tmp_path):
    from fedisguise.disguise import transform_net_prepare as transform

    path = trained[0]
    wrong = synthetic_config(tmp_path).with_overrides(
        [f'disguise={{"name": "transform-net", "path": "{path}", "alpha": 0.01}}'])
    with pytest.raises(ValueError, match="other parameters"):
        transform.prepare(wrong)
    given = synthetic_config(tmp_path).with_overrides(
        [f'disguise={{"name": "transform-net", "path": "{path}"}}'])
    assert transform.prepare(given) is given  # nothing retrained, the file is used as it is


def test_runs_with_the_same_settings_train_h_theta_once(tmp_path, monkeypatch):
    # A grid's tuning runs and utility cell of one seed would each train the same h_θ
    # (minutes each); the first trains it, the others copy it. Another seed trains its own.
    from fedisguise.disguise import transform_net_prepare as transform

    spec = ('{"name": "transform-net", "epochs": 1, "width": 4, "train_samples": 16, '
            '"classifier_epochs": 0, "batch_size": 8}')
    calls = []
    real = transform.train_for
    monkeypatch.setattr(transform, "train_for", lambda *a: calls.append(1) or real(*a))

    def run(name: str, seed: int = 0):
        cfg = synthetic_config(tmp_path, **{"experiment.name": name, "experiment.seed": seed,
                                            "data.train_per_client": 16, "disguise": spec})
        return Path(transform.prepare(cfg).disguise["path"])

    first, second = run("a"), run("b")
    assert len(calls) == 1 and first != second  # each run keeps its own copy
    assert first.read_bytes() == second.read_bytes()
    assert (second.parent / "transform-net.json").is_file()
    run("c", seed=1)
    assert len(calls) == 2
    cache = tmp_path / transform.CACHE
    assert len(list(cache.iterdir())) == 2 and not list(cache.glob("*.tmp-*"))


def test_larger_alpha_pushes_features_further_on_the_same_budget(data, psi):
    phi, _ = feature_extractor("vgg16-random")
    x = data.images[:100]
    distances = []
    for alpha in (0.0, 10.0):
        net, info = train_transform_net(data.images, data.labels, psi, alpha=alpha,
                                        progress=False, **SMALL)
        with torch.no_grad():
            distances.append(feature_distance(phi, net(x), x).mean().item())
        assert info["val_feature_distance"] == pytest.approx(info["history"][
            info["selected_epoch"] - 1]["val_feature_distance"])
    assert distances[1] > 1.2 * distances[0]


def test_the_inverse_network_beats_doing_nothing_at_alpha_0(trained):
    _, net, _ = trained
    public = load_dataset("synthetic", "test").images
    with torch.no_grad():
        pairs = net(public)
    inverse, _ = train_inverse(pairs[:400], public[:400], epochs=8, width=16, lr=5e-3,
                               progress=False)
    rec = apply_inverse(inverse, pairs[400:])
    identity = psnr(pairs[400:], public[400:]).mean().item()
    # Synthetic images carry σ = 0.25 pixel noise no inverse can predict: ~13 dB is the ceiling.
    assert psnr(rec, public[400:]).mean().item() > identity + 1.5


def test_missing_imagenet_weights_fall_back_or_fail_as_configured(monkeypatch):
    import torchvision.models

    def offline(*args, **kwargs):
        if kwargs.get("weights") is not None:
            raise OSError("no network")
        return original(*args, **kwargs)

    original = torchvision.models.vgg16
    monkeypatch.setattr(torchvision.models, "vgg16", offline)
    phi, used = feature_extractor("vgg16-imagenet", "vgg16-random")
    assert used == "vgg16-random" and phi(torch.rand(2, 1, 28, 28)).shape == (2, 64, 28, 28)
    with pytest.raises(ValueError, match="vgg16-397923af.pth.*features_fallback"):
        feature_extractor("vgg16-imagenet", "")


@pytest.mark.parametrize("params, match", [
    ({"alpha": -1.0}, "alpha"),
    ({"features": "resnet"}, "unknown features"),
    ({"optimizer": "rmsprop"}, "unknown optimizer"),
    ({"trainer": "server"}, "unknown trainer"),
    ({"classifier": "vit"}, "unknown classifier"),
    ({"epochs": 0}, "epochs"),
    ({"colour": 1}, "unknown parameter"),
])
def test_bad_transform_net_specs_fail_at_config_time(params, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_dict({"disguise": {"name": "transform-net", **params}})


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(DEBIAN_FMNIST), reason="needs Debian's Fashion-MNIST")
def test_a_run_trains_h_once_and_the_itn_attack_scores_it(tmp_path):
    from fedisguise.experiment import run_experiment

    cfg = synthetic_config(tmp_path, **{
        "data.dataset": "fashion-mnist", "data.test_samples": 500,
        "data.train_per_client": 300, "privacy.examiner_samples": 500,
        "privacy.examiner_epochs": 1,
    }).with_overrides([
        'disguise={"name": "transform-net", "alpha": 0.0, "features": "vgg16-random", '
        '"epochs": 4, "width": 8, "lr": 0.01, "batch_size": 32, "train_samples": 1000, '
        '"classifier_epochs": 5}',
        'attacks=[{"name": "inverse_network", "level": 1, "pairs": 800, "epochs": 4, '
        '"targets": 200, "target_set": "test"}]'])
    record = run_experiment(cfg)
    t = record["transform_net"]
    assert t["trainer"] == "coordinator" and t["train_images"] + t["val_images"] == 1000
    assert t["psi_accuracy_plain"] > 0.5 and t["psi_accuracy_transformed"] > 0.3
    assert record["config"]["disguise"]["path"] == str((tmp_path / "t" / "transform-net.pt"))
    assert "history" not in t and record["final"]["test_accuracy"] > 0.2
    itn = record["attacks"]["inverse_network-level1"]
    assert itn["target_set"] == "test" and itn["targets"] == 200
    assert itn["psnr_vs_original"] > itn["psnr_disguised_vs_original"]
    assert "visual_privacy" in record["privacy"]
