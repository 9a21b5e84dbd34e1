"""The transformation network in a federated run: trained once before the run, then public.

Ito et al.'s framework has a cloud provider's classifier ψ and a user who trains h_θ against it.
In a federation the trainer is configured: the `coordinator` (training images no client holds)
or one client (`trainer = "client"`, its own plain partition). ψ is the run's model architecture
(or `classifier`) trained on the trainer's plain images, or a supplied `classifier_path`. The
trained h_θ is written to results/<run>/transform-net.pt, the run's disguise spec points every
client at it, and each client transforms its own images locally before training and inference.

The run records ψ's accuracy on the plain test set (without h_θ) and on h_θ(test) (with it),
as the paper's Table I, beside the federated model's accuracy on transformed test images.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fedisguise.config import Config, ConfigError
from fedisguise.data.datasets import ImageDataset, dataset_fingerprint, load_dataset
from fedisguise.data.partitions import client_data, server_test_set, unassigned_train_indices
from fedisguise.disguise.spec import DisguiseSpec
from fedisguise.disguise.transform_net_training import (
    HARNESS_DEFAULTS,
    TRAINING_DEFAULTS,
    load_transform_net,
    save_transform_net,
    train_transform_net,
    transform_images,
)
from fedisguise.models import build_model
from fedisguise.training import evaluate, resolve_device, train_local

FILE = "transform-net.pt"


def trainer_data(cfg: Config, harness: dict[str, Any]) -> ImageDataset:
    """The plain images h_θ and ψ are trained on, as the configured trainer holds them."""
    d, e = cfg.data, cfg.experiment
    if harness["trainer"] == "client":
        k = harness["trainer_client"]
        if k >= e.clients:
            raise ConfigError(f"disguise.trainer_client {k} is not a client of this run "
                              f"({e.clients} clients)")
        data = client_data(d.source, d.data_dir, d.partitioner, d.alpha, e.seed, k,
                           e.clients, d.train_per_client, d.test_samples,
                           union_of=d.union_of).train
        return data.subset(np.arange(min(len(data), harness["train_samples"])))
    free = unassigned_train_indices(d.source, d.data_dir, d.partitioner, d.alpha, e.seed,
                                    e.clients, d.train_per_client, d.union_of)
    if len(free) < 10:
        raise ConfigError(
            "disguise.trainer = 'coordinator' trains on training images no client holds, and "
            f"the clients hold {'all' if not len(free) else 'all but ' + str(len(free))} of "
            "them: set data.train_per_client, or trainer = 'client'")
    chosen = np.random.default_rng([e.seed, 23]).permutation(free)[:harness["train_samples"]]
    return load_dataset(d.source, "train", d.data_dir).subset(np.sort(chosen))


def classifier(cfg: Config, harness: dict[str, Any], data: ImageDataset,
               device: torch.device) -> torch.nn.Module:
    """ψ: a supplied state dict, or the model trained on the trainer's plain images."""
    c, h, w = data.image_shape
    torch.manual_seed(cfg.experiment.seed)
    psi = build_model(harness["classifier"] or cfg.model.name, c, data.num_classes, (h, w))
    if harness["classifier_path"]:
        if not Path(harness["classifier_path"]).is_file():
            raise FileNotFoundError(f"classifier_path not found: {harness['classifier_path']}")
        try:
            psi.load_state_dict(torch.load(harness["classifier_path"], map_location="cpu",
                                           weights_only=True))
        except (RuntimeError, OSError, ValueError) as err:
            raise ValueError(f"{harness['classifier_path']}: not a state dict of "
                             f"{harness['classifier'] or cfg.model.name} ({err})") from err
        return psi.to(device)
    gen = torch.Generator().manual_seed(cfg.experiment.seed)
    for _ in tqdm(range(harness["classifier_epochs"]), desc="classifier ψ (plain)",
                  unit="epoch"):
        train_local(psi, data, epochs=1, batch_size=64, optimizer="adam", lr=1e-3,
                    device=device, generator=gen)
    return psi


CACHE = ".transform-net-cache"  # under experiment.out: one h_θ per distinct training


