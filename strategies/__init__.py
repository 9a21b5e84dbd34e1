"""Flower server strategies for fedisguise, by name, each wrapped so attacks can observe it."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
    Strategy,
)

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


CENTRAL_DP = {
    ("central-server", "fixed"): DifferentialPrivacyServerSideFixedClipping,
    ("central-server", "adaptive"): DifferentialPrivacyServerSideAdaptiveClipping,
    ("central-client", "fixed"): DifferentialPrivacyClientSideFixedClipping,
    ("central-client", "adaptive"): DifferentialPrivacyClientSideAdaptiveClipping,
}


def sampled_clients(strategy_config, num_clients: int) -> int:
    return max(1, int(strategy_config.fraction_train * num_clients))


def central_dp(inner: Strategy, dp_config, num_sampled: int) -> Strategy:
    """Flower's DP wrapper around `inner` for dp.mode central-server / central-client."""
    wrapper = CENTRAL_DP[dp_config.mode, dp_config.clipping]
    if dp_config.clipping == "fixed":
        return wrapper(inner, noise_multiplier=dp_config.noise_multiplier,
                       clipping_norm=dp_config.clipping_norm, num_sampled_clients=num_sampled)
    return wrapper(inner, noise_multiplier=dp_config.noise_multiplier,
                   num_sampled_clients=num_sampled,
                   initial_clipping_norm=dp_config.clipping_norm,
                   target_clipped_quantile=dp_config.target_clipped_quantile,
                   clip_norm_lr=dp_config.clip_norm_lr,
                   clipped_count_stddev=dp_config.clipped_count_stddev or None)


def build_strategy(strategy_config, num_clients: int,
                   observers: Iterable[UpdateObserver] = (), dp_config=None) -> ObservedStrategy:
    """The named strategy, wrapped in the observer hook.

    `min_available_nodes` equals the number of clients, so a round starts only once every
    SuperNode has connected: in deployment this waits for late processes instead of
    silently training on fewer clients.
    """
    name = strategy_config.name
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid choices: {sorted(STRATEGIES)}")
    inner = STRATEGIES[name](strategy_config, num_clients)
    if dp_config is not None and dp_config.mode.startswith("central"):
        # The observer stays outermost: attacks see each update as it arrived, before the
        # wrapper clips it (server side) and noises the aggregate.
        inner = central_dp(inner, dp_config, sampled_clients(strategy_config, num_clients))
    return ObservedStrategy(inner, observers)


__all__ = [
    "STRATEGIES",
    "LedgerEntry",
    "ObservedStrategy",
    "ReceivedUpdate",
    "UpdateLedger",
    "UpdateObserver",
    "build_strategy",
    "central_dp",
    "sampled_clients",
]
