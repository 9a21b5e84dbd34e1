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

from fedisguise.dp_modes import dp_mode
from strategies.liveness import NodeGuard, RunFailed
from strategies.observed import (
    ClientFailure,
    LedgerEntry,
    ObservedStrategy,
    ReceivedUpdate,
    UpdateLedger,
    UpdateObserver,
)
from strategies.polling import POLL_INTERVAL, PromptGrid
from strategies.robust import check_robust, robust_strategies
from strategies.robust import sampled as sampled_clients


def _sampling(strategy_config) -> dict:
    """Flower's node minimums set to `strategy.min_clients`: its sampling waits until that
    many nodes are connected (NodeGuard bounds the wait); a one-client federation and a
    federation that lost nodes are legitimate here (Flower's defaults demand two)."""
    least = strategy_config.min_clients
    return dict(
        fraction_train=strategy_config.fraction_train,
        fraction_evaluate=strategy_config.fraction_evaluate,
        min_train_nodes=least,
        min_evaluate_nodes=least if strategy_config.fraction_evaluate > 0 else 0,
        min_available_nodes=least,
    )


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": lambda s, n: FedAvg(**_sampling(s)),
    "fedprox": lambda s, n: FedProx(**_sampling(s), proximal_mu=s.proximal_mu),
    **robust_strategies(_sampling),
}


# Flower's DP wrappers by where a mode clips (fedisguise.dp_modes: DPMode.clips_on) and how.
CENTRAL_DP = {
    ("server", "fixed"): DifferentialPrivacyServerSideFixedClipping,
    ("server", "adaptive"): DifferentialPrivacyServerSideAdaptiveClipping,
    ("client", "fixed"): DifferentialPrivacyClientSideFixedClipping,
    ("client", "adaptive"): DifferentialPrivacyClientSideAdaptiveClipping,
}


def central_dp(inner: Strategy, dp_config, num_sampled: int) -> Strategy:
    """Flower's DP wrapper around `inner` for a central dp.mode (server noise; clipping
    where the mode says)."""
    wrapper = CENTRAL_DP[dp_mode(dp_config.mode).clips_on, dp_config.clipping]
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
                   observers: Iterable[UpdateObserver] = (), dp_config=None,
                   max_examples: int = 0) -> ObservedStrategy:
    """The named strategy, wrapped in the observer hook and the reply checks (`max_examples`:
    the most examples one reply may claim, a node's partition size where it is known;
    0 = `strategy.max_examples`).

    The server waits for every SuperNode before round 1 (server_app.wait_for_nodes); after
    that, rounds go on with the nodes that remain, down to `strategy.min_clients`.
    """
    name = strategy_config.name
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid choices: {sorted(STRATEGIES)}")
    inner = STRATEGIES[name](strategy_config, num_clients)
    if dp_config is not None and dp_mode(dp_config.mode).central:
        # The observer stays outermost: attacks see each update as it arrived, before the
        # wrapper clips it (server side) and noises the aggregate.
        inner = central_dp(inner, dp_config, sampled_clients(strategy_config, num_clients))
    return ObservedStrategy(inner, observers,
                            max_examples or strategy_config.max_examples)


__all__ = [
    "STRATEGIES",
    "ClientFailure",
    "LedgerEntry",
    "NodeGuard",
    "ObservedStrategy",
    "POLL_INTERVAL",
    "PromptGrid",
    "ReceivedUpdate",
    "RunFailed",
    "UpdateLedger",
    "UpdateObserver",
    "build_strategy",
    "central_dp",
    "check_robust",
    "sampled_clients",
]
