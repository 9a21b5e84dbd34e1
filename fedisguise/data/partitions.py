"""Partitions of a dataset among clients (iid, Dirichlet label skew), each client's data and
held-out images from them, and the server's test set: indices first, then the images from the
shared decoded copy (fedisguise.data.datasets)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedisguise.data.datasets import (
    ImageDataset,
    load_dataset,
    split_labels,
    split_subset,
)


# ---- partitioners -----------------------------------------------------------------------
def partition_iid(labels: np.ndarray, num_partitions: int, seed: int, alpha: float = 0.0
                  ) -> list[np.ndarray]:
    """Shuffle once with the seed, then cut into near-equal parts."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def partition_dirichlet(labels: np.ndarray, num_partitions: int, seed: int, alpha: float,
                        min_size: int = 10, max_tries: int = 100) -> list[np.ndarray]:
    """Label skew: each class is split over partitions by proportions ~ Dir(alpha).

    Redraws (deterministically) until every partition holds at least `min_size` samples,
    as Flower Datasets' DirichletPartitioner does, so no client ends up empty.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    min_size = min(min_size, len(labels) // num_partitions)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for cls in classes:
            idx = rng.permutation(np.flatnonzero(labels == cls))
            proportions = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
            for pid, chunk in enumerate(np.split(idx, cuts)):
                parts[pid].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in result) >= min_size:
            return result
    raise ValueError(
        f"dirichlet partitioner: could not give each of {num_partitions} partitions "
        f">= {min_size} samples with alpha={alpha} in {max_tries} draws; raise alpha"
    )


PARTITIONERS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": partition_iid,
    "dirichlet": partition_dirichlet,
}


def partition_indices(labels: torch.Tensor | np.ndarray, partitioner: str, num_partitions: int,
                      seed: int, alpha: float = 0.5) -> list[np.ndarray]:
    """Indices of every partition; each sample lands in exactly one."""
    if partitioner not in PARTITIONERS:
        raise ValueError(f"unknown partitioner {partitioner!r}; valid: {sorted(PARTITIONERS)}")
    labels = np.asarray(labels)
    if not 1 <= num_partitions <= len(labels):
        raise ValueError(f"num_partitions must be in [1, {len(labels)}], got {num_partitions}")
    return PARTITIONERS[partitioner](labels, num_partitions, seed, alpha)


@dataclass(frozen=True)
class ClientData:
    train: ImageDataset  # the client's partition of the training split
    test: ImageDataset  # the client's IID shard of the evaluation set (disguised like train)
    validation: ImageDataset | None = None  # held out of its own training images (tuning)


def client_data(dataset: str, data_dir: str, partitioner: str, alpha: float, seed: int,
                partition_id: int, num_partitions: int, train_per_client: int = 0,
                test_samples: int = 0, validation: float = 0.0, union_of: int = 0
                ) -> ClientData:
    """One client's share of the training split, and its shard of the evaluation set.

    With `validation` > 0 that fraction of the client's own images (at least one) is held
    out of its training data as its validation split, for choosing hyper-parameters
    without looking at the test set. With `union_of` = N (and one partition) the client holds
    the union of what N clients would hold: centralised training on the federation's images.

    The shards of all clients together are exactly the server's evaluation set, so clients
    that evaluate on disguised shards measure the same images the server holds in plain.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} outside [0, {num_partitions})")
    own = train_indices(dataset, data_dir, partitioner, alpha, seed, partition_id,
                        num_partitions, train_per_client, union_of)
    test_indices = server_test_indices(dataset, data_dir, test_samples, seed)
    shard = test_indices[partition_iid(split_labels(dataset, "test", data_dir)[test_indices],
                                       num_partitions, seed)[partition_id]]
    held = held_out(len(own), validation)
    if held >= len(own):
        raise ValueError(f"data.validation {validation} leaves client {partition_id} no "
                         f"training images (it has {len(own)})")
    return ClientData(
        train=split_subset(dataset, "train", data_dir, own[held:]),
        test=split_subset(dataset, "test", data_dir, shard),
        validation=split_subset(dataset, "train", data_dir, own[:held]) if held else None)


def held_out(images: int, validation: float) -> int:
    """How many of a client's `images` its validation split holds: that fraction, at least
    one when the fraction is > 0."""
    return max(1, round(validation * images)) if validation > 0 else 0


def train_indices(dataset: str, data_dir: str, partitioner: str, alpha: float, seed: int,
                  partition_id: int, num_partitions: int, train_per_client: int = 0,
                  union_of: int = 0) -> np.ndarray:
    """The training-split indices a client holds, in a seeded order; with `union_of` = N,
    those of all N clients of the federation it stands for (see `client_data`)."""
    if union_of:
        if num_partitions != 1:
            raise ValueError(f"union_of = {union_of} is one client holding the federation's "
                             f"images; it needs 1 partition, got {num_partitions}")
        parts = cached_partitions(dataset, data_dir, partitioner, alpha, seed, union_of)
        union = np.concatenate([_own_indices(part, seed, pid, train_per_client)
                                for pid, part in enumerate(parts)])
        return np.random.default_rng([seed, union_of]).permutation(union)
    parts = cached_partitions(dataset, data_dir, partitioner, alpha, seed, num_partitions)
    return _own_indices(parts[partition_id], seed, partition_id, train_per_client)


def unassigned_train_indices(dataset: str, data_dir: str, partitioner: str, alpha: float,
                             seed: int, num_partitions: int,
                             train_per_client: int = 0, union_of: int = 0) -> np.ndarray:
    """Training-split indices no client trains on (what a coordinator may use without
    touching client data); empty when the clients hold the whole split. One client holding
    the union of N clients' images leaves what those N leave."""
    n = len(split_labels(dataset, "train", data_dir))
    num_partitions = union_of or num_partitions
    parts = cached_partitions(dataset, data_dir, partitioner, alpha, seed, num_partitions)
    used = np.zeros(n, dtype=bool)
    for pid, part in enumerate(parts):
        used[_own_indices(part, seed, pid, train_per_client)] = True
    return np.flatnonzero(~used)


def _own_indices(part: np.ndarray, seed: int, partition_id: int,
                 train_per_client: int) -> np.ndarray:
    """The training indices a client keeps from its partition: a seeded shuffle, cut to
    `train_per_client` when set (0 keeps all)."""
    own = np.random.default_rng([seed, partition_id]).permutation(part)
    return own[:train_per_client] if train_per_client else own


@functools.lru_cache(maxsize=8)
def cached_partitions(dataset: str, data_dir: str, partitioner: str, alpha: float, seed: int,
                       num_partitions: int) -> list[np.ndarray]:
    labels = split_labels(dataset, "train", data_dir)
    return partition_indices(labels, partitioner, num_partitions, seed, alpha)


def server_test_set(dataset: str, data_dir: str, test_samples: int, seed: int) -> ImageDataset:
    """The server's evaluation set: the whole test split, or a seeded subset of it."""
    full = load_dataset(dataset, "test", data_dir)
    if not test_samples or test_samples >= len(full):
        return full
    return full.subset(server_test_indices(dataset, data_dir, test_samples, seed))


def server_test_indices(dataset: str, data_dir: str, test_samples: int, seed: int
                        ) -> np.ndarray:
    """Which test-split images the server's evaluation set holds (sorted)."""
    n = len(split_labels(dataset, "test", data_dir))
    if not test_samples or test_samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:test_samples])
