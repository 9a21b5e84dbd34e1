"""A run resolved once per process: its validated config, and what the config names, typed.

Why: each process that trains or scores (a Ray actor, a node's warm worker, the driver) used
to rebuild the same things from the raw config at every use: the config validated and the
plugins loaded on every message, the disguise spec split and checked at each site that needed
it, the device looked up per message. `resolve` does that once per process and run, and the
result is handed down (fedisguise.fl.client_work, fedisguise.node_data, the attack suite).

What may change while a run goes on is still checked where it is used, cheaply and without
re-resolving: a key file by its stat (fedisguise.disguise.keys reads it again only when it
changed), a dataset's files by their fingerprint (fedisguise.data.datasets).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from fedisguise.config import Config
from fedisguise.data.datasets import ImageDataset, load_dataset, shared_split
from fedisguise.data.partitions import server_test_set
from fedisguise.disguise.keys import DisguiseKey, node_key, node_secret
from fedisguise.disguise.spec import DisguiseSpec
from fedisguise.training import resolve_device


@dataclass(frozen=True)
class RunData:
    """The run's images, each split through fedisguise.data.datasets (a loader is called
    once per split and process)."""

    dataset: str
    data_dir: str
    test_samples: int
    seed: int

    def split(self, split: str) -> ImageDataset:
        """A whole split ("train" or "test")."""
        return load_dataset(self.dataset, split, self.data_dir)

    def server_test_set(self) -> ImageDataset:
        """The server's evaluation images (the same `test_samples` in every process)."""
        return server_test_set(self.dataset, self.data_dir, self.test_samples, self.seed)

    def num_classes(self) -> int:
        """The training split's number of classes (from the shared copy where there is one,
        without holding the split's pixels)."""
        shared = shared_split(self.dataset, "train", self.data_dir)
        return shared.num_classes if shared is not None else self.split("train").num_classes


@dataclass(frozen=True, eq=False)
class ResolvedRun:
    """A validated config (plugins loaded), its data, its defence as a typed spec, its device,
    and each node's keys."""

    cfg: Config
    disguise: DisguiseSpec
    device: torch.device
    data: RunData

    def node_keys(self, partition_id: int, node_key_file: str = "", create: bool = False
                  ) -> tuple[DisguiseKey, DisguiseKey]:
        """Node `partition_id`'s disguise key and its draws secret, by the one rule for the
        node and the experimenter (fedisguise.disguise.keys: each file read once per process,
        again only when it changes); `create`: the node itself, which makes its secret."""
        return (node_key(self.cfg, partition_id, node_key_file),
                node_secret(self.cfg, partition_id, node_key_file, create=create))


# Runs a long-lived process keeps resolved: a node's warm worker may serve several runs.
_RESOLVED: OrderedDict[tuple, ResolvedRun] = OrderedDict()
RESOLVED_MAX = 8


def _token(settings: dict[str, Any], scope: object) -> tuple:
    return scope, json.dumps(settings, sort_keys=True, default=str)


def _remember(token: tuple, make) -> ResolvedRun:
    run = _RESOLVED.get(token)
    if run is None:
        run = _RESOLVED[token] = make()
        while len(_RESOLVED) > RESOLVED_MAX:
            _RESOLVED.popitem(last=False)
    _RESOLVED.move_to_end(token)
    return run


def _resolved(cfg: Config) -> ResolvedRun:
    d = cfg.data
    data = RunData(d.source, d.data_dir, d.test_samples, cfg.experiment.seed)
    return ResolvedRun(cfg, with_data_defaults(DisguiseSpec.parse(cfg.disguise), data),
                       resolve_device(cfg.resources.device), data)


def with_data_defaults(spec: DisguiseSpec, data: RunData) -> DisguiseSpec:
    """`spec` with the parameters its defence takes from the data (`from_data`) filled in
    where the spec leaves them out: InstaHide's num_classes is the dataset's, never 10 by
    default on a dataset of 3 or 40 classes."""
    missing = [p for p in spec.defence.from_data if p not in spec.params]
    if not missing:
        return spec
    values = {"num_classes": data.num_classes}
    unknown = [p for p in missing if p not in values]
    if unknown:
        raise ValueError(f"{spec.name} takes {unknown} from the data; the data gives "
                         f"{sorted(values)}")
    return DisguiseSpec.parse({"name": spec.name, **spec.params,
                               **{p: values[p]() for p in missing}})


def resolve(cfg: Config, scope: object = None, validate: bool = False) -> ResolvedRun:
    """The run `cfg` describes, resolved once per process and `scope` (e.g. a Flower run
    id). `validate`: check the config first (one read from a run config; a config the driver
    validated is handed over checked, and only its plugins are loaded here)."""

    def make() -> ResolvedRun:
        if validate:
            cfg.validate()
        else:
            cfg.load_plugins()  # a Ray actor gets a checked config, not the driver's plugins
        return _resolved(cfg)

    return _remember(_token(cfg.to_dict(), scope), make)


def resolve_flat(run_config: dict[str, Any], scope: object = None) -> ResolvedRun:
    """The run a Flower run config describes, parsed and validated once per process and
    `scope`: a node's warm worker gets the run config with every message."""
    return _remember(_token(run_config, scope),
                     lambda: _resolved(Config.from_flat(dict(run_config))))
