"""The strongest attack per defence and knowledge level, from a comparison grid's cells.

A defence is measured by the strongest attack that knows how it works. For each defence,
each knowledge level L (README, "Attacks": 0 updates and disguised data only; 1 also the algorithm
and its parameters; 2 also pairs under the victim's key) and each threat model, this takes
over every attack the grid ran against the defence at a level ≤ L (a Level-2 attacker can
run every Level-1 attack) the one that recovers the originals best (highest PSNR vs the
originals), per seed, and reports its PSNR, SSIM and recognisability, mean ± std over seeds,
beside the defence's accuracy cost.

Threat models, by what the attack was handed: `server` attacks work on the updates an FL
server receives (gradient inversion and the chains that carry its estimate to the
originals); `outsourced` attacks are handed the client's true disguised images (the
papers' threat model: images given to an untrusted party).
"""

from __future__ import annotations

import csv
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from fedisguise.attacks.base import ATTACKS, LEVELS, finite

THREAT_MODELS = {"update": "server", "images": "outsourced"}
FIGURES = ("psnr_vs_original", "ssim_vs_original", "recognisability")
LEVEL_GRID_SCALE, LEVEL_GRID_DPI = 3, 110  # levels.png: screen pixels per image pixel, dpi


def candidates(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The image-recovering attacks of one cell that ran: label, kind, level, threat
    model, figures and grid picture."""
    found = []
    for label, entry in (record.get("attacks") or {}).items():
        kind = entry.get("attack")
        if entry.get("status", "ok") != "ok" or kind not in ATTACKS:
            continue
        model = THREAT_MODELS.get(ATTACKS[kind].evidence)
        value = finite(entry.get("psnr_vs_original"))
        if model is None or value is None:
            continue
        found.append({"label": label, "attack": kind, "level": int(entry.get("level", 0)),
                      "method": entry.get("method"), "threat_model": model,
                      "grid": entry.get("grid"), "n": entry.get("n"),
                      **{f: finite(entry.get(f)) for f in FIGURES}})
    return found


def _describe(found: dict[str, Any]) -> str:
    """An attack as the table names it: kind, the chain's level where it is one, and the
    method where the kind has several (the inverse network's U-Net or known pairs)."""
    if ATTACKS[found["attack"]].named_by_level:
        return f"{found['attack']} L{found['level']}"
    return found["attack"] + (f" ({found['method']})" if found.get("method") else "")


def level_rows(grid: Any, records: dict[str, dict[str, Any]],
               table_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per defence × level × threat model (see the module docstring)."""
    cost = {r["defence"]: r.get("accuracy_gap") for r in table_rows}
    accuracy = {r["defence"]: r.get("accuracy") for r in table_rows}
    rows = []
    for defence in grid.defences:
        per_seed = {seed: [(c, a) for c in grid.all_cells
                           if c.defence == defence.label and c.seed == seed
                           and c.name in records for a in candidates(records[c.name])]
                    for seed in (*grid.seeds, *grid.more_seeds)}
        for level in LEVELS:
            for model in THREAT_MODELS.values():
                best = []
                for found in per_seed.values():
                    eligible = [(c, a) for c, a in found
                                if a["level"] <= level and a["threat_model"] == model]
                    if eligible:
                        best.append(max(eligible, key=lambda ca: ca[1]["psnr_vs_original"]))
                row: dict[str, Any] = {"defence": defence.label, "level": level,
                                       "threat_model": model, "seeds": len(best),
                                       "accuracy": accuracy.get(defence.label),
                                       "accuracy_gap": cost.get(defence.label)}
                names = Counter(_describe(a) for _, a in best).most_common()
                row["attack"] = " / ".join(n for n, _ in names) or None
                # the images behind each figure (one count, or the range over seeds)
                row["n"] = sorted({int(a["n"]) for _, a in best if a.get("n") is not None})
                for figure in FIGURES:
                    values = [a[figure] for _, a in best if a[figure] is not None]
                    row[figure] = statistics.fmean(values) if values else None
                    row[f"{figure}_std"] = statistics.stdev(values) if len(values) > 1 \
                        else None
                if best:
                    cell, top = best[0]
                    row["cell"], row["grid"] = cell.name, top["grid"]
                rows.append(row)
    return rows


def write_level_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    names = ["defence", "level", "threat_model", "attack", "seeds", *(
        f"{f}{s}" for f in FIGURES for s in ("", "_std")), "accuracy", "accuracy_gap", "cell"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])


def count_text(counts: list[int] | None) -> str:
    """` (n 8)`: the images or candidates behind a figure (a range where cells differ)."""
    if not counts:
        return ""
    return f" (n {counts[0]})" if len(counts) == 1 else f" (n {counts[0]}–{counts[-1]})"


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def level_markdown(rows: list[dict[str, Any]], picture: str | None) -> list[str]:
    """The table as markdown: a defence per line, per level the strongest attack and what
    it recovers (PSNR dB / SSIM / recognisability), one table per threat model."""
    lines: list[str] = []
    for model, title in (("server", "What the FL server recovers from the updates"),
                         ("outsourced", "What a holder of the disguised images recovers "
                                        "(outsourcing threat model)")):
        mine = [r for r in rows if r["threat_model"] == model]
        if not any(r["attack"] for r in mine):
            continue
        lines += [f"### {title}", "",
                  "Per level: the strongest attack of that level or below, and what it "
                  "recovers of the originals: PSNR (dB) / SSIM / recognisability (n: the "
                  "images the attack reconstructed).", "",
                  "| defence | accuracy | gap (points) | "
                  + " | ".join(f"Level {lv}" for lv in LEVELS) + " |",
                  "| --- | ---: | ---: |" + " --- |" * len(LEVELS)]
        for defence in dict.fromkeys(r["defence"] for r in mine):
            cells = {r["level"]: r for r in mine if r["defence"] == defence}
            first = cells[LEVELS[0]]
            gap = first["accuracy_gap"]
            entries = []
            for level in LEVELS:
                r = cells[level]
                n = count_text(r.get("n"))
                entries.append("–" if not r["attack"] else
                               f"{r['attack']}: {_fmt(r['psnr_vs_original'], None, 1)} / "
                               f"{_fmt(r['ssim_vs_original'], None, 3)} / "
                               f"{_fmt(r['recognisability'], None, 2)}{n}")
            lines.append(f"| {defence} | {_fmt(first['accuracy'], None, 3)} | "
                         f"{'–' if gap is None else f'{100 * gap:.1f}'} | "
                         + " | ".join(entries) + " |")
        lines.append("")
    if picture:
        lines += [f"![original | disguised | best reconstruction per defence and level]"
                  f"({picture})", ""]
    return lines


def write_level_grid(path: Path, rows: list[dict[str, Any]], cells_dir: Path) -> bool:
    """One picture: per defence (rows) and level (columns), the grid of the strongest attack
    of either threat model (original | disguised | reconstructed). False if none exists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image
    import matplotlib.pyplot as plt

    best: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        if r.get("grid") and r["psnr_vs_original"] is not None:
            key = (r["defence"], r["level"])
            if key not in best or r["psnr_vs_original"] > best[key]["psnr_vs_original"]:
                best[key] = r
    if not best:
        return False
    defences = list(dict.fromkeys(r["defence"] for r in rows))
    # Every picture at LEVEL_GRID_SCALE times its pixels at least, so that 28-px images can
    # be told apart (matplotlib would otherwise fit them into a few inches).
    sizes = [matplotlib.image.imread(cells_dir / r["cell"] / r["grid"]).shape[:2]
             for r in best.values() if (cells_dir / r["cell"] / r["grid"]).is_file()]
    height = max([h for h, _ in sizes], default=28) * LEVEL_GRID_SCALE / LEVEL_GRID_DPI
    width = max([w for _, w in sizes], default=84) * LEVEL_GRID_SCALE / LEVEL_GRID_DPI
    fig, axes = plt.subplots(len(defences), len(LEVELS), squeeze=False,
                             figsize=(max(4.2, width + 0.2) * len(LEVELS),
                                      max(1.9, height + 0.5) * len(defences)))
    for i, defence in enumerate(defences):
        for j, level in enumerate(LEVELS):
            ax = axes[i][j]
            ax.axis("off")
            r = best.get((defence, level))
            picture = cells_dir / r["cell"] / r["grid"] if r else None
            if picture is None or not picture.is_file():
                ax.set_title(f"{defence} · L{level}: –", fontsize=7)
                continue
            ax.imshow(matplotlib.image.imread(picture), cmap="gray")
            ax.set_title(f"{defence} · L{level}: {r['attack']} ({r['threat_model']}), "
                         f"{r['psnr_vs_original']:.1f} dB", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=LEVEL_GRID_DPI)
    plt.close(fig)
    return True
