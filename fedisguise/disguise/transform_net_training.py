"""Learnable transformation network (Ito, Kinoshita, Kiya; see
papers/transformation-network-ito-kiya.md): a keyless U-Net h_θ that makes images
unrecognisable while a frozen classifier ψ still classifies them.

Training (§III-B): ψ is trained on plain images first (or supplied) and frozen; h_θ minimises
    L_trans = L_class(ψ(h_θ(x)), y) − α · L_feat(x, h_θ(x)),
    L_feat  = ‖φ_k(h_θ(x)) − φ_k(x)‖² / (C_k·H_k·W_k)   (eq. 6, per image),
with φ_k the feature map after the second ReLU of ImageNet VGG16 (conv1_2). The network with
the lowest validation L_trans is kept (§IV-A). h_θ has no key: it is public by design, which is
exactly what the inverse-transformation-network attack (attacks.inverse, Level 1) exploits.

Where torchvision's ImageNet VGG16 weights cannot be had (offline and not in torch's hub
cache), `features_fallback` names the stand-in, recorded as `features_used`, never silent:
`vgg16-random` is the same two conv layers with seeded He initialisation; random conv
features still respond to edges and texture, so they measure visual change, more weakly.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fedisguise.unet import UNet

FEATURES = ("vgg16-imagenet", "vgg16-random")
FALLBACKS = ("", "vgg16-random")  # "" = no fallback: missing ImageNet weights is an error
OPTIMIZERS = ("adam", "paper-sgd")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# How h_θ was trained; stored in its file and checked against any value a spec repeats.
TRAINING_DEFAULTS: dict[str, Any] = {
    "alpha": 0.005, "features": "vgg16-imagenet", "features_fallback": "vgg16-random",
    "epochs": 10, "batch_size": 128, "lr": 1e-3, "optimizer": "adam", "width": 16,
    "validation": 0.1, "seed": 0,
}


class VGGFeatures(nn.Module):
    """φ_k: VGG16's conv1_1 → ReLU → conv1_2 → ReLU (the paper's "second ReLU") on
    ImageNet-normalised RGB (grey images are repeated over three channels). Frozen."""

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = layers.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"VGG16 features need 1 or 3 channels, got {x.shape[1]}")
        return self.layers((x - self.mean) / self.std)

    def train(self, mode: bool = True) -> VGGFeatures:  # φ_k stays in eval mode
        return super().train(False)


_IMAGENET_FAILURE: list[Exception] = []  # why ImageNet weights could not be had, if so


def feature_extractor(features: str, fallback: str = "vgg16-random",
                      seed: int = 0) -> tuple[VGGFeatures, str]:
    """(φ_k, the name actually used)."""
    from torchvision.models import VGG16_Weights, vgg16

    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; valid choices: {list(FEATURES)}")
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown features_fallback {fallback!r}; valid: {list(FALLBACKS)}")
    if features == "vgg16-imagenet":
        cached = Path(torch.hub.get_dir(), "checkpoints", "vgg16-397923af.pth").is_file()
        try:
            if _IMAGENET_FAILURE and not cached:  # one failed download per process, not per run
                raise _IMAGENET_FAILURE[0]
            return VGGFeatures(vgg16(weights=VGG16_Weights.IMAGENET1K_V1).features[:4]), features
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            if not cached:
                _IMAGENET_FAILURE[:] = [err]
            if not fallback:
                hub = Path(torch.hub.get_dir()) / "checkpoints"
                raise ValueError(
                    "features = 'vgg16-imagenet' needs torchvision's ImageNet VGG16 weights, "
                    f"which could not be loaded ({err}); put vgg16-397923af.pth in {hub} or "
                    "set features_fallback = 'vgg16-random'") from err
            features = fallback
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VGGFeatures(vgg16(weights=None).features[:4]), features


def feature_distance(phi: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L_feat per image: the mean squared difference of φ_k(a) and φ_k(b)."""
    return (phi(a) - phi(b)).pow(2).flatten(1).mean(1)


