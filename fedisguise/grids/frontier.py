"""Privacy–utility frontiers of a comparison grid: which settings are worth choosing.

A defence swept over its strength (VisualMixer's target VFE, DisguisedNets' block size and
noise, InstaHide's k, DP's ε or σ, ...) is a set of rows of one grid, each one a setting.
Rows group into curves: a defence entry's `curve` names its curve, else the disguise's name
(or the DP mode, `none` for plain FL). Each setting is a point: final accuracy on x, and on
y what the attacks reach against it (the strongest reconstruction's PSNR and
recognisability of the originals, membership AUC).

A setting is dominated when another setting of the grid, of any curve, is at least as
accurate and lets every attack the two share reach at most as much, and is strictly better
in one of these; nobody should choose it. Means over seeds are compared as they are, so
with few seeds a near-tie is a weak verdict: the table gives the std beside each mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedisguise.config import NO_DISGUISE
from fedisguise.dp_modes import NO_DP, dp_mode

# What an attack reaches, per row of the table: (key, title, higher is stronger). The
# reconstruction figures are what the strongest attack of any kind recovers (`best.*`).
AXES = (
    ("best.psnr_vs_original", "strongest attack's PSNR vs original (dB)", True),
    ("best.recognisability", "strongest attack's recognisability", True),
    ("membership.auc", "membership AUC", True),
)
FAMILIES = {"reconstruction": AXES[:2], "membership": AXES[2:]}


def curve_name(changes: Mapping[str, Any]) -> str:
    """The curve a defence entry belongs to: its `curve`, else its disguise or DP mode."""
    if changes.get("curve"):
        return str(changes["curve"])
    disguise = changes.get("disguise", NO_DISGUISE)
    name = disguise.get("name", NO_DISGUISE) if isinstance(disguise, Mapping) else str(disguise)
    if name != NO_DISGUISE:
        return name
    return dp_mode((changes.get("dp") or {}).get("mode", NO_DP.name)).frontier_curve


def _reached(row: Mapping[str, Any], key: str) -> float:
    """What the attack reaches; an AUC below chance is as informative as its mirror image
    (an attacker flips its scores), so membership counts as max(AUC, 1 − AUC)."""
    value = row[key]
    return max(value, 1.0 - value) if key == "membership.auc" else value


def dominators(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The settings that dominate `row` (see the module's docstring)."""
    found = []
    for other in rows:
        if other is row or other.get("accuracy") is None or row.get("accuracy") is None:
            continue
        shared = [(k, up) for k, _, up in AXES
                  if row.get(k) is not None and other.get(k) is not None]
        if not shared or other["accuracy"] < row["accuracy"]:
            continue
        # Signed so that larger means "the other setting protects better" on every axis.
        margins = [(_reached(row, k) - _reached(other, k)) * (1 if up else -1)
                   for k, up in shared]
        if min(margins) >= 0 and (other["accuracy"] > row["accuracy"] or max(margins) > 0):
            found.append(other["defence"])
    return found


def mark_dominated(rows: Sequence[dict[str, Any]]) -> None:
    """Sets each row's `dominated_by`: a list (empty on the frontier), or None where no attack
    figure was measured against the row, so there is nothing to judge it by."""
    for row in rows:
        measured = row.get("accuracy") is not None and any(
            row.get(k) is not None for k, _, _ in AXES)
        row["dominated_by"] = dominators(row, rows) if measured else None


def write_frontiers(out: Path, title: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One figure per attack family (reconstruction, membership) with a measured axis: per
    panel, final accuracy on x, the attack's figure on y, one line per curve through its
    settings in order of accuracy; dominated settings drawn hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    curves: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        curves.setdefault(row.get("curve") or row["defence"], []).append(row)
    for family, axes in FAMILIES.items():
        axes = [a for a in axes if any(r.get(a[0]) is not None and r.get("accuracy")
                                       is not None for r in rows)]
        if not axes:
            continue
        fig, panels = plt.subplots(1, len(axes), figsize=(6 * len(axes), 4.5), squeeze=False)
        for panel, (key, label, up) in zip(panels[0], axes, strict=True):
            for i, (curve, members) in enumerate(curves.items()):
                points = sorted((r for r in members if r.get(key) is not None
                                 and r.get("accuracy") is not None),
                                key=lambda r: r["accuracy"])
                if not points:
                    continue
                # more curves than the default cycle's 10 colours would repeat one
                colour = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")(i % 20)
                xs, ys = [r["accuracy"] for r in points], [r[key] for r in points]
                panel.plot(xs, ys, "-", color=colour, alpha=0.6, label=curve)
                for r, x, y in zip(points, xs, ys, strict=True):
                    hollow = bool(r.get("dominated_by"))
                    panel.errorbar(x, y, xerr=r.get("accuracy_std"), yerr=r.get(f"{key}_std"),
                                   fmt="o", color=colour, capsize=2,
                                   markerfacecolor="white" if hollow else colour)
                    panel.annotate(r["defence"], (x, y), fontsize=7, xytext=(3, 3),
                                   textcoords="offset points")
            way = "↑ attack stronger" if up else "↓ attack stronger"
            panel.set(xlabel="final accuracy →", ylabel=f"{label} ({way})")
            panel.grid(alpha=0.3)
            panel.legend(fontsize=7)
        fig.suptitle(f"{title}: {family} frontier (hollow: dominated)")
        fig.tight_layout()
        name = f"frontier_{family}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(name)
    return written
