"""A results page that leads with the answer, made from a grid's compare.json alone.

    python -m fedisguise.grids.results_page docs/results-fmnist.toml

The page spec (TOML) names the grid's compare.json (committed beside it), the papers' claims
to test and a short history; everything else comes from the JSON, so the page can be redrawn
and checked without the results folder. Order: the answer (per defence its cost and what the
strongest attack recovers, with 95 % intervals, a verdict in words, the frontier), then the
method, then the claims table (claim | centralised here | FL here | holds?), then the history.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedisguise.config import ConfigError, read_toml
from fedisguise.grids.figures import PLATEAU_TOLERANCE, PLATEAU_WINDOW, plateau_texts
from fedisguise.grids.intervals import mean_halfwidth

APPENDIX_LINES = 20
# Verdict thresholds, stated on the page: recognisability is the share of reconstructions a
# classifier trained on plain images labels right (chance 0.1 on ten classes).
HIDDEN, RECOGNISED = 0.2, 0.5
MEMBERS_HIDDEN = 0.55  # membership AUC at or below: no better than a coin, within noise
NOT_LEARNED = 0.2  # a seed's final accuracy below twice chance: that training never learned
LEVELS_SHOWN = (1, 2)
CLAIM_KINDS = ("cost", "degrades", "unrecognisable")


def _ci(mean: float | None, std: float | None, n: int | None, scale: float = 1.0,
        digits: int = 3) -> str:
    """`mean ± half-width` of the 95 % interval (the mean alone for one seed)."""
    if mean is None:
        return "–"
    half = mean_halfwidth(std, n or 0)
    text = f"{scale * mean:.{digits}f}"
    return text if half is None else f"{text} ± {scale * half:.{digits}f}"


def _count(counts: list[int] | None) -> str:
    if not counts:
        return ""
    return f", n {counts[0]}" if len(counts) == 1 else f", n {counts[0]}–{counts[-1]}"


def level_figure(level: dict[str, Any] | None) -> str:
    """What the strongest attack at a level recovers: PSNR dB and recognisability, each
    with its interval over seeds, and the images behind them (n per seed × seeds)."""
    if not level or not level.get("attack"):
        return "–"
    seeds = level.get("seeds") or 0
    return (f"{_ci(level['psnr_vs_original'], level.get('psnr_vs_original_std'), seeds, digits=1)}"
            f" dB / {_ci(level['recognisability'], level.get('recognisability_std'), seeds, digits=2)}"
            f" ({seeds} seeds{_count(level.get('n'))})")


def accuracy_text(row: dict[str, Any], summary: dict[str, Any]) -> str:
    """Accuracy with its interval, and its seed count where it is not the grid's (more seeds
    where three left the cost open: fedisguise.grids.more_seeds)."""
    text = _ci(row.get("accuracy"), row.get("accuracy_std"), row.get("accuracy_n"))
    n = row.get("accuracy_n")
    return text if row.get("accuracy") is None or n == len(summary["seeds"]) else \
        f"{text} ({n} seeds)"


def cost_points(row: dict[str, Any]) -> tuple[float, float | None] | None:
    """(cost, half-width) in points: the accuracy lost against the row's reference."""
    if row.get("accuracy_gap") is None:
        return None
    half = row.get("accuracy_gap_ci")
    return -100 * row["accuracy_gap"], None if half is None else 100 * half


def cost_text(row: dict[str, Any], summary: dict[str, Any]) -> str:
    cost = cost_points(row)
    if row.get("reference") is None:
        return "no plain row trains as it does"
    if row["reference"] == row["defence"]:
        return "reference"
    if cost is None:
        return "–"
    text = f"{cost[0]:+.1f}" + ("" if cost[1] is None else f" ± {cost[1]:.1f}")
    if row["reference"] != summary["reference"]:  # named where it is not the grid's
        text += f" vs {row['reference']}"
    return text + (" (above its reference)" if row.get("above_reference") else "")


