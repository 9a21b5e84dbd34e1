#!/usr/bin/env python
"""What one DP-SGD client round costs, and how much of it is privacy accounting.

A client with `target_epsilon` asks Opacus for the noise multiplier that spends it over the
run (a bisection over the RDP accountant) and for ε twice (the round's and the running
total). The baseline is the round's training itself (fedisguise.privacy.dp.train_dp, lenet, random
28×28 images, Poisson batches). Printed as ratios in this process: accounting uncached
(every client, every round, as before the cache) and cached (what a client pays once the
run's first round has asked), each against the training.

    python bench/dp_round.py --images 250 --rounds 20 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedisguise.data.datasets import ImageDataset  # noqa: E402
from fedisguise.privacy.dp import epsilon, planned_noise, steps_per_round, train_dp  # noqa: E402
from fedisguise.models import build_model  # noqa: E402


def accounting(noise, eps, target: float, delta: float, rate: float, per_round: int,
               rounds: int) -> float:
    start = time.perf_counter()
    sigma = noise(target, delta, rate, per_round * rounds)
    eps(sigma, rate, per_round, delta)
    eps(sigma, rate, per_round * 2, delta)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a Ray actor's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.rand(args.images, 1, 28, 28, generator=generator),
                        torch.randint(0, 10, (args.images,), generator=generator), 10)
    rate = min(1.0, args.batch / args.images)
    per_round = steps_per_round(args.images, args.batch, 1, 0)
    sigma = planned_noise(args.epsilon, args.delta, rate, per_round * args.rounds)

    def training() -> float:
        model = build_model("lenet", 1, 10, 28)
        start = time.perf_counter()
        train_dp(model, data, epochs=1, batch_size=args.batch, optimizer="sgd", lr=0.05,
                 momentum=0.9, weight_decay=0.0, noise_multiplier=sigma, max_grad_norm=1.0,
                 device=torch.device("cpu"), seed=0)
        return time.perf_counter() - start

    training()  # warm-up: Opacus's hooks and torch's first-call costs
    train = min(training() for _ in range(args.repeats))
    cold = min(accounting(planned_noise.__wrapped__, epsilon.__wrapped__, args.epsilon,
                          args.delta, rate, per_round, args.rounds)
               for _ in range(args.repeats))
    warm = min(accounting(planned_noise, epsilon, args.epsilon, args.delta, rate, per_round,
                          args.rounds) for _ in range(args.repeats))
    print(f"{args.images} images, batch {args.batch}, {per_round} steps a round, "
          f"{args.rounds} rounds, ε = {args.epsilon}, σ = {sigma:.3f}, {args.threads} thread(s)")
    print(f"training a round:          {train:.3f} s (1.00×)")
    print(f"accounting, uncached:      {cold:.3f} s ({cold / train:.2f}× the training)")
    print(f"accounting, cached:        {warm:.6f} s ({warm / train:.5f}× the training)")
    print(f"client round, uncached / cached: {(train + cold) / (train + warm):.2f}×")


if __name__ == "__main__":
    main()
