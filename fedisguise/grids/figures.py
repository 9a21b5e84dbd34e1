"""A grid's figures: each finished cell's figures, the attack columns from the attack
registry, the strongest attack across kinds, and one row per defence with its intervals,
reference and plateau."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from fedisguise.attacks.base import Figure, figure_catalogue, finite
from fedisguise.grids import frontier, more_seeds
from fedisguise.grids.done import cell_done
from fedisguise.grids.intervals import difference_halfwidth
from fedisguise.grids.references import is_plain, references
from fedisguise.grids.spec import Cell, Grid
from fedisguise.grids.tuned import resolve_tuning

UTILITY_HEAD = ("accuracy", "accuracy_gap", "visual_privacy", "misusability", "epsilon")
UTILITY_TAIL = ("seconds_per_round", "time_ratio", "first_round_seconds")
UTILITY_FIGURES = ("accuracy", "visual_privacy", "misusability", "epsilon",
                   "seconds_per_round", "first_round_seconds")
# What the strongest attack recovers of the client's originals: `best.<figure>`, over every
# attack that declares the figure; `best.attack` names the one that reached the best BEST_BY.
BEST_FIGURES = {"psnr_vs_original": "best PSNR vs original (dB)",
                "ssim_vs_original": "best SSIM vs original",
                "recognisability": "best recognisability"}
BEST_BY = "psnr_vs_original"
N = "@n"  # `<figure>@n`: how many images or candidates a cell's figure is over
# The figures of the first table, beside accuracy and its gap: what the answer is made of.
MAIN_FIGURES = (f"best.{BEST_BY}", "best.recognisability", "membership.auc")
BEST_ATTACK = "best.attack"

def finished(cells: Iterable[Cell]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The finished cells' records (metrics.json) and figures, by cell name."""
    records, figures = {}, {}
    for cell in cells:
        if cell_done(cell):
            records[cell.name] = json.loads((cell.config.run_dir / "metrics.json").read_text())
            figures[cell.name] = cell_figures(records[cell.name])
    return records, figures