def verdict(row: dict[str, Any], levels: dict[int, dict[str, Any]]) -> str:
    """The row in words, by the thresholds above."""
    if row.get("accuracy") is None:
        return "not run yet"
    cost, words = cost_points(row), []
    stuck = {seed: acc for seed, acc in (row.get("accuracy_seeds") or {}).items()
             if acc < NOT_LEARNED}
    if stuck:
        words.append(f"seed{'s' if len(stuck) > 1 else ''} {', '.join(stuck)} of "
                     f"{len(row['accuracy_seeds'])} never learned (final "
                     f"{', '.join(f'{a:.3f}' for a in stuck.values())})")
    if row["defence"] == row.get("reference"):
        words.append("the reference")
    elif cost is None:
        words.append("cost unknown")
    elif row.get("above_reference"):
        words.append("more accurate than its reference: a training effect to explain")
    elif cost[1] is not None and abs(cost[0]) <= cost[1]:
        words.append("no cost beyond the seeds' spread")
    else:
        words.append(f"costs {cost[0]:.1f} points")
    recovered = [(lv, levels[lv].get("recognisability")) for lv in LEVELS_SHOWN
                 if levels.get(lv, {}).get("recognisability") is not None]
    if recovered:
        top_level, top = max(recovered, key=lambda x: x[1])
        if top >= RECOGNISED:
            words.append(f"the server recovers recognisable images (Level {top_level})")
        elif top <= HIDDEN:
            words.append("no attack here recovers recognisable images")
        else:
            words.append(f"images partly recognisable (Level {top_level})")
    auc = row.get("membership.auc")
    if auc is not None:
        words.append("membership hidden" if auc <= MEMBERS_HIDDEN
                     else f"membership leaks (AUC {auc:.2f})")
    return "; ".join(words)


def _levels(summary: dict[str, Any], defence: str) -> dict[int, dict[str, Any]]:
    return {r["level"]: r for r in summary.get("levels", [])
            if r["defence"] == defence and r["threat_model"] == "server"}


def is_central(row: dict[str, Any]) -> bool:
    return row.get("curve") == "central"


def answer_table(summary: dict[str, Any]) -> list[dict[str, str]]:
    """The first table, one dict per FL row, every entry as the page prints it."""
    out = []
    for row in summary["rows"]:
        if is_central(row):
            continue
        levels = _levels(summary, row["defence"])
        out.append({
            "defence": row["defence"],
            "accuracy": accuracy_text(row, summary),
            "cost (points)": cost_text(row, summary),
            **{f"Level {lv}: PSNR / recognisability": level_figure(levels.get(lv))
               for lv in LEVELS_SHOWN},
            "membership AUC": _ci(row.get("membership.auc"), row.get("membership.auc_std"),
                                  row.get("membership.auc_n")),
            "verdict": verdict(row, levels)})
    return out


def central_table(summary: dict[str, Any]) -> list[dict[str, str]]:
    """The centralised rows: accuracy, and cost against their own reference."""
    return [{"centralised row": row["defence"],
             "accuracy": accuracy_text(row, summary),
             "cost (points)": cost_text(row, summary) if row.get("accuracy") is not None else "–"}
            for row in summary["rows"] if is_central(row)]


