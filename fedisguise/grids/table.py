"""A grid's outputs: table.md (the answer first), table.csv, compare.json, the plots and
report.html."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from typing import Any

from fedisguise.grids import frontier, report, strongest
from fedisguise.grids.figures import (
    BEST_ATTACK,
    BEST_BY,
    MAIN_FIGURES,
    PLATEAU_TOLERANCE,
    PLATEAU_WINDOW,
    UTILITY_HEAD,
    UTILITY_TAIL,
    Column,
    N,
    attack_columns,
    finished,
    plateau_texts,
    seeds_called,
    table_rows,
)
from fedisguise.grids.spec import Grid
from fedisguise.grids.tuned import resolve_tuning
from fedisguise.grids.tuning import chosen_text, tuning_markdown


def _fmt(mean: float | None, std: float | None = None, digits: int = 3) -> str:
    if mean is None:
        return "–"
    text = f"{mean:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def _digits(rows: list[dict[str, Any]], key: str) -> int:
    """dB-sized figures to one decimal, fractions to three."""
    values = [abs(r[key]) for r in rows if r.get(key) is not None]
    return 1 if values and max(values) >= 10 else 3


def _table_columns(columns: list[Column]) -> list[str]:
    """table.csv's value columns, in the order table.md shows them."""
    attack = [c.key for c in columns]
    if f"best.{BEST_BY}" in attack:
        attack.insert(attack.index(f"best.{BEST_BY}"), BEST_ATTACK)
    return [*UTILITY_HEAD, *attack, *UTILITY_TAIL]


