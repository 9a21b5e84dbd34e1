"""What an update tells before any optimisation: the trainable parameters, the update's delta,
the last linear layer, the batch's labels recovered from its gradient (iDLG's sign rule), and
the total-variation image prior the inversions use."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def update_delta(model: nn.Module, before: Mapping[str, torch.Tensor],
                 after: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ_before − θ_after for every trainable parameter (buffers carry no gradient)."""
    missing = [n for n in trainable(model) if n not in before or n not in after]
    if missing:
        raise ValueError(f"update lacks parameters {missing[:3]}...; not this model's update")
    delta = {}
    for n, p in trainable(model).items():
        if before[n].shape != p.shape or after[n].shape != p.shape:
            raise ValueError(f"parameter {n!r} has shape {tuple(after[n].shape)} in the update "
                             f"but {tuple(p.shape)} in the model")
        delta[n] = before[n].float() - after[n].float()
        if not torch.isfinite(delta[n]).all():
            raise ValueError(f"the update's {n!r} holds NaN or inf: nothing to invert")
    return delta


def last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None]
    if not layers:
        raise ValueError("label recovery needs a final nn.Linear layer with a bias")
    return layers[-1]


def recover_labels(model: nn.Module, gradient: Mapping[str, torch.Tensor], count: int
                   ) -> torch.Tensor:
    """iDLG / LLG-style label recovery from the last layer's bias gradient (see module doc)."""
    head = last_linear(model)
    name = next(n for n, p in model.named_parameters() if p is head.bias)
    g = gradient[name].detach().flatten()
    negative = (g < 0).nonzero().flatten()
    if len(negative) == 0:
        return torch.argmin(g).repeat(count)
    order = negative[torch.argsort(g[negative])]  # most negative first
    if count <= len(order):
        return order[:count].sort().values
    # More images than negative entries: share the batch out by negative mass.
    mass = -g[order]
    share = mass / mass.sum() * count
    counts = share.floor().long().clamp(min=1)
    while counts.sum() < count:
        counts[torch.argmax(share - counts)] += 1
    while counts.sum() > count:
        counts[torch.argmax(counts)] -= 1
    return order.repeat_interleave(counts).sort().values


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + \
        (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
