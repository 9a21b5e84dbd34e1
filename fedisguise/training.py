"""Local training and evaluation loops, free of Flower so they test on their own.

Batches are drawn from in-memory tensors with a seeded permutation: the seed fixes the
training order, and there is no DataLoader worker start-up on every round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from fedisguise.data.datasets import ImageDataset
from fedisguise.optim import STAdam

OptimizerFactory = Callable[[Iterable[nn.Parameter], float, float, float], torch.optim.Optimizer]
# (images, labels, batches, first step) -> each batch as the model sees it: a disguise drawn
# afresh for every batch (fedisguise.node_data.BatchDraws). `batches` index `images`: an
# epoch's batches at once (one vectorised call), numbered from `first step`.
BatchTransform = Callable[[torch.Tensor, torch.Tensor, list[torch.Tensor], int],
                          list[tuple[torch.Tensor, torch.Tensor]]]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda params, lr, momentum, wd: torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=wd
    ),
    "adam": lambda params, lr, momentum, wd: torch.optim.Adam(
        params, lr=lr, betas=(momentum or 0.9, 0.999), weight_decay=wd
    ),
    # VisualMixer §IV-E; train.momentum is ST-Adam's added momentum term.
    "st-adam": lambda params, lr, momentum, wd: STAdam(
        params, lr=lr, weight_decay=wd, momentum=momentum
    ),
}


def training_order_seed(seed: int, server_round: int, partition_id: int) -> int:
    """The seed of one client's batch order in one round: one experiment seed fixes them all,
    and the attack harness can name the images behind a captured update."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


def epoch_batches(num_examples: int, batch_size: int, epochs: int,
                  generator: torch.Generator | None, max_steps: int = 0
                  ) -> Iterator[list[torch.Tensor]]:
    """The example indices of the batches `train_local` takes, epoch by epoch: a fresh
    permutation per epoch from `generator`, cut into batches, stopping after `max_steps`
    batches when > 0."""
    steps = 0
    for _ in range(epochs):
        if max_steps and steps == max_steps:
            return
        batches = list(torch.randperm(num_examples, generator=generator).split(batch_size))
        if max_steps:
            batches = batches[:max_steps - steps]
        steps += len(batches)
        yield batches


def batch_order(num_examples: int, batch_size: int, epochs: int,
                generator: torch.Generator | None, max_steps: int = 0) -> Iterator[torch.Tensor]:
    """The example indices of every batch `train_local` takes, in order (`epoch_batches`)."""
    for batches in epoch_batches(num_examples, batch_size, epochs, generator, max_steps):
        yield from batches


def batch_indices(num_examples: int, order_seed: int, batch_size: int, steps: int,
                  epochs: int = 1) -> torch.Tensor:
    """The examples behind a client's first `steps` batches, for the attack harness."""
    gen = torch.Generator().manual_seed(order_seed)
    return torch.cat(list(batch_order(num_examples, batch_size, epochs, gen, steps)))


def resolve_device(preference: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("resources.device = 'cuda' but torch sees no CUDA device")
    return torch.device(preference)


def train_local(model: nn.Module, data: ImageDataset, *, epochs: int, batch_size: int,
                optimizer: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                proximal_mu: float = 0.0, device: torch.device | str = "cpu",
                generator: torch.Generator | None = None, max_steps: int = 0,
                batch_transform: BatchTransform | None = None) -> float:
    """Train in place for `epochs` passes, or stop after `max_steps` batches when > 0 (one
    step = FedSGD); returns the mean cross-entropy over all batches. `batch_transform`
    disguises each epoch's batches before the model sees them.

    `proximal_mu > 0` adds FedProx's (mu/2)·||w − w_global||² (Li et al. 2020, eq. 2) with
    w_global the weights the model held on entry.
    """
    if len(data) == 0:
        raise ValueError("cannot train on an empty dataset")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid choices: {sorted(OPTIMIZERS)}")
    device = torch.device(device)
    model.to(device).train()
    opt = OPTIMIZERS[optimizer](model.parameters(), lr, momentum, weight_decay)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu else []
    images, labels = data.images.to(device), data.labels.to(device)
    loss_fn = nn.CrossEntropyLoss()
    total, batches = 0.0, 0
    for epoch in epoch_batches(len(labels), batch_size, epochs, generator, max_steps):
        epoch = [idx.to(device) for idx in epoch]
        views = ((images[idx], labels[idx]) for idx in epoch) if batch_transform is None \
            else batch_transform(images, labels, epoch, batches)
        for x, y in views:
            total += _step(model, opt, loss_fn, x, y, proximal_mu, global_params)
            batches += 1
    return total / batches


def _step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module, x: torch.Tensor,
          y: torch.Tensor, proximal_mu: float, global_params: list[torch.Tensor]) -> float:
    """One optimizer step on one batch; its loss."""
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    if proximal_mu:
        prox = sum((p - g).pow(2).sum() for p, g in zip(model.parameters(), global_params))
        loss = loss + 0.5 * proximal_mu * prox
    loss.backward()
    opt.step()
    return loss.item()


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageDataset, *, batch_size: int = 512,
             device: torch.device | str = "cpu",
             batch_transform: BatchTransform | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on `data`; `batch_transform` disguises the
    batches first (all in one call)."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    device = torch.device(device)
    model.to(device).eval()
    images, labels = data.images, data.labels
    starts = range(0, len(data), batch_size)
    views = ((images[i:i + batch_size], labels[i:i + batch_size]) for i in starts) \
        if batch_transform is None else batch_transform(
            images, labels, list(torch.arange(len(data)).split(batch_size)), 0)
    loss_sum, correct = 0.0, 0
    for x, y in views:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / len(data), correct / len(data)
