"""Run a config's attacks after its federated run, on the server's captures, and score them.

The experimenter, not the server, runs this step: scoring needs the target client's
original images and, for the disguised copy, the client's key (as for the privacy figures).
Each attack's reconstruction step only receives the server's view and what its knowledge
level allows (fedisguise.attacks.base).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import save_image

from fedisguise.attacks.base import (
    AttackContext,
    GroundTruth,
    ServerView,
    attack_params,
    build_attack,
)
from fedisguise.attacks.capture import capture_path, final_global_path
from fedisguise.config import Config
from fedisguise.data import client_data, load_dataset
from fedisguise.disguise import build as build_disguise
from fedisguise.disguise.keys import client_key
from fedisguise.dp import poisson_batches
from fedisguise.privacy import display_range
from fedisguise.training import batch_indices, resolve_device, training_order_seed

HOLDOUT = 5000  # test images [0, 5000) are non-member candidates, the rest public data


def load_view(cfg: Config, run_dir: Path, server_round: int, partition: int) -> ServerView:
    path = capture_path(run_dir, server_round, partition)
    if not path.is_file():
        raise FileNotFoundError(
            f"no capture of client {partition} in round {server_round} ({path}); was that "
            f"client sampled, and is round <= experiment.rounds = {cfg.experiment.rounds}?")
    saved = torch.load(path, weights_only=True)
    final = final_global_path(run_dir)
    return ServerView(
        server_round=server_round, partition_id=partition,
        num_examples=int(saved["num_examples"]), global_state=saved["global_state"],
        client_state=saved["client_state"], lr=cfg.train.lr,
        local_steps=cfg.train.local_steps, batch_size=cfg.train.batch_size,
        final_global_state=torch.load(final, weights_only=True) if final.is_file() else None)


def ground_truth(cfg: Config, server_round: int, partition: int) -> GroundTruth:
    """Re-create the target client's data exactly as it trained on it."""
    d, c, seed = cfg.data, cfg.client, cfg.experiment.seed
    plain = client_data(d.dataset, d.data_dir, d.partitioner, d.alpha, seed, partition,
                        cfg.experiment.clients, d.train_per_client, d.test_samples).train
    key = client_key(c.key_scope, c.key_file, seed, partition)
    disguise = build_disguise(cfg.disguise, key)
    disguise.reseed(f"train:round-{server_round}" if c.redisguise_each_round else "train")
    disguised, _ = disguise.apply(plain.images, plain.labels)
    steps, order_seed = cfg.train.local_steps, training_order_seed(seed, server_round, partition)
    if steps and cfg.dp.mode == "dp-sgd":  # Opacus drew Poisson batches from the same seed
        idx = torch.cat(list(poisson_batches(len(plain), cfg.train.batch_size,
                                             cfg.train.local_epochs, order_seed, steps)))
    elif steps:
        idx = batch_indices(len(plain), order_seed, cfg.train.batch_size, steps,
                            cfg.train.local_epochs)
    else:
        idx = torch.arange(len(plain))  # whole epochs: every image is behind the update
    return GroundTruth(batch_plain=plain.images[idx], batch_disguised=disguised[idx],
                       batch_labels=plain.labels[idx], train_plain=plain,
                       train_disguised=disguised, disguise_spec=cfg.disguise,
                       disguise_key=key)


def save_grid(path: Path, rows: tuple[torch.Tensor, ...]) -> None:
    """original | disguised | reconstructed, one row each (disguised rescaled for viewing)."""
    k = min(len(r) for r in rows)
    plain, disguised, rec = (r[:k].detach().cpu().float() for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([plain, display_range(disguised), rec.clamp(0, 1)]), path, nrow=k,
               padding=2, pad_value=1.0)


def run_attacks(cfg: Config, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Figures per attack, keyed by name (a second attack of one name gets a suffix)."""
    device = resolve_device(cfg.resources.device)
    test = load_dataset(cfg.data.dataset, "test", cfg.data.data_dir)
    order = np.random.default_rng([cfg.experiment.seed, 11]).permutation(len(test))
    holdout, public = test.subset(order[:HOLDOUT]), test.subset(order[HOLDOUT:])
    results: dict[str, Any] = {}
    loaded: dict[tuple[int, int], tuple[ServerView, GroundTruth]] = {}
    for spec in cfg.attacks:
        name, params = attack_params(spec)
        attack = build_attack(spec)
        target = int(params.get("round", 1)), int(params.get("client", 0))
        if target not in loaded:  # attacks on one update share its capture and truth
            loaded[target] = load_view(cfg, run_dir, *target), ground_truth(cfg, *target)
        view, truth = loaded[target]
        ctx = AttackContext(view=view, truth=truth, public=public,
                            holdout=holdout, model_name=cfg.model.name, device=device,
                            seed=cfg.experiment.seed, progress=progress)
        figures = attack.run(ctx)
        label = name if name not in results else f"{name}-{len(results)}"
        grid = figures.pop("_grid", None)
        if grid is not None:
            save_grid(run_dir / "images" / f"attack-{label}.png", grid)
            figures["grid"] = f"images/attack-{label}.png"
        figures["params"] = params
        results[label] = _json_safe(figures)
    return results


def _json_safe(value: Any) -> Any:
    """JSON has no inf/NaN: a PSNR of identical images (inf) and any non-finite figure
    become null, which summary.md prints as such."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
