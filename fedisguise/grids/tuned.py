"""A grid's fair tuning (`[compare.tune]`, fedisguise.grids.tuning): the sweeps of each defence and
regime, their tuning cells, and the value each cell of the grid then takes."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from fedisguise.attacks.base import finite
from fedisguise.config import ConfigError
from fedisguise.grids.done import cell_done, diverged
from fedisguise.grids.spec import Cell, Grid, changed_keys
from fedisguise.grids.tuning import BASE, Sweep, literal, sweep


def sweep_label(defence: str, regime: str) -> str:
    """A sweep's name in the tables: `defence`, or `defence@setting` for an attack setting
    whose regime is tuned apart."""
    return defence if regime == BASE else f"{defence}@{regime}"


def sweeps(grid: Grid) -> dict[tuple[str, str], Sweep]:
    """Per tuned (defence, regime): its sweep as far as the finished tuning runs decide it."""
    if grid.tuning is None:
        return {}

    def outcome(cell: Cell) -> tuple[bool, float | None]:
        if not cell_done(cell):
            return False, None
        record = json.loads((cell.config.run_dir / "metrics.json").read_text())
        if diverged(record):  # marked done by _run_cells: the worst value
            return True, None
        return True, finite((record.get("final") or {}).get("validation_accuracy"))

    def allowed(defence: str, regime: str, value: float) -> bool:
        try:
            grid.tune_cell(defence, regime, value)
        except ConfigError:
            return False
        return True

    return {
        (defence, regime): sweep(
            start, grid.tuning.extend,
            lambda v, d=defence, r=regime: outcome(grid.tune_cell(d, r, v)),
            lambda v, d=defence, r=regime: allowed(d, r, v))
        for (defence, regime), start in grid.tune_start.items()}


def tune_choices(grid: Grid) -> dict[str, dict[str, Any]]:
    """Per sweep (`sweeps`): every value's final validation accuracy (None: diverged), the
    values not run yet, the chosen value (None until the sweep is decided) and whether it
    sits at a bound."""
    return {sweep_label(*key): s.summary() for key, s in sweeps(grid).items()}


def pending_tune_cells(grid: Grid) -> list[Cell]:
    """The tuning runs the sweeps need next: their first values, then each value past an
    end where the best sits there."""
    if grid.tuning is None:
        return []
    return [grid.tune_cell(defence, regime, v)
            for (defence, regime), s in sweeps(grid).items() for v in s.pending]


def resolve_tuning(grid: Grid) -> tuple[Grid, dict[str, dict[str, Any]]]:
    """The grid with each tuned defence's chosen value in its cells (the cells of a defence
    whose tuning has not finished keep the base value), and the choices. A cell of an
    attack setting tuned apart takes that regime's choice; one that sets the key keeps it."""
    if grid.tuning is None:
        return grid, {}
    choices, key = tune_choices(grid), grid.tuning.key
    own = {a.label for a in grid.attacks if key in changed_keys(a.changes)}

    def tuned(cell: Cell) -> Cell:
        chosen = choices.get(tuned_label(grid, cell), {}).get("chosen")
        if chosen is not None and cell.attack not in own:
            cell = replace(cell, config=cell.config.with_overrides([f"{key}={literal(chosen)}"]))
        return cell

    return replace(grid, cells=[tuned(c) for c in grid.cells],
                   extra_cells=tuple(tuned(c) for c in grid.extra_cells)), choices


def tuned_label(grid: Grid, cell: Cell) -> str:
    """The sweep whose choice a cell takes (`defence` or `defence@setting`)."""
    tuned = {a.label for a in grid.attacks if a.tuned}
    return sweep_label(cell.defence, cell.attack if cell.attack in tuned else BASE)
