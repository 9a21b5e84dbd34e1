#!/usr/bin/env python
"""What each defence does to the same 100 Fashion-MNIST test images (docs/fidelity.md).

Per defence, two nodes of one federation (key_scope "federation", derived keys, seed 0)
disguise test images 0–99, each as a client disguises its training images:
- VFE of the plain and the disguised images (`fedisguise.metrics.vfe`, 4×4 regions), and PSNR
  of the disguised images against the originals;
- what the two nodes share: the correlation of their noise Δ (the disguise minus the same
  disguise without noise, at the same image positions), and the fraction of images they
  disguise identically (the same draws);
- for block-wise RMT, the correlation of the disguised 7×7 blocks' mean brightness with the
  originals' (the authors' uniform projection keeps it).

It only calls what every version of the package has, so the figures before a change come
from an older checkout on PYTHONPATH:

    python bench/fidelity.py --json after.json
    git worktree add /tmp/base e875c6f && PYTHONPATH=/tmp/base python bench/fidelity.py
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from fedisguise.config import Config
from fedisguise.data.datasets import load_dataset
from fedisguise.disguise import DISGUISES
from fedisguise.metrics import psnr, vfe
from fedisguise.node_data import node_disguise

IMAGES = 100
ROWS: dict[str, Any] = {
    "visualmixer": "visualmixer",
    "visualmixer-authors": "visualmixer-authors",
    "visualmixer-uniform (w4)": {"name": "visualmixer-uniform", "window": 4},
    "block-permutation (b4)": {"name": "block-permutation", "block_size": 4},
    "rmt (N25)": {"name": "rmt", "noise_level": 25.0},
    "block-rmt orthogonal (b7, N100)": {"name": "block-rmt", "block_size": 7,
                                        "noise_level": 100.0},
    "block-rmt projection (b7, N100)": {"name": "block-rmt", "block_size": 7,
                                        "noise_level": 100.0, "matrix": "projection"},
    "disguisednets orthogonal (b7, N100)": {"name": "disguisednets"},
    "disguisednets projection (b7, N100)": {"name": "disguisednets", "matrix": "projection"},
    "aes (b4)": {"name": "aes", "block_size": 4},
    "instahide (k4)": {"name": "instahide", "k": 4},
}


def config(spec: Any) -> Config:
    return Config().with_overrides([
        "data.dataset=fashion-mnist", "experiment.clients=2", "client.key_scope=federation",
        f"disguise={json.dumps(spec)}"])


def disguised(spec: Any, node: int, images: torch.Tensor, labels: torch.Tensor
              ) -> torch.Tensor:
    disguise, _ = node_disguise(config(spec), node, "train")
    return disguise.apply(images, labels)[0]


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1].item()


def measure(spec: Any, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    out = [disguised(spec, node, images, labels) for node in (0, 1)]
    row: dict[str, Any] = {
        "vfe_plain": vfe(images).mean().item(),
        "vfe_disguised": vfe(out[0]).mean().item(),
        "psnr_vs_original": psnr(out[0], images).mean().item(),
        "identical_images_across_nodes": (out[0] == out[1]).flatten(1).all(1).float()
        .mean().item(),
    }
    if isinstance(spec, dict) and spec.get("noise_level", 100.0 if spec["name"] ==
                                           "disguisednets" else 0.0):
        quiet = {**spec, "noise_level": 0.0}
        noise = [out[node] - disguised(quiet, node, images, labels) for node in (0, 1)]
        row["noise_correlation_across_nodes"] = correlation(*noise)
    if isinstance(spec, dict) and spec["name"] == "block-rmt":
        means = [torch.nn.functional.avg_pool2d(x, spec["block_size"]) for x in (out[0], images)]
        row["block_mean_correlation"] = correlation(*means)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    test = load_dataset("fashion-mnist", "test")
    images, labels = test.images[:IMAGES], test.labels[:IMAGES]
    figures = {label: measure(spec, images, labels) for label, spec in ROWS.items()
               if (spec if isinstance(spec, str) else spec["name"]) in DISGUISES}
    columns = ["vfe_plain", "vfe_disguised", "psnr_vs_original",
               "noise_correlation_across_nodes", "identical_images_across_nodes",
               "block_mean_correlation"]
    print("| defence | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, row in figures.items():
        cells = [f"{row[c]:.3f}" if c in row else "–" for c in columns]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)


if __name__ == "__main__":
    main()
