#!/usr/bin/env python
"""Gradient inversion on the updates FedAvg clients really send, for every defence.

For each regime (batch size B ∈ {1, 4, 16, 32} × local steps ∈ {1, 5, one epoch}) and each
defence, one client disguises its Fashion-MNIST images (a federation key), trains lenet from
the same initial weights with plain SGD (lr 0.05) for that many steps, and uploads the
update. The server-side attack is the product's own `gradient_inversion` under the attack
contract: it gets a `ServerView` (global model, the update, num_examples and the batch size,
steps and lr the server configured) and Level-0 knowledge, never the images; it unrolls the
client's steps when there are several. The truth only scores it: PSNR and SSIM against the
originals and the disguised images, and label recovery. Where the attack fails, that is the
result. Clients hold 160 images (so 5 steps of 32 are distinct images) and 64 images in the
one-epoch regimes (an epoch of 64 images: 64, 16, 4 or 2 steps).

`configs/attacks-regimes.toml` runs the same regimes through Flower as a comparison grid;
this bench drives the client update in-process so the table fits a CPU session.

    python bench/attack_regimes.py --iterations 300 --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedisguise.attacks.base import Evidence, GroundTruth, Knowledge, Runtime, ServerView  # noqa: E402,E501
from fedisguise.attacks.gradient_inversion import GradientInversion  # noqa: E402
from fedisguise.attacks.scoring import Scorer  # noqa: E402
from fedisguise.data.datasets import ImageDataset, load_dataset  # noqa: E402
from fedisguise.disguise import DisguiseKey, build  # noqa: E402
from fedisguise.models import build_model  # noqa: E402
from fedisguise.training import batch_indices, train_local  # noqa: E402

LR = 0.05
BATCHES = (1, 4, 16, 32)
STEPS = (1, 5, 0)  # 0: one local epoch
CLIENT_IMAGES, EPOCH_IMAGES = 160, 64
DEFENCES = {
    "none": "none",
    "visualmixer": "visualmixer",
    "visualmixer-uniform": "visualmixer-uniform",
    "block-permutation": {"name": "block-permutation", "block_size": 7},
    "rmt": {"name": "rmt", "noise_level": 25},
    "block-rmt": {"name": "block-rmt", "block_size": 7, "noise_level": 25},
    "disguisednets": {"name": "disguisednets", "block_size": 7, "noise_level": 25},
    "aes": "aes",
    "instahide": {"name": "instahide", "k": 2},
}


def client_update(model: torch.nn.Module, data: ImageDataset, batch_size: int, steps: int,
                  seed: int) -> tuple[dict, torch.Tensor]:
    """The client's upload after `steps` SGD steps (0: one epoch), and the images used."""
    client = build_model("lenet", 1, 10, 28)
    client.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed)  # batch_indices re-draws the same order
    used = batch_indices(len(data), seed, batch_size, steps, 1) if steps else \
        torch.arange(len(data))
    train_local(client, data, epochs=1, batch_size=batch_size, optimizer="sgd", lr=LR,
                generator=gen, max_steps=steps)
    return client.state_dict(), torch.unique(used)


