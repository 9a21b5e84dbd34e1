"""Flower server strategies for fedisguise, by name, each wrapped so attacks can observe it."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.serverapp.strategy import FedAvg, FedProx, Strategy

from strategies.observed import (
    LedgerEntry,
    ObservedStrategy,
    ReceivedUpdate,
    UpdateLedger,
    UpdateObserver,
)


def _sampling(fraction_train: float, fraction_evaluate: float, num_clients: int) -> dict:
    # Flower's defaults demand two nodes; a one-client federation is legitimate here.
    least = min(2, num_clients)
    return dict(
        fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=least,
        min_evaluate_nodes=least if fraction_evaluate > 0 else 0,
        min_available_nodes=num_clients,
    )


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": lambda s, n: FedAvg(**_sampling(s.fraction_train, s.fraction_evaluate, n)),
    "fedprox": lambda s, n: FedProx(
        **_sampling(s.fraction_train, s.fraction_evaluate, n), proximal_mu=s.proximal_mu
    ),
}


def build_strategy(strategy_config, num_clients: int,
                   observers: Iterable[UpdateObserver] = ()) -> ObservedStrategy:
    """The named strategy, wrapped in the observer hook.

    `min_available_nodes` equals the number of clients, so a round starts only once every
    SuperNode has connected: in deployment this waits for late processes instead of
    silently training on fewer clients.
    """
    name = strategy_config.name
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid choices: {sorted(STRATEGIES)}")
    return ObservedStrategy(STRATEGIES[name](strategy_config, num_clients), observers)


__all__ = [
    "STRATEGIES",
    "LedgerEntry",
    "ObservedStrategy",
    "ReceivedUpdate",
    "UpdateLedger",
    "UpdateObserver",
    "build_strategy",
]
