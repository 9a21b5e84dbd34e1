"""DP-SGD on the client (Abadi et al., CCS 2016) through Opacus: the differential-privacy
baseline beside the disguises.

Each client trains with per-sample gradient clipping (`max_grad_norm`) and Gaussian noise
(`noise_multiplier`, or the one that reaches `target_epsilon` over the run's planned steps),
on Poisson-sampled batches as the accounting assumes. It reports ε at the configured δ for
the round alone and cumulatively over every round it took part in (RDP accountant).
BatchNorm mixes samples within a batch, so models with it are rejected, not silently changed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedisguise.data.datasets import ImageDataset
from fedisguise.training import OPTIMIZERS, BatchTransform


def check_model(model: nn.Module, name: str) -> None:
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        kinds = sorted({type(e).__name__ for e in errors})
        raise ValueError(f"model {name!r} cannot train with DP-SGD ({', '.join(kinds)}: "
                         f"{str(errors[0]).split('.')[0]}); use a model without BatchNorm, "
                         "e.g. lenet or cnn-small")


@functools.lru_cache(maxsize=256)
def planned_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier that spends exactly `target_epsilon` over `steps` steps.

    Opacus finds it by bisection over the RDP accountant, about 1 s on one core: as long as
    a client's local round. Every client of a run asks with the same arguments every round,
    so the answer is kept (a pure function of them)."""
    return get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                sample_rate=sample_rate, steps=steps, accountant="rdp")


@functools.lru_cache(maxsize=1024)
def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε after `steps` Poisson-sampled steps (RDP accountant); 0 when nothing was spent.
    Kept per arguments, as planned_noise is: clients of one round ask the same question."""
    if steps <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


def steps_per_round(num_examples: int, batch_size: int, epochs: int, max_steps: int) -> int:
    """Expected steps of one local round (Poisson batches of mean size batch_size)."""
    per_epoch = max(1, math.ceil(num_examples / batch_size))
    return min(max_steps, epochs * per_epoch) if max_steps else epochs * per_epoch


def poisson_batches(num_examples: int, batch_size: int, epochs: int, seed: int,
                    max_steps: int = 0) -> Iterator[torch.Tensor]:
    """The example indices of every batch `train_dp` trains on with this `seed`: Opacus's own
    Poisson sampler on the same seeded generator, empty draws skipped as `train_dp` skips them,
    so the attack harness can name the images behind a DP-SGD update."""
    loader = DataLoader(TensorDataset(torch.arange(num_examples)), batch_size=batch_size,
                        generator=torch.Generator().manual_seed(seed))
    private = DPDataLoader.from_data_loader(loader)  # iterating it draws as train_dp's does
    steps = 0
    for _ in range(epochs):
        for (idx,) in private:
            if max_steps and steps == max_steps:
                return
            if len(idx) == 0:
                continue
            steps += 1
            yield idx.long()


def train_dp(model: nn.Module, data: ImageDataset, *, epochs: int, batch_size: int,
             optimizer: str, lr: float, momentum: float, weight_decay: float,
             noise_multiplier: float, max_grad_norm: float, device: torch.device,
             seed: int, max_steps: int = 0,
             batch_transform: BatchTransform | None = None) -> tuple[float, int]:
    """Train in place with DP-SGD; returns (mean loss, steps taken). `batch_transform`
    disguises each Poisson batch, on its own, before the model sees it."""
    if noise_multiplier <= 0 or max_grad_norm <= 0:
        raise ValueError("DP-SGD needs noise_multiplier > 0 and max_grad_norm > 0")
    if data.labels.ndim != 1:
        raise ValueError("DP-SGD needs hard labels (InstaHide's mixed labels are not "
                         "supported with DP-SGD)")
    check_model(model, type(model).__name__)
    torch.manual_seed(seed)  # Poisson sampling and the noise draw from the global generator
    model.to(device).train()
    opt = OPTIMIZERS[optimizer](model.parameters(), lr, momentum, weight_decay)
    loader = DataLoader(TensorDataset(data.images, data.labels), batch_size=batch_size,
                        generator=torch.Generator().manual_seed(seed))
    engine = PrivacyEngine(accountant="rdp")
    private, dp_opt, private_loader = engine.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm, poisson_sampling=True)
    loss_fn = nn.CrossEntropyLoss()
    total, steps = 0.0, 0
    for _ in range(epochs):
        for x, y in private_loader:
            if max_steps and steps == max_steps:
                break
            if len(y) == 0:  # Poisson sampling may draw an empty batch: nothing is released
                continue
            x, y = x.to(device), y.to(device)
            if batch_transform is not None:  # Poisson batches come one at a time
                [(x, y)] = batch_transform(x, y, [torch.arange(len(y), device=device)], steps)
                if y.ndim != 1:
                    raise ValueError("DP-SGD needs hard labels (InstaHide's mixed labels are "
                                     "not supported with DP-SGD)")
            dp_opt.zero_grad(set_to_none=True)
            loss = loss_fn(private(x), y)
            loss.backward()
            dp_opt.step()
            total += loss.item()
            steps += 1
    return total / max(steps, 1), steps
