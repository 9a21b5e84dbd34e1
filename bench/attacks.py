#!/usr/bin/env python
"""Attack speed, measured in one process: time per attack and iterations per second.

Gradient inversion (IG and DLG) on one Fashion-MNIST image's FedSGD update of lenet, a
LiRA-offline membership attack with two reference models, the Level-2 known-pairs inverse and
the jigsaw solver on block permutation, and one U-Net epoch. Uses CUDA when present.
Baselines timed in the same process: one plain lenet SGD step on the attacked image (each
inversion iteration is priced in those steps) and one lenet epoch on the U-Net's 1000 images.

    python bench/attacks.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedisguise.attacks import inverse, jigsaw  # noqa: E402
from fedisguise.attacks.gradient_inversion import invert  # noqa: E402
from fedisguise.attacks.update_algebra import update_delta  # noqa: E402
from fedisguise.attacks.membership import reference_statistics  # noqa: E402
from fedisguise.data.datasets import load_dataset  # noqa: E402
from fedisguise.disguise import DisguiseKey, build  # noqa: E402
from fedisguise.models import build_model  # noqa: E402
from fedisguise.training import train_local  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()
    device = torch.device(args.device)
    test = load_dataset("fashion-mnist", "test", args.data_dir)
    results: dict = {"_meta": {"device": str(device), "torch_threads": torch.get_num_threads()}}

    def record(name: str, seconds: float, iterations: int | None = None) -> None:
        results[name] = {"seconds": seconds}
        if iterations:
            results[name].update(iterations=iterations, iterations_per_s=iterations / seconds)
        if not args.json:
            print(f"{name:>28}: {seconds:8.2f} s" + (f", {iterations / seconds:8.1f} it/s"
                                                     if iterations else ""), file=sys.stderr)

    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28).to(device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    client = build_model("lenet", 1, 10, 28).to(device)
    client.load_state_dict(before)
    x, y = test.images[:1].to(device), test.labels[:1].to(device)
    F.cross_entropy(client(x), y).backward()
    with torch.no_grad():
        for p in client.parameters():
            p -= 0.05 * p.grad
    delta = update_delta(model, before, client.state_dict())
    step_opt = torch.optim.SGD(client.parameters(), lr=0.05)
    start = time.perf_counter()
    for _ in range(50):  # the baseline: what one training step on this image costs
        step_opt.zero_grad()
        F.cross_entropy(client(x), y).backward()
        step_opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_seconds = (time.perf_counter() - start) / 50
    results["_meta"]["lenet_step_seconds"] = step_seconds
    for method in ("ig", "dlg"):
        out = invert(model, delta, batch_size=1, image_shape=(1, 28, 28), lr=0.05,
                     method=method, iterations=args.iterations,
                     step_size=0.1 if method == "ig" else 1.0, progress=False)
        record(f"gradient_inversion_{method}", out["seconds"], out["iterations"])
        results[f"gradient_inversion_{method}"]["iteration_vs_training_step"] = \
            out["seconds"] / out["iterations"] / step_seconds

    public, candidates = test.subset(torch.arange(2000, 6000)), test.subset(torch.arange(1000))
    start = time.perf_counter()
    reference_statistics(lambda: build_model("lenet", 1, 10, 28), public, candidates,
                         references=2, epochs=1, batch_size=64, lr=1e-3, device=device,
                         seed=0, progress=False)
    record("membership_lira_2_references", time.perf_counter() - start)

    plain = test.images[:1000]
    disguise = build({"name": "block-permutation", "block_size": 7}, DisguiseKey.generate(0))
    disguised, _ = disguise.apply(plain)
    start = time.perf_counter()
    fit = inverse.fit_known_pairs(plain[:100], disguised[:100], 7)
    inverse.invert_known_pairs(fit, disguised[100:], 7)
    record("known_pairs_level2_900_images", time.perf_counter() - start)
    start = time.perf_counter()
    jigsaw.solve(disguised, 7)
    record("jigsaw_1000_images", time.perf_counter() - start)
    _, info = inverse.train_inverse(disguised, plain, epochs=1, device=device, progress=False)
    record("unet_epoch_1000_pairs", info["seconds"])
    lenet = build_model("lenet", 1, 10, 28)
    start = time.perf_counter()
    train_local(lenet, test.subset(torch.arange(1000)), epochs=1, batch_size=64,
                optimizer="adam", lr=1e-3, device=device)
    results["unet_epoch_1000_pairs"]["vs_lenet_epoch"] = info["seconds"] / (
        time.perf_counter() - start)
    print(json.dumps(results, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