def write_table(grid: Grid) -> dict[str, Any]:
    """table.md, table.csv, cells.csv, compare.json and the plots from the cells on disk."""
    grid, choices = resolve_tuning(grid)
    records, figures = finished(grid.all_cells)
    called = seeds_called(grid, figures)
    missing = [c.name for c in grid.all_cells if c.name not in figures
               and (c.seed in grid.seeds or c.defence in called)]
    rows = table_rows(grid, figures)
    for row in rows:
        entry = choices.get(row["defence"], {})
        row["tuned"], row["tuned_at_bound"] = entry.get("chosen"), entry.get("at_bound", False)
    columns = attack_columns(figures.values())
    with (grid.out / "table.csv").open("w", newline="") as fh:
        names = ["defence", "curve", "tuned", "cells"] + [
            f"{k}{s}" for k in _table_columns(columns)
            for s in ("",) + (() if k == BEST_ATTACK else ("_std",))] + ["dominated_by"]
        writer = csv.DictWriter(fh, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{**{k: ("" if v is None else v) for k, v in r.items()},
                           "dominated_by": ";".join(r["dominated_by"] or ())} for r in rows])
    with (grid.out / "cells.csv").open("w", newline="") as fh:
        names = ["cell", "defence", "attack", "seed", "utility"] + [
            k for k in _table_columns(columns) if k not in ("accuracy_gap", "time_ratio")]
        writer = csv.DictWriter(fh, fieldnames=names, extrasaction="ignore", restval="")
        writer.writeheader()
        for c in grid.all_cells:
            if c.name in figures:
                writer.writerow({"cell": c.name, "defence": c.defence, "attack": c.attack,
                                 "seed": c.seed, "utility": c.utility, **{
                                     k: ("" if v is None else v)
                                     for k, v in figures[c.name].items()
                                     if k != "accuracy_per_round"}})
    plots = write_plots(grid, rows, columns)
    plots += frontier.write_frontiers(grid.out, grid.name, rows)
    levels = strongest.level_rows(grid, records, rows)
    level_lines: list[str] = []
    if any(r["attack"] for r in levels):  # some attack recovered images: the level table
        strongest.write_level_csv(grid.out / "levels.csv", levels)
        picture = "levels.png" if strongest.write_level_grid(
            grid.out / "levels.png", levels, grid.out) else None
        level_lines = ["## Strongest attack per defence and knowledge level", "",
                       strongest.__doc__.split("\n\n")[1].replace("\n", " "), "",
                       *strongest.level_markdown(levels, picture)]
    spent = time_spent(grid, records)
    text = (table_markdown(grid, rows, records, missing, plots, columns, called)
            + f"\n{time_line(spent)}\n\n"
            + tuning_markdown(grid.tuning, choices) + "\n".join(level_lines))
    (grid.out / "table.md").write_text(text)
    report.write_report(grid.out, f"fedisguise comparison: {grid.name}", text, [
        (c.name, c.config.run_dir, c.config.to_dict()) for c in grid.all_cells
        if c.name in records],
        answer=answer_lines(rows))
    summary = {"grid": grid.name, "source": str(grid.source), "seeds": grid.seeds,
               "more_seeds": grid.more_seeds, "more_seeds_called": called,
               "reference": grid.reference, "regime": regime(grid),
               "attack_settings": {a.label: a.changes for a in grid.attacks},
               "tuning": None if grid.tuning is None else {
                   "key": grid.tuning.key, "validation": grid.tuning.validation,
                   "seed": grid.tuning.seed, "rounds": grid.tuning.rounds,
                   "defences": choices},
               "columns": {c.key: c.figure.title for c in columns}, "rows": rows,
               "levels": levels, "missing": missing, "plots": plots, "time": spent}
    (grid.out / "compare.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return {"rows": rows, "levels": levels, "missing": missing, "plots": plots, "time": spent}


def regime(grid: Grid) -> dict[str, Any]:
    """How the reference row trains (its utility cell's settings), for pages made from
    compare.json alone (fedisguise.grids.results_page)."""
    c = next((c for c in grid.cells if c.defence == grid.reference and c.utility),
             grid.cells[0]).config
    return {"dataset": c.data.dataset, "clients": c.experiment.clients,
            "partitioner": c.data.partitioner, "alpha": c.data.alpha,
            "train_per_client": c.data.train_per_client, "test_samples": c.data.test_samples,
            "model": c.model.name, "strategy": c.strategy.name,
            "rounds": c.experiment.rounds, "local_epochs": c.train.local_epochs,
            "batch_size": c.train.batch_size, "optimizer": c.train.optimizer,
            "momentum": c.train.momentum}


PHASES = ("tuning", "training", "privacy", "attacks")


def time_spent(grid: Grid, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Seconds the finished cells spent per phase: the tuning runs whole, and each cell's
    training, privacy figures and attacks (its metrics.json `timing`); cells finished before
    runs recorded it are counted apart."""
    spent = dict.fromkeys(PHASES, 0.0) | {"cells_without_timing": 0}
    for folder in sorted(grid.out.glob("*--tune-*--seed*")):  # every sweep's runs
        try:
            record = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        timing = record.get("timing")
        spent["tuning"] += (sum(timing.values()) if timing
                            else float(record.get("wall_seconds") or 0.0))
    for record in records.values():
        timing = record.get("timing")
        if not timing:
            spent["cells_without_timing"] += 1
            continue
        for phase in PHASES[1:]:
            spent[phase] += float(timing.get(phase, 0.0))
    return spent


def time_line(spent: dict[str, Any]) -> str:
    """Where the grid's time went, in words, for the table and the terminal."""
    parts = ", ".join(f"{p} {spent[p] / 60:.1f} min" for p in PHASES)
    total = sum(spent[p] for p in PHASES) / 60
    missing = spent["cells_without_timing"]
    return (f"Time spent by the finished runs: {parts} ({total:.1f} min in all"
            + (f"; {missing} cells finished before runs recorded it" if missing else "")
            + ").")


def _gap_text(row: dict[str, Any], grid_reference: str) -> str:
    """The gap column: points against the row's reference, with its 95 % interval where
    there are seeds to make one, the reference named where it is not the grid's, and a
    flag where the row beats its own reference beyond the interval."""
    if row.get("reference") is None:
        return "no plain row trains as it does"
    if row["accuracy_gap"] is None:
        return "–"
    text = _fmt(100 * row["accuracy_gap"], None, 1)
    if row.get("accuracy_gap_ci") is not None:
        text += f" ± {100 * row['accuracy_gap_ci']:.1f}"
    if row["reference"] not in (grid_reference, row["defence"]):
        text += f" vs {row['reference']}"
    if row.get("above_reference"):
        text += " (above its reference)"
    return text


def answer_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table's answer in a few terminal lines: per defence its accuracy and gap, what the
    strongest attack recovers of the originals, and membership AUC where they were measured."""
    lines = []
    for r in rows:
        parts = [f"accuracy {_fmt(r['accuracy'], r['accuracy_std'])}"]
        if r.get("accuracy_gap") is not None and r["accuracy_gap"] != 0:
            parts[-1] += (f" ({100 * r['accuracy_gap']:+.1f} points"
                          + (f" vs {r['reference']}" if r.get("reference") else "")
                          + (", above its reference" if r.get("above_reference") else "")
                          + ")")
        elif "reference" in r and r["reference"] is None:
            parts[-1] += " (no plain row trains as it does)"
        if r.get(f"best.{BEST_BY}") is not None:
            parts.append(f"strongest attack ({r.get(BEST_ATTACK) or '?'}) "
                         f"{r[f'best.{BEST_BY}']:.1f} dB vs original"
                         + strongest.count_text(r.get(f"best.{BEST_BY}{N}"))
                         + ("" if r.get("best.recognisability") is None else
                            f", recognisability {r['best.recognisability']:.2f}"))
        if r.get("membership.auc") is not None:
            parts.append(f"membership AUC {r['membership.auc']:.3f}")
        lines.append(f"  {r['defence']}: " + "; ".join(parts))
    return lines


def _cell(text: str) -> str:
    """A table cell's text with its pipes escaped (a title such as "SSIM of |2x − 1|" must
    not split the column)."""
    return str(text).replace("|", "\\|")


def table_markdown(grid: Grid, rows: list[dict[str, Any]], records: dict[str, Any],
                   missing: list[str], plots: list[str], columns: list[Column],
                   called: Mapping[str, str] | None = None) -> str:
    c = next((c for c in grid.cells if c.utility), grid.cells[0]).config
    lines = [f"# {grid.name}", "",
             f"{c.data.dataset}, {c.experiment.clients} clients ({c.data.partitioner}, "
             f"{c.data.train_per_client or 'all'} images each), model {c.model.name}, "
             f"{c.strategy.name}, {c.experiment.rounds} rounds of {c.train.local_epochs} local "
             f"epoch(s), batch {c.train.batch_size}, lr "
             f"{'tuned per defence' if grid.tuning and grid.tuning.key == 'train.lr' else c.train.lr}"
             f"; seeds {grid.seeds}; "
             f"source `{grid.source}`.", ""]
    utility = [a.label for a in grid.attacks if a.utility] or [a.label for a in grid.attacks]
    lines += [
        f"Accuracy (final, on the clients' own — disguised — test shards), visual privacy, "
        f"misusability, ε and time come from the cells of {utility}; attack figures from "
        f"every cell that ran the attack (the strongest of several in one cell). \"best\": "
        f"what the strongest attack recovers of the originals — per seed the strongest over "
        f"every attack setting, and the attack that reached the best PSNR. Mean ± std over "
        f"seeds. Gap: against the plain row that trains the same way (optimizer and its "
        f"settings, data split, model, strategy, rounds: fedisguise/grids/references.py; "
        f"`{grid.reference}` for a plain row), ± its 95 % interval over seeds (Welch), "
        f"flagged \"above its reference\" where the row beats it beyond that; time ratio "
        f"against `{grid.reference}`. – : not defined or not measured "
        f"(visual privacy needs disguised images; ε needs DP). \"dominated by\": the "
        f"settings at least as accurate that let every shared attack figure (best PSNR, best "
        f"recognisability, membership AUC) reach at most as much, one of them strictly "
        f"(fedisguise/grids/frontier.py); – where no attack was measured.", ""]
    # (title, a row's entry) per column: utility first, attacks between, time last.
    shown: list[tuple[str, Any]] = [] if grid.tuning is None else [
        (f"tuned {grid.tuning.key}",
         lambda r: "–" if r.get("tuned") is None else chosen_text(
             {"chosen": r["tuned"], "at_bound": r.get("tuned_at_bound", False)}))]
    shown += [
        ("accuracy", lambda r: _fmt(r["accuracy"], r["accuracy_std"])),
        ("gap (points)", lambda r: _gap_text(r, grid.reference)),
        ("visual privacy", lambda r: _fmt(r["visual_privacy"], r["visual_privacy_std"])),
        ("misusability", lambda r: _fmt(r["misusability"], r["misusability_std"])),
        ("ε", lambda r: _fmt(r["epsilon"], r["epsilon_std"], 2)),
    ]
    titles = {c.key: c.figure.title for c in columns}
    for key in _table_columns(columns)[len(UTILITY_HEAD):-len(UTILITY_TAIL)]:
        if key == BEST_ATTACK:
            shown.append(("strongest attack", lambda r: r.get(BEST_ATTACK) or "–"))
        else:
            shown.append((titles[key], lambda r, k=key, d=_digits(rows, key):
                          _fmt(r[k], r[f"{k}_std"], d) + strongest.count_text(r.get(f"{k}{N}"))))
    shown += [
        ("s/round (after round 1)",
         lambda r: _fmt(r["seconds_per_round"], r["seconds_per_round_std"], 1)),
        ("time × ref", lambda r: _fmt(r["time_ratio"], None, 2)),
        ("dominated by", lambda r: "–" if r.get("dominated_by") is None
         else ", ".join(r["dominated_by"]) or "no (frontier)"),
    ]
    # Two tables, so that each fits a page: the answer (cost, the strongest attack, the
    # membership AUC, the frontier), then every other figure.
    main_titles = {f"tuned {grid.tuning.key}" if grid.tuning else "", "accuracy",
                   "gap (points)", "strongest attack", "dominated by",
                   *(titles[k] for k in MAIN_FIGURES if k in titles)}
    for part, heading in (([s for s in shown if s[0] in main_titles], None),
                          ([s for s in shown if s[0] not in main_titles],
                           "More figures (same rows):")):
        if not part:
            continue
        lines += ["", heading, ""] if heading else []
        lines += ["| defence | " + " | ".join(_cell(t) for t, _ in part) + " |",
                  "| --- |" + " ---: |" * len(part)]
        lines += ["| " + " | ".join(_cell(v) for v in [r["defence"], *(
            entry(r) for _, entry in part)]) + " |" for r in rows]
    plateaus = plateau_texts(rows)
    if plateaus:
        lines += ["", f"Plateau (mean accuracy over seeds; the last {PLATEAU_WINDOW} rounds "
                      f"within {100 * PLATEAU_TOLERANCE:.1f} points of the best so far, from "
                      f"then on): " + "; ".join(plateaus) + "."]
    if called:
        lines += ["", f"Seeds {grid.more_seeds} as well, where seeds {grid.seeds} left a "
                      f"gap's sign open (fedisguise/grids/more_seeds.py): " + "; ".join(
                          f"`{label}` ({why})" for label, why in called.items()) + "."]
    lines += ["", "Defences:", ""]
    lines += [f"- `{d.label}` (curve `{d.curve}`): "
              f"{json.dumps(d.changes) if d.changes else 'the base config'}"
              + ("" if d.settings is None else f"; only under {', '.join(d.settings)}")
              for d in grid.defences]
    lines += ["", "Attack settings:", ""]
    lines += [f"- `{a.label}`{' (utility)' if a.utility else ''}: {json.dumps(a.changes)}"
              for a in grid.attacks]
    lines += ["", "Cells (each a normal run with its own summary):", ""]
    lines += [f"- [{name}]({name}/summary.md)" for name in records]
    if missing:
        lines += ["", f"**Not finished ({len(missing)}):** " + ", ".join(missing)
                  + " — run the grid again to fill them in."]
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def write_plots(grid: Grid, rows: list[dict[str, Any]], columns: list[Column]) -> list[str]:
    """accuracy per round per defence; final accuracy against each attack's headline figure
    (the first it declares that the grid measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        points = r["accuracy_per_round"]
        if not points or any(m is None for m, _ in points):
            continue
        x = range(1, len(points) + 1)
        mean = [m for m, _ in points]
        std = [s or 0.0 for _, s in points]
        ax.plot(x, mean, marker="o", label=r["defence"])
        ax.fill_between(x, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)], alpha=0.2)
    ax.set(xlabel="round", ylabel="test accuracy (own test shard)",
           title=f"{grid.name}: accuracy per round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(grid.out / "accuracy_per_round.png", dpi=120)
    plt.close(fig)
    written.append("accuracy_per_round.png")

    headlines: dict[str, Column] = {}
    for column in columns:
        if column.kind != "best":
            headlines.setdefault(column.kind, column)
    if headlines:
        fig, axes = plt.subplots(1, len(headlines), figsize=(5.5 * len(headlines), 4),
                                 squeeze=False)
        for ax, column in zip(axes[0], headlines.values(), strict=True):
            key = column.key
            for r in rows:
                if r[key] is None or r["accuracy"] is None:
                    continue
                ax.errorbar(r[key], r["accuracy"], xerr=r[f"{key}_std"],
                            yerr=r["accuracy_std"], fmt="o", capsize=3)
                ax.annotate(r["defence"], (r[key], r["accuracy"]), fontsize=8,
                            xytext=(4, 4), textcoords="offset points")
            if column.figure.name == "auc":  # chance is 0.5: keep small differences in scale
                low = min([0.45] + [r[key] for r in rows if r[key] is not None])
                ax.set_xlim(low - 0.02, 1.0)
            way = "attack success →" if column.figure.higher_is_stronger else "← attack success"
            ax.set(xlabel=f"{column.figure.title} ({way})", ylabel="final accuracy")
            ax.grid(alpha=0.3)
        fig.suptitle(f"{grid.name}: utility vs attack success")
        fig.tight_layout()
        fig.savefig(grid.out / "accuracy_vs_attack.png", dpi=120)
        plt.close(fig)
        written.append("accuracy_vs_attack.png")
    return written
