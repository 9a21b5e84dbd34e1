"""Robust aggregation, as a choice of `strategy.name`: Flower's own FedMedian, FedTrimmedAvg,
Krum, MultiKrum and Bulyan, built from the config and checked against the federation's size
before the run starts, so that none of them quietly degrades into plain averaging (a trimmed
mean that trims nothing) or into no aggregation at all (Bulyan short of 4f + 3 replies).
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy

# The strategies that take `strategy.num_malicious` (f), and the fewest replies each needs
# for its guarantee: Krum's score of a client sums its n - f - 2 nearest neighbours, which
# needs n >= 2f + 3 (Blanchard et al. 2017); Bulyan needs n >= 4f + 3 (El Mhamdi et al. 2018)
# and Flower's skips the round below it.
BYZANTINE = {"krum": lambda f: 2 * f + 3, "multikrum": lambda f: 2 * f + 3,
             "bulyan": lambda f: 4 * f + 3}


def sampled(strategy_config, num_clients: int) -> int:
    """The clients sampled for training each round (Flower's fraction_train of them)."""
    return max(1, int(strategy_config.fraction_train * num_clients))


def num_selected(strategy_config, num_clients: int) -> int:
    """MultiKrum's m: as configured, else the sampled clients less the Byzantine ones."""
    s = strategy_config
    return s.num_selected or max(1, sampled(s, num_clients) - s.num_malicious)


def check_robust(strategy_config, num_clients: int) -> None:
    """ValueError naming the key where a robust strategy's settings cannot do what it is
    chosen for with this many clients, or a robust setting is given to a strategy that
    would ignore it."""
    s, n = strategy_config, sampled(strategy_config, num_clients)
    if s.num_malicious < 0:
        raise ValueError(f"strategy.num_malicious = {s.num_malicious}; expected >= 0")
    if s.num_malicious and s.name not in BYZANTINE:
        raise ValueError(f"strategy.num_malicious = {s.num_malicious} is used by "
                         f"{sorted(BYZANTINE)} only, not {s.name!r}; remove it")
    if s.num_selected and s.name != "multikrum":
        raise ValueError(f"strategy.num_selected = {s.num_selected} is used by multikrum "
                         f"only, not {s.name!r}; remove it")
    if not 0 <= s.trim_beta < 0.5:
        raise ValueError(f"strategy.trim_beta = {s.trim_beta}; expected in [0, 0.5)")
    if s.name in BYZANTINE and n < BYZANTINE[s.name](s.num_malicious):
        raise ValueError(f"strategy.name = {s.name!r} with strategy.num_malicious = "
                         f"{s.num_malicious} needs at least {BYZANTINE[s.name](s.num_malicious)} "
                         f"clients trained per round, and this run samples {n}")
    if s.name == "multikrum" and not 1 <= num_selected(s, num_clients) <= n:
        raise ValueError(f"strategy.num_selected = {s.num_selected}; expected in [1, {n}] "
                         f"(the clients trained per round)")
    if s.name == "fedtrimmedavg" and int(s.trim_beta * n) == 0:
        fix = (f"set it in [{1 / n:.3g}, 0.5)" if n >= 3
               else "it needs at least 3 clients trained per round")
        raise ValueError(f"strategy.trim_beta = {s.trim_beta} trims int({s.trim_beta} x {n}) "
                         f"= 0 updates from each end with {n} clients per round: that is "
                         f"FedAvg; {fix}")


def robust_strategies(sampling: Callable[..., dict]) -> dict[str, Callable[..., Strategy]]:
    """name -> builder(strategy_config, num_clients), with `sampling(strategy_config)` giving
    Flower's fraction and minimum-node arguments."""
    return {
        "fedmedian": lambda s, n: FedMedian(**sampling(s)),
        "fedtrimmedavg": lambda s, n: FedTrimmedAvg(**sampling(s), beta=s.trim_beta),
        "krum": lambda s, n: Krum(**sampling(s), num_malicious_nodes=s.num_malicious),
        "multikrum": lambda s, n: MultiKrum(**sampling(s), num_malicious_nodes=s.num_malicious,
                                            num_nodes_to_select=num_selected(s, n)),
        "bulyan": lambda s, n: Bulyan(**sampling(s), num_malicious_nodes=s.num_malicious),
    }
