#!/usr/bin/env python
"""disguisednets against the DisguisedNets authors' own code, on the same inputs.

Feeds their `PerturbPix` (Perturb/perturb_pixels.py of a `datascale/DisguisedNets` checkout,
not part of this package) our keyed block matrices and block permutation, noise 0, and
prints the largest difference from our output on Fashion-MNIST test images 0–99 (7×7 blocks,
orthogonal and projection matrices): a block layout, matrix product or permutation that
differed would show as a difference far above float32 rounding.

    python bench/disguisednets_authors.py --authors /path/to/DisguisedNets
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from fedisguise.data.datasets import load_dataset
from fedisguise.disguise import DisguiseKey, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=Path, required=True,
                        help="a checkout of datascale/DisguisedNets (holds Perturb/)")
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    sys.path.insert(0, str(args.authors / "Perturb"))  # their modules import each other
    from perturb_pixels import PerturbPix

    x = load_dataset("fashion-mnist", "test").images[:args.images]
    for matrix in ("orthogonal", "projection"):
        spec = {"name": "disguisednets", "block_size": 7, "noise_level": 0.0,
                "matrix": matrix}
        ours = build(spec, DisguiseKey.generate("authors-check"))
        blocks = (28 // 7) ** 2
        rotations = [m.astype(np.float64) for m in
                     ours._block_matrices(blocks, torch.device("cpu")).numpy()]
        order = ours.block_permutation(blocks).numpy()
        theirs = np.stack([
            PerturbPix(img.flatten().double().numpy(), rotations, (28, 28), (7, 7), order,
                       "rot+pert", 0.0).pert_pixels.reshape(28, 28) for img in x[:, 0]])
        gap = np.abs(ours.apply(x)[0][:, 0].double().numpy() - theirs).max()
        print(f"{matrix}: largest |ours − theirs| over {len(x)} images = {gap:.2e}")


if __name__ == "__main__":
    main()
