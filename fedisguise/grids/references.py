"""Which plain row each defence of a grid is measured against: the one that trains the same
way (optimizer, its settings, data split, model, strategy, rounds) with no defence at all.

A disguise does not make a model more accurate; a baseline trained another way can make it
look so (VisualMixer's ST-Adam beside FedAvg's SGD read as +9.8 points). So every gap is
against the plain row that shares the defence's training, and a grid whose defence trains in
a way no plain row does says so instead of measuring it against the grid's reference.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fedisguise.config import Config

# What "trains the same way" compares: these sections of a cell's config, less the keys a
# grid sets per cell or tunes per row. A defence's own settings (disguise, keys, DP, the
# client's redraws, faults) are what it is; they are not part of its training.
SIGNATURE = {"train": (), "data": ("validation",), "model": (), "strategy": (),
             "experiment": ("name", "seed", "out", "mode", "plugins")}


def training_signature(cfg: Config, tuned_key: str | None = None) -> tuple:
    """How `cfg` trains, as a hashable value (the tuned key left out: each row tunes it)."""
    parts = []
    for section, skipped in SIGNATURE.items():
        values = dataclasses.asdict(getattr(cfg, section))
        for key in skipped:
            values.pop(key, None)
        if tuned_key and tuned_key.startswith(f"{section}."):
            values.pop(tuned_key.partition(".")[2], None)
        parts.append((section, tuple(sorted(  # a list (data.image_size) as a tuple
            (k, tuple(v) if isinstance(v, list) else v) for k, v in values.items()))))
    return tuple(parts)


def is_plain(cfg: Config) -> bool:
    """No defence at all: no disguise, no DP, no client sending faults on purpose."""
    return not cfg.disguised and not cfg.dp_mode.private and not cfg.faults


def references(defences: list[Any], utility_config: dict[str, Config], fallback: str,
               tuned_key: str | None = None) -> dict[str, str | None]:
    """defence label -> the plain defence that trains as it does (`fallback`, the grid's
    reference, first among equals), or None where no plain row does. A plain row is measured
    against `fallback`: its gap is a difference of training, and says so by its label.
    `utility_config`: each defence's config in its utility cells."""
    plain: dict[tuple, list[str]] = {}
    for d in defences:
        cfg = utility_config[d.label]
        if is_plain(cfg):
            plain.setdefault(training_signature(cfg, tuned_key), []).append(d.label)
    chosen = {}
    for d in defences:
        cfg = utility_config[d.label]
        same = plain.get(training_signature(cfg, tuned_key), [])
        if is_plain(cfg) or fallback in same:
            chosen[d.label] = fallback
        else:
            chosen[d.label] = same[0] if same else None
    return chosen
