#!/usr/bin/env python
"""The attack each defence fears most, in one process, without Flower.

Three parts (`--parts`, default all):

- `instahide`: Carlini et al.'s attack in a challenge-like setting: 100 private Fashion-MNIST
  test images, k ∈ {2, 4} (inside mixing), each private image in T ∈ {5, 10, 50} encodings
  (drawn through the disguise's own mixing), Level 1 (the attacker encodes its 5000 public
  images under its own key to learn the similarity; one network per k). Scored as the paper
  does: SSIM and PSNR of x and of |2x − 1|, mean and max over the 100 images.
  `--diagnose` adds where it loses: the learned similarity's precision, and the solve from
  the true sharing graph and from the true members.
- `defences`: per defence, one client's 300 images disguised under a federation key and
  handed to the attacker (the outsourcing threat model), every attack that applies at
  Levels 0, 1 and 2, and the strongest per level (PSNR against the originals; a level's
  strongest is over every attack of that level or below).
- `visualmixer`: the paper's claim that shuffled images are unrecognisable, checked over
  window settings: per setting the shuffled images' VFE, what the window-statistics attack
  and the learned de-shuffler recover (the generic inverse network is left to `defences`),
  recognisability (the attacker's plain-trained classifier on the outputs), and the
  accuracy cost: lenet trained on 10 000 shuffled
  training images for 3 epochs, tested on shuffled test images, beside the same on plain.

    python bench/adaptive_attacks.py --json
    python bench/adaptive_attacks.py --parts instahide --ks 2 --ts 50 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedisguise.attacks import build_attack  # noqa: E402
from fedisguise.attacks.base import (  # noqa: E402
    Evidence,
    GroundTruth,
    Knowledge,
    Runtime,
    ServerView,
)
from fedisguise.attacks.instahide_attack import score_recovery  # noqa: E402
from fedisguise.attacks.instahide_recovery import (  # noqa: E402
    candidates_from,
    challenge_members,
    recover,
)
from fedisguise.attacks.scoring import Scorer  # noqa: E402
from fedisguise.config import Config  # noqa: E402
from fedisguise.data.datasets import ImageDataset, load_dataset  # noqa: E402
from fedisguise.disguise import DisguiseKey, build  # noqa: E402
from fedisguise.metrics import vfe  # noqa: E402
from fedisguise.models import build_model  # noqa: E402
from fedisguise.node_data import BatchDraws  # noqa: E402
from fedisguise.training import evaluate, train_local  # noqa: E402
from fedisguise.disguise.transform_net_prepare import prepare  # noqa: E402

from attack_regimes import DEFENCES as REGIME_DEFENCES  # noqa: E402

# The regimes bench's defences and settings, and the learnable transformation network as
# configs/attacks-adaptive.toml sets it.
DEFENCES = {**REGIME_DEFENCES, "visualmixer-authors": "visualmixer-authors", "transform-net": {
    "name": "transform-net", "alpha": 5.0, "features": "vgg16-imagenet",
    "features_fallback": "vgg16-random", "epochs": 3, "width": 16, "train_samples": 3000}}
# Every attack of the outsourcing threat model, by level; each runs where it applies.
ATTACKS = {
    0: [{"name": "as_observed"}],
    1: [{"name": "inverse_network", "level": 1, "pairs": 2000, "epochs": 5},
        {"name": "window_stats"}, {"name": "deshuffler", "pairs": 2000, "epochs": 5},
        {"name": "instahide_attack"},
        {"name": "jigsaw", "block_size": 7, "images": 300}],
    2: [{"name": "inverse_network", "level": 2, "pairs": 300, "epochs": 5},
        {"name": "inverse_network", "level": 2, "method": "known-pairs", "pairs": 300}],
}
VISUALMIXER_SETTINGS = {
    "visualmixer (default: windows 4 and 2)": "visualmixer",
    "visualmixer, windows 7": {"name": "visualmixer", "min_window": 7, "max_window": 7},
    "visualmixer, windows 14 and 7": {"name": "visualmixer", "min_window": 7,
                                      "max_window": 14},
    "uniform 2": {"name": "visualmixer-uniform", "window": 2},
    "uniform 4": {"name": "visualmixer-uniform", "window": 4},
    "uniform 7": {"name": "visualmixer-uniform", "window": 7},
    "uniform 14": {"name": "visualmixer-uniform", "window": 14},
    "uniform 28 (whole image)": {"name": "visualmixer-uniform", "window": 28},
    # the authors' released algorithm: 2-px sub-blocks of 16-px regions at 224 px, resized
    # back; redrawn every batch in the accuracy check, as they train
    "visualmixer-authors (224 px, resized back)": "visualmixer-authors",
}
PER_BATCH = ("visualmixer-authors",)  # trained as their authors redraw them: every batch
FIGURES = ("psnr_vs_original", "ssim_vs_original", "recognisability")


def view(n: int) -> ServerView:
    """What the server knows of the client: its num_examples (and the model's input)."""
    return ServerView(server_round=1, partition_id=0, num_examples=n, global_state={},
                      client_state={}, model_name="lenet", image_shape=(1, 28, 28),
                      num_classes=10, lr=0.05, local_steps=0, local_epochs=1, batch_size=32)


def truth_for(plain: ImageDataset, disguised: torch.Tensor, spec: Any, key: DisguiseKey,
              observed: slice) -> GroundTruth:
    return GroundTruth(batch_plain=plain.images, batch_disguised=disguised,
                       batch_labels=plain.labels, train_plain=plain, train_disguised=disguised,
                       disguise_spec=spec, disguise_key=key,
                       observed_plain=plain.images[observed],
                       observed_disguised=disguised[observed],
                       observed_labels=plain.labels[observed])


def clean(figures: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe, without pictures and matched tensors."""
    out = {}
    for k, v in figures.items():
        if k.startswith("_") or isinstance(v, torch.Tensor):
            continue
        out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    return out


def instahide_part(args: argparse.Namespace, test: ImageDataset, public: ImageDataset,
                   scorer: Scorer, runtime: Runtime) -> list[dict[str, Any]]:
    private = test.subset(torch.arange(args.private))
    rows = []
    for k in args.ks:
        spec = {"name": "instahide", "k": k}
        attack = build_attack({"name": "instahide_attack", "public_images": len(public)})
        for t in args.ts:
            victim = build(spec, DisguiseKey.generate(1000 + k))
            members = challenge_members(len(private), k, t, np.random.default_rng(t))
            encodings = victim.encode(private.images, members)[0]
            started = time.perf_counter()
            rec = attack.reconstruct(
                Evidence(view=view(len(private)), images=encodings, images_from="outsourced"),
                Knowledge(level=1, public=public, algorithm=spec), runtime)
            truth = truth_for(private, encodings, spec, None, slice(None))
            figures = clean(attack.score(rec, truth, scorer))
            rows.append({"k": k, "T": t, "encodings": len(encodings),
                         "wall_seconds": time.perf_counter() - started, **figures})
            if args.diagnose:
                rows[-1]["diagnosis"] = diagnose(attack, encodings, members, private, spec,
                                                 public, runtime)
            print(f"instahide k={k} T={t}: SSIM {figures['ssim_vs_original']:.3f} "
                  f"(|x| {figures['abs_ssim']:.3f}), PSNR {figures['psnr_vs_original']:.1f} "
                  f"dB, {rows[-1]['wall_seconds']:.0f} s", file=sys.stderr)
    return rows


def diagnose(attack: Any, encodings: torch.Tensor, members: torch.Tensor,
             private: ImageDataset, spec: Any, public: ImageDataset, runtime: Runtime
             ) -> dict[str, Any]:
    """Where the attack loses (the experimenter's view, with the truth): the learned
    similarity's precision among each encoding's k·(T − 1) nearest, then the solve run from
    the true sharing graph instead of the learned one, and from the true members."""
    m, n, k = len(encodings), len(private), members.shape[1]
    t = m * k // n
    incidence = torch.zeros(m, n)
    incidence[torch.arange(m)[:, None], members] = 1
    share = (incidence @ incidence.T) > 0
    share.fill_diagonal_(False)
    absolute = encodings.abs()
    knowledge = Knowledge(level=1, public=public, algorithm=spec)
    learned, _ = attack.similarity(absolute, knowledge, knowledge.own_disguise(runtime.seed),
                                   runtime)
    learned.fill_diagonal_(-torch.inf)
    near = learned.topk(k * (t - 1), 1).indices
    out: dict[str, Any] = {"similarity_precision": share.gather(1, near).float().mean().item()}
    prior = 2 * public.images.mean(0) - 1
    for label, candidates in (
            ("true_sharing_graph", candidates_from(share.float() + torch.eye(m), n, k, t,
                                                   attack.candidates)),
            ("true_members", members)):
        images, unsigned, _ = recover(absolute, candidates, n, k, None, prior,
                                      restarts=attack.restarts, iterations=attack.iterations,
                                      rounds=attack.rounds, seed=runtime.seed)
        found = score_recovery(images, unsigned, private.images, private.labels)
        out[label] = {f: found[f] for f in ("ssim_vs_original", "abs_ssim",
                                            "psnr_vs_original")}
    return out


def trained(spec: Any, folder: Path, device: str) -> Any:
    """The spec with its h_θ trained as run.py trains it in configs/attacks-adaptive.toml's
    attack cells (transform-net without a `path`: by the coordinator, on training images
    the 2 × 500-image clients do not hold); other specs pass through."""
    if not isinstance(spec, dict) or spec.get("name") != "transform-net" or spec.get("path"):
        return spec
    cfg = Config.from_dict({
        "disguise": spec, "experiment": {"name": "transform-net", "out": str(folder),
                                         "clients": 2},
        "data": {"train_per_client": 500}, "resources": {"device": device}})
    return prepare(cfg).disguise


def outsourced_attacks(spec: Any, plain: ImageDataset, public: ImageDataset, scorer: Scorer,
                       runtime: Runtime, levels: tuple[int, ...] = (0, 1, 2),
                       skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every applicable attack on one client's disguised images, by level (but `skip`)."""
    key = DisguiseKey.generate(0)  # the federation's key; the attacker never sees it
    disguise = build(spec, key)
    disguise.reseed("train")
    disguised = disguise.apply(plain.images, plain.labels)[0]
    name = spec if isinstance(spec, str) else spec["name"]
    spare = len(plain) // 2  # Level-2 pairs: the client's other images under its key
    rows = []
    for level in levels:
        for attack_spec in ATTACKS[level]:
            attack = build_attack(attack_spec)
            if not attack.applies_to(name) or attack_spec["name"] in skip:
                continue
            pairs = None
            observed = slice(None)
            if level == 2:
                pairs = (plain.images[spare:], disguised[spare:])
                observed = slice(0, spare)
            started = time.perf_counter()
            rec = attack.reconstruct(
                Evidence(view=view(len(plain)), images=disguised[observed],
                         images_from="outsourced"),
                Knowledge(level=level, public=public, algorithm=spec if level else None,
                          pairs=pairs), runtime)
            figures = clean(attack.score(rec, truth_for(plain, disguised, spec, key,
                                                        observed), scorer))
            label = attack_spec["name"] + (f" ({attack_spec['method']})"
                                           if "method" in attack_spec else "")
            rows.append({"attack": label, "level": level,
                         "seconds": time.perf_counter() - started,
                         **{f: figures.get(f) for f in FIGURES},
                         "psnr_disguised_vs_original": figures.get(
                             "psnr_disguised_vs_original")})
    return rows


def strongest(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per level, the attack of that level or below with the best PSNR vs originals."""
    best = {}
    for level in (0, 1, 2):
        eligible = [r for r in rows if r["level"] <= level
                    and r["psnr_vs_original"] is not None]
        if eligible:
            best[level] = max(eligible, key=lambda r: r["psnr_vs_original"])
    return best


def defences_part(args: argparse.Namespace, test: ImageDataset, public: ImageDataset,
                  scorer: Scorer, runtime: Runtime) -> dict[str, Any]:
    plain = test.subset(torch.arange(args.client_images))
    out = {}
    for label in tqdm(args.defences, desc="defences", file=sys.stderr):
        with tempfile.TemporaryDirectory() as folder:
            spec = trained(DEFENCES[label], Path(folder), str(runtime.device))
            rows = outsourced_attacks(spec, plain, public, scorer, runtime)
        out[label] = {"attacks": rows, "strongest": {
            f"level_{lv}": {"attack": r["attack"], **{f: r[f] for f in FIGURES}}
            for lv, r in strongest(rows).items()}}
    return out


def accuracy_on(spec: Any, train: ImageDataset, test: ImageDataset, device: torch.device,
                epochs: int) -> float:
    """lenet trained on the disguised training images, tested on disguised test images:
    disguised once, or (PER_BATCH) afresh for every batch, training and test alike."""
    disguise = build(spec, DisguiseKey.generate(0))
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    order = torch.Generator().manual_seed(0)
    if (spec if isinstance(spec, str) else spec["name"]) in PER_BATCH:
        draws = BatchDraws(disguise, DisguiseKey.generate("node-secret"))
        train_local(model, train, epochs=epochs, batch_size=32, optimizer="sgd", lr=0.05,
                    momentum=0.9, device=device, generator=order,
                    batch_transform=draws.training(1))
        return evaluate(model, test, device=device, batch_size=32,
                        batch_transform=draws.evaluation("test", 1))[1]
    disguise.reseed("train")
    images, labels = disguise.apply(train.images, train.labels)
    disguise.reseed("test")
    test_images, test_labels = disguise.apply_eval(test.images, test.labels)
    train_local(model, ImageDataset(images, labels, 10), epochs=epochs, batch_size=32,
                optimizer="sgd", lr=0.05, momentum=0.9, device=device, generator=order)
    return evaluate(model, ImageDataset(test_images, test_labels, 10), device=device)[1]


def visualmixer_part(args: argparse.Namespace, train: ImageDataset, test: ImageDataset,
                     public: ImageDataset, scorer: Scorer, runtime: Runtime
                     ) -> list[dict[str, Any]]:
    plain = test.subset(torch.arange(args.client_images))
    fit = train.subset(torch.arange(10000))
    held = test.subset(torch.arange(8000, 10000))
    plain_accuracy = accuracy_on("none", fit, held, runtime.device, args.epochs)
    rows = []
    for label, spec in tqdm(VISUALMIXER_SETTINGS.items(), desc="visualmixer settings",
                            file=sys.stderr):
        shuffled = build(spec, DisguiseKey.generate(0)).apply(plain.images)[0]
        # the generic inverse network is left to `defences` where a shuffle-specific attack
        # applies; on the authors' sub-block shuffle, resized back, it is the Level-1 attack
        specific = (spec if isinstance(spec, str) else spec["name"]) not in PER_BATCH
        attacks = outsourced_attacks(spec, plain, public, scorer, runtime, levels=(0, 1),
                                     skip=("inverse_network",) if specific else ())
        accuracy = accuracy_on(spec, fit, held, runtime.device, args.epochs)
        best = strongest(attacks)[1]
        rows.append({"setting": label, "spec": spec,
                     "vfe": vfe(shuffled).mean().item(), "plain_vfe": vfe(plain.images)
                     .mean().item(), "attacks": attacks,
                     "strongest": {"attack": best["attack"], **{f: best[f] for f in FIGURES}},
                     "accuracy": accuracy, "plain_accuracy": plain_accuracy,
                     "accuracy_cost_points": 100 * (plain_accuracy - accuracy)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="instahide,defences,visualmixer")
    parser.add_argument("--ks", default="2,4", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--ts", default="5,10,50",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--private", type=int, default=100)
    parser.add_argument("--diagnose", action="store_true",
                        help="InstaHide: also the similarity's precision and the solve from "
                        "the true sharing graph and from the true members")
    parser.add_argument("--defences", default=",".join(DEFENCES),
                        type=lambda s: s.split(","))
    parser.add_argument("--client-images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs of the accuracy check in the visualmixer part")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()
    unknown = [d for d in args.defences if d not in DEFENCES]
    if unknown:
        raise SystemExit(f"unknown defence(s) {unknown}; valid: {list(DEFENCES)}")
    parts = args.parts.split(",")
    if set(parts) - {"instahide", "defences", "visualmixer"}:
        raise SystemExit(f"unknown part(s) in {parts}; valid: instahide, defences, visualmixer")
    device = torch.device(args.device)
    train = load_dataset("fashion-mnist", "train", args.data_dir)
    test = load_dataset("fashion-mnist", "test", args.data_dir)
    public = test.subset(torch.arange(5000, 10000))  # disjoint from every private image
    runtime = Runtime(device=device, seed=0, progress=not args.json)
    scorer = Scorer(public, "lenet", device, seed=0, progress=False)
    started = time.perf_counter()
    ceiling = test.subset(torch.arange(args.client_images))  # recognisability's top
    out: dict[str, Any] = {"_meta": {"device": str(device), "torch": torch.__version__,
                                     "threads": torch.get_num_threads(),
                                     "private_images": args.private,
                                     "client_images": args.client_images,
                                     "recognisability_of_originals": scorer.recognisability(
                                         ceiling.images, ceiling.labels)}}
    # What libraries print (a weights download tried on the way) must not break --json.
    with contextlib.redirect_stdout(sys.stderr):
        if "instahide" in parts:
            out["instahide"] = instahide_part(args, test, public, scorer, runtime)
        if "defences" in parts:
            out["defences"] = defences_part(args, test, public, scorer, runtime)
        if "visualmixer" in parts:
            out["visualmixer"] = visualmixer_part(args, train, test, public, scorer,
                                                  runtime)
    out["_meta"]["wall_seconds"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(out))
        return
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
