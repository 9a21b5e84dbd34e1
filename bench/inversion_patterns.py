#!/usr/bin/env python
"""Why Inverting Gradients stalls below 20 dB on lenet: the update holds the image, the
ReLU and max-pool patterns hide it.

Fix lenet's activation patterns (which conv outputs pass their ReLU, which entry wins each
2×2 max-pool) and every weight gradient of a single-image update becomes linear in the
input: the output error is read off the last bias gradient, fc1's input off fc1's gradient
(Geiping et al. 2020, §3), and the conv layers' errors follow by back-propagating through
the fixed patterns. With the patterns' own inequalities (a pool window's other entries at
most its winner, an inactive unit at most 0) and the [0, 1] box, recovering the image is
then a convex problem. For each test image this script:

- runs IG exactly as bench/inversion_quality.py does (its PSNR: `ig`);
- solves the convex problem from a random start with the TRUE patterns, an oracle no
  attacker holds (`oracle`): how much of the image the update itself pins down;
- counts how many of those patterns IG's reconstruction gets right (`pool1`, `pool2`:
  share of active pool windows whose winner it picks correctly);
- solves the same problem with the patterns of IG's reconstruction (`from_ig`): what an
  attacker could do with them.

    python bench/inversion_patterns.py --images 5 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedisguise.attacks.gradient_inversion import invert  # noqa: E402
from fedisguise.attacks.update_algebra import total_variation  # noqa: E402
from fedisguise.data.datasets import load_dataset  # noqa: E402
from fedisguise.metrics import psnr  # noqa: E402
from fedisguise.models import LeNet, build_model  # noqa: E402

LR = 0.05  # as bench/inversion_quality.py and the IG test


class FixedPatternLeNet:
    """lenet's features with frozen patterns: everything below is linear in the input."""

    def __init__(self, model: LeNet, truth: dict[str, torch.Tensor]) -> None:
        conv1, conv2, fc1 = model.features[0], model.features[3], model.classifier[1]
        self.w1, self.b1 = conv1.weight.detach(), conv1.bias.detach()
        self.w2, self.b2 = conv2.weight.detach(), conv2.bias.detach()
        names = {p: n for n, p in model.named_parameters()}
        self.g1, self.g2 = truth[names[conv1.weight]], truth[names[conv2.weight]]
        error = truth[names[fc1.bias]]  # batch 1: fc1's output error is its bias gradient
        self.z = (error[:, None] * truth[names[fc1.weight]]).sum(0) / error.pow(2).sum()
        self.dz = (fc1.weight.detach().t() @ error)  # the error at fc1's input

    def patterns(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            p1, i1 = F.max_pool2d(F.conv2d(x, self.w1, self.b1, padding=2), 2,
                                  return_indices=True)
            a1 = p1.clamp(min=0)
            p2, i2 = F.max_pool2d(F.conv2d(a1, self.w2, self.b2), 2, return_indices=True)
        return i1, (p1 > 0).float(), i2, (p2 > 0).float()

    def residual(self, x: torch.Tensor, pattern: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Squared mismatch of conv1/conv2 gradients and fc1's input, each relative to its
        own norm, plus the patterns' inequalities as squared hinges."""
        i1, m1, i2, m2 = pattern
        c1 = F.conv2d(x, self.w1, self.b1, padding=2)
        won1 = c1.flatten(2).gather(2, i1.flatten(2)).view_as(m1)
        a1 = won1 * m1
        c2 = F.conv2d(a1, self.w2, self.b2)
        won2 = c2.flatten(2).gather(2, i2.flatten(2)).view_as(m2)
        d2 = torch.zeros_like(c2).flatten(2).scatter_(
            2, i2.flatten(2), (self.dz.view_as(m2) * m2).flatten(2)).view_as(c2)
        d1 = torch.zeros_like(c1).flatten(2).scatter_(
            2, i1.flatten(2), (F.conv_transpose2d(d2, self.w2) * m1).flatten(2)).view_as(c1)
        error = (conv2d_weight(x, self.w1.shape, d1, padding=2) - self.g1).pow(2).sum() / \
            self.g1.pow(2).sum()
        error = error + (conv2d_weight(a1, self.w2.shape, d2) - self.g2).pow(2).sum() / \
            self.g2.pow(2).sum()
        error = error + ((won2 * m2).flatten() - self.z).pow(2).sum() / self.z.pow(2).sum()
        hinge = 0.0
        for c, won, m in ((c1, won1, m1), (c2, won2, m2)):
            hinge = hinge + F.relu(c - F.interpolate(won, scale_factor=2)).pow(2).mean() + \
                F.relu(won * (1 - m)).pow(2).mean()
        return error + 10 * hinge

    def solve(self, start: torch.Tensor, pattern: tuple[torch.Tensor, ...],
              iterations: int) -> torch.Tensor:
        x = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.05)
        for _ in range(iterations):
            opt.zero_grad()
            (self.residual(x, pattern) + 1e-3 * total_variation(x)).backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
        return x.detach()


def agreement(true: tuple[torch.Tensor, ...], guess: tuple[torch.Tensor, ...]) -> dict:
    i1, m1, i2, m2 = true
    return {"pool1": (i1 == guess[0])[m1.bool()].float().mean().item(),
            "pool2": (i2 == guess[2])[m2.bool()].float().mean().item(),
            "relu1": (m1 == guess[1]).float().mean().item(),
            "relu2": (m2 == guess[3]).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--solve-iterations", type=int, default=2000)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()
    data = load_dataset("fashion-mnist", "test", args.data_dir)
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    names = [n for n, _ in model.named_parameters()]
    rows = []
    for i in tqdm(range(args.images), desc="images", disable=args.json):
        x, y = data.images[i:i + 1], data.labels[i:i + 1]
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        truth = dict(zip(names, grads, strict=True))
        ig = invert(model, {n: LR * g for n, g in truth.items()}, batch_size=1,
                    image_shape=(1, 28, 28), lr=LR, iterations=1000, tv_weight=0.01,
                    progress=False)["images"]
        fixed = FixedPatternLeNet(model, truth)
        start = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(i))
        oracle = fixed.solve(start, fixed.patterns(x), args.solve_iterations)
        from_ig = fixed.solve(ig, fixed.patterns(ig), args.solve_iterations)
        rows.append({"image": i, "ig": psnr(ig, x).item(), "oracle": psnr(oracle, x).item(),
                     "from_ig": psnr(from_ig, x).item(),
                     **agreement(fixed.patterns(x), fixed.patterns(ig))})
    summary = {key: statistics.median(r[key] for r in rows)
               for key in ("ig", "oracle", "from_ig", "pool1", "pool2", "relu1", "relu2")}
    if args.json:
        print(json.dumps({"median": summary, "per_image": rows}))
        return
    for r in rows:
        print(f"image {r['image']:3d}  IG {r['ig']:5.1f} dB  true patterns {r['oracle']:5.1f} dB"
              f"  IG's patterns {r['from_ig']:5.1f} dB  IG picks pool1 {r['pool1']:.0%}, "
              f"pool2 {r['pool2']:.0%} of winners")
    print("median: " + ", ".join(f"{k} {v:.3g}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