def cache_key(cfg: Config, harness: dict[str, Any], training: dict[str, Any],
              device: torch.device) -> str:
    """Everything that decides the h_θ `prepare` trains (its training and harness settings,
    ψ's model, the trainer's images: dataset files, split, seed; the device type), hashed.
    A grid's cells that share them (a seed's tuning runs and its utility cell) train once."""
    d, e = cfg.data, cfg.experiment
    psi = harness["classifier_path"]
    ident = {"format": 1, "training": training, "harness": harness, "model": cfg.model.name,
             "dataset": d.source, "files": dataset_fingerprint(d.source, d.data_dir),
             "partitioner": d.partitioner, "alpha": d.alpha, "seed": e.seed,
             "clients": e.clients, "train_per_client": d.train_per_client,
             "union_of": d.union_of, "test_samples": d.test_samples, "device": device.type,
             "psi": hashlib.sha256(Path(psi).read_bytes()).hexdigest()
             if psi and Path(psi).is_file() else psi}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()
                          ).hexdigest()[:24]


def prepare(cfg: Config) -> Config:
    """For a `transform-net` run without a `path`: train ψ and h_θ (or take the one an
    earlier run with the same settings trained, from experiment.out's cache), save h_θ in the
    run's folder, and return the config whose disguise spec points at it
    (TransformNet.prepare, for transform-net runs only)."""
    spec = DisguiseSpec.parse(cfg.disguise)  # before the run: it changes with h_theta's path
    params = spec.params
    if params.get("path"):
        spec.build()  # a missing, broken or mismatching file fails now
        return cfg
    harness = {**HARNESS_DEFAULTS, **{k: v for k, v in params.items() if k in HARNESS_DEFAULTS}}
    training = {k: v for k, v in params.items() if k in TRAINING_DEFAULTS}
    training.setdefault("seed", cfg.experiment.seed)
    device = resolve_device(cfg.resources.device)
    run_dir = cfg.run_dir.resolve()
    cached = Path(cfg.experiment.out).resolve() / CACHE / cache_key(cfg, harness, training,
                                                                     device)
    if not (cached / FILE).is_file():
        trained = train_for(cfg, harness, training, device)
        tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_transform_net(tmp / FILE, *trained)
        (tmp / "transform-net.json").write_text(json.dumps(trained[1], indent=2) + "\n")
        try:
            tmp.rename(cached)  # whole, or not at all (another process may have won)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (FILE, "transform-net.json"):
        shutil.copyfile(cached / name, run_dir / name)
    return replace(cfg, disguise={"name": spec.name, **params, "path": str(run_dir / FILE)})


def train_for(cfg: Config, harness: dict[str, Any], training: dict[str, Any],
              device: torch.device) -> tuple[Any, dict[str, Any]]:
    """ψ and h_θ trained for the run: (h_θ on the CPU, what the run records about it)."""
    data = trainer_data(cfg, harness)
    psi = classifier(cfg, harness, data, device)
    net, info = train_transform_net(data.images, data.labels, psi, device=device, **training)
    test = server_test_set(cfg.data.source, cfg.data.data_dir, cfg.data.test_samples,
                           cfg.experiment.seed)
    transformed = transform_images(net, test.images.to(device)).cpu()
    net.cpu()
    info.update({
        "trainer": harness["trainer"],
        "trainer_client": harness["trainer_client"] if harness["trainer"] == "client" else None,
        "classifier": harness["classifier"] or cfg.model.name,
        "classifier_source": harness["classifier_path"] or
        f"trained {harness['classifier_epochs']} epochs on the trainer's plain images",
        "psi_accuracy_plain": evaluate(psi, test, device=device)[1],
        "psi_accuracy_transformed": evaluate(
            psi, ImageDataset(transformed, test.labels, test.num_classes), device=device)[1],
    })
    return net, info


def figures(cfg: Config) -> dict[str, Any] | None:
    """What the run records about its h_θ (no history, no weights)."""
    _, info = load_transform_net(DisguiseSpec.parse(cfg.disguise).params["path"])
    return {k: v for k, v in info.items() if k != "history"}
