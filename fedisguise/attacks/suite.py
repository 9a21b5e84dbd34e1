"""Run a config's attacks after its federated run, on the server's captures, and score them.

The experimenter, not the server, runs this step: scoring needs the target client's
original images and, for the disguised copy, the client's key (as for the privacy figures).
Each attack's reconstruction step only receives the server's view and what its knowledge
level allows (fedisguise.attacks.base); the truth goes to its scoring step alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import save_image

from fedisguise.attacks.base import (
    Attack,
    Evidence,
    GroundTruth,
    Knowledge,
    Runtime,
    ServerView,
    Target,
    build_attack,
    parse_spec,
)
from fedisguise.attacks.capture import capture_path, capture_refused, final_global_path
from fedisguise.attacks.scoring import Scorer
from fedisguise.config import Config
from fedisguise.data.datasets import ImageDataset
from fedisguise.node_data import NodeData, node_data
from fedisguise.privacy.dp import poisson_batches
from fedisguise.privacy.figures import display_range
from fedisguise.resolved import ResolvedRun
from fedisguise.training import (
    batch_indices,
    epoch_batches,
    training_order_seed,
)

# Test images [0, 5000) are non-member candidates, the rest public data; a test split of
# 10 000 images or fewer (your own folder) is halved, so the attacker always has some.
HOLDOUT = 5000


def claimed_examples(cfg: Config, claimed: int) -> int:
    """The example count a reply claims, within what the server knows a node can hold (the
    bound its reply checks use): a refused reply may claim 1e12."""
    return max(1, min(claimed, cfg.examples_cap))


def load_view(cfg: Config, run_dir: Path, server_round: int, partition: int,
              image_shape: tuple[int, int, int], num_classes: int) -> ServerView:
    """The server's view of one capture: the arrays it received and what it configured."""
    path = capture_path(run_dir, server_round, partition)
    if not path.is_file():
        raise FileNotFoundError(
            f"no capture of client {partition} in round {server_round} ({path}); was that "
            f"client sampled, and is round <= experiment.rounds = {cfg.experiment.rounds}?")
    saved = torch.load(path, weights_only=True)
    final = final_global_path(run_dir)
    t = cfg.train
    return ServerView(
        server_round=server_round, partition_id=partition,
        num_examples=claimed_examples(cfg, int(saved["num_examples"])),
        global_state=saved["global_state"],
        client_state=saved["client_state"], model_name=cfg.model.name,
        image_shape=image_shape, num_classes=num_classes, lr=t.lr,
        local_steps=t.local_steps, local_epochs=t.local_epochs, batch_size=t.batch_size,
        optimizer=t.optimizer, momentum=t.momentum, weight_decay=t.weight_decay,
        final_global_state=torch.load(final, weights_only=True) if final.is_file() else None)


def ground_truth(run: ResolvedRun, server_round: int, partition: int) -> GroundTruth:
    """Re-create the target client's data exactly as it trained on it: under its key and
    its own secret's draws; with client.redisguise = "batch", batch by batch as it drew them."""
    cfg = run.cfg
    seed = cfg.experiment.seed
    data = node_data(run, partition, server_round, test=False)
    plain, key = data.plain.train, data.key
    steps, order_seed = cfg.train.local_steps, training_order_seed(seed, server_round, partition)
    disguised = data.train.images if data.batches is None else replay_batches(
        data, trained_batches(cfg, len(plain), order_seed), server_round,
        cfg.train.batch_size)
    if steps and cfg.dp_mode.per_example:  # Opacus drew Poisson batches from the same seed
        idx = torch.cat(list(poisson_batches(len(plain), cfg.train.batch_size,
                                             cfg.train.local_epochs, order_seed, steps)))
    elif steps:
        idx = batch_indices(len(plain), order_seed, cfg.train.batch_size, steps,
                            cfg.train.local_epochs)
    else:
        idx = torch.arange(len(plain))  # whole epochs: every image is behind the update
    if len(idx.unique()) < len(idx):  # steps past an epoch (or Poisson draws) revisit images
        idx = idx.unique()
    return GroundTruth(batch_plain=plain.images[idx], batch_disguised=disguised[idx],
                       batch_labels=plain.labels[idx], train_plain=plain,
                       train_disguised=disguised, disguise_spec=run.disguise,
                       disguise_key=key, disguise_secret=data.secret, batch_index=idx)


