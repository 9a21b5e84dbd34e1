"""The results page's frontier figures: one grid's compare.json joined with rows of the same
grid that earlier runs measured (their figures copied from those runs' tables).

Why: a 2-core CPU cannot rerun the whole grid in one session, and a results folder goes with
its machine. `--only` reruns some rows; this joins them with the rows it did not rerun, marks
dominance over the joined set with the grid's own rule (fedisguise.grids.frontier) and draws the
grid's frontier figures from it. Rows the run measured win over earlier ones.

    python docs/merge_frontiers.py results/compare-fmnist-cpu/compare.json \\
        docs/compare-fmnist-cpu-earlier-rows.json --out /tmp/merged
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedisguise.grids import frontier


def merged_rows(run: dict, earlier: dict) -> list[dict]:
    """The run's measured rows, then each earlier row the run left unmeasured, in the run's
    row order; dominance marked over all of them."""
    earlier_rows = {r["defence"]: dict(r) for r in earlier["rows"]}
    unknown = sorted(set(earlier_rows) - {r["defence"] for r in run["rows"]})
    if unknown:
        raise SystemExit(f"earlier rows not in the run's grid: {', '.join(unknown)}")
    rows = []
    for row in run["rows"]:
        if row.get("accuracy") is not None:
            rows.append({**row, "source": "this run"})
        elif row["defence"] in earlier_rows:
            rows.append(earlier_rows[row["defence"]])
    frontier.mark_dominated(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("compare_json", type=Path)
    parser.add_argument("earlier_json", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="compare-fmnist-cpu")
    args = parser.parse_args(argv)
    run = json.loads(args.compare_json.read_text())
    rows = merged_rows(run, json.loads(args.earlier_json.read_text()))
    args.out.mkdir(parents=True, exist_ok=True)
    written = frontier.write_frontiers(args.out, args.title, rows)
    keep = ("defence", "source", "tuned", "accuracy", "accuracy_std", "best.psnr_vs_original",
            "best.psnr_vs_original_std", "best.recognisability", "best.recognisability_std",
            "membership.auc", "membership.auc_std", "seconds_per_round", "dominated_by")
    (args.out / "merged_rows.json").write_text(
        json.dumps([{k: r.get(k) for k in keep} for r in rows], indent=1) + "\n")
    for r in rows:
        print(f"{r['defence']:34s} {r['source']:12s} acc {r['accuracy']:.3f} "
              f"dominated by: {', '.join(r['dominated_by'] or []) or 'frontier'}")
    print("wrote", ", ".join(written + ["merged_rows.json"]), "to", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
