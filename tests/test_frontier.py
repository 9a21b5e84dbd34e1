"""Frontiers: which defence settings are dominated, and the figures that show it."""

from __future__ import annotations

import json

import pytest

from fedisguise.config import ConfigError
from fedisguise.grids.done import cell_done, comparable
from fedisguise.grids.frontier import curve_name, dominators, mark_dominated
from fedisguise.grids.spec import load_grid
from fedisguise.grids.table import write_table
from tests.test_compare import BASE, MEMBERSHIP, PSNR, fake_attack, fake_record, use_registry


def row(name, acc, psnr=None, auc=None):
    return {"defence": name, "accuracy": acc, "best.psnr_vs_original": psnr,
            "membership.auc": auc}


def test_a_setting_is_dominated_only_by_one_as_accurate_and_no_weaker_on_every_axis():
    rows = [row("none", 0.85, 25.0, 0.70),
            row("strong", 0.80, 9.0, 0.52),
            row("weak", 0.78, 12.0, 0.60),  # less accurate and leaks more than `strong`
            row("tradeoff", 0.60, 7.0, 0.55),  # leaks least PSNR: on the frontier
            row("unmeasured", 0.90)]
    mark_dominated(rows)
    by = {r["defence"]: r["dominated_by"] for r in rows}
    assert by == {"none": [], "strong": [], "weak": ["strong"], "tradeoff": [],
                  "unmeasured": None}
    # Equal on everything: neither dominates the other.
    assert dominators(row("a", 0.8, 10.0), [row("b", 0.8, 10.0)]) == []
    # More accurate and equal leakage does dominate.
    assert dominators(row("a", 0.7, 10.0), [row("b", 0.8, 10.0)]) == ["b"]
    # Only shared axes count: PSNR alone decides when one has no membership figure.
    assert dominators(row("a", 0.7, 12.0, 0.9), [row("b", 0.8, 10.0)]) == ["b"]


def test_membership_below_chance_counts_as_its_mirror_image():
    # AUC 0.30 tells the attacker as much as 0.70 (it flips its scores): not better than 0.55.
    assert dominators(row("a", 0.8, auc=0.30), [row("b", 0.8, auc=0.55)]) == ["b"]
    assert dominators(row("b", 0.8, auc=0.55), [row("a", 0.8, auc=0.30)]) == []


def test_curves_come_from_the_entry_or_its_disguise_or_dp_mode(tmp_path):
    assert curve_name({}) == "none"
    assert curve_name({"disguise": "visualmixer"}) == "visualmixer"
    assert curve_name({"disguise": {"name": "instahide", "k": 2}}) == "instahide"
    assert curve_name({"dp": {"mode": "dp-sgd"}}) == "dp-sgd"
    assert curve_name({"dp": {"mode": "central-server"}}) == "central-dp"
    assert curve_name({"disguise": "rmt", "curve": "rmt-per-client"}) == "rmt-per-client"
    path = tmp_path / "g.toml"
    path.write_text(BASE + "[compare]\nname = 'g'\n[[compare.defence]]\nlabel = 'none'\n"
                    "[[compare.defence]]\nlabel = 'dn-pc'\ncurve = 'dn-per-client'\n"
                    "disguise = 'disguisednets'\n")
    grid = load_grid(path, out=str(tmp_path))
    assert [d.curve for d in grid.defences] == ["none", "dn-per-client"]
    assert "curve" not in grid.defences[1].changes  # not a config key: never reaches a cell
    path.write_text(BASE + "[compare]\nname = 'g'\n[[compare.defence]]\nlabel = 'none'\n"
                    "[[compare.attack]]\nlabel = 'a'\ncurve = 'x'\nattacks = []\n")
    with pytest.raises(ConfigError, match="curve belongs to"):
        load_grid(path)
    path.write_text(BASE + "[compare]\nname = 'g'\n[[compare.defence]]\nlabel = 'none'\n"
                    "curve = 'a b'\n")
    with pytest.raises(ConfigError, match="curve must be a name"):
        load_grid(path)


