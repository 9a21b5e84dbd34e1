"""Server-side attacks. Each attaches to the observed strategy (strategies/observed.py) and
sees exactly what the server received. The registry maps config names to attack classes."""

from typing import Any

ATTACKS: dict[str, Any] = {}
