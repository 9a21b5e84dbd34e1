"""What one node trains and evaluates on: its partition, disguised under the key it used.

One rule, partition -> key and secret -> disguise -> reseed(stream, secret) -> apply, for every
place that needs a node's disguised data: the ClientApp (inside the node), the attack suite's
ground truth and the privacy figures (the experimenter of a local run, after it). The key
comes from `node_key` and the draws from the node's own `node_secret`, so the experimenter's
copies are made exactly as the node made them, never a look-alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedisguise.config import Config
from fedisguise.data.datasets import ImageDataset
from fedisguise.data.partitions import ClientData, client_data
from fedisguise.disguise import Disguise
from fedisguise.disguise.keys import DisguiseKey
from fedisguise.resolved import ResolvedRun
from fedisguise.training import BatchTransform


@dataclass(frozen=True)
class BatchDraws:
    """A node's disguise drawn afresh for every batch (client.redisguise = "batch"), as the
    VisualMixer authors' code does: no two batches share a draw, and a batch-wise disguise
    (VisualMixer-authors' attention average; InstaHide's mixing) works within each batch.
    The batches of one call (an epoch's, or one DP-SGD Poisson batch) draw from one stream
    of the node's secret named by the call's first step, in one vectorised pass; the
    experimenter of a local run replays them exactly (fedisguise.attacks.suite)."""

    disguise: Disguise
    secret: DisguiseKey

    def training(self, server_round: int, purpose: str = "train") -> BatchTransform:
        return self._transform(f"{purpose}:round-{server_round}:step", evaluation=False)

    def evaluation(self, split: str, server_round: int) -> BatchTransform:
        return self._transform(f"{split}:round-{server_round}:batch", evaluation=True)

    def _transform(self, stream: str, evaluation: bool) -> BatchTransform:
        def apply(images: torch.Tensor, labels: torch.Tensor, batches: list[torch.Tensor],
                  first: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
            self.disguise.reseed(f"{stream}-{first}", self.secret)
            sizes = [len(b) for b in batches]
            idx = torch.cat(batches)
            x, y = self.disguise.apply_batches(images[idx], labels[idx], sizes, evaluation)
            return list(zip(x.split(sizes), y.split(sizes)))
        return apply


@dataclass(frozen=True)
class NodeData:
    plain: ClientData  # the node's partition and test shard as they are on disk
    # its training images as it trains on them: disguised, or plain where `batches` disguises
    # every batch afresh (client.redisguise = "batch")
    train: ImageDataset
    test: ImageDataset | None  # its test shard as it evaluates on it, when asked for
    key: DisguiseKey
    validation: ImageDataset | None = None  # its validation split, disguised as its test shard
    secret: DisguiseKey | None = None  # the node's own draws secret (`node_secret`)
    batches: BatchDraws | None = None  # per-batch draws (client.redisguise = "batch")


def train_stream(cfg: Config, server_round: int) -> str:
    """The secret's stream of the training disguise's random draws (noise, mixing, masks):
    the same every round (`once`) or new every round (`round`); `batch` draws per batch
    (`BatchDraws`). The keyed transform itself never changes."""
    return f"train:round-{server_round}" if cfg.client.redisguise == "round" else "train"


def _node_parts(run: ResolvedRun, partition_id: int, node_key_file: str, is_node: bool
                ) -> tuple[Disguise, DisguiseKey, DisguiseKey]:
    """Node `partition_id`'s disguise, key and draws secret (each file read once per process:
    fedisguise.disguise.keys); `is_node`: the node itself, which makes its secret file on
    first use (the experimenter only reads it)."""
    key, secret = run.node_keys(partition_id, node_key_file, create=is_node)
    return run.disguise.build(key), key, secret


def node_batch_draws(run: ResolvedRun, partition_id: int, node_key_file: str = "",
                     is_node: bool = False) -> BatchDraws:
    """Node `partition_id`'s per-batch disguise (client.redisguise = "batch")."""
    disguise, _, secret = _node_parts(run, partition_id, node_key_file, is_node)
    return BatchDraws(disguise, secret)


def node_disguise(run: ResolvedRun, partition_id: int, stream: str, node_key_file: str = "",
                  is_node: bool = False) -> tuple[Disguise, DisguiseKey]:
    """Node `partition_id`'s disguise under its key, its random draws on `stream` of its
    secret."""
    disguise, key, secret = _node_parts(run, partition_id, node_key_file, is_node)
    disguise.reseed(stream, secret)
    return disguise, key


def node_data(run: ResolvedRun, partition_id: int, server_round: int, node_key_file: str = "",
              test: bool = True, is_node: bool = False) -> NodeData:
    """Node `partition_id`'s data in round `server_round`, plain and disguised; its test shard
    disguised too (on the `test` stream, as clients evaluate) unless `test` is False.
    `is_node`: called by the node itself (see `_node_parts`)."""
    cfg = run.cfg
    d = cfg.data
    plain = client_data(d.source, d.data_dir, d.partitioner, d.alpha, cfg.experiment.seed,
                        partition_id, cfg.experiment.clients, d.train_per_client,
                        d.test_samples, d.validation, d.union_of)
    disguise, key, secret = _node_parts(run, partition_id, node_key_file, is_node)
    if cfg.client.redisguise == "batch":  # nothing is disguised ahead: every batch afresh
        return NodeData(plain=plain, train=plain.train, test=plain.test if test else None,
                        key=key, validation=plain.validation if test else None,
                        secret=secret, batches=BatchDraws(disguise, secret))
    disguise.reseed(train_stream(cfg, server_round), secret)
    images, labels = disguise.apply(plain.train.images, plain.train.labels)
    disguised_test = None
    if test:
        disguise.reseed("test", secret)
        test_images, test_labels = disguise.apply_eval(plain.test.images, plain.test.labels)
        disguised_test = ImageDataset(test_images, test_labels, plain.test.num_classes)
    disguised_validation = None
    if test and plain.validation is not None:
        disguise.reseed("validation", secret)
        disguised_validation = ImageDataset(
            *disguise.apply_eval(plain.validation.images, plain.validation.labels),
            plain.validation.num_classes)
    return NodeData(plain=plain, train=ImageDataset(images, labels, plain.train.num_classes),
                    test=disguised_test, key=key, validation=disguised_validation,
                    secret=secret)