def trained_batches(cfg: Config, num_examples: int, order_seed: int
                    ) -> list[list[torch.Tensor]]:
    """The partition indices of every batch a client trained on in one round, in order, as
    its disguise drew them under client.redisguise = "batch": epoch by epoch (`train_local`),
    or Opacus's Poisson batches one by one under DP-SGD."""
    t = cfg.train
    if cfg.dp_mode.per_example:
        return [[b] for b in poisson_batches(num_examples, t.batch_size, t.local_epochs,
                                             order_seed, t.local_steps)]
    return list(epoch_batches(num_examples, t.batch_size, t.local_epochs,
                              torch.Generator().manual_seed(order_seed), t.local_steps))


def replay_batches(data: NodeData, calls: list[list[torch.Tensor]], server_round: int,
                   batch_size: int) -> torch.Tensor:
    """The client's partition as it disguised it batch by batch in `server_round`
    (client.redisguise = "batch"), replaying its calls (`trained_batches`): each image as it
    was the first time the client trained on it that round. Images it did not train on that
    round (a few local steps) are disguised under draws of their own from the node's secret,
    so that Level-2 pairs and outsourced evidence still come from the victim's disguise."""
    plain = data.plain.train
    out, seen = None, torch.zeros(len(plain), dtype=torch.bool)

    def keep(transform: Any, batches: list[torch.Tensor], first: int) -> None:
        nonlocal out
        for idx, (x, _) in zip(batches, transform(plain.images, plain.labels, batches, first)):
            if out is None:
                out = torch.empty((len(plain), *x.shape[1:]), dtype=x.dtype)
            fresh = ~seen[idx]
            out[idx[fresh]] = x[fresh]
            seen[idx] = True

    step, train = 0, data.batches.training(server_round)
    for batches in calls:
        keep(train, batches, step)
        step += len(batches)
    left = (~seen).nonzero().flatten()
    if len(left):
        keep(data.batches.training(server_round, "untrained"), list(left.split(batch_size)), 0)
    return out


def save_grid(path: Path, rows: tuple[torch.Tensor, ...]) -> None:
    """original | disguised | reconstructed, one row each (disguised rescaled for viewing)."""
    k = min(len(r) for r in rows)
    plain, disguised, rec = (r[:k].detach().cpu().float() for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([plain, display_range(disguised), rec.clamp(0, 1)]), path, nrow=k,
               padding=2, pad_value=1.0)


