"""Tuning that brackets (issue 38, point 2): a sweep goes past an end while its best sits
there, marks a choice still at an end "at bound", and an attack setting with its own
training regime is tuned apart from the utility regime."""

import json
import math

import pytest

from fedisguise.config import ConfigError
from fedisguise.grids.runner import run_grid
from fedisguise.grids.spec import load_grid
from fedisguise.grids.tuning import step_beyond, sweep
from tests.test_compare import TUNE_TABLE, fake_record, fake_tuned_runs, grid_file


@pytest.mark.parametrize("values, side, expected", [
    ([1e-4, 3e-4, 1e-3], "high", 3e-3),
    ([1e-4, 3e-4, 1e-3], "low", 3e-5),
    ([0.01, 0.03, 0.1], "high", 0.3),
    ([0.03, 0.1, 0.3], "high", 1.0),  # 0.9, snapped to the round 1
    ([0.01, 0.02, 0.05], "high", 0.1),  # 1-2-5 goes on to 10
    ([0.01, 0.02, 0.05], "low", 0.005),
])
def test_a_step_past_an_end_keeps_the_spacing_on_round_values(values, side, expected):
    assert step_beyond(values, side) == pytest.approx(expected, rel=1e-12)


def scores(table):
    """outcome() of a sweep whose runs all finished with these scores (missing: not run)."""
    return lambda v: (True, table[v]) if v in table else (False, None)


def test_a_sweep_goes_past_the_top_until_the_best_is_interior():
    table = {0.01: 0.5, 0.03: 0.6, 0.1: 0.7}
    first = sweep((0.01, 0.03, 0.1), 2, scores(table), lambda v: True)
    assert first.pending == [0.3] and first.chosen is None  # 0.1 at the top: try 0.3
    table[0.3] = 0.65
    done = sweep((0.01, 0.03, 0.1), 2, scores(table), lambda v: True)
    assert (done.chosen, done.at_bound, done.values) == (0.1, False, [0.01, 0.03, 0.1, 0.3])


def test_a_sweep_still_at_an_end_after_its_steps_is_marked_at_bound():
    rising = {v: v for v in (0.001, 0.003, 0.01, 0.03, 0.1)}  # larger is always better
    done = sweep((0.001, 0.003, 0.01), 2, scores(rising), lambda v: True)
    assert (done.chosen, done.at_bound) == (0.1, True)
    assert done.summary()["scores"] == {"0.001": 0.001, "0.003": 0.003, "0.01": 0.01,
                                        "0.03": 0.03, "0.1": 0.1}
    # a value that is not a valid setting is a bound too
    capped = sweep((0.001, 0.003, 0.01), 2, scores(rising), lambda v: v < 0.02)
    assert (capped.chosen, capped.at_bound, capped.pending) == (0.01, True, [])


def test_a_diverged_value_is_the_worst_and_a_tie_goes_to_the_smaller_value():
    table = {0.01: 0.6, 0.03: 0.6, 0.1: None, 0.003: 0.2}
    done = sweep((0.01, 0.03, 0.1), 2, scores(table), lambda v: True)
    # 0.01 and 0.03 tie; the smaller, 0.01, is interior once 0.003 was tried below it
    assert (done.chosen, done.at_bound) == (0.01, False)
    assert done.summary()["scores"]["0.1"] is None


REGIMES = """
[compare]
name = "g"
seeds = [0]""" + TUNE_TABLE + """[[compare.attack]]
label = "utility"
attacks = []
[[compare.attack]]
label = "mia"
tune = true
attacks = [{name = "membership", method = "loss", target = "global"}]
train = {local_epochs = 3}
"""


def test_an_attack_regime_is_tuned_apart_and_its_cells_take_its_own_choice(tmp_path,
                                                                           monkeypatch):
    grid = load_grid(grid_file(tmp_path, REGIMES), out=str(tmp_path))
    regime = {(c.attack, c.config.train.lr) for c in grid.tune_cells}
    assert regime == {(f"tune-{v}", lr) for v, lr in (("0.01", 0.01), ("0.03", 0.03),
                                                       ("0.1", 0.1))} | {
        (f"tune-mia-{v}", lr) for v, lr in (("0.01", 0.01), ("0.03", 0.03), ("0.1", 0.1))}
    for c in grid.tune_cells:  # the regime's training, no attacks, validation held out
        assert c.config.train.local_epochs == (3 if "mia" in c.attack else 1)
        assert c.config.attacks == [] and c.config.data.validation == 0.2

    # the utility regime peaks at 0.03; the 3-epoch regime at 0.01, below its values
    fake_tuned_runs(monkeypatch, lambda cfg: 1 - abs(math.log(
        cfg.train.lr / (0.01 if cfg.train.local_epochs == 3 else 0.03))))
    outcome = run_grid(grid, progress=False)
    assert not outcome["failed"]
    assert "none--tune-mia-0.003--seed0" in outcome["ran"]  # one step below its values
    lr = {n: json.loads((tmp_path / "g" / n / "cell.json").read_text())["config"]["train"]["lr"]
          for n in ("none--utility--seed0", "none--mia--seed0")}
    assert lr == {"none--utility--seed0": 0.03, "none--mia--seed0": 0.01}
    tuning = json.loads((tmp_path / "g" / "compare.json").read_text())["tuning"]["defences"]
    assert (tuning["none"]["chosen"], tuning["none@mia"]["chosen"]) == (0.03, 0.01)
    assert "| none@mia | 0.003: " in (tmp_path / "g" / "table.md").read_text()


