"""When three seeds cannot tell a cost from noise: more seeds for that row and its reference.

With three seeds, Student's t(2) = 4.3 makes a cost's 95 % interval about ±3 points in the
Fashion-MNIST grid, wider than the costs the papers claim (1.1 points for DisguisedNets, 2.35
for VisualMixer). A grid's `[compare] more_seeds = [3, 4]` runs those seeds too, for every
row whose cost (accuracy gap against the plain row that trains as it does) has an interval
wider than the cost itself on the grid's own seeds: its half-width exceeds |gap|, so the
seeds leave even the cost's sign open. The row's reference runs them as well, so that both
sides of the gap stand on the same seeds. A plain row (IID, centralised) is measured against
the grid's reference too, but its gap is a difference of training, not a cost: it takes more
seeds only as some defence's reference.

The decision is taken on the base seeds alone, once all of them have finished for the row
and its reference. Cells of the extra seeds never change it, so a grid that stops halfway
resumes with the same rows to fill in.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def called_for(rows: list[dict[str, Any]], base_seeds: int,
               plain: Collection[str] = ()) -> dict[str, str]:
    """Rows (table rows over the base seeds' cells) that need the extra seeds, and each
    one's reason; a row's reference is called with it, for that row. `plain`: the rows with
    no defence, whose gap is a difference of training (IID, centralised), not a cost."""
    by_label = {r["defence"]: r for r in rows}
    called: dict[str, str] = {}
    for row in rows:
        reference = row.get("reference")
        gap, half = row.get("accuracy_gap"), row.get("accuracy_gap_ci")
        if (reference is None or reference == row["defence"] or row["defence"] in plain
                or gap is None or half is None):
            continue  # a plain row, or no interval to judge
        if min(row.get("accuracy_n") or 0,
               by_label.get(reference, {}).get("accuracy_n") or 0) < base_seeds:
            continue  # its seeds, or its reference's, have not all finished
        if half > abs(gap):
            called[row["defence"]] = (f"gap {100 * gap:+.1f} ± {100 * half:.1f} points vs "
                                      f"{reference}: the interval is wider than the gap")
    for label in list(called):
        reference = by_label[label]["reference"]
        if reference not in called:
            called[reference] = f"the reference of {label}"
    return called
