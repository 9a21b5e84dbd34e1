#!/usr/bin/env python
"""visualmixer-authors against the VisualMixer authors' own code, on the same inputs.

Reads their VisualMixer.py from a checkout of `Edison9419/ndss` (not part of this package; fetch
it yourself) and feeds both implementations the same Fashion-MNIST test images as their
pipeline prepares them (3 channels, 224 px, ImageNet-normalised), with their AttentionBlock
holding our seeded block's weights:
- VFE: their `vfe(img, 14, 14)` (a Python loop over pixels: a few images only) against
  `fedisguise.metrics.vfe` on the same attention-weighted images;
- decisions: how many images reach their top threshold (VFE >= 1: every region split 8×8,
  whatever the attention says), and our split per region;
- the disguise: PSNR against the (upsampled) original at 224 px and, resized back by area
  averaging, at 28 px; their training loop as written (image j reshuffled j+1 times, one
  permutation per batch, the attention-weighted image) and their `rank` applied to each image
  once, against ours;
- whether their training can train their attention block: one step of their train.py loop
  body (block, `vfe`, `rank`, a small model, cross-entropy, backward) and the largest
  gradient each attention weight gets.

    python bench/visualmixer_authors.py --authors /path/to/ndss [--images 100 --vfe-images 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from fedisguise.data.datasets import load_dataset
from fedisguise.disguise import DisguiseKey, build
from fedisguise.disguise.visualmixer_authors import IMAGENET
from fedisguise.metrics import psnr, vfe


def authors_module(checkout: Path):
    spec = importlib.util.spec_from_file_location("authors_visualmixer",
                                                  checkout / "VisualMixer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def their_gradients(theirs, normalised: torch.Tensor) -> dict[str, float]:
    """train.py's loop body on 4 images, with a small model in place of their ResNet-50: the
    largest |gradient| of every attention weight (and of the model's first layer)."""
    torch.manual_seed(0)
    block = theirs.AttentionBlock(3, 3)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.LazyLinear(10))
    inputs, channel_w, spatial_w = block(normalised[:4].clone())
    for i in range(inputs.shape[0]):
        v, _ = theirs.vfe(inputs[i], 14, 14)
        inputs[i:, :, :] = theirs.rank(inputs[i:, :, :], channel_w, spatial_w, 14, v, [0.5, 1])
    torch.nn.functional.cross_entropy(model(inputs), torch.arange(4)).backward()
    grads = {name: 0.0 if p.grad is None else p.grad.abs().max().item()
             for name, p in block.named_parameters()}
    grads["model first layer"] = model[0].weight.grad.abs().max().item()
    return grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=Path, required=True,
                        help="a checkout of Edison9419/ndss (holds VisualMixer.py)")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--vfe-images", type=int, default=3)
    parser.add_argument("--batch", type=int, default=20, help="their loop's batch size")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    theirs = authors_module(args.authors)
    plain = load_dataset("fashion-mnist", "test").images[:args.images]
    ours = build("visualmixer-authors", DisguiseKey.generate("bench"))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    work = ours._working(plain).expand(-1, 3, -1, -1).contiguous()  # [0, 1], 224 px
    normalised = (work - mean) / std
    block = theirs.AttentionBlock(3, 3).eval()
    block.load_state_dict(ours.block.state_dict())
    with torch.no_grad():
        weighted, channel, spatial = block(normalised)
    figures: dict = {"images": len(plain)}

    # VFE: their loop against ours, on the same weighted images
    loops = [theirs.vfe(weighted[i], 14, 14)[0] for i in range(args.vfe_images)]
    mine = vfe(weighted[:args.vfe_images], 14).tolist()
    figures["vfe_theirs"], figures["vfe_ours"] = loops, mine
    figures["vfe_max_abs_difference"] = max(abs(a - b) for a, b in zip(loops, mine))
    everyone = vfe(weighted, 14)
    figures["image_vfe_range"] = [everyone.min().item(), everyone.max().item()]
    figures["images_at_or_above_high"] = int((everyone >= 1.0).sum())

    # decisions: every image's setting and every region's split, theirs against ours
    n = ours.decide(plain, [len(plain)])
    figures["our_splits"] = {str(k): int((n == k).sum()) for k in (2, 4, 8)}

    def denormalise(x: torch.Tensor) -> torch.Tensor:
        return x * std + mean

    def scored(label: str, shuffled224: torch.Tensor) -> None:
        """PSNR at 224 against the upsampled original, and at 28 after area averaging; the
        first channel, as a 1-channel client trains on."""
        x224 = shuffled224[:, :1]
        x28 = F.interpolate(x224, size=plain.shape[-2:], mode="area")
        figures[label] = {"psnr_224": psnr(x224, work[:, :1]).mean().item(),
                          "psnr_28": psnr(x28, plain).mean().item(),
                          "vfe_28": vfe(x28).mean().item()}

    random.seed(0)  # their shuffles draw from Python's random
    as_written = weighted.clone()
    for start in range(0, len(plain), args.batch):  # train.py's loop, batch by batch
        chunk = as_written[start:start + args.batch]
        cw, sw = channel[start:start + args.batch], spatial[start:start + args.batch]
        for i in range(len(chunk)):
            v = vfe(chunk[i:i + 1], 14).item()  # their vfe's value (checked above), faster
            chunk[i:] = theirs.rank(chunk[i:], cw, sw, 14, v, [0.5, 1])
    scored("theirs_training_loop_weighted", denormalise(as_written))
    once = normalised.clone()
    for start in range(0, len(plain), args.batch):
        cw, sw = channel[start:start + args.batch], spatial[start:start + args.batch]
        for i in range(start, min(start + args.batch, len(plain))):
            v = vfe(weighted[i:i + 1], 14).item()
            once[i:i + 1] = theirs.rank(once[i:i + 1], cw, sw, 14, v, [0.5, 1])
    scored("theirs_rank_once_per_image", denormalise(once))
    scored("ours_224", ours._shuffle(work[:, :1], n))
    final, _ = ours.apply(plain)
    figures["ours_apply"] = {"psnr_28": psnr(final, plain).mean().item(),
                             "vfe_28": vfe(final).mean().item(),
                             "vfe_28_plain": vfe(plain).mean().item()}
    figures["attention_gradients_in_their_training_step"] = their_gradients(theirs, normalised)
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
