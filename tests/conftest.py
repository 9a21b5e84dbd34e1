"""Shared fixtures: synthetic configs and Flower's task identity for messages built in tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedisguise.config import Config

DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
# Plain FedAvg, one run: what run.py runs with --config (its default is the quickstart grid).
FEDAVG = Path(__file__).resolve().parents[1] / "configs" / "fedavg.toml"


@pytest.fixture
def task_identity():
    """Messages created outside a Flower task need a run/task/node identity (Flower >= 1.41)."""
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 7, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def synthetic_config(tmp_path, **sections) -> Config:
    """A small, fast config on the synthetic dataset, results under tmp_path."""
    overrides = [
        f"experiment.out={tmp_path}", "experiment.name=t", "data.dataset=synthetic",
        "experiment.clients=2", "experiment.rounds=2",
        # Adam leaves LeNet's initial plateau within a few dozen steps; SGD needs hundreds.
        "train.optimizer=adam", "train.lr=0.003",
    ] + [f"{k}={v}" for k, v in sections.items()]
    return Config().with_overrides(overrides)
