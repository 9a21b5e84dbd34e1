"""Flower's robust strategies as choices of `strategy.name` (issue 37, point 3): one client
sends 1e6-scaled weights (a `faults` entry, through the real client code), and the global
model moves by the attacker's choice under FedAvg but stays by the honest updates under each
robust strategy; their settings are checked before a run starts."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord

from fedisguise.config import ConfigError
from fedisguise.models import build_model
from strategies import RunFailed, build_strategy
from tests.conftest import synthetic_config
from tests.test_observed_strategy import LoopbackGrid

SCALED = '[{"client": 0, "reply": "scale", "factor": 1e6}]'


def one_round(tmp_path, name: str, clients: int, **settings):
    """(how far the global model moved, the mean honest update's norm) after one round in
    which client 0 scales its reply by 1e6."""
    cfg = synthetic_config(tmp_path, **{"strategy.name": name, "experiment.clients": clients,
                                        "data.train_per_client": 64, "faults": SCALED,
                                        **{f"strategy.{k}": v for k, v in settings.items()}})
    strategy = build_strategy(cfg.strategy, clients, max_examples=64)
    state = build_model(cfg.model.name, 1, 10, 28).state_dict()
    start = ArrayRecord(state)
    grid = LoopbackGrid(cfg, clients)
    sent = list(strategy.configure_train(1, start, ConfigRecord(), grid))
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(sent))
    before = np.concatenate([a.numpy().ravel() for a in start.values()]).astype(np.float64)
    after = np.concatenate([a.numpy().ravel() for a in arrays.values()]).astype(np.float64)
    honest = [np.concatenate([v.ravel() for v in grid.sent[1][node].values()]) - before
              for node in grid.sent[1] if grid.partition_of[node] != 0]
    return np.linalg.norm(after - before), np.mean([np.linalg.norm(h) for h in honest])


def test_fedavg_follows_a_scaled_client(tmp_path, task_identity):
    moved, honest = one_round(tmp_path, "fedavg", 3)
    assert moved > 100 * honest


@pytest.mark.parametrize("name, clients, settings", [
    ("fedmedian", 3, {}),
    ("fedtrimmedavg", 3, {"trim_beta": 0.34}),
    ("krum", 5, {"num_malicious": 1}),
    ("multikrum", 5, {"num_malicious": 1}),
    ("bulyan", 7, {"num_malicious": 1}),
])
def test_robust_strategies_stay_with_the_honest_clients(tmp_path, task_identity, name,
                                                        clients, settings):
    moved, honest = one_round(tmp_path, name, clients, **settings)
    assert 0 < moved < 2 * honest


def test_bulyan_short_of_replies_fails_the_round_instead_of_keeping_the_old_model(
        tmp_path, task_identity):
    cfg = synthetic_config(tmp_path, **{"strategy.name": "bulyan", "experiment.clients": 3,
                                        "data.train_per_client": 64})
    strategy = build_strategy(cfg.strategy, 3, max_examples=64)
    grid = LoopbackGrid(cfg, 3)
    sent = list(strategy.configure_train(
        1, ArrayRecord(build_model("lenet", 1, 10, 28).state_dict()), ConfigRecord(), grid))
    replies = grid.send_and_receive(sent)[:2]  # one node lost: 2 < 4f + 3 = 3
    with pytest.raises(RunFailed, match="aggregated nothing from 2 accepted replies"):
        strategy.aggregate_train(1, replies)


@pytest.mark.parametrize("settings, message", [
    ({"strategy.name": "bulyan", "strategy.num_malicious": 1, "experiment.clients": 6},
     "needs at least 7 clients trained per round, and this run samples 6"),
    ({"strategy.name": "krum", "strategy.num_malicious": 1, "experiment.clients": 4},
     "needs at least 5 clients"),
    ({"strategy.name": "fedtrimmedavg", "experiment.clients": 4},
     r"trims int\(0.2 x 4\) = 0 updates .* set it in \[0.25, 0.5\)"),
    ({"strategy.name": "fedtrimmedavg", "strategy.trim_beta": 0.5, "experiment.clients": 9},
     r"strategy.trim_beta = 0.5; expected in \[0, 0.5\)"),
    ({"strategy.num_malicious": 1}, "used by .* only, not 'fedavg'"),
    ({"strategy.name": "krum", "strategy.num_selected": 2, "experiment.clients": 3},
     "num_selected = 2 is used by multikrum only"),
    ({"strategy.name": "multikrum", "strategy.num_selected": 9, "experiment.clients": 5},
     r"num_selected = 9; expected in \[1, 5\]"),
    ({"strategy.name": "krum", "strategy.num_malicious": -1}, "num_malicious = -1"),
])
def test_robust_settings_that_cannot_work_are_config_errors(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        synthetic_config(tmp_path, **settings)