def _markdown_table(rows: list[dict[str, str]]) -> list[str]:
    if not rows:
        return ["(no rows)"]
    head = list(rows[0])
    return (["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 2) + " --- |"]
            + ["| " + " | ".join(r[h].replace("|", "\\|") for h in head) + " |" for r in rows])


def _judged(low: float, high: float, bound: float, below_holds: bool) -> str:
    """A claim "the value is at most `bound`" (below_holds) or "more than `bound`", judged on
    the value's 95 % interval [low, high]: yes, no, or undecided where it spans the bound."""
    if high <= bound:
        return "yes" if below_holds else "no"
    if low > bound:
        return "no" if below_holds else "yes"
    return "undecided (the interval spans it)"


def claim_rows(summary: dict[str, Any], claims: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Per claim: the claim, what the centralised row and the FL row measure, and whether
    the claim holds in each, judged on the figure's 95 % interval (`_judged`): cost: the
    cost is at most the claimed one; degrades: it is more; unrecognisable: the strongest
    attack's recognisability at the level is at most HIDDEN."""
    by_label = {r["defence"]: r for r in summary["rows"]}
    out = []
    for claim in claims:
        found, holds = {}, {}
        for where in ("central", "fl"):
            row = by_label.get(claim.get(where, ""))
            found[where], holds[where] = ("–" if not claim.get(where) else "not run"), None
            if row is None or row.get("accuracy") is None:
                continue
            if claim["kind"] in ("cost", "degrades"):
                cost = cost_points(row)
                if cost is None:
                    found[where] = "–"
                    continue
                half = cost[1] or 0.0
                found[where] = (f"{cost[0]:+.1f}" + (f" ± {cost[1]:.1f}" if cost[1] else "")
                                + f" points ({row['defence']} vs {row['reference']})")
                holds[where] = _judged(cost[0] - half, cost[0] + half, claim["points"],
                                       below_holds=claim["kind"] == "cost")
            else:
                level = _levels(summary, row["defence"]).get(claim["level"])
                if not level or level.get("recognisability") is None:
                    found[where] = "–"
                    continue
                value = level["recognisability"]
                half = mean_halfwidth(level.get("recognisability_std"),
                                      level.get("seeds") or 0) or 0.0
                found[where] = (f"recognisability {level_figure(level).split(' / ', 1)[1]} "
                                f"at Level {claim['level']} ({row['defence']})")
                holds[where] = _judged(value - half, value + half, HIDDEN, below_holds=True)
        said = [f"{name}: {h}" for name, h in
                (("centralised", holds["central"]), ("FL", holds["fl"])) if h is not None]
        out.append({"claim": f"{claim['paper']}: {claim['claim']}",
                    "centralised here": found["central"], "FL here": found["fl"],
                    "holds?": "; ".join(said) or "not measured yet"})
    return out


def method_lines(summary: dict[str, Any]) -> list[str]:
    r, t = summary["regime"], summary.get("tuning")
    lines = [
        f"- Regime: {r['dataset']}, {r['clients']} clients × {r['train_per_client']} images "
        f"({r['partitioner']}" + (f", α {r['alpha']}" if r["partitioner"] == "dirichlet"
                                  else "") + f"; `-iid` rows IID), {r['model']}, "
        f"{r['strategy']}, {r['rounds']} rounds of {r['local_epochs']} local epoch(s), batch "
        f"{r['batch_size']}, {r['optimizer']} (momentum {r['momentum']}); accuracy on "
        f"{r['test_samples']} test images, each client's shard disguised as it trains. "
        f"`-central` rows: one client holding the union of the federation's images, for "
        f"the same number of epochs (the papers' outsourced setting).",
        f"- Seeds: {summary['seeds']}; every figure is the mean over seeds ± the half-width of "
        f"its 95 % interval (Student's t); a cost is against the plain row that trains the "
        f"same way (its reference), ± the interval of the difference (Welch)."
        + (f" Seeds {summary['more_seeds']} as well for a row whose cost interval on those "
           f"seeds was wider than the cost, and for its reference: " + (", ".join(
               f"`{label}`" for label in summary.get("more_seeds_called") or {}) or "none so "
               "far") + "." if summary.get("more_seeds") else "")]
    if t:
        lines.append(f"- Tuning: {t['key']} per row, chosen by final accuracy on "
                     f"{100 * t['validation']:.0f} % of each client's own training images held "
                     f"out (seed {t['seed']}, {t.get('rounds') or r['rounds']} rounds), from "
                     f"log-spaced candidates extended past an end while the best sits there:")
        untuned = []
        for label, entry in t["defences"].items():
            pending = set(entry.get("pending") or ())
            if pending == set(entry["scores"]):
                untuned.append(f"`{label}`")
                continue
            scores = ", ".join(f"{v}: " + ("not run yet" if v in pending else "diverged"
                                           if s is None else f"{s:.3f}")
                               for v, s in entry["scores"].items())
            chosen = ("unfinished" if entry["chosen"] is None else
                      f"{entry['chosen']:g}" + (" (tuning at bound)" if entry["at_bound"]
                                                else ""))
            lines.append(f"  - `{label}`: {scores} → **{chosen}**")
        if untuned:
            lines.append(f"  - not tuned yet: {', '.join(untuned)}")
    plateaus = plateau_texts(summary["rows"])
    if plateaus:
        lines.append(f"- Plateau (mean accuracy over seeds; from that round on, the last "
                     f"{PLATEAU_WINDOW} rounds within {100 * PLATEAU_TOLERANCE:.1f} points of "
                     f"the best so far): " + "; ".join(plateaus) + ".")
    for label, changes in summary.get("attack_settings", {}).items():
        attacks = changes.get("attacks") or []
        rest = {k: v for k, v in changes.items() if k != "attacks"}
        what = ", ".join(sorted({a["name"] + (f" level {a['level']}" if "level" in a else "")
                                 + (f" ({a['method']})" if "method" in a else "")
                                 for a in attacks})) or "none (training figures)"
        lines.append(f"- Attack setting `{label}`: {what}"
                     + (f"; trained as {json.dumps(rest)}" if rest else ""))
    spent = summary.get("time")
    if spent:
        phases = ", ".join(f"{p} {spent[p] / 3600:.2f} h" for p in
                           ("tuning", "training", "privacy", "attacks") if p in spent)
        lines.append(f"- Time spent by the finished runs: {phases}.")
    return lines


def render(spec: dict[str, Any], summary: dict[str, Any], frontiers: list[str]) -> str:
    """The page's markdown."""
    rows = answer_table(summary)
    missing = summary.get("missing") or []
    lines = [f"# {spec['title']}", "",
             f"Grid `{summary['grid']}` (`{summary['source']}`), generated from "
             f"`{spec['json']}` by `python -m fedisguise.grids.results_page {spec['_path']}`."
             + (f" **{len(missing)} cells are not finished yet**; their rows say "
                f"\"not run yet\" or stand on fewer seeds." if missing else ""), "",
             "## The answer", "",
             f"Per defence: test accuracy, its cost in points against the plain row that trains "
             f"the same way (a negative cost: more accurate), what the strongest of the "
             f"server's attacks recovers of the original images at knowledge Levels 1 and 2 "
             f"(PSNR dB / recognisability: the share a classifier of plain images labels right, "
             f"chance 0.1; n: images a seed), and membership-inference AUC. 95 % intervals over "
             f"seeds. Verdict thresholds: recognisable ≥ {RECOGNISED}, hidden ≤ {HIDDEN}, "
             f"membership hidden at AUC ≤ {MEMBERS_HIDDEN}; a seed never learned where its "
             f"final accuracy is below {NOT_LEARNED}.", ""]
    lines += _markdown_table(rows)
    lines += [""] + [f"![{Path(f).stem}]({f})" for f in frontiers] + [""]
    lines += ["## Method", "", *method_lines(summary), ""]
    lines += ["## The papers' claims, in their setting and in FL", "",
              "Each paper trained centrally on disguised images (outsourced training). Each "
              "claim is judged on the figure's 95 % interval: yes where the whole interval "
              "agrees with the claim, no where the whole interval contradicts it, undecided "
              "where it spans the claim's bound (more seeds would decide it). A cost claim "
              "bounds the accuracy cost from above; a claim of degradation from below; an "
              "unrecognisability claim bounds the strongest attack's recognisability at "
              f"that level by {HIDDEN}. Our data are Fashion-MNIST "
              "and lenet, not the papers' datasets and models. The centralised rows first "
              "(their reference: `none-central`, itself against FL's `none`):", ""]
    lines += _markdown_table(central_table(summary)) + [""]
    lines += _markdown_table(claim_rows(summary, spec.get("claim", [])))
    appendix = spec.get("appendix", "").strip()
    if appendix:
        lines += ["", "## Appendix: history", "", appendix]
    return "\n".join(lines) + "\n"


def load_spec(path: Path) -> dict[str, Any]:
    spec = read_toml(path)
    for key in ("title", "json"):
        if not isinstance(spec.get(key), str):
            raise ConfigError(f"{path}: `{key}` must be a string")
    if len(spec.get("appendix", "").strip().splitlines()) > APPENDIX_LINES:
        raise ConfigError(f"{path}: the appendix holds at most {APPENDIX_LINES} lines")
    for i, claim in enumerate(spec.get("claim", [])):
        where = f"{path}: claim[{i}]"
        kind = claim.setdefault("kind", "cost")
        if kind not in CLAIM_KINDS:
            raise ConfigError(f"{where}: kind {kind!r}; valid: {list(CLAIM_KINDS)}")
        needed = ("paper", "claim") + (("level",) if kind == "unrecognisable" else ("points",))
        absent = [k for k in needed if k not in claim]
        if absent or not (claim.get("central") or claim.get("fl")):
            raise ConfigError(f"{where}: needs {list(needed)} and a `central` or `fl` row")
    # as the page names its own command: the spec's folder and name, wherever it is run from
    spec["_path"] = f"{path.parent.resolve().name}/{path.name}"
    return spec


def write_page(spec_path: Path) -> Path:
    """Write the page (and its frontier figures) the spec names; returns the page's path."""
    from fedisguise.grids import frontier

    spec = load_spec(spec_path)
    source = spec_path.parent / spec["json"]
    try:
        summary = json.loads(source.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{source}: cannot read the grid's compare.json ({err})") from err
    page = spec_path.parent / spec.get("page", spec_path.with_suffix(".md").name)
    images = Path("img") / page.stem
    (page.parent / images).mkdir(parents=True, exist_ok=True)
    fl = [r for r in summary["rows"] if not is_central(r)]
    frontiers = [str(images / f) for f in
                 frontier.write_frontiers(page.parent / images, page.stem, fl)]
    page.write_text(render(spec, summary, frontiers))
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path, help="the page spec, e.g. docs/results-fmnist.toml")
    args = parser.parse_args(argv)
    try:
        print(write_page(args.spec))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
