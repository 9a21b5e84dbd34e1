#!/usr/bin/env python
"""Disguise speed against local training, measured in one process.

For every registered defence: disguise N Fashion-MNIST training images (N = 10 000 by
default) and report images/s and `epoch_ratio` = disguise time ÷ one local lenet epoch (SGD,
batch 32) on the same images, timed here on the same device. Goal: epoch_ratio < 0.05.
For every defence that makes random draws, `batch_epoch_ratio` is the same for
client.redisguise = "batch": an epoch's batches of 32, each disguised as a batch of its own
with draws no other batch shares, as `train_local` asks for them
(fedisguise.node_data.BatchDraws: one call per epoch). Goal: < 0.10.

A shared machine's speed drifts by tens of percent from one minute to the next, and a
disguise takes a fraction of a second: each defence is timed between two epochs and divided
by the faster of those two (`epoch_seconds`), so both sides of a ratio come from the same
minute and the ratio leans high rather than low.

    python bench/disguise.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedisguise.data.datasets import ImageDataset, load_dataset  # noqa: E402
from fedisguise.disguise import DISGUISES, DisguiseKey, build  # noqa: E402
from fedisguise.disguise.transform_net_training import (  # noqa: E402
    save_transform_net,
    train_transform_net,
)
from fedisguise.models import build_model  # noqa: E402
from fedisguise.node_data import BatchDraws  # noqa: E402
from fedisguise.training import train_local  # noqa: E402

# Parameters as in the issue's utility comparison and the papers' settings.
SPECS = {
    "none": "none",
    "block-permutation": {"name": "block-permutation", "block_size": 7},
    "rmt": {"name": "rmt", "noise_level": 25.0},
    "block-rmt": {"name": "block-rmt", "block_size": 7, "noise_level": 25.0},
    "disguisednets": {"name": "disguisednets", "block_size": 7, "noise_level": 25.0},
    "aes": {"name": "aes", "block_size": 4},
    "instahide": {"name": "instahide", "k": 2},
    "visualmixer": {"name": "visualmixer"},
    "visualmixer-uniform": {"name": "visualmixer-uniform"},
}


def timed(fn, repeats: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()
    device = torch.device(args.device)

    train = load_dataset("fashion-mnist", "train", args.data_dir)
    subset = slice(0, args.images)
    data = ImageDataset(train.images[subset].to(device), train.labels[subset].to(device),
                        train.num_classes)
    model = build_model("lenet", 1, 10, 28).to(device)
    warm_up = ImageDataset(data.images[:640], data.labels[:640], data.num_classes)
    train_local(model, warm_up, epochs=1, batch_size=32, optimizer="sgd", lr=0.01,
                device=device)  # allocator and kernels warm, so the epoch is not inflated

    def epoch() -> float:
        return timed(lambda: train_local(model, data, epochs=1, batch_size=32, optimizer="sgd",
                                         lr=0.01, momentum=0.9, device=device), 1, device)

    key = DisguiseKey.generate(0)
    specs = dict(SPECS)
    with tempfile.TemporaryDirectory() as tmp:
        # transform-net applies a trained U-Net: train one briefly (its weights do not change
        # the time to apply it; its training is a one-off before a run, not timed here).
        psi = build_model("lenet", 1, 10, 28)
        net, info = train_transform_net(train.images[:256], train.labels[:256], psi, epochs=1,
                                        features="vgg16-random", progress=False)
        save_transform_net(Path(tmp) / "h.pt", net, info)
        specs["transform-net"] = {"name": "transform-net", "path": str(Path(tmp) / "h.pt")}
        seconds, epochs = bench_all(data, specs, key, device, args, epoch)
    results = {"_meta": {"device": str(device), "images": len(data),
                         "lenet_epoch_seconds": min(epochs), "lenet_epoch_samples": epochs,
                         "torch_threads": torch.get_num_threads()}}
    for i, (name, (time_taken, per_batch)) in enumerate(seconds.items()):
        lenet = min(epochs[i], epochs[i + 1])  # the epochs timed either side of this one
        results[name] = {"images_per_s": len(data) / time_taken, "seconds": time_taken,
                         "epoch_seconds": lenet, "epoch_ratio": time_taken / lenet}
        if per_batch is not None:
            results[name].update(batch_seconds=per_batch, batch_epoch_ratio=per_batch / lenet)
        if not args.json:
            print(f"{name:>20}: {len(data) / time_taken:12.0f} images/s, "
                  f"epoch_ratio {time_taken / lenet:.4f}" +
                  ("" if per_batch is None else f", batch_epoch_ratio {per_batch / lenet:.4f}"),
                  file=sys.stderr)
    print(json.dumps(results, indent=None if args.json else 2))


def bench_all(data: ImageDataset, specs: dict, key: DisguiseKey, device: torch.device,
              args: argparse.Namespace, epoch: Callable[[], float]
              ) -> tuple[dict[str, tuple[float, float | None]], list[float]]:
    """Seconds to disguise `data` with every registered defence (best of the repeats), at
    once and, for a defence that draws, batch by batch; and the lenet epochs timed before
    the first, between each two and after the last."""
    seconds, epochs = {}, [epoch()]
    secret = DisguiseKey.generate("node-secret")
    order = list(torch.randperm(len(data), generator=torch.Generator().manual_seed(0),
                                device=device).split(32))
    for name in sorted(DISGUISES):
        disguise = build(specs.get(name, name), None if name == "none" else key)
        disguise.apply(data.images[:64], data.labels[:64])  # warm-up: tables, kernels
        once = timed(lambda d=disguise: d.apply(data.images, data.labels), args.repeats, device)
        per_batch = None
        if disguise.draws:
            draws = BatchDraws(disguise, secret).training(server_round=1)

            def epoch_of_batches(draws=draws) -> None:
                draws(data.images, data.labels, order, 0)

            per_batch = timed(epoch_of_batches, args.repeats, device)
        seconds[name] = (once, per_batch)
        epochs.append(epoch())
        print(f"{name:>20}: {once:.4f} s" +  # progress
              ("" if per_batch is None else f", {per_batch:.4f} s by batch") +
              f", epoch {epochs[-1]:.2f} s", file=sys.stderr)
    return seconds, epochs


if __name__ == "__main__":
    main()
