"""Fair tuning for comparison grids: each defence chooses one training parameter (its
learning rate, say) on a validation split of the clients' own images, from a sweep that
brackets the optimum.

A sweep starts from at least three log-spaced values. When the best of them sits at either
end, one more value beyond that end is tried, and again, until the best is interior or
`extend` steps were taken on that side (or the next value is not a valid setting): then the
choice is marked "at bound", since a better value may lie beyond it. A choice at an end of
its candidates is otherwise no choice at all: the optimum was never bracketed.

The sweep is a pure function of the finished tuning runs on disk, so a grid that stops and
resumes extends it exactly as one that never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

from fedisguise.config import SECTIONS, ConfigError

TUNE_KEYS = {"key", "values", "validation", "seed", "rounds", "extend"}
# Consecutive candidates must be log-spaced: their ratios may differ by this factor at most
# (1e-4, 3e-4, 1e-3 is; 0.01, 0.02, 0.1 is not).
LOG_SPACING = 1.25
EXTEND = 2  # default: steps a sweep may take beyond each end of its candidates
BASE = "base"  # the regime of the utility cells; an attack setting with `tune = true` has its own
# A value beyond an end is snapped to the nearest of these mantissas (in log terms), so a
# 1-3-10 sweep goes on 30, 100, not 33.3, 111.1.
MANTISSAS = (1.0, 2.0, 3.0, 5.0, 10.0)


@dataclass(frozen=True)
class Tuning:
    """compare.tune: which training parameter each defence chooses on validation data."""

    key: str
    values: tuple[float, ...]
    validation: float
    seed: int
    rounds: int
    extend: int = EXTEND


def parse_tuning(where: str, spec: Any, first_seed: int) -> Tuning:
    """compare.tune as a Tuning; ConfigError naming the key for anything else."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a table (key, values, validation, seed, rounds, "
                          f"extend)")
    unknown = sorted(set(spec) - TUNE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: {sorted(TUNE_KEYS)}")
    key = spec.get("key")
    section, _, name = str(key).partition(".")
    if not isinstance(key, str) or section not in SECTIONS or section == "experiment" or \
            name not in {f.name for f in dataclass_fields(SECTIONS[section])}:
        raise ConfigError(f"{where}.key must name a numeric training setting such as "
                          f"'train.lr', got {key!r}")
    values = tune_values(f"{where}.values", spec.get("values"))
    validation = spec.get("validation", 0.1)
    if not isinstance(validation, int | float) or not 0 < validation < 0.5:
        raise ConfigError(f"{where}.validation must be a fraction in (0, 0.5) of each "
                          f"client's training images, got {validation!r}")
    seed, rounds = spec.get("seed", first_seed), spec.get("rounds", 0)
    extend = spec.get("extend", EXTEND)
    for key_name, value in (("seed", seed), ("rounds", rounds), ("extend", extend)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}.{key_name} must be a non-negative integer, "
                              f"got {value!r}")
    return Tuning(key, values, float(validation), seed, rounds, extend)


def tune_values(where: str, values: Any) -> tuple[float, ...]:
    """At least three distinct positive finite numbers, log-spaced, in ascending order."""
    if (not isinstance(values, list) or len(set(values)) < 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool)
                       and math.isfinite(v) and v > 0 for v in values)):
        raise ConfigError(f"{where} must list at least three distinct positive numbers, "
                          f"log-spaced, so that the best can be bracketed; got {values!r}")
    ordered = sorted(float(v) for v in set(values))
    ratios = [b / a for a, b in zip(ordered, ordered[1:], strict=False)]
    if max(ratios) / min(ratios) > LOG_SPACING:
        raise ConfigError(f"{where} must be log-spaced (each value a similar multiple of the "
                          f"one before), got {values!r}: ratios "
                          f"{', '.join(f'{r:.3g}' for r in ratios)}")
    return tuple(ordered)


