"""The disguise interface and registry.

A disguise maps a float batch N×C×H×W in [0, 1] to its disguised form on the client, before
any model sees it. Inputs are validated here, once, at the public entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch


class Disguise(Protocol):
    def apply(self, images: torch.Tensor, labels: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def check_images(images: torch.Tensor) -> None:
    """Reject what a disguise must never silently accept."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must be N×C×H×W, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"images must lie in [0, 1], got [{images.min().item():.3g}, {images.max().item():.3g}]"
        )


class NoDisguise:
    """The plain-FL baseline: images pass through unchanged (but still validated)."""

    def apply(self, images: torch.Tensor, labels: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_images(images)
        return images, labels


DISGUISES: dict[str, Callable[[Mapping[str, Any], Any], Disguise]] = {
    "none": lambda params, key: NoDisguise(),
}


def build(spec: str | Mapping[str, Any], key: Any = None) -> Disguise:
    """Build a disguise from a name or a `{name = ..., <params>}` table."""
    params = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = params.pop("name", None)
    if name not in DISGUISES:
        raise ValueError(f"unknown disguise {name!r}; valid choices: {sorted(DISGUISES)}")
    if name == "none" and params:
        raise ValueError(f"disguise 'none' takes no parameters, got {sorted(params)}")
    return DISGUISES[name](params, key)
