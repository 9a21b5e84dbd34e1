"""Running a grid: every cell a normal run, finished cells skipped while their settings hold,
the tuning cells first, more seeds where they decide something (fedisguise.grids.more_seeds)."""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from tqdm.auto import tqdm

from fedisguise.config import ConfigError
from fedisguise.grids.done import cell_done, comparable, diverged
from fedisguise.grids.figures import row_references, seeds_called
from fedisguise.grids.spec import Cell, Grid
from fedisguise.grids.table import write_table
from fedisguise.grids.tuned import pending_tune_cells, resolve_tuning, tuned_label


def selected_defences(grid: Grid, only: Iterable[str] | None) -> set[str]:
    """The defences whose cells a run covers: all of them, or the labels in `only` (each one
    the grid's own, else a ConfigError naming the grid's labels)."""
    labels = [d.label for d in grid.defences]
    if only is None:
        return set(labels)
    chosen = [label.strip() for label in only if label.strip()]
    unknown = [label for label in chosen if label not in labels]
    if unknown or not chosen:
        raise ConfigError(f"{grid.source}: --only {unknown or list(only)}: not a defence of "
                          f"grid {grid.name}; its defences: {', '.join(labels)}")
    return set(chosen)


def run_grid(grid: Grid, progress: bool = True,
             only: Iterable[str] | None = None) -> dict[str, Any]:
    """Run every unfinished cell (of the defences in `only`, when given: selected_defences),
    then write table.md, table.csv, cells.csv and the plots from every finished cell of the
    grid; the cells not run yet are listed as missing, never dropped.

    A cell that fails is reported (and left unfinished for the next run) while the others go
    on; the return value lists it under `failed`.
    """
    from fedisguise.experiment import ray_kept_between_runs

    with ray_kept_between_runs():  # one Ray for every cell: about 5 s a cell saved
        return _run_grid(grid, progress, only)


def _run_grid(grid: Grid, progress: bool, only: Iterable[str] | None) -> dict[str, Any]:
    from fedisguise.experiment import run_experiment

    chosen = selected_defences(grid, only)
    grid.out.mkdir(parents=True, exist_ok=True)
    skipped, ran, failed = [], [], {}
    bar = tqdm(total=sum(c.defence in chosen for c in (*grid.tune_cells, *grid.cells)),
               desc=f"compare {grid.name}", unit="cell", disable=not progress)
    # Tuning first: each sweep's first values, then, round by round, a value past an end
    # where the best sits there (fedisguise.grids.tuning); a run that fails is not retried here.
    initial = [c for c in grid.tune_cells if c.defence in chosen]
    tried = {c.name for c in initial if cell_done(c)}
    skipped += sorted(tried)
    bar.update(len(tried))
    while cells := [c for c in pending_tune_cells(grid)
                    if c.defence in chosen and c.name not in tried]:
        bar.total += len([c for c in cells if c.name not in {i.name for i in initial}])
        _run_cells(cells, bar, run_experiment, skipped, ran, failed, tuning=True)
        tried |= {c.name for c in cells}
    grid, choices = resolve_tuning(grid)  # the tuned values are known now
    cells = [c for c in grid.cells if c.defence in chosen]
    untuned = [c for c in cells if choices.get(tuned_label(grid, c), {"chosen": 0})["chosen"]
               is None]
    for cell in untuned:
        failed[cell.name] = "its defence's tuning runs did not all finish"
        bar.update(1)
    _run_cells([c for c in cells if c not in untuned], bar, run_experiment, skipped, ran,
               failed)
    # More seeds where the grid's own leave a row's gap open (fedisguise.grids.more_seeds): the
    # chosen rows so called, and their references, even where --only leaves those out.
    called, references_of = seeds_called(grid), row_references(grid)
    wanted = {label for label in called if label in chosen}
    wanted |= {references_of[label] for label in wanted if references_of[label] in called}
    extra = [c for c in grid.extra_cells if c.defence in wanted]
    if extra:
        for label in sorted(wanted):
            tqdm.write(f"seeds {grid.more_seeds} for {label}: {called[label]}")
        bar.total += len(extra)
        _run_cells(extra, bar, run_experiment, skipped, ran, failed)
    bar.close()
    table = write_table(grid)
    return {"ran": ran, "skipped": skipped, "failed": failed, **table}


def _run_cells(cells: list[Cell], bar: Any, run_experiment: Any, skipped: list[str],
               ran: list[str], failed: dict[str, str], tuning: bool = False) -> None:
    for cell in cells:
        bar.update(1)
        bar.set_postfix_str(cell.name)
        if cell_done(cell):
            skipped.append(cell.name)
            continue
        marker = cell.config.run_dir / "cell.json"
        marker.unlink(missing_ok=True)
        try:  # an unfinished cell's folder holds no finished result: it is replaced
            record = run_experiment(cell.config, force=True)
        except Exception as err:  # noqa: BLE001 - one broken cell must not lose the others
            failed[cell.name] = f"{type(err).__name__}: {err}"
            tqdm.write(f"cell {cell.name} failed:\n{traceback.format_exc()}")
            continue
        if record.get("status") != "finished" and not (tuning and diverged(record)):
            failed[cell.name] = f"{record.get('status')}: {record.get('error')}"
            tqdm.write(f"cell {cell.name} {failed[cell.name]}")
            continue
        if record.get("status") != "finished":
            tqdm.write(f"tuning run {cell.name} diverged: the worst value of its sweep")
        marker.write_text(json.dumps({"config": comparable(cell.config),
                                      "finished_at": datetime.now(UTC).isoformat(
                                          timespec="seconds")}, indent=2) + "\n")
        ran.append(cell.name)
