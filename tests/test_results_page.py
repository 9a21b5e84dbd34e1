"""The results page is made from a grid's compare.json alone: its tables are the JSON's
figures with their 95 % intervals, its claims hold or fail by the stated rule, and the
committed page is what the committed JSON makes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from fedisguise.config import ConfigError
from fedisguise.grids import results_page
from fedisguise.grids.results_page import answer_table, claim_rows, load_spec, render, verdict

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def _row(label: str, acc: float, gap: float | None, ci: float | None, ref: str = "none",
         curve: str = "", auc: float | None = None) -> dict:
    return {"defence": label, "curve": curve or label, "cells": 9, "accuracy": acc,
            "accuracy_std": 0.01, "accuracy_n": 3, "accuracy_gap": gap, "accuracy_gap_ci": ci,
            "reference": ref, "above_reference": bool(gap is not None and ci is not None
                                                      and label != ref and gap > ci),
            "membership.auc": auc, "membership.auc_std": None if auc is None else 0.02,
            "membership.auc_n": 3, "dominated_by": None}


def _level(label: str, level: int, psnr: float, recog: float, std: float = 0.05) -> dict:
    return {"defence": label, "level": level, "threat_model": "server", "attack": "chain",
            "seeds": 3, "n": [8], "psnr_vs_original": psnr, "psnr_vs_original_std": 1.0,
            "recognisability": recog, "recognisability_std": std}


SUMMARY = {
    "grid": "g", "source": "configs/g.toml", "seeds": [0, 1, 2], "reference": "none",
    "regime": {"dataset": "fashion-mnist", "clients": 20, "partitioner": "dirichlet",
               "alpha": 0.5, "train_per_client": 1000, "test_samples": 2000, "model": "lenet",
               "strategy": "fedavg", "rounds": 60, "local_epochs": 1, "batch_size": 32,
               "optimizer": "sgd", "momentum": 0.9},
    "attack_settings": {"utility": {"attacks": []}},
    "tuning": {"key": "train.lr", "validation": 0.1, "seed": 0, "rounds": 20, "defences": {
        "none": {"scores": {"0.01": 0.80, "0.02": 0.83, "0.05": 0.82}, "pending": [],
                 "chosen": 0.02, "at_bound": False}}},
    "rows": [_row("none", 0.85, 0.0, 0.0, auc=0.70),
             _row("dn", 0.84, -0.01, 0.02, auc=0.52),
             _row("ih", 0.60, -0.25, 0.03, auc=0.60),
             _row("none-central", 0.87, 0.02, 0.01, curve="central"),
             _row("dn-central", 0.82, -0.05, 0.01, ref="none-central", curve="central")],
    "levels": [_level("none", 1, 17.0, 0.9), _level("none", 2, 17.0, 0.9),
               _level("dn", 1, 9.0, 0.1), _level("dn", 2, 12.0, 0.4),
               _level("ih", 1, 8.0, 0.05, 0.01), _level("ih", 2, 8.5, 0.06, 0.01)],
    "missing": [], "time": {"tuning": 3600.0, "training": 7200.0, "privacy": 60.0,
                            "attacks": 1800.0}}


def test_the_answer_table_is_the_jsons_figures_with_their_intervals():
    rows = {r["defence"]: r for r in answer_table(SUMMARY)}
    assert list(rows) == ["none", "dn", "ih"]  # centralised rows go to the claims table
    half = 4.303 * 0.01 / math.sqrt(3)  # Student's t, 2 degrees of freedom
    assert rows["dn"]["accuracy"] == f"0.840 ± {half:.3f}"
    assert rows["dn"]["cost (points)"] == "+1.0 ± 2.0"
    assert rows["dn"]["Level 2: PSNR / recognisability"] == (
        f"12.0 ± {4.303 / math.sqrt(3):.1f} dB / 0.40 ± {4.303 * 0.05 / math.sqrt(3):.2f} "
        f"(3 seeds, n 8)")
    assert rows["none"]["membership AUC"] == f"0.700 ± {4.303 * 0.02 / math.sqrt(3):.3f}"


def test_the_verdict_says_cost_recovery_and_membership_in_words():
    by = {r["defence"]: r for r in SUMMARY["rows"]}
    levels = {lv["level"]: lv for lv in SUMMARY["levels"] if lv["defence"] == "dn"}
    assert verdict(by["dn"], levels) == ("no cost beyond the seeds' spread; images partly "
                                         "recognisable (Level 2); membership hidden")
    ih = {lv["level"]: lv for lv in SUMMARY["levels"] if lv["defence"] == "ih"}
    assert verdict(by["ih"], ih) == ("costs 25.0 points; no attack here recovers recognisable "
                                     "images; membership leaks (AUC 0.60)")
    above = dict(by["dn"], accuracy_gap=0.05, above_reference=True)
    assert verdict(above, {}).startswith("more accurate than its reference")
    assert verdict(dict(by["dn"], accuracy=None), {}) == "not run yet"


@pytest.mark.parametrize("claim, holds", [
    # dn-central: a cost of 5 ± 1 points; dn: 1 ± 2; ih: 25 ± 3 (intervals as given)
    ({"kind": "cost", "points": 1.1, "central": "dn-central", "fl": "dn"},
     "centralised: no; FL: undecided (the interval spans it)"),
    ({"kind": "cost", "points": 6.0, "central": "dn-central"}, "centralised: yes"),
    ({"kind": "degrades", "points": 0.0, "fl": "ih"}, "FL: yes"),
    ({"kind": "degrades", "points": 0.0, "fl": "dn"}, "FL: undecided (the interval spans it)"),
    ({"kind": "degrades", "points": 30.0, "fl": "ih"}, "FL: no"),
    # dn: recognisability 0.1 and 0.4, each ± 4.303 · 0.05 / √3 = 0.124; ih 0.05 ± 0.025
    ({"kind": "unrecognisable", "level": 1, "fl": "dn"}, "FL: undecided (the interval spans it)"),
    ({"kind": "unrecognisable", "level": 2, "fl": "dn"}, "FL: no"),
    ({"kind": "unrecognisable", "level": 1, "fl": "ih"}, "FL: yes"),
    ({"kind": "cost", "points": 1.0, "fl": "not-in-the-grid"}, "not measured yet"),
])
def test_a_claim_holds_or_fails_by_the_stated_rule(claim, holds):
    row, = claim_rows(SUMMARY, [{"paper": "P", "claim": "c", **claim}])
    assert row["holds?"] == holds


def test_the_committed_page_is_what_the_committed_json_makes(tmp_path):
    (tmp_path / "docs").mkdir()
    for name in ("results-fmnist.toml", "results-fmnist.json"):
        shutil.copy(DOCS / name, tmp_path / "docs" / name)
    page = results_page.write_page(tmp_path / "docs" / "results-fmnist.toml")
    committed = (DOCS / "results-fmnist.md").read_text()
    assert page.read_text() == committed, (
        "regenerate: python -m fedisguise.grids.results_page docs/results-fmnist.toml")
    # and, read back from the page, every row's accuracy and cost are the JSON's
    summary = json.loads((DOCS / "results-fmnist.json").read_text())
    table = [line for line in committed.split("## Method")[0].splitlines()
             if line.startswith("| ") and not line.startswith(("| defence", "| ---"))]
    shown = {cells[0]: cells for cells in
             ([c.strip() for c in line.strip("|").split(" | ")] for line in table)}
    fl = [r for r in summary["rows"] if r.get("curve") != "central"]
    assert set(shown) == {r["defence"] for r in fl}
    for r in fl:
        if r.get("accuracy") is None:
            assert shown[r["defence"]][1] == "–"
            continue
        assert shown[r["defence"]][1].split(" ± ")[0] == f"{r['accuracy']:.3f}"
        if r["defence"] == r.get("reference"):
            assert shown[r["defence"]][2] == "reference"
        elif r.get("accuracy_gap") is not None:
            assert shown[r["defence"]][2].startswith(f"{-100 * r['accuracy_gap']:+.1f}")


def test_the_page_leads_with_the_answer_and_keeps_the_history_short(tmp_path):
    spec = load_spec(DOCS / "results-fmnist.toml")
    text = render(spec, SUMMARY, ["img/x/frontier_reconstruction.png"])
    order = [text.index(h) for h in ("## The answer", "frontier_reconstruction.png",
                                     "## Method", "## The papers' claims",
                                     "## Appendix: history")]
    assert order == sorted(order)
    assert "`none`: 0.01: 0.800, 0.02: 0.830, 0.05: 0.820 → **0.02**" in text


def test_the_method_gives_each_rows_plateau_round_or_says_there_is_none():
    from fedisguise.grids.results_page import method_lines

    summary = json.loads(json.dumps(SUMMARY))
    summary["rows"][0]["accuracy_per_round"] = (
        [[0.5 + 0.01 * i, 0.0] for i in range(30)] + [[0.8, 0.0]] * 10)
    summary["rows"][1]["accuracy_per_round"] = [[0.5 + 0.01 * i, 0.0] for i in range(40)]
    line, = [entry for entry in method_lines(summary) if entry.startswith("- Plateau")]
    assert "none round 35; dn not within 40 rounds" in line


def test_a_seed_that_never_learned_is_named_in_the_verdict():
    row = _row("vm", 0.70, -0.17, 0.42)
    row["accuracy_seeds"] = {"0": 0.85, "1": 0.86, "2": 0.85, "3": 0.84, "4": 0.098}
    text = verdict(row, {})
    assert text.startswith("seed 4 of 5 never learned (final 0.098); ")
    row["accuracy_seeds"]["4"] = 0.84
    assert "never learned" not in verdict(row, {})


def test_rows_that_took_more_seeds_say_how_many_and_the_method_names_them():
    from fedisguise.grids.results_page import method_lines

    summary = json.loads(json.dumps(SUMMARY))
    summary["more_seeds"], summary["more_seeds_called"] = [3, 4], {
        "dn": "gap -1.0 ± 2.0 points vs none", "none": "the reference of dn"}
    summary["rows"][0]["accuracy_n"] = summary["rows"][1]["accuracy_n"] = 5
    table = {r["defence"]: r for r in answer_table(summary)}
    assert table["dn"]["accuracy"] == "0.840 ± 0.012 (5 seeds)"
    assert table["ih"]["accuracy"] == "0.600 ± 0.025"  # the grid's own three
    seeds, = [entry for entry in method_lines(summary) if entry.startswith("- Seeds")]
    assert "Seeds [3, 4] as well for a row whose cost interval" in seeds
    assert seeds.endswith("`dn`, `none`.")


@pytest.mark.parametrize("extra, match", [
    ('appendix = """' + "\nline" * 21 + '\n"""\n', "at most 20 lines"),
    ('[[claim]]\npaper = "p"\nclaim = "c"\nkind = "vibes"\nfl = "dn"\n', "kind 'vibes'"),
    ('[[claim]]\npaper = "p"\nclaim = "c"\nfl = "dn"\n', "needs \\['paper', 'claim', 'points'\\]"),
])
def test_a_bad_spec_is_refused_with_the_reason(tmp_path, extra, match):
    path = tmp_path / "p.toml"
    path.write_text('title = "t"\njson = "p.json"\n' + extra)
    with pytest.raises(ConfigError, match=match):
        load_spec(path)


def test_a_missing_json_is_exit_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "p.toml"
    path.write_text('title = "t"\njson = "absent.json"\n')
    assert results_page.main([str(path)]) == 2
    assert "cannot read the grid's compare.json" in capsys.readouterr().err
