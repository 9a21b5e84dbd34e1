"""Replies collected as they arrive, not on Flower's 3-second beat.

Flower 1.41's HTTP Grid (deployment) sleeps 3 s between polls for replies, so every train and
every evaluate phase loses up to 3 s after the last reply is in: up to 6 s a round, more than
a round of training takes in the smoke config. `PromptGrid` does what `send_and_receive`
does, with Flower's own `push_messages` and `pull_messages`, polling every `interval` s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

POLL_INTERVAL = 0.2  # s between polls: ~5 small requests a second to the SuperLink


class PromptGrid:
    """A Grid whose `send_and_receive` polls for replies every `interval` s."""

    def __init__(self, grid: Any, interval: float = POLL_INTERVAL,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 s, got {interval}")
        self._grid = grid
        self.interval = interval
        self._clock = clock
        self._sleep = sleep

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None
                         ) -> list[Any]:
        """Push `messages`, then pull replies until all are in or `timeout` s have passed
        (None: no limit), as Flower's Grid does; after the last sleep it pulls once more, so
        a reply that came in meanwhile is kept (the wait ends within timeout + interval)."""
        waiting = set(self._grid.push_messages(messages))
        end = None if timeout is None else self._clock() + timeout
        replies: list[Any] = []
        while waiting:
            got = list(self._grid.pull_messages(waiting))
            replies.extend(got)
            waiting -= {reply.metadata.reply_to_message_id for reply in got}
            if not waiting or (end is not None and self._clock() >= end):
                break
            self._sleep(self.interval)
        return replies

    def __getattr__(self, name: str) -> Any:  # everything else is the Grid's own
        return getattr(self._grid, name)