def test_the_table_flags_dominated_settings_and_draws_both_frontiers(tmp_path, monkeypatch):
    path = tmp_path / "g.toml"
    path.write_text(BASE + "[compare]\nname = 'g'\nseeds = [0]\n" + "".join(
        f"[[compare.defence]]\nlabel = '{label}'\n{extra}" for label, extra in [
            ("none", ""), ("vfe-1", "disguise = {name = 'visualmixer', target_vfe = 1.0}\n"),
            ("vfe-2", "disguise = {name = 'visualmixer', target_vfe = 1.5}\n")])
        + "[[compare.attack]]\nlabel = 'mia'\n"
          "attacks = [{name = 'membership', method = 'loss', target = 'global'}]\n")
    grid = load_grid(path, out=str(tmp_path))
    use_registry(monkeypatch, fake_attack("gradient_inversion", PSNR), MEMBERSHIP)
    outcomes = {"none": (0.85, 25.0, 0.70), "vfe-1": (0.80, 14.0, 0.60),
                "vfe-2": (0.79, 15.0, 0.62)}  # vfe-2: less accurate and leaks more
    for cell in grid.cells:
        acc, psnr, auc = outcomes[cell.defence]
        cell.config.run_dir.mkdir(parents=True)
        (cell.config.run_dir / "metrics.json").write_text(
            json.dumps(fake_record(acc, [1.0, 1.0], gi=[psnr], auc=[auc])))
        (cell.config.run_dir / "cell.json").write_text(
            json.dumps({"config": comparable(cell.config)}))
        assert cell_done(cell)
    table = write_table(grid)
    rows = {r["defence"]: r for r in table["rows"]}
    assert rows["vfe-2"]["dominated_by"] == ["vfe-1"] and rows["vfe-1"]["dominated_by"] == []
    assert {r["curve"] for r in table["rows"]} == {"none", "visualmixer"}
    text = (grid.out / "table.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| defence |"))
    assert header.endswith("| dominated by |")
    assert "| vfe-1 |" in text and text.count("no (frontier)") == 2
    assert {"frontier_reconstruction.png", "frontier_membership.png"} <= set(table["plots"])
    for name in ("frontier_reconstruction.png", "frontier_membership.png"):
        assert (grid.out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_text = (grid.out / "table.csv").read_text()
    assert csv_text.splitlines()[0].endswith(",dominated_by")
    assert any(line.startswith("vfe-2,visualmixer,") and line.endswith(",vfe-1")
               for line in csv_text.splitlines())


def _merge_module():
    """docs/merge_frontiers.py, the results page's joiner, loaded from its path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "docs" / "merge_frontiers.py"
    spec = importlib.util.spec_from_file_location("merge_frontiers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_results_page_joins_a_runs_rows_with_earlier_ones_and_judges_them_together():
    merge = _merge_module()
    run = {"rows": [
        {"defence": "none", "accuracy": 0.66, "best.psnr_vs_original": 17.0},
        {"defence": "shuffle", "accuracy": None, "best.psnr_vs_original": None},
        {"defence": "dp", "accuracy": 0.40, "best.psnr_vs_original": 6.0},
    ]}
    earlier = {"rows": [
        {"defence": "shuffle", "accuracy": 0.70, "best.psnr_vs_original": 12.0},
        {"defence": "dp", "accuracy": 0.99, "best.psnr_vs_original": 1.0},  # the run's wins
    ]}
    rows = merge.merged_rows(run, earlier)
    assert [(r["defence"], r["accuracy"]) for r in rows] == [
        ("none", 0.66), ("shuffle", 0.70), ("dp", 0.40)]
    assert [r["dominated_by"] for r in rows] == [["shuffle"], [], []]
    with pytest.raises(SystemExit, match="not in the run's grid: ghost"):
        merge.merged_rows(run, {"rows": [{"defence": "ghost", "accuracy": 0.5}]})
