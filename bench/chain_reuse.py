#!/usr/bin/env python
"""A grid's chain cell with and without fedisguise.attacks.memo, in one process.

The headline grid's chain cell attacks one captured update at Level 1 and at Level 2. Both
levels invert it alike, and against VisualMixer (the learned de-shuffler) and InstaHide they
also run the same Level-1 stage on the attacker's own images, so the memo computes each of
those once. This runs the cell (its own config: the grid's regime, tuned learning rate and
seed) twice, the memo off and then on, and prints the attack phase's wall time as a ratio,
each stage's seconds, and whether every attack figure is the same.

    python bench/chain_reuse.py --label visualmixer --grid-out /tmp/grid

`--grid-out` is where the grid's finished tuning runs are (the cell's learning rate comes
from them); the two runs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedisguise.attacks import memo  # noqa: E402
from fedisguise.experiment import run_experiment  # noqa: E402
from fedisguise.grids.spec import load_grid  # noqa: E402
from fedisguise.grids.tuned import resolve_tuning  # noqa: E402

TIMES = ("seconds", "iterations_per_s", "reused")  # what may differ between the two runs


def figures(attacks: dict) -> dict:
    """Every attack figure but its timing, flattened: (attack, stage, name) -> value."""
    flat = {}
    for attack, result in attacks.items():
        for key, value in result.items():
            if isinstance(value, dict):
                flat.update({(attack, key, k): v for k, v in value.items() if k not in TIMES})
            elif key not in TIMES:
                flat[(attack, "", key)] = value
    return flat


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", default="configs/compare-fmnist-cpu.toml")
    parser.add_argument("--grid-out", default="/tmp/grid")
    parser.add_argument("--label", default="visualmixer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    grid, _ = resolve_tuning(load_grid(args.grid, out=args.grid_out))
    name = f"{args.label}--chain--seed{args.seed}"
    cell = next((c for c in grid.cells if c.name == name), None)
    if cell is None:
        sys.exit(f"no cell {name} in {args.grid}")
    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("memo off", "memo on"):
            cfg = copy.deepcopy(cell.config)
            cfg.experiment.out, cfg.experiment.name = tmp, mode.replace(" ", "-")
            memo.clear()
            if mode == "memo off":
                with memo.disabled():
                    records[mode] = run_experiment(cfg, force=True)
            else:
                records[mode] = run_experiment(cfg, force=True)
    off, on = records["memo off"], records["memo on"]
    print(f"\n{name} (lr {cell.config.train.lr}), attack phase wall time: "
          f"memo off {off['timing']['attacks']:.1f} s, memo on {on['timing']['attacks']:.1f} s"
          f" -> {off['timing']['attacks'] / on['timing']['attacks']:.2f}x faster")
    for attack in off["attacks"]:
        for stage, result in off["attacks"][attack].items():
            if isinstance(result, dict) and "seconds" in result:
                again = on["attacks"][attack][stage]
                note = " (reused)" if again.get("reused") \
                    else ""
                print(f"  {attack} {stage}: {result['seconds']:.1f} s off, "
                      f"{again['seconds']:.1f} s on{note}")
    a, b = figures(off["attacks"]), figures(on["attacks"])
    differ = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys()
              if not same(a.get(k), b.get(k))}
    print(f"attack figures: {len(a)} compared, {len(differ)} differ")
    for key, pair in sorted(differ.items(), key=str):
        print(f"  {key}: {pair[0]!r} vs {pair[1]!r}")
    print(json.dumps({"cell": name, "attacks_seconds_off": off["timing"]["attacks"],
                      "attacks_seconds_on": on["timing"]["attacks"],
                      "figures_compared": len(a), "figures_differ": len(differ)}))


if __name__ == "__main__":
    main()