def literal(value: float) -> str:
    """A tuned value as --set writes it (an integral value also fits an integer setting)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def step_beyond(values: list[float], side: str) -> float:
    """The next value past the `side` ("low" or "high") end of the ascending `values`, one
    ratio of the neighbouring pair further, snapped to a round mantissa."""
    a, b = (values[1], values[0]) if side == "low" else (values[-2], values[-1])
    raw = b * (b / a)
    exponent = math.floor(math.log10(raw))
    mantissa = raw / 10 ** exponent
    snapped = min(MANTISSAS, key=lambda m: abs(math.log(m / mantissa))) * 10 ** exponent
    snapped = float(f"{snapped:.12g}")  # 3 * 10**-4 is 0.00030000000000000003
    if (side == "low" and snapped >= b) or (side == "high" and snapped <= b):
        return float(f"{raw:.2g}")
    return snapped


@dataclass
class Sweep:
    """One defence's sweep in one regime, as far as the finished runs decide it."""

    values: list[float]  # tried or to try, ascending
    scores: dict[float, float | None] = field(default_factory=dict)  # None: diverged
    pending: list[float] = field(default_factory=list)  # to run before it can go on
    chosen: float | None = None
    at_bound: bool = False

    def summary(self) -> dict[str, Any]:
        """For compare.json and the table: every value's score, the choice, the bound."""
        return {"scores": {literal(v): self.scores.get(v) for v in self.values},
                "pending": [literal(v) for v in self.pending],
                "chosen": self.chosen, "at_bound": self.at_bound}


def sweep(initial: tuple[float, ...], extend: int,
          outcome: Callable[[float], tuple[bool, float | None]],
          allowed: Callable[[float], bool]) -> Sweep:
    """The sweep from `initial`: `outcome(value)` is (finished, validation accuracy or None
    where it diverged); `allowed(value)` whether the value is a valid setting. The best
    (highest accuracy; the lowest value on a tie) is chosen once every value is finished and
    it is interior, or no further step is possible."""
    values, taken = sorted(initial), {"low": 0, "high": 0}
    while True:
        result = Sweep(values=list(values))
        for value in values:
            done, score = outcome(value)
            if done:
                result.scores[value] = score
            else:
                result.pending.append(value)
        if result.pending:
            return result
        best = max(values, key=lambda v: (-math.inf if result.scores[v] is None
                                          else result.scores[v], -v))
        side = "low" if best == values[0] else "high" if best == values[-1] else None
        if side is None:
            result.chosen = best
            return result
        nxt = step_beyond(values, side) if taken[side] < extend else None
        if nxt is None or nxt <= 0 or not math.isfinite(nxt) or not allowed(nxt):
            result.chosen, result.at_bound = best, True
            return result
        taken[side] += 1
        values = sorted([*values, nxt])


def chosen_text(entry: dict[str, Any]) -> str:
    """A sweep's choice as the tables show it."""
    if entry["chosen"] is None:
        return "unfinished"
    return literal(entry["chosen"]) + (" (tuning at bound)" if entry["at_bound"] else "")


def tuning_markdown(tuning: Tuning | None, choices: dict[str, dict[str, Any]]) -> str:
    """The tuning section: per defence (and tuned regime) every value tried and its
    validation accuracy, and the choice."""
    if tuning is None:
        return ""
    t = tuning
    lines = ["## Tuning", "",
             f"`{t.key}` per defence, chosen by the final accuracy on a validation split "
             f"held out of the clients' own training images ({t.validation:.0%} of each), "
             f"seed {t.seed}" + (f", {t.rounds} rounds" if t.rounds else "")
             + "; never on the test set. Each sweep starts from at least three log-spaced "
             f"values and goes up to {t.extend} step(s) past an end while the best is there; "
             "a choice still at an end is marked \"tuning at bound\". `defence@setting`: "
             "the attack setting's own training regime, tuned separately. Defences that "
             "set the value themselves are not tuned.", "",
             f"| defence | {t.key} → validation accuracy | chosen |",
             "| --- | --- | ---: |"]
    for label, entry in choices.items():
        tried = ", ".join(f"{v}: {_score_text(v, s, entry)}" for v, s in entry["scores"].items())
        lines.append(f"| {label} | {tried} | {chosen_text(entry)} |")
    return "\n".join(lines) + "\n\n"


def _score_text(value: str, score: float | None, entry: dict[str, Any]) -> str:
    if value in entry["pending"]:
        return "not run yet"
    return "diverged" if score is None else f"{score:.3f}"
