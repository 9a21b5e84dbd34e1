"""Keep a grid's finished cells in the repository, so that a grid longer than one session
survives the machine it ran on.

Why: the headline grid takes hours on 2 cores, and a results folder goes with its machine. A
grid resumes from any folder holding its finished cells (fedisguise.grids.done), so keeping
each cell's record (cell.json, metrics.json, rounds.csv, summary.md and its attack images)
lets the next session resume where this one stopped. Captures and update dumps stay behind:
the table, the page and the report read none of them.

    python docs/grid_cells.py archive /tmp/grid/compare-fmnist-cpu docs/grid-cells/compare-fmnist-cpu \
        --grid configs/compare-fmnist-cpu.toml
    python docs/grid_cells.py restore docs/grid-cells/compare-fmnist-cpu /tmp/grid/compare-fmnist-cpu

With --grid, only the cells that grid still counts as done are kept (fedisguise.grids.done):
a cell finished under settings the grid has since changed is left out, and removed from the
target, so the archive never holds a figure the grid would not use.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

RECORD = ("cell.json", "metrics.json", "rounds.csv", "summary.md")


def finished_cells(grid_dir: Path) -> list[Path]:
    """Cell folders whose run finished (the marker is written only after a whole run)."""
    return sorted(p.parent for p in grid_dir.glob("*/cell.json")
                  if (p.parent / "metrics.json").is_file())


def copy_cell(source: Path, target: Path) -> None:
    """A cell's record and attack images; nothing else of the run."""
    target.mkdir(parents=True, exist_ok=True)
    for name in RECORD:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    for picture in sorted((source / "images").glob("attack-*.png")):
        (target / "images").mkdir(exist_ok=True)
        shutil.copy2(picture, target / "images" / picture.name)


def done_under(grid_file: Path, cells_dir: Path) -> set[str]:
    """The cells of `grid_file` that are done in `cells_dir` (a grid's own folder)."""
    from fedisguise.grids.done import cell_done
    from fedisguise.grids.spec import load_grid
    from fedisguise.grids.tuned import resolve_tuning, sweeps

    grid = load_grid(grid_file, out=str(cells_dir.parent))
    if grid.out != cells_dir:
        raise SystemExit(f"{cells_dir} is not the folder of grid {grid_file} ({grid.out.name})")
    tuning = [grid.tune_cell(defence, regime, value)
              for (defence, regime), s in sweeps(grid).items() for value in s.values] \
        if grid.tuning else []
    tuned, _ = resolve_tuning(grid)  # the cells with each row's chosen value
    return {cell.name for cell in (*tuning, *tuned.all_cells) if cell_done(cell)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["archive", "restore"])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--grid", type=Path, help="keep only the cells this grid counts as done")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"error: {args.source} is not a folder", file=sys.stderr)
        return 2
    cells = finished_cells(args.source)
    if args.grid:
        current = done_under(args.grid, args.source)
        for stale in [c for c in finished_cells(args.target) if c.name not in current]:
            shutil.rmtree(stale)
            print(f"removed {stale.name}: finished under settings the grid has changed")
        cells = [c for c in cells if c.name in current]
    copied = 0
    for cell in cells:
        target = args.target / cell.name
        if (target / "cell.json").is_file() and (
                (target / "cell.json").read_bytes() == (cell / "cell.json").read_bytes()):
            continue  # the same finished run is already there
        copy_cell(cell, target)
        copied += 1
    print(f"{args.action}: {copied} new of {len(cells)} finished cells -> {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
