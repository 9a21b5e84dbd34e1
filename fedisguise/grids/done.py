"""Whether a grid's cell is done: finished, with the settings it finished under still the
grid's (a setting added since counts while it holds its default), and not diverged."""

from __future__ import annotations

import json
from typing import Any

from fedisguise.config import Config
from fedisguise.grids.spec import Cell


def comparable(cfg: Config) -> dict[str, Any]:
    """What decides whether a finished cell still answers the grid's question."""
    settings = cfg.to_dict()
    settings["experiment"].pop("out")
    # where and how the processes run does not change what a cell answers
    settings.pop("deployment")
    settings["resources"].pop("ray_address")
    return settings


def _same_settings(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    """A finished cell's settings against the grid's: equal, except that a setting added to
    the config since the cell ran counts as equal while it holds its default (so that a new
    option does not invalidate every finished cell of every grid)."""
    default = comparable(Config())
    current = {section: ({k: v for k, v in values.items()
                          if k in stored.get(section, {}) or v != default[section].get(k)}
                         if isinstance(values, dict) and isinstance(stored.get(section), dict)
                         else values)
               for section, values in current.items()}
    return stored == current


def cell_done(cell: Cell) -> bool:
    """Finished with exactly this config (its marker is written only after a whole run, or
    a tuning run that diverged)."""
    marker = cell.config.run_dir / "cell.json"
    if not marker.is_file() or not (cell.config.run_dir / "metrics.json").is_file():
        return False
    try:
        stored = json.loads(marker.read_text()).get("config")
    except json.JSONDecodeError:
        return False
    return isinstance(stored, dict) and _same_settings(stored, comparable(cell.config))


def diverged(record: dict[str, Any]) -> bool:
    """A run that ended because every client's training turned non-finite: for a tuning
    run, a finished measurement of a value too large (the server refuses non-finite replies,
    so such a run fails in the round after it diverged)."""
    return record.get("status") == "failed" and "non-finite values" in str(record.get("error"))