def markdown(rows: list[dict], iterations: int = 1000) -> str:
    """One table row per (defence, regime). Verdict: "recovers" at PSNR ≥ 20 dB against the
    originals; "recognisable" where the attacker's classifier names at least half of the
    reconstructions right (chance: 0.1) though PSNR is lower, judged on 4 images or more (one
    image is right or wrong by luck); otherwise "fails". A row measured with other than
    `iterations` attack iterations says how many in its local-steps cell."""
    def f(v: float | None, digits: int = 1) -> str:
        return "–" if v is None else f"{v:.{digits}f}"

    lines = ["| defence | B | local steps | images | PSNR vs original (dB) | SSIM vs original "
             "| recognisability | PSNR vs disguised (dB) | labels recovered | verdict |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        p = r.get("psnr_vs_original")
        seen = r.get("recognisability")
        verdict = ("not applicable" if r.get("status") != "ok" else
                   "recovers" if p is not None and p >= 20 else
                   "recognisable" if seen is not None and seen >= 0.5 and r["images"] >= 4
                   else "fails")
        its = r.get("iterations", iterations)
        steps = r["local_steps"] if its == iterations else f"{r['local_steps']} ({its} it.)"
        lines.append(f"| {r['defence']} | {r['batch_size']} | {steps} | "
                     f"{r['images']} | {f(p)} | {f(r.get('ssim_vs_original'), 3)} | "
                     f"{f(r.get('recognisability'), 2)} | {f(r.get('psnr_vs_disguised'))} | "
                     f"{f(r.get('label_accuracy'), 2)} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--defences", default=",".join(DEFENCES))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--steps", default=",".join(map(str, STEPS)),
                        help="local steps per regime; 0 = one local epoch")
    parser.add_argument("--regimes", default="",
                        help="explicit B:steps pairs, e.g. 1:1,4:5,32:0 (instead of the "
                        "--batches × --steps product)")
    parser.add_argument("--transform-net", action="store_true",
                        help="add transform-net with a briefly trained h_θ (slow on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--markdown", action="store_true",
                        help="print the table as markdown (docs/attack-regimes.md)")
    parser.add_argument("--from-rows", default="",
                        help="render the rows of an earlier --rows file instead of measuring")
    parser.add_argument("--rows", default="", help="also append each row to this JSON-lines "
                        "file as soon as it is measured (a long sweep keeps what it did)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.from_rows:
        with open(args.from_rows) as fh:
            print(markdown([json.loads(line) for line in fh if line.strip()]))
        return
    train = load_dataset("fashion-mnist", "train", args.data_dir)
    test = load_dataset("fashion-mnist", "test", args.data_dir)
    public = test.subset(torch.arange(5000, 10000))
    scorer = Scorer(public, "lenet", device, seed=0, progress=False)
    specs = {d: DEFENCES[d] for d in args.defences.split(",") if d}
    unknown = [d for d in args.defences.split(",") if d and d not in DEFENCES]
    if unknown:
        raise SystemExit(f"unknown defence(s) {unknown}; valid: {list(DEFENCES)}")
    key = DisguiseKey.generate(0)  # the federation's key; the server never sees it
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    regimes = [(b, s) for b in map(int, args.batches.split(","))
               for s in map(int, args.steps.split(","))]
    if args.regimes:
        regimes = [tuple(map(int, r.split(":"))) for r in args.regimes.split(",")]
    tmp = tempfile.TemporaryDirectory()
    if args.transform_net:
        from fedisguise.disguise.transform_net_training import save_transform_net, train_transform_net

        psi = build_model("lenet", 1, 10, 28)
        net, info = train_transform_net(train.images[:512], train.labels[:512], psi, epochs=1,
                                        features="vgg16-random", progress=False)
        save_transform_net(Path(tmp.name) / "h.pt", net, info)
        specs["transform-net"] = {"name": "transform-net", "path": str(Path(tmp.name) / "h.pt")}
    rows = []
    bar = tqdm(total=len(specs) * len(regimes), desc="regimes", disable=args.json,
               file=sys.stderr)
    for label, spec in specs.items():
        for batch, steps in regimes:
            n = CLIENT_IMAGES if steps else EPOCH_IMAGES
            plain = ImageDataset(train.images[:n], train.labels[:n], 10)
            disguise = build(spec, key)
            disguise.reseed("train")
            disguised, mixed = disguise.apply(plain.images, plain.labels)  # InstaHide mixes
            trained_on = ImageDataset(disguised, mixed, 10)
            client_state, used = client_update(model, trained_on, batch, steps, seed=1)
            view = ServerView(server_round=1, partition_id=0, num_examples=n,
                              global_state=model.state_dict(), client_state=client_state,
                              model_name="lenet", image_shape=(1, 28, 28), num_classes=10,
                              lr=LR, local_steps=steps, local_epochs=1, batch_size=batch)
            attack = GradientInversion(iterations=args.iterations)
            started = time.perf_counter()
            rec = attack.reconstruct(Evidence(view=view), Knowledge(level=0, public=public),
                                     Runtime(device=device, seed=0, progress=False))
            truth = GroundTruth(batch_plain=plain.images[used],
                                batch_disguised=disguised[used],
                                batch_labels=plain.labels[used], train_plain=plain,
                                train_disguised=disguised, disguise_spec=spec,
                                disguise_key=None, batch_index=used)
            figures = attack.score(rec, truth, scorer)
            figures.pop("_grid", None)
            rows.append({"defence": label, "batch_size": batch,
                         "local_steps": steps or "epoch", "images": len(used),
                         "iterations": args.iterations,
                         "steps_taken": len(view.step_sizes()),
                         **{k: figures.get(k) for k in (
                             "status", "delta_mode", "psnr_vs_original", "ssim_vs_original",
                             "psnr_vs_disguised", "recognisability", "label_accuracy")},
                         "seconds": time.perf_counter() - started})
            if args.rows:
                with open(args.rows, "a") as fh:
                    fh.write(json.dumps(rows[-1]) + "\n")
            bar.update(1)
    bar.close()
    tmp.cleanup()
    out = {"_meta": {"device": str(device), "iterations": args.iterations, "lr": LR,
                     "client_images": CLIENT_IMAGES, "epoch_images": EPOCH_IMAGES,
                     "model": "lenet (seed 0, untrained: round 1)"},
           "rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                     for k, v in r.items()} for r in rows]}
    if args.json:
        print(json.dumps(out))
        return
    if args.markdown:
        print(markdown(out["rows"]))
        return
    print(f"{'defence':>20} {'B':>3} {'steps':>6} {'imgs':>5} {'PSNR orig':>9} "
          f"{'SSIM':>6} {'PSNR disg':>9} {'recog':>6} {'labels':>6} {'s':>6}")
    for r in out["rows"]:
        def f(v, d=2):
            return "–" if v is None else f"{v:.{d}f}"
        print(f"{r['defence']:>20} {r['batch_size']:>3} {r['local_steps']!s:>6} "
              f"{r['images']:>5} {f(r['psnr_vs_original']):>9} {f(r['ssim_vs_original'], 3):>6} "
              f"{f(r['psnr_vs_disguised']):>9} {f(r['recognisability']):>6} "
              f"{f(r['label_accuracy']):>6} {r['seconds']:>6.1f}")


if __name__ == "__main__":
    main()
