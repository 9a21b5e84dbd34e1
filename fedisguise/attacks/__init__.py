"""Server-side attacks. Each runs on what the server captured through the observed strategy
(strategies/observed.py, fedisguise.attacks.capture) and is scored against the experimenter's
ground truth behind a wall (fedisguise.attacks.base). The registry maps config names to
attack classes: one module per attack family plus its line here."""

from fedisguise.attacks import (  # noqa: F401
    chain,
    deshuffle,
    gan,
    gradient_inversion,
    instahide_attack,
    inverse,
    jigsaw,
    membership,
    observed,
)
from fedisguise.attacks.base import ATTACKS, Attack, build_attack, figure_catalogue, parse_spec

__all__ = ["ATTACKS", "Attack", "build_attack", "figure_catalogue", "parse_spec"]
