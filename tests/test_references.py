"""Same-optimizer references (issue 38, point 3): each defence's gap is against the plain
row that trains the same way, with its 95 % interval, and a row above its own reference
beyond that interval is flagged, never shown as a gain."""

import pytest

from fedisguise.grids.figures import cell_figures, table_rows
from fedisguise.grids.intervals import difference_halfwidth, mean_halfwidth, t975
from fedisguise.grids.references import references
from fedisguise.grids.spec import load_grid
from fedisguise.grids.table import table_markdown
from tests.test_compare import REPO, fake_record, grid_file

GRID = """
[compare]
name = "g"
seeds = [0, 1, 2]
[[compare.defence]]
label = "none"
[[compare.defence]]
label = "none-st-adam"
train = {optimizer = "st-adam", momentum = 0.0}
[[compare.defence]]
label = "vm"
disguise = "visualmixer"
train = {optimizer = "st-adam", momentum = 0.0}
[[compare.defence]]
label = "vm-sgd"
disguise = "visualmixer"
[[compare.defence]]
label = "vm-skew"
disguise = "visualmixer"
data = {partitioner = "dirichlet"}
[[compare.attack]]
label = "utility"
attacks = []
"""
ACCURACY = {"none": (0.80, 0.81, 0.82), "none-st-adam": (0.70, 0.71, 0.72),
            "vm": (0.74, 0.75, 0.76), "vm-sgd": (0.78, 0.79, 0.80), "vm-skew": (0.7, 0.7, 0.7)}


def rows(tmp_path):
    grid = load_grid(grid_file(tmp_path, GRID), out=str(tmp_path))
    figures = {f"{d}--utility--seed{s}": cell_figures(fake_record(acc[s], [1.0, 1.0]))
               for d, acc in ACCURACY.items() for s in range(3)}
    return grid, {r["defence"]: r for r in table_rows(grid, figures)}


def test_each_defence_is_measured_against_the_plain_row_that_trains_as_it_does(tmp_path):
    grid, by = rows(tmp_path)
    assert {d: r["reference"] for d, r in by.items()} == {
        "none": "none", "none-st-adam": "none", "vm": "none-st-adam", "vm-sgd": "none",
        "vm-skew": None}
    # ST-Adam's VisualMixer is 4 points above ST-Adam's plain run, not 6 below SGD's
    assert by["vm"]["accuracy_gap"] == pytest.approx(0.04)
    assert by["vm-sgd"]["accuracy_gap"] == pytest.approx(-0.02)
    assert by["vm-skew"]["accuracy_gap"] is None  # no plain Dirichlet row: no gap at all


def test_a_row_above_its_reference_beyond_the_interval_is_flagged(tmp_path):
    grid, by = rows(tmp_path)
    # three seeds, std 0.01 each side: Welch half-width t(4) * sqrt(2 * 0.01**2 / 3)
    assert by["vm"]["accuracy_gap_ci"] == pytest.approx(2.776 * (2 * 0.01 ** 2 / 3) ** 0.5)
    assert by["vm"]["above_reference"] and not by["vm-sgd"]["above_reference"]
    assert not by["none-st-adam"]["above_reference"]  # a plain row is nobody's gain
    text = table_markdown(grid, list(by.values()), {}, [], [], [])
    line = next(x for x in text.splitlines() if x.startswith("| vm |"))
    assert "4.0 ± 2.3 vs none-st-adam (above its reference)" in line
    assert "no plain row trains as it does" in next(
        x for x in text.splitlines() if x.startswith("| vm-skew |"))


def test_intervals_follow_students_t():
    assert t975(1) == 12.706 and t975(4.7) == 2.776 and t975(200) == 1.960
    assert mean_halfwidth(0.02, 3) == pytest.approx(4.303 * 0.02 / 3 ** 0.5)
    assert mean_halfwidth(0.02, 1) is None and difference_halfwidth(0.01, 1, 0.01, 3) is None
    assert difference_halfwidth(0.0, 3, 0.0, 3) == 0.0


@pytest.mark.parametrize("name", ["compare-fmnist-sweeps.toml", "compare-fmnist-full.toml"])
def test_every_defence_of_the_fmnist_grids_has_a_plain_row_training_as_it_does(name):
    grid = load_grid(REPO / "configs" / name)
    configs = {d.label: next(c.config for c in grid.cells if c.defence == d.label and c.utility)
               for d in grid.defences}
    found = references(grid.defences, configs, grid.reference, grid.tuning.key)
    assert None not in found.values(), [d for d, r in found.items() if r is None]
    assert found["visualmixer-vfe0.5"] == "none-st-adam"
    assert found["visualmixer-vfe0.5-iid"] == "none-iid-st-adam"
    assert found["disguisednets-b7-n100-iid"] == "none-iid"


def test_a_list_setting_is_part_of_the_training_signature():
    from fedisguise.config import Config
    from fedisguise.grids.references import training_signature

    base = Config()
    resized = Config().with_overrides(["data.image_size=[32,32]"])
    assert hash(training_signature(resized))  # a list setting is hashable here
    assert training_signature(base) != training_signature(resized)