def seeds_called(grid: Grid, figures: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The rows that take compare.more_seeds, and why, decided on the base seeds' finished
    cells alone (fedisguise.grids.more_seeds); `figures`: the finished cells' figures where the
    caller has read them already."""
    if not grid.more_seeds:
        return {}
    grid, _ = resolve_tuning(grid)
    base = replace(grid, extra_cells=())
    figures = finished(base.cells)[1] if figures is None else figures
    plain = {c.defence for c in grid.cells if is_plain(c.config)}
    return more_seeds.called_for(
        table_rows(base, {c.name: figures[c.name] for c in base.cells if c.name in figures}),
        len(grid.seeds), plain)


# ---- the table --------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """An attack column: `<kind>.<figure>` for a figure a registered attack declares, or
    `best.<figure>` across attacks; the figure gives the title and which way is stronger."""

    key: str
    kind: str  # the attack's registered name, or "best"
    figure: Figure


def attack_kind(label: str, entry: Mapping[str, Any]) -> str:
    """The registered attack behind a metrics.json label (`name`, or `name-<i>` for a later
    one of the same name); records from before attacks named themselves have only the label."""
    kind = entry.get("attack")
    return kind if isinstance(kind, str) else re.sub(r"-\d+$", "", label)


def _strongest(figure: Figure, candidates: Iterable[tuple[float | None, Any]]
               ) -> tuple[float, Any] | None:
    """The strongest (value, who reached it) by the figure's orientation; the first on a tie."""
    top = None
    for value, who in candidates:
        if value is not None and (top is None or figure.stronger(value, top[0])):
            top = (value, who)
    return top


def best_figures(catalogue: Mapping[str, tuple[Figure, ...]]
                 ) -> dict[str, tuple[Figure, list[str]]]:
    """Each cross-attack figure (BEST_FIGURES) some attack declares, oriented as they declare
    it, with the attacks that declare it."""
    best = {}
    for name, title in BEST_FIGURES.items():
        declared = {kind: f for kind, figures in catalogue.items() for f in figures
                    if f.name == name}
        orientation = {f.higher_is_stronger for f in declared.values()}
        if len(orientation) > 1:
            raise ValueError(f"attacks disagree on whether a higher {name} is stronger: "
                             f"{ {k: f.higher_is_stronger for k, f in declared.items()} }")
        if declared:
            best[name] = (Figure(name, title, orientation.pop()), list(declared))
    return best


def cell_figures(record: dict[str, Any]) -> dict[str, Any]:
    """One cell's figures: utility; `<kind>.<figure>` for every figure each attack that ran
    declares (several of one kind in a cell: the strongest counts); `best.*` over all kinds.

    Attacks that reported "not applicable" contribute nothing.
    """
    final, catalogue = record["final"], figure_catalogue()
    ran: dict[str, list[Mapping[str, Any]]] = {}
    for label, entry in (record.get("attacks") or {}).items():
        if entry.get("status", "ok") == "ok":
            ran.setdefault(attack_kind(label, entry), []).append(entry)
    privacy = record.get("privacy") or {}
    # Round 1 also starts the clients and disguises their data once; later rounds are the
    # steady cost of training on it. Both are reported, the steady one in the table.
    seconds = [r["round_seconds"] for r in record["rounds"]]
    steady = seconds[1:] or seconds
    figures: dict[str, Any] = {
        "accuracy": final["test_accuracy"],
        "accuracy_per_round": [r["test_accuracy"] for r in record["rounds"]],
        "visual_privacy": privacy.get("visual_privacy"),
        # An undisguised model is used on plain images as it is: misusability = its accuracy.
        "misusability": privacy.get("misusability", final["plain_test_accuracy"]),
        "epsilon": final.get("epsilon"),
        "seconds_per_round": statistics.fmean(steady) if steady else None,
        "first_round_seconds": seconds[0] if seconds else None,
    }
    for kind, declared in catalogue.items():
        for figure in declared if kind in ran else ():
            top = _strongest(figure, ((finite(e.get(figure.name)), e) for e in ran[kind]))
            figures[f"{kind}.{figure.name}"] = None if top is None else top[0]
            # how many images (or candidates) the figure is over: `n` in the tables
            figures[f"{kind}.{figure.name}{N}"] = None if top is None else top[1].get("n")
    for name, (figure, kinds) in best_figures(catalogue).items():
        top = _strongest(figure, ((figures.get(f"{k}.{name}"), k) for k in kinds))
        figures[f"best.{name}"] = None if top is None else top[0]
        figures[f"best.{name}{N}"] = None if top is None else figures[f"{top[1]}.{name}{N}"]
        if name == BEST_BY:
            figures[BEST_ATTACK] = None if top is None else top[1]
    return figures


def attack_columns(figures: Iterable[Mapping[str, Any]]) -> list[Column]:
    """The attack columns with a value in at least one of these cells' figures: `best.*`
    first, then each registered attack's declared figures, in registry order."""
    figures, catalogue = list(figures), figure_catalogue()
    columns = [Column(f"best.{name}", "best", figure)
               for name, (figure, _) in best_figures(catalogue).items()]
    columns += [Column(f"{kind}.{figure.name}", kind, figure)
                for kind, declared in catalogue.items() for figure in declared]
    return [c for c in columns if any(f.get(c.key) is not None for f in figures)]


def _stats(values: list[float | None]) -> tuple[float | None, float | None, int]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, 0
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std, len(values)


def _counts(values: Iterable[int | None]) -> list[int]:
    """The distinct image (or candidate) counts behind a row's figure, ascending."""
    return sorted({int(v) for v in values if v is not None})


def table_rows(grid: Grid, figures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per defence: mean/std over its finished cells (utility figures from utility cells, an
    attack's figures from every cell that ran it). `best.*`: per seed, the strongest over
    every attack setting run against the defence; then mean/std over seeds."""
    any_utility = any(a.utility for a in grid.attacks)
    columns = attack_columns(figures.values())
    rows = []
    for defence in grid.defences:
        cells = [c for c in grid.all_cells if c.defence == defence.label
                 and c.name in figures]
        util = [figures[c.name] for c in cells if c.utility or not any_utility]
        every = [figures[c.name] for c in cells]
        row: dict[str, Any] = {"defence": defence.label, "curve": defence.curve,
                               "cells": len(cells)}
        for key in UTILITY_FIGURES:
            row[key], row[f"{key}_std"], row[f"{key}_n"] = _stats([f[key] for f in util])
        for column in columns:
            key = column.key
            if column.kind != "best":
                row[key], row[f"{key}_std"], row[f"{key}_n"] = _stats(
                    [f.get(key) for f in every])
                row[f"{key}{N}"] = _counts(f.get(f"{key}{N}") for f in every
                                           if f.get(key) is not None)
                continue
            tops = [_strongest(column.figure, ((figures[c.name].get(key),
                                                (figures[c.name].get(BEST_ATTACK),
                                                 figures[c.name].get(f"{key}{N}")))
                                               for c in cells if c.seed == seed))
                    for seed in (*grid.seeds, *grid.more_seeds)]
            tops = [t for t in tops if t is not None]
            row[key], row[f"{key}_std"], row[f"{key}_n"] = _stats([v for v, _ in tops])
            row[f"{key}{N}"] = _counts(n for _, (_, n) in tops)
            if key == f"best.{BEST_BY}":
                reached = Counter(who for _, (who, _) in tops).most_common()
                row[BEST_ATTACK] = " / ".join(who for who, _ in reached) or None
        # each seed's own, so that one seed that never learned is seen as such, not only
        # as a wide interval
        row["accuracy_seeds"] = {str(c.seed): figures[c.name]["accuracy"] for c in cells
                                 if (c.utility or not any_utility)
                                 and figures[c.name]["accuracy"] is not None}
        rounds = [f["accuracy_per_round"] for f in util]
        row["accuracy_per_round"] = [_stats(list(r))[:2] for r in zip(*rounds, strict=False)]
        rows.append(row)
    by_label = {r["defence"]: r for r in rows}
    ref_of = row_references(grid)
    for row in rows:
        # the gap against the plain row that trains the same way (fedisguise.grids.references)
        row["reference"] = ref_of[row["defence"]]
        ref = by_label.get(row["reference"], {})
        row["accuracy_gap"] = (None if row["accuracy"] is None or ref.get("accuracy") is None
                               else row["accuracy"] - ref["accuracy"])
        row["accuracy_gap_ci"] = None if row["accuracy_gap"] is None else difference_halfwidth(
            row["accuracy_std"], row["accuracy_n"], ref["accuracy_std"], ref["accuracy_n"])
        # more accurate than its own reference beyond the interval: a tuning or training
        # artefact to look into, never a gain a disguise buys
        row["above_reference"] = bool(
            row["defence"] != row["reference"] and row["accuracy_gap"] is not None
            and row["accuracy_gap_ci"] is not None
            and row["accuracy_gap"] > row["accuracy_gap_ci"])
        time_ref = by_label[grid.reference]
        row["time_ratio"] = (None if not row["seconds_per_round"]
                             or not time_ref["seconds_per_round"]
                             else row["seconds_per_round"] / time_ref["seconds_per_round"])
        row["accuracy_gap_std"] = row["time_ratio_std"] = None
    frontier.mark_dominated(rows)
    return rows


def row_references(grid: Grid) -> dict[str, str | None]:
    """Per defence, the plain row its accuracy gap is against (fedisguise.grids.references)."""
    any_utility = any(a.utility for a in grid.attacks)
    configs = {d.label: next(c.config for c in grid.cells if c.defence == d.label
                             and (c.utility or not any_utility)) for d in grid.defences}
    return references(grid.defences, configs, grid.reference,
                      grid.tuning.key if grid.tuning else None)


PLATEAU_WINDOW, PLATEAU_TOLERANCE = 5, 0.005


def plateau_round(accuracies: list[float | None]) -> int | None:
    """The first round from which training has plateaued for good: at it and at every later
    round, the last PLATEAU_WINDOW rounds' accuracies are all within PLATEAU_TOLERANCE
    (0.5 points) of the best so far. None if the run ends before that holds."""
    if len(accuracies) < PLATEAU_WINDOW or any(a is None for a in accuracies):
        return None
    holds = []
    for end in range(PLATEAU_WINDOW, len(accuracies) + 1):
        best = max(accuracies[:end])
        holds.append(min(accuracies[end - PLATEAU_WINDOW:end]) >= best - PLATEAU_TOLERANCE)
    if not holds[-1]:
        return None
    first = len(holds) - 1
    while first > 0 and holds[first - 1]:
        first -= 1
    return first + PLATEAU_WINDOW


def plateau_texts(rows: list[dict[str, Any]]) -> list[str]:
    """Per row with a learning curve: `label round N`, or `label not within R rounds`."""
    texts = []
    for r in rows:
        curve = [m for m, _ in r.get("accuracy_per_round") or []]
        if curve:
            at = plateau_round(curve)
            texts.append(f"{r['defence']} " + (f"round {at}" if at else
                                               f"not within {len(curve)} rounds"))
    return texts
