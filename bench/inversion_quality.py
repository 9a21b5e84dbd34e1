#!/usr/bin/env python
"""How well gradient inversion reconstructs single images, over many images, not one.

The setting of tests/test_attacks.py's IG test (randomly initialised lenet, seed 0; one
Fashion-MNIST test image per FedSGD update, lr 0.05; IG with 1000 iterations, TV 0.01) run
on `--images` test images from `--offset` on. Labels come from iDLG, not from the data.
Prints each image's PSNR against its original (capped at 100 dB: identical images have
infinite PSNR, which JSON cannot hold), their mean, median and the counts at or above 20 dB
(issue 4's target) and 50 dB (near-exact). `--method dlg --model lenet-dlg` is DLG on the
DLG paper's own sigmoid LeNet (Zhu et al. 2019). `--train-images N` first trains the model
one SGD epoch (batch 32, lr 0.05) on the first N training images: the attack on a later round.

    python bench/inversion_quality.py --images 20 --json
    python bench/inversion_quality.py --model lenet-dlg --method dlg --images 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedisguise.attacks.gradient_inversion import METHODS, invert  # noqa: E402
from fedisguise.data.datasets import ImageDataset, load_dataset  # noqa: E402
from fedisguise.metrics import psnr  # noqa: E402
from fedisguise.models import MODELS, build_model  # noqa: E402
from fedisguise.training import train_local  # noqa: E402

LR = 0.05  # the client's SGD step; the update is lr × gradient
PSNR_CAP = 100.0  # dB; float32 reconstructions that match exactly give inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="lenet", choices=sorted(MODELS))
    parser.add_argument("--method", default="ig", choices=METHODS)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--offset", type=int, default=0, help="first test image")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--tv-weight", type=float, default=0.01)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=0,
                        help="train the model one epoch on this many training images first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()
    if args.images < 1 or args.offset < 0:
        parser.error(f"need --images >= 1 and --offset >= 0, got {args.images}, {args.offset}")
    device = torch.device(args.device)
    data = load_dataset("fashion-mnist", "test", args.data_dir)
    if args.offset + args.images > len(data.images):
        parser.error(f"--offset + --images exceeds the {len(data.images)} test images")
    torch.manual_seed(0)
    model = build_model(args.model, 1, 10, 28).to(device)
    if args.train_images:
        train = load_dataset("fashion-mnist", "train", args.data_dir)
        train_local(model, ImageDataset(train.images[:args.train_images],
                                        train.labels[:args.train_images], train.num_classes),
                    epochs=1, batch_size=32, optimizer="sgd", lr=LR, device=device)
        model.eval()
    names = [n for n, _ in model.named_parameters()]
    figures = []
    for i in tqdm(range(args.offset, args.offset + args.images),
                  desc=f"{args.method.upper()} per image", disable=args.json):
        x, y = data.images[i:i + 1].to(device), data.labels[i:i + 1].to(device)
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        delta = {n: LR * g for n, g in zip(names, grads, strict=True)}
        out = invert(model, delta, batch_size=1, image_shape=(1, 28, 28), lr=LR,
                     method=args.method, iterations=args.iterations,
                     tv_weight=args.tv_weight, restarts=args.restarts, progress=False)
        figures.append({"image": i,
                        "psnr": min(psnr(out["images"], x.cpu()).item(), PSNR_CAP),
                        "label_recovered": out["labels"].tolist() == y.cpu().tolist(),
                        "seconds": out["seconds"]})
    values = [f["psnr"] for f in figures]
    summary = {"device": str(device), "model": args.model, "method": args.method,
               "images": args.images, "offset": args.offset, "iterations": args.iterations,
               "tv_weight": args.tv_weight, "restarts": args.restarts,
               "train_images": args.train_images, "psnr_cap": PSNR_CAP,
               "psnr_mean": statistics.fmean(values), "psnr_median": statistics.median(values),
               "share_at_least_20db": sum(v >= 20 for v in values) / len(values),
               "at_least_20db": sum(v >= 20 for v in values),
               "at_least_50db": sum(v >= 50 for v in values),
               "seconds": sum(f["seconds"] for f in figures),
               "labels_recovered": sum(f["label_recovered"] for f in figures) / len(figures),
               "per_image": figures}
    if args.json:
        print(json.dumps(summary, allow_nan=False))
        return
    for f in figures:
        print(f"image {f['image']:3d}  {f['psnr']:5.2f} dB  label "
              f"{'ok' if f['label_recovered'] else 'wrong'}  {f['seconds']:.1f} s")
    print(f"mean {summary['psnr_mean']:.2f} dB, median {summary['psnr_median']:.2f} dB, "
          f"≥ 20 dB: {summary['at_least_20db']}/{len(values)} "
          f"({summary['share_at_least_20db']:.0%}), ≥ 50 dB: {summary['at_least_50db']}/"
          f"{len(values)}, labels {summary['labels_recovered']:.0%}, "
          f"{summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()
