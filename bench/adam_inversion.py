#!/usr/bin/env python
"""What the server recovers from an Adam-family update: the soft-sign unrolling against the
effective gradient, on the same updates, in the same process.

A client that trains with Adam or ST-Adam (VisualMixer's optimizer) sends m/√v-shaped steps:
one step is ±lr per weight, the gradient's sign. Matching that as a gradient (the
effective-gradient mode SGD updates get) is the baseline; the attack under test unrolls the
client's optimizer on the dummies with a soft sign (fedisguise.attacks.gradient_inversion,
`softness`). Each update: one client, randomly initialised lenet (seed 0), `--batch`
Fashion-MNIST test images of distinct classes, `--steps` local steps of `--batch / --steps`
images each at `--lr`. Labels come from iDLG on both sides. Prints each update's PSNR against
the originals (matched), the two means and their difference in dB.

    python bench/adam_inversion.py --optimizer st-adam --updates 5
    python bench/adam_inversion.py --optimizer adam --batch 4 --steps 2 --softness 0.1 0.3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedisguise.attacks.gradient_inversion import DEFAULT_SOFTNESS, invert, match_reconstructions
from fedisguise.attacks.update_algebra import update_delta
from fedisguise.data.datasets import load_dataset  # noqa: E402
from fedisguise.metrics import psnr  # noqa: E402
from fedisguise.models import build_model  # noqa: E402
from fedisguise.training import OPTIMIZERS  # noqa: E402


def client_update(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  optimizer: str, lr: float, steps: int) -> dict[str, torch.Tensor]:
    """θ_global − θ_client after `steps` equal consecutive batches, a fresh optimizer."""
    client = build_model("lenet", 1, 10, 28)
    client.load_state_dict(model.state_dict())
    opt = OPTIMIZERS[optimizer](client.parameters(), lr, 0.0, 0.0)
    for x, y in zip(images.chunk(steps), labels.chunk(steps), strict=True):
        opt.zero_grad()
        F.cross_entropy(client(x), y).backward()
        opt.step()
    return update_delta(model, model.state_dict(), client.state_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizer", default="st-adam", choices=("adam", "st-adam"))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--tv-weight", type=float, default=0.01)
    parser.add_argument("--softness", type=float, nargs="+", default=[DEFAULT_SOFTNESS])
    args = parser.parse_args()
    if args.batch % args.steps:
        parser.error("--batch must be a multiple of --steps")
    test = load_dataset("fashion-mnist", "test")
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    common = dict(batch_size=args.batch, image_shape=(1, 28, 28), lr=args.lr,
                  steps=[args.batch // args.steps] * args.steps, iterations=args.iterations,
                  tv_weight=args.tv_weight, progress=False)
    runs = {"effective-gradient": {"delta_mode": "effective-gradient"}}
    for s in args.softness:
        runs[f"unrolled softness {s:g}"] = {"delta_mode": "unrolled", "optimizer": args.optimizer,
                                            "softness": s}
    scores: dict[str, list[float]] = {name: [] for name in runs}
    floor: list[float] = []  # the dummies' uniform start, before any iteration
    for u in range(args.updates):
        classes = [(u * args.batch + i) % 10 for i in range(args.batch)]
        idx = torch.stack([(test.labels == c).nonzero()[u, 0] for c in classes])
        x, y = test.images[idx], test.labels[idx]
        delta = client_update(model, x, y, args.optimizer, args.lr, args.steps)
        start = torch.rand((args.batch, 1, 28, 28), generator=torch.Generator().manual_seed(u))
        floor.append(float(psnr(match_reconstructions(start, x), x).mean()))
        line = [f"update {u}: start {floor[-1]:.1f} dB"]
        for name, settings in runs.items():
            out = invert(model, delta, **common, **settings, seed=u)
            value = float(psnr(match_reconstructions(out["images"], x), x).mean())
            scores[name].append(value)
            line.append(f"{name} {value:.1f} dB")
        print("  ".join(line), flush=True)
    base = statistics.mean(scores["effective-gradient"])
    print(f"  {'start (uniform noise)':28s} mean {statistics.mean(floor):5.1f} dB")
    print(f"{args.optimizer}, lr {args.lr:g}, {args.batch} image(s) in {args.steps} step(s), "
          f"{args.updates} updates, {args.iterations} iterations, TV {args.tv_weight:g}:")
    for name, values in scores.items():
        mean = statistics.mean(values)
        print(f"  {name:28s} mean {mean:5.1f} dB  ({mean - base:+.1f} dB vs effective-gradient)")


if __name__ == "__main__":
    main()
