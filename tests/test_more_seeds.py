"""More seeds where three leave a cost's sign open: which rows take them, that the reference
runs them too, that the decision stands on the base seeds alone, and bad values."""

from __future__ import annotations

import json

import pytest

from fedisguise.config import ConfigError
from fedisguise.grids.more_seeds import called_for
from fedisguise.grids.runner import run_grid
from fedisguise.grids.spec import load_grid
from tests.test_compare import fake_record, grid_file

GRID = """
[compare]
name = "g"
seeds = [0, 1, 2]
more_seeds = [3, 4]
[[compare.defence]]
label = "none"
[[compare.defence]]
label = "close"
disguise = {name = "block-permutation", block_size = 4}
[[compare.defence]]
label = "far"
disguise = {name = "block-permutation", block_size = 2}
[[compare.attack]]
label = "utility"
attacks = []
"""
# Final accuracy per defence and seed: `close` is 1 point under `none` with a spread that
# leaves the sign open; `far` is 20 points under with a tight one.
ACCURACY = {"none": [0.80, 0.84, 0.82, 0.83, 0.81],
            "close": [0.83, 0.79, 0.81, 0.80, 0.82],
            "far": [0.62, 0.61, 0.62, 0.60, 0.63]}


def row(label, gap, half, n=3, reference="none"):
    return {"defence": label, "reference": reference, "accuracy_gap": gap,
            "accuracy_gap_ci": half, "accuracy_n": n}


def test_a_row_whose_interval_spans_zero_and_its_reference_are_called():
    rows = [row("none", 0.0, 0.02), row("close", -0.01, 0.03), row("far", -0.2, 0.03),
            row("edge", -0.03, 0.03), row("alone", -0.01, 0.05, reference=None),
            row("short", -0.01, 0.05, n=2), row("none-iid", 0.01, 0.03)]
    called = called_for(rows, base_seeds=3, plain={"none", "none-iid"})
    assert set(called) == {"close", "none"}
    assert called["close"] == ("gap -1.0 ± 3.0 points vs none: the interval is wider than "
                               "the gap")
    assert called["none"] == "the reference of close"
    # a plain row's gap is a difference of training (IID here), not a cost: never called
    assert "none-iid" in called_for(rows, base_seeds=3)
    # the reference's own seeds unfinished: no decision yet
    assert called_for([row("none", 0.0, 0.02, n=2), row("close", -0.01, 0.03)], 3) == {}


@pytest.fixture
def fake_runs(monkeypatch):
    import fedisguise.experiment as experiment

    ran = []

    def fake_run(cfg, force=False):
        ran.append(cfg.experiment.name)
        defence = cfg.experiment.name.split("--")[0]
        record = fake_record(ACCURACY[defence][cfg.experiment.seed], [1.0, 1.0])
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "metrics.json").write_text(json.dumps(record))
        return {"status": "finished"}

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    return ran


def test_the_grid_runs_more_seeds_for_the_undecided_row_and_its_reference(tmp_path,
                                                                          fake_runs):
    path = grid_file(tmp_path, GRID)
    # Alone, `close` cannot be judged: its reference has no finished seed yet.
    outcome = run_grid(load_grid(path, out=str(tmp_path)), progress=False, only=["close"])
    assert sorted(fake_runs) == [f"close--utility--seed{s}" for s in range(3)]
    assert all(not m.endswith(("seed3", "seed4")) for m in outcome["missing"])
    fake_runs.clear()
    # Once `none` has its seeds, `close`'s gap (-1.0 ± 4.5) is undecided: both take 3 and 4.
    outcome = run_grid(load_grid(path, out=str(tmp_path)), progress=False)
    extra = sorted(n for n in fake_runs if n.endswith(("seed3", "seed4")))
    assert extra == ["close--utility--seed3", "close--utility--seed4",
                     "none--utility--seed3", "none--utility--seed4"]
    rows = {r["defence"]: r for r in outcome["rows"]}
    assert (rows["none"]["accuracy_n"], rows["close"]["accuracy_n"],
            rows["far"]["accuracy_n"]) == (5, 5, 3)
    assert rows["close"]["accuracy"] == pytest.approx(sum(ACCURACY["close"]) / 5)
    assert rows["close"]["accuracy_seeds"] == {str(s): pytest.approx(a)
                                               for s, a in enumerate(ACCURACY["close"])}
    assert not outcome["missing"]
    summary = json.loads((tmp_path / "g" / "compare.json").read_text())
    assert summary["more_seeds"] == [3, 4]
    assert set(summary["more_seeds_called"]) == {"close", "none"}
    table = (tmp_path / "g" / "table.md").read_text()
    assert "Seeds [3, 4] as well, where seeds [0, 1, 2] left a gap's sign open" in table
    assert "`close` (gap -1.0 ± 4.5 points vs none" in table


def test_the_decision_stands_on_the_base_seeds_so_a_rerun_fills_in_the_same_rows(
        tmp_path, fake_runs, monkeypatch):
    path = grid_file(tmp_path, GRID)
    run_grid(load_grid(path, out=str(tmp_path)), progress=False)
    # Interrupted halfway: seed 4 of `close` is lost. Its seeds 0-3 now decide nothing new.
    import shutil
    shutil.rmtree(tmp_path / "g" / "close--utility--seed4")
    fake_runs.clear()
    outcome = run_grid(load_grid(path, out=str(tmp_path)), progress=False)
    assert fake_runs == ["close--utility--seed4"]
    assert not outcome["missing"]


@pytest.mark.parametrize("value", ["[2, 3]", "[3, 3]", "3", "[true]"])
def test_bad_more_seeds_are_refused(tmp_path, value):
    path = grid_file(tmp_path, GRID.replace("more_seeds = [3, 4]", f"more_seeds = {value}"))
    with pytest.raises(ConfigError, match="compare.more_seeds must be a list of distinct"):
        load_grid(path)