def knowledge_for(attack: Attack, truth: GroundTruth, public: ImageDataset,
                  algorithm: Any, seed: int) -> tuple[Knowledge, torch.Tensor]:
    """What an attacker of the attack's declared level holds, and (for the experimenter)
    which client images its Level-2 pairs are: the client's own images under its key,
    never those behind the attacked update."""
    level = getattr(attack, "level", 0)
    pairs, chosen = None, torch.empty(0, dtype=torch.long)
    if level == 2 and attack.pairs_wanted() > 0:  # a chain whose stages want none: none
        spare = torch.ones(len(truth.train_plain), dtype=torch.bool)
        spare[truth.batch_index] = False
        pool = spare.nonzero().flatten()
        order = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
        wanted = min(attack.pairs_wanted(), len(order) // 2)
        if wanted < 1:
            raise ValueError("the client holds no images outside the attacked batch to serve "
                             "as Level-2 pairs")
        chosen = order[:wanted]
        pairs = (truth.train_plain.images[chosen], truth.train_disguised[chosen])
    return Knowledge(level=level, public=public, algorithm=algorithm if level else None,
                     pairs=pairs), chosen


def evidence_for(attack: Attack, view: ServerView, truth: GroundTruth, paired: torch.Tensor,
                 holdout: ImageDataset, seed: int) -> tuple[Evidence, GroundTruth]:
    """The game: what the attack is handed besides the view, and the truth that scores it.

    Image attacks on their own get the true disguised images (the papers' outsourcing
    threat model, marked "outsourced"); membership gets a balanced candidate set."""
    if attack.evidence == "update":
        return Evidence(view=view), truth
    if attack.evidence == "candidates":
        half = min(attack.candidates // 2, len(truth.train_plain), len(holdout))
        gen = torch.Generator().manual_seed(seed)
        members = truth.train_plain.subset(
            torch.randperm(len(truth.train_plain), generator=gen)[:half])
        outsiders = holdout.subset(torch.randperm(len(holdout), generator=gen)[:half])
        candidates = ImageDataset(torch.cat([members.images, outsiders.images]),
                                  torch.cat([members.labels, outsiders.labels]),
                                  holdout.num_classes)
        member = torch.cat([torch.ones(half, dtype=torch.bool),
                            torch.zeros(half, dtype=torch.bool)])
        return (Evidence(view=view, candidates=candidates),
                replace(truth, candidates_member=member))
    count = getattr(attack, "targets", len(truth.train_plain))
    if getattr(attack, "target_set", "client") == "test":
        plain, labels = holdout.images[:count], holdout.labels[:count]
        victim = truth.disguise_spec.build(truth.disguise_key)
        victim.reseed("attack-targets", truth.disguise_secret)
        disguised = victim.apply(plain, labels)[0]
    else:  # the client's own images that are not among a Level-2 attacker's pairs
        free = torch.ones(len(truth.train_plain), dtype=torch.bool)
        free[paired] = False
        keep = free.nonzero().flatten()[:count]
        plain, labels = truth.train_plain.images[keep], truth.train_plain.labels[keep]
        disguised = truth.train_disguised[keep]
    return (Evidence(view=view, images=disguised, images_from="outsourced"),
            replace(truth, observed_plain=plain, observed_disguised=disguised,
                    observed_labels=labels))


def run_attacks(run: ResolvedRun, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Figures per attack, keyed by name (a second attack of one name gets a suffix).

    Per attack: the server's view and the knowledge of its level go to `reconstruct`;
    the ground truth only to `score`."""
    cfg, device = run.cfg, run.device
    test = run.data.split("test")
    order = np.random.default_rng([cfg.experiment.seed, 11]).permutation(len(test))
    held = min(HOLDOUT, len(test) // 2)
    holdout, public = test.subset(order[:held]), test.subset(order[held:])
    runtime = Runtime(device=device, seed=cfg.experiment.seed, progress=progress)
    scorer = Scorer(public, cfg.model.name, device, cfg.experiment.seed, progress=progress)
    results: dict[str, Any] = {}
    loaded: dict[Target, tuple[ServerView, GroundTruth]] = {}
    for raw in cfg.attacks:
        spec = parse_spec(raw)
        attack = build_attack(spec)
        label = attack_label(spec, results)
        about = {"attack": spec.name, "params": spec.params,
                 "target": {"round": spec.target.round, "client": spec.target.client}}
        if not attack.applies_to(run.disguise.name):  # a defence-specific attack elsewhere
            results[label] = {"status": "not applicable", "level": getattr(attack, "level", 0),
                              "reason": f"built for {list(attack.scope())}, not "
                                        f"{run.disguise.name}", **about}
            continue
        if spec.target not in loaded:  # attacks on one update share its capture and truth
            loaded[spec.target] = (
                load_view(cfg, run_dir, spec.target.round, spec.target.client,
                          public.image_shape, public.num_classes),
                ground_truth(run, spec.target.round, spec.target.client))
        view, truth = loaded[spec.target]
        knowledge, paired = knowledge_for(attack, truth, public, run.disguise,
                                          cfg.experiment.seed)
        evidence, truth = evidence_for(attack, view, truth, paired, holdout,
                                       cfg.experiment.seed)
        reconstruction = attack.reconstruct(evidence, knowledge, runtime)
        figures = attack.score(reconstruction, truth, scorer)  # the only step with the truth
        figures.setdefault("n", scored_count(reconstruction))
        grid = figures.pop("_grid", None)
        if grid is not None:
            save_grid(run_dir / "images" / f"attack-{label}.png", grid)
            figures["grid"] = f"images/attack-{label}.png"
        figures.update(level=knowledge.level, **about)
        refused = capture_refused(run_dir, spec.target.round, spec.target.client)
        if refused:  # the server received it and left it out of the aggregate
            figures["refused"] = refused
        results[label] = _json_safe(figures)
    return results


def scored_count(reconstruction: Any) -> int | None:
    """How many things an attack's figures are over: the images it reconstructed, or the
    membership candidates it ranked (`n` beside every figure in the tables)."""
    for what in (reconstruction.images, reconstruction.scores):
        if what is not None:
            return int(len(what))
    return None


def attack_label(spec: Any, taken: Mapping[str, Any]) -> str:
    """An attack's key in metrics.json and its picture's name: its name, with its knowledge
    level where it takes one (`chain-level2`), numbered from 2 where that is taken already."""
    label = spec.name + (f"-level{spec.params['level']}" if "level" in spec.params else "")
    if label not in taken:
        return label
    return next(f"{label}-{i}" for i in range(2, len(taken) + 3) if f"{label}-{i}" not in taken)


def _json_safe(value: Any) -> Any:
    """JSON has no inf/NaN: a PSNR of identical images (inf) and any non-finite figure
    become null, which summary.md prints as such."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
