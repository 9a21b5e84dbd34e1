"""Server-side attacks. Each runs on what the server captured through the observed strategy
(strategies/observed.py, fedisguise.attacks.capture) and is scored against the experimenter's
ground truth. The registry maps config names to attack classes."""

from fedisguise.attacks import gan, gradient_inversion, inverse, jigsaw, membership  # noqa: F401
from fedisguise.attacks.base import ATTACKS, Attack, AttackContext, build_attack

__all__ = ["ATTACKS", "Attack", "AttackContext", "build_attack"]
