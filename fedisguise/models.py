"""Model registry: a name in a config maps to one builder.

Every builder takes `in_channels`, `num_classes` and the input `image_size` (H, W), square or
not, so that any model fits any dataset from its stated minimum (`min_size`): flatten sizes are
computed from H and W, never hard-coded to 28×28 or 32×32, and at square sizes every layer is
what it was when builders took one side (the same weights after the same seed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from fedisguise.plugins import choices, registrar


Size = int | Sequence[int]  # one side (square) or (H, W)


def hw(image_size: Size) -> tuple[int, int]:
    """(H, W) from one side or a pair."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        return image_size, image_size
    if isinstance(image_size, Sequence) and len(image_size) == 2 \
            and all(isinstance(v, int) and not isinstance(v, bool) for v in image_size):
        return int(image_size[0]), int(image_size[1])
    raise ValueError(f"image_size must be one side or (H, W) as integers, got {image_size!r}")


class LeNet(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, as used for (Fashion-)MNIST."""

    min_size = 12  # the second 5×5 convolution needs a 5×5 map after the first pooling

    def __init__(self, in_channels: int, num_classes: int, image_size: Size) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        h, w = ((side // 2 - 4) // 2 for side in hw(image_size))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * h * w, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head: the DisguisedNets paper's 'simple CNN' scale."""

    min_size = 4  # two 2×2 poolings

    def __init__(self, in_channels: int, num_classes: int, image_size: Size) -> None:
        super().__init__()
        h, w = (side // 4 for side in hw(image_size))
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * h * w, 128), nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20 (He et al. 2016, §4.2): 3 stages of 3 basic blocks, 16/32/64;
    its head pools adaptively, so any size fits."""

    min_size = 1

    def __init__(self, in_channels: int, num_classes: int, image_size: Size) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        blocks, planes = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(_BasicBlock(planes, width, stride if i == 0 else 1))
                planes = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class LeNetDLG(nn.Module):
    """The sigmoid LeNet that DLG attacks (Zhu et al., NeurIPS 2019, §4.1 and their code).

    Three 5×5 convolutions of 12 channels with padding 2 and strides 2, 2, 1, each followed by
    a sigmoid, then one linear layer. No pooling and no ReLU: the network is smooth, so the
    gradient-matching loss is too, which is what L-BFGS needs. Each stride-2 convolution maps a
    side s to ceil(s/2), so any image of at least 1×1 fits.

    Weights and biases are drawn from U(−0.5, 0.5), as in the paper's code (`weights_init`),
    rather than PyTorch's fan-in-scaled default: the init is part of the model that DLG's
    near-exact reconstructions were reported on, and it is done here, in the builder, so that
    every `build_model("lenet-dlg", ...)` after a given `torch.manual_seed` is that model,
    whoever builds it (server, client, attack).
    """

    min_size = 1

    def __init__(self, in_channels: int, num_classes: int, image_size: Size) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 12, 5, stride=2, padding=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, stride=2, padding=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, stride=1, padding=2), nn.Sigmoid(),
        )
        # two stride-2 convs, padding 2: ceil(ceil(s/2)/2) per side
        h, w = (-(-side // 4) for side in hw(image_size))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(12 * h * w, num_classes))
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16BN(nn.Module):
    """VGG-16 with batch norm (Simonyan & Zisserman 2015, config D), CIFAR-style head.

    Pooling stops along a side once it is 1, so 28×28 inputs work as well as 32×32, and
    non-square ones too.
    """

    min_size = 1

    def __init__(self, in_channels: int, num_classes: int, image_size: Size) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, (h, w) = in_channels, hw(image_size)
        for item in _VGG16:
            if item == "M":
                if h >= 2 and w >= 2:
                    layers.append(nn.MaxPool2d(2))
                elif h >= 2 or w >= 2:
                    layers.append(nn.MaxPool2d((2 if h >= 2 else 1, 2 if w >= 2 else 1)))
                h, w = max(h // 2, 1), max(w // 2, 1)
                continue
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.BatchNorm2d(int(item)),
                       nn.ReLU()]
            channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


MODELS: dict[str, Callable[[int, int, Size], nn.Module]] = {
    "lenet": LeNet,
    "lenet-dlg": LeNetDLG,
    "cnn-small": SmallCNN,
    "resnet20": ResNet20,
    "vgg16_bn": VGG16BN,
}


ModelBuilder = Callable[[int, int, tuple[int, int]], nn.Module]


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Add a model: `builder(in_channels, num_classes, image_size)` returns an nn.Module
    that maps N×C×H×W images to N×num_classes logits; `image_size` is (H, W). A builder's
    `min_size` attribute (one side or (H, W); default 1) is the smallest input it takes,
    checked before a run starts."""
    return registrar(MODELS, "model", name)


def min_size(name: str) -> tuple[int, int]:
    """The smallest H×W the registered model `name` takes."""
    return hw(getattr(MODELS[name], "min_size", 1))


def build_model(name: str, in_channels: int, num_classes: int, image_size: Size) -> nn.Module:
    """Instantiate a registered model for C×H×W inputs (`image_size` one side or (H, W))."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid choices: {choices(MODELS)}")
    if in_channels < 1 or num_classes < 2:
        raise ValueError(f"need in_channels >= 1 and num_classes >= 2, got {in_channels}, "
                         f"{num_classes}")
    (h, w), (min_h, min_w) = hw(image_size), min_size(name)
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be >= 1 per side, got {h}×{w}")
    if h < min_h or w < min_w:
        raise ValueError(f"{name} needs images of at least {min_h}×{min_w}, got {h}×{w}")
    return MODELS[name](in_channels, num_classes, (h, w))