def _optimizer(name: str, params, lr: float, epochs: int):
    """`adam`, or the paper's SGD (momentum 0.9, weight decay 5e-4, lr × 0.2 at 30%, 60% and
    80% of the epochs: its 60/120/160 of 200)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr), None
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    milestones = sorted({max(1, round(epochs * f)) for f in (0.3, 0.6, 0.8)})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.2)


def check_training(params: dict[str, Any]) -> None:
    p = params
    if not (isinstance(p["alpha"], int | float) and math.isfinite(p["alpha"])
            and p["alpha"] >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {p['alpha']!r}")
    if p["features"] not in FEATURES:
        raise ValueError(f"unknown features {p['features']!r}; valid choices: {list(FEATURES)}")
    if p["features_fallback"] not in FALLBACKS:
        raise ValueError(f"unknown features_fallback {p['features_fallback']!r}; valid: "
                         f"{list(FALLBACKS)}")
    if p["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {p['optimizer']!r}; valid: {list(OPTIMIZERS)}")
    for name in ("epochs", "batch_size", "width"):
        if not isinstance(p[name], int) or isinstance(p[name], bool) or p[name] < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {p[name]!r}")
    if not (isinstance(p["lr"], int | float) and p["lr"] > 0):
        raise ValueError(f"lr must be > 0, got {p['lr']!r}")
    if not (isinstance(p["validation"], int | float) and 0 < p["validation"] < 1):
        raise ValueError(f"validation must be a fraction in (0, 1), got {p['validation']!r}")


def train_transform_net(images: torch.Tensor, labels: torch.Tensor, classifier: nn.Module, *,
                        device: torch.device | str = "cpu", progress: bool = True,
                        **training: Any) -> tuple[UNet, dict[str, Any]]:
    """Train h_θ against the frozen `classifier` ψ on (images, labels); returns h_θ (eval
    mode, on the CPU) and its figures. `training` overrides TRAINING_DEFAULTS."""
    unknown = sorted(set(training) - set(TRAINING_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown training parameter(s) {unknown}; valid: "
                         f"{sorted(TRAINING_DEFAULTS)}")
    p = {**TRAINING_DEFAULTS, **training}
    check_training(p)
    if images.ndim != 4 or labels.shape != (len(images),) or labels.is_floating_point():
        raise ValueError(f"need N×C×H×W images and N integer labels, got "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    started, device = time.perf_counter(), torch.device(device)
    gen = torch.Generator().manual_seed(p["seed"])
    order = torch.randperm(len(images), generator=gen)
    n_val = max(1, int(len(images) * p["validation"]))
    val, train = order[:n_val], order[n_val:]
    if len(train) < 1:
        raise ValueError(f"{len(images)} images leave nothing to train on after validation")
    phi, features_used = feature_extractor(p["features"], p["features_fallback"], p["seed"])
    phi = phi.to(device)
    psi = copy.deepcopy(classifier).to(device).eval().requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p["seed"])
        net = UNet(images.shape[1], p["width"]).to(device)
    opt, sched = _optimizer(p["optimizer"], net.parameters(), p["lr"], p["epochs"])

    def losses(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = images[idx].to(device), labels[idx].to(device)
        out = net(x)
        logits = psi(out)
        with torch.no_grad():  # φ_k(x) is a fixed target: no graph through it
            target = phi(x)
        l_feat = (phi(out) - target).pow(2).flatten(1).mean(1).mean()
        return F.cross_entropy(logits, y), l_feat, (logits.argmax(1) == y).float().mean()

    best, history = (math.inf, None, 0), []
    for epoch in tqdm(range(p["epochs"]), desc=f"transformation net (α={p['alpha']})",
                      unit="epoch", disable=not progress):
        net.train()
        for idx in train[torch.randperm(len(train), generator=gen)].split(p["batch_size"]):
            l_class, l_feat, _ = losses(idx)
            opt.zero_grad(set_to_none=True)
            (l_class - p["alpha"] * l_feat).backward()
            opt.step()
        if sched is not None:
            sched.step()
        net.eval()
        with torch.no_grad():
            parts = [losses(idx) for idx in val.split(512)]
        weights = [len(idx) / n_val for idx in val.split(512)]
        v_class, v_feat, v_acc = (sum(w * part[i].item()
                                      for w, part in zip(weights, parts, strict=True))
                                  for i in range(3))
        v_trans = v_class - p["alpha"] * v_feat
        history.append({"epoch": epoch + 1, "val_loss": v_trans, "val_class_loss": v_class,
                        "val_feature_distance": v_feat, "val_psi_accuracy": v_acc})
        if v_trans < best[0]:
            best = (v_trans, copy.deepcopy(net.state_dict()), epoch + 1)
    net.load_state_dict(best[1])
    chosen = history[best[2] - 1]
    figures = {"features_used": features_used, "selected_epoch": best[2],
               "val_loss": chosen["val_loss"], "val_feature_distance":
               chosen["val_feature_distance"], "val_psi_accuracy": chosen["val_psi_accuracy"],
               "train_images": len(train), "val_images": n_val,
               "seconds": time.perf_counter() - started, "history": history}
    return net.cpu().eval(), {"training": p, **figures}


def save_transform_net(path: str | Path, net: UNet, info: dict[str, Any]) -> None:
    """h_θ's weights and how it was trained, in one torch file (public: no key inside)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = net.out.out_channels
    torch.save({"format": "fedisguise-transform-net-1", "channels": channels,
                "width": net.down1[0].out_channels, "state_dict": net.state_dict(),
                "info": json.loads(json.dumps(info))}, path)


def load_transform_net(path: str | Path) -> tuple[UNet, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"transformation network file not found: {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != "fedisguise-transform-net-1":
            raise ValueError("not a fedisguise transformation-network file")
        net = UNet(int(saved["channels"]), int(saved["width"]))
        net.load_state_dict(saved["state_dict"])
    except (RuntimeError, KeyError, ValueError, EOFError, OSError) as err:
        raise ValueError(f"{path}: cannot load a transformation network ({err})") from err
    return net.eval(), saved["info"]


HARNESS_DEFAULTS: dict[str, Any] = {"classifier": "", "classifier_path": "",
                                    "classifier_epochs": 3, "trainer": "coordinator",
                                    "trainer_client": 0, "train_samples": 10000}
TRAINERS = ("coordinator", "client")


@torch.no_grad()
def transform_images(net: UNet, images: torch.Tensor) -> torch.Tensor:
    """h_θ(images) in chunks, without gradients, on the images' device and in their dtype."""
    if not len(images):
        return images.clone()
    net = net.to(images.device)
    return torch.cat([net(chunk) for chunk in images.split(1024)]).to(images.dtype)