@pytest.mark.parametrize("attack, match", [
    ("label = 'a'\ntune = true\nattacks = []\n", "has none"),
    ("label = 'a'\ntune = true\nattacks = []\ntrain = {lr = 0.1}\n",
     "sets train.lr itself and asks for it to be tuned"),
    ("label = 'a'\ntune = [0.1, 0.3, 1.0]\nattacks = []\n", "tune is true or false"),
])
def test_a_regime_that_cannot_be_tuned_apart_is_refused(tmp_path, attack, match):
    body = ("[compare]\nname = 'g'\n[compare.tune]\nkey = 'train.lr'\n"
            "values = [0.01, 0.03, 0.1]\n[[compare.defence]]\nlabel = 'none'\n"
            "[[compare.attack]]\n" + attack)
    with pytest.raises(ConfigError, match=match):
        load_grid(grid_file(tmp_path, body), out=str(tmp_path))


def test_a_tuning_run_that_diverged_is_its_sweeps_worst_value_not_a_failure(tmp_path,
                                                                           monkeypatch):
    """The server refuses non-finite replies, so a learning rate too large ends its run
    failed in the round after it diverged; the sweep reads that as a measurement."""
    import fedisguise.experiment as experiment

    def fake_run(cfg, force=False):
        if cfg.train.lr >= 0.1:  # diverges
            record = {"status": "failed", "error": "round 2: no client trained (2 failed; "
                      "first error: reply refused: non-finite values in features.0.weight)",
                      "final": {"validation_accuracy": 0.3}, "rounds": []}
        else:
            record = fake_record(0.5, [1.0])
            record["final"]["validation_accuracy"] = (
                cfg.train.lr if cfg.data.validation else None)  # larger is better, up to 0.1
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "metrics.json").write_text(json.dumps(record))
        return {"status": record.get("status", "finished"), "error": record.get("error")}

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    body = REGIMES.replace("[[compare.attack]]\nlabel = \"mia\"\ntune = true\n",
                           "[[compare.attack]]\nlabel = \"mia\"\n")
    outcome = run_grid(load_grid(grid_file(tmp_path, body), out=str(tmp_path)),
                       progress=False)
    assert not outcome["failed"]
    tuning = json.loads((tmp_path / "g" / "compare.json").read_text())["tuning"]["defences"]
    assert tuning["none"]["scores"]["0.1"] is None and tuning["none"]["chosen"] == 0.03
    assert "0.1: diverged" in (tmp_path / "g" / "table.md").read_text()


def test_the_grid_says_where_its_time_went(tmp_path, monkeypatch):
    import fedisguise.experiment as experiment

    def fake_run(cfg, force=False):
        record = fake_record(0.5, [1.0])
        tuning = bool(cfg.data.validation)
        record["final"]["validation_accuracy"] = 0.9 if cfg.train.lr == 0.03 else 0.4
        record["timing"] = ({"training": 10.0, "privacy": 0.0, "attacks": 0.0} if tuning
                            else {"training": 60.0, "privacy": 6.0, "attacks": 30.0})
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "metrics.json").write_text(json.dumps(record))
        return {"status": "finished"}

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    body = REGIMES.replace("[[compare.attack]]\nlabel = \"mia\"\ntune = true\n",
                           "[[compare.attack]]\nlabel = \"mia\"\n")
    outcome = run_grid(load_grid(grid_file(tmp_path, body), out=str(tmp_path)),
                       progress=False)
    # three tuning runs (0.03 is interior), two cells
    assert outcome["time"] == {"tuning": 30.0, "training": 120.0, "privacy": 12.0,
                               "attacks": 60.0, "cells_without_timing": 0}
    assert ("Time spent by the finished runs: tuning 0.5 min, training 2.0 min, privacy "
            "0.2 min, attacks 1.0 min (3.7 min in all).") in (tmp_path / "g" / "table.md"
                                                              ).read_text()
