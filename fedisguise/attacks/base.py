"""What every attack shares: its registry, its parameters, and the two views of a run.

An attack sees only the server's view (`ServerView`: the global model it sent, the update it
received, the hyperparameters it configured) plus what its knowledge level grants (public
data; at Level 2, pairs made with the victim's key; candidates for membership). The
experimenter's ground truth (`GroundTruth`: the client's original and disguised images)
only scores the result and is never handed to an attack's reconstruction step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedisguise.data import ImageDataset
from fedisguise.disguise.base import check_params


@dataclass
class ServerView:
    """One captured client update, exactly as the server received it."""

    server_round: int
    partition_id: int
    num_examples: int
    global_state: dict[str, torch.Tensor]  # the model the server sent that round
    client_state: dict[str, torch.Tensor]  # the model the client sent back
    lr: float  # the client learning rate and steps the server configured
    local_steps: int
    batch_size: int
    final_global_state: dict[str, torch.Tensor] | None = None


@dataclass
class GroundTruth:
    """The experimenter's view of the target client, for scoring only."""

    batch_plain: torch.Tensor  # the images behind the captured update
    batch_disguised: torch.Tensor
    batch_labels: torch.Tensor
    train_plain: ImageDataset  # the client's whole partition (members)
    train_disguised: torch.Tensor
    disguise_spec: Any
    disguise_key: Any  # the victim's DisguiseKey; used to make Level-2 pairs, never logged


@dataclass
class AttackContext:
    view: ServerView
    truth: GroundTruth
    public: ImageDataset  # attacker's public data, same distribution, disjoint from clients
    holdout: ImageDataset  # non-member candidates (disjoint from public and clients)
    model_name: str
    device: torch.device
    seed: int
    progress: bool = True


class Attack:
    """Base: parameters validated against the constructor; `run` returns figures."""

    name: ClassVar[str] = ""

    def run(self, ctx: AttackContext) -> dict[str, Any]:
        raise NotImplementedError


ATTACKS: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    ATTACKS[cls.name] = cls
    return cls


def attack_params(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValueError(f"an attack spec is a table with a 'name', got {spec!r}")
    params = dict(spec)
    return params.pop("name"), params


def build_attack(spec: Mapping[str, Any]) -> Attack:
    name, params = attack_params(spec)
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid choices: {sorted(ATTACKS)}")
    cls = ATTACKS[name]
    check_params(cls, params, kind="attack")
    return cls(**params)


def targets(specs: list[Mapping[str, Any]]) -> set[tuple[int, int]]:
    """(round, partition) pairs whose updates the server must capture for these attacks."""
    found = set()
    for spec in specs:
        _, params = attack_params(spec)
        found.add((int(params.get("round", 1)), int(params.get("client", 0))))
    return found
