"""What keeps a run from hanging or failing silently when nodes fail or vanish.

Flower's sampling waits forever for `min_available_nodes`, and its strategies aggregate a round
in which every client failed as if nothing happened. `NodeGuard` wraps the Grid a strategy
samples from: once fewer than the minimum number of nodes have been connected for longer than
the timeout, the next node query raises `RunFailed` (which ends the run with the rounds so far).
`ObservedStrategy` raises `RunFailed` itself when no client trained in a round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any


class RunFailed(RuntimeError):
    """The federation cannot go on; the run ends non-zero with the rounds it finished."""


class NodeGuard:
    """A Grid whose node queries give up after `timeout` s below `min_nodes` connected."""

    def __init__(self, grid: Any, min_nodes: int, timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._grid = grid
        self.min_nodes = min_nodes
        self.timeout = timeout
        self._clock = clock
        self._short_since: float | None = None

    def get_node_ids(self) -> Iterable[int]:
        nodes = list(self._grid.get_node_ids())
        if len(nodes) >= self.min_nodes:
            self._short_since = None
            return nodes
        now = self._clock()
        if self._short_since is None:
            self._short_since = now
        elif now - self._short_since > self.timeout:
            raise RunFailed(
                f"only {len(nodes)} node(s) connected, fewer than strategy.min_clients = "
                f"{self.min_nodes}, for {self.timeout:.0f} s (strategy.node_timeout): ending "
                "the run with the rounds it finished")
        return nodes

    def __getattr__(self, name: str) -> Any:  # everything else is the Grid's own
        return getattr(self._grid, name)
