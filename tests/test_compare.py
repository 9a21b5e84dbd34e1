"""Comparison grids: cells built from one base, clear errors, resume, the table's arithmetic,
columns from the attack registry, and the smoke grid end to end on Fashion-MNIST."""

from __future__ import annotations

import csv
import json
import os
import textwrap
from pathlib import Path

import pytest

from fedisguise.attacks import base as attacks_base
from fedisguise.attacks.base import Attack, Figure, figure_catalogue, register
from fedisguise.grids.done import cell_done, comparable
from fedisguise.grids.figures import attack_columns, best_figures, cell_figures, table_rows
from fedisguise.grids.runner import run_grid
from fedisguise.grids.spec import Grid, load_grid
from fedisguise.grids.table import answer_lines, write_table
from fedisguise.config import ConfigError, load_config
from tests.conftest import DEBIAN_FMNIST

REPO = Path(__file__).resolve().parent.parent
BASE = """
[experiment]
rounds = 3
clients = 2
[data]
dataset = "synthetic"
"""


def grid_file(tmp_path: Path, body: str, base: str = BASE) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(textwrap.dedent(body) + base)
    return path


GRID = """
[compare]
name = "g"
seeds = [0, 1]
[[compare.defence]]
label = "none"
[[compare.defence]]
label = "bp"
disguise = {name = "block-permutation", block_size = 4}
[[compare.attack]]
label = "gi"
attacks = [{name = "gradient_inversion", round = 1, client = 0}]
train = {local_steps = 1, batch_size = 1}
experiment = {rounds = 1}
[[compare.attack]]
label = "mia"
attacks = [{name = "membership", method = "loss", target = "global"}]
"""


def test_cells_merge_base_defence_attack_and_seed(tmp_path):
    grid = load_grid(grid_file(tmp_path, GRID), overrides=["train.lr=0.02"], out=str(tmp_path))
    assert [c.name for c in grid.cells][:4] == ["none--gi--seed0", "none--mia--seed0",
                                                "bp--gi--seed0", "bp--mia--seed0"]
    assert len(grid.cells) == 8 and grid.out == (tmp_path / "g").resolve()
    by_name = {c.name: c for c in grid.cells}
    gi, mia = by_name["bp--gi--seed1"], by_name["bp--mia--seed1"]
    assert gi.config.disguise == {"name": "block-permutation", "block_size": 4}
    assert (gi.config.train.local_steps, gi.config.experiment.rounds) == (1, 1)
    assert (mia.config.train.local_steps, mia.config.experiment.rounds) == (0, 3)
    assert gi.config.experiment.seed == 1 and gi.config.experiment.name == "bp--gi--seed1"
    assert all(c.config.train.lr == 0.02 and c.config.data.dataset == "synthetic"
               for c in grid.cells)
    # An attack setting that changes training is priced in its own regime, not as utility.
    assert not gi.utility and mia.utility
    assert gi.config.run_dir == grid.out / "bp--gi--seed1"


@pytest.mark.parametrize("body, match", [
    ("[model]\nname = 'lenet'\n", "needs a \\[compare\\] table"),
    ("[compare]\nname = 'g'\nseeds = [0]\n", "at least one"),
    ("[compare]\nname = 'a/b'\n[[compare.defence]]\nlabel = 'x'\n", "compare.name"),
    ("[compare]\nname = 'g'\nseeds = [0, 0]\n[[compare.defence]]\nlabel = 'x'\n", "distinct"),
    ("[compare]\nname = 'g'\ncolour = 1\n", "unknown \\[compare\\] key"),
    ("[compare]\nname = 'g'\n[[compare.defence]]\nlabel = 'x'\n[[compare.defence]]\n"
     "label = 'x'\n", "appears twice"),
    ("[compare]\nname = 'g'\n[[compare.defence]]\nlabel = 'x'\nattacks = []\n",
     "attacks belong in"),
    ("[compare]\nname = 'g'\n[[compare.defence]]\nlabel = 'x'\n[[compare.attack]]\n"
     "label = 'a'\n", "needs `attacks"),
    ("[compare]\nname = 'g'\n[[compare.defence]]\nlabel = 'x'\nexperiment = {seed = 3}\n",
     "experiment.seed is set by the grid"),
    ("[compare]\nname = 'g'\n[[compare.defence]]\nlabel = 'x'\nwarp = 1\n", "unknown key"),
    ("[compare]\nname = 'g'\n[[compare.defence]]\nlabel = 'x'\ntrain = {batch_size = 4}\n"
     "[[compare.attack]]\nlabel = 'a'\nattacks = []\ntrain = {batch_size = 1}\n",
     "both set \\['train.batch_size'\\]"),
    ("[compare]\nname = 'g'\n[[compare.defence]]\nlabel = 'x'\ndisguise = 'no-such'\n",
     "cell x--base--seed0: .*no-such"),
])
def test_bad_grids_are_refused_with_the_reason(tmp_path, body, match):
    with pytest.raises(ConfigError, match=match):
        load_grid(grid_file(tmp_path, body))


def test_a_defence_runs_only_under_the_attack_settings_it_names(tmp_path):
    # A centralised row: one client holding the union, which the membership regime's own
    # client count would contradict, so it runs under the utility setting only.
    body = GRID + ('[[compare.defence]]\nlabel = "central"\nattack_settings = ["mia"]\n'
                   'experiment = {clients = 1}\ndata = {union_of = 2}\n')
    grid = load_grid(grid_file(tmp_path, body), out=str(tmp_path))
    central = [c.name for c in grid.cells if c.defence == "central"]
    assert central == ["central--mia--seed0", "central--mia--seed1"]
    assert len(grid.cells) == 10


@pytest.mark.parametrize("settings, match", [
    ('["nope"]', "attack_settings \\['nope'\\] are not attack settings"),
    ('["gi"]', "leave out every utility setting \\(mia\\)"),
    ('[]', "non-empty list"),
    ('"mia"', "non-empty list"),
])
def test_attack_settings_must_name_the_grids_own_and_keep_a_utility_one(
        tmp_path, settings, match):
    body = GRID + f'[[compare.defence]]\nlabel = "x"\nattack_settings = {settings}\n'
    with pytest.raises(ConfigError, match=match):
        load_grid(grid_file(tmp_path, body))


def test_overrides_cannot_take_what_the_grid_owns(tmp_path):
    with pytest.raises(ConfigError, match="compare.seeds"):
        load_grid(grid_file(tmp_path, GRID), overrides=["experiment.seed=3"])


def test_a_compare_file_inherits_its_base_file(tmp_path):
    (tmp_path / "base.toml").write_text(BASE + "[train]\nlr = 0.3\n")
    path = tmp_path / "grid.toml"
    path.write_text("[compare]\nname = 'g'\nbase = 'base.toml'\n[[compare.defence]]\n"
                    "label = 'none'\n[train]\nbatch_size = 8\n")
    (cell,) = load_grid(path).cells
    assert (cell.config.train.lr, cell.config.train.batch_size) == (0.3, 8)
    assert cell.config.experiment.rounds == 3 and cell.attack == "base"


def fake_attack(name: str, *figures: Figure) -> type[Attack]:
    """An attack class that only declares figures: the table test writes its results."""
    def never(self, *args):
        raise AssertionError("a fake attack never runs")
    return type(f"Fake{name.title()}", (Attack,), {"name": name, "figures": figures,
                                                   "reconstruct": never, "score": never})


def use_registry(monkeypatch, *attacks: type[Attack], keep: bool = False) -> None:
    """For this test, a registry of these attacks (after the real ones with `keep`)."""
    monkeypatch.setattr(attacks_base, "ATTACKS", dict(attacks_base.ATTACKS) if keep else {})
    for cls in attacks:
        register(cls)


# The figures the table test needs, declared as attacks declare them (titles are theirs).
PSNR, SSIM = Figure("psnr_vs_original", "PSNR (dB)"), Figure("ssim_vs_original", "SSIM")
GI = fake_attack("gradient_inversion", PSNR, SSIM,
                 Figure("psnr_vs_disguised", "GI PSNR vs disguised (dB)"))
INVERSE = fake_attack("inverse_network", PSNR)
MEMBERSHIP = fake_attack("membership", Figure("auc", "membership AUC"),
                         Figure("tpr_at_1pct_fpr", "TPR @ 1% FPR"))


def fake_record(acc: float, seconds: list[float], *, vp=None, eps=None, gi=(), auc=(),
                attacks=None) -> dict:
    rounds = [{"test_accuracy": acc - 0.1 * (len(seconds) - 1 - i), "round_seconds": s}
              for i, s in enumerate(seconds)]
    entries = {}
    for i, psnr in enumerate(gi):
        entries["gradient_inversion" + (f"-{i}" if i else "")] = {
            "attack": "gradient_inversion", "status": "ok", "level": 0,
            "psnr_vs_original": psnr, "psnr_vs_disguised": psnr, "ssim_vs_original": psnr / 40}
    for i, a in enumerate(auc):
        entries["membership" + (f"-{i + 5}" if i else "")] = {
            "attack": "membership", "status": "ok", "auc": a, "tpr_at_1pct_fpr": a / 10}
    return {"final": {"test_accuracy": acc, "plain_test_accuracy": acc - 0.01,
                      "epsilon": eps}, "rounds": rounds, "attacks": {**entries, **(attacks or {})},
            "privacy": {"visual_privacy": vp, "misusability": 0.2} if vp is not None else {}}


def test_the_table_aggregates_over_seeds_against_the_reference(tmp_path, monkeypatch):
    grid = load_grid(grid_file(tmp_path, GRID), out=str(tmp_path))
    use_registry(monkeypatch, GI, INVERSE, MEMBERSHIP,
                 fake_attack("jigsaw", PSNR))  # registered, but no cell ran it
    inverse = {"inverse_network": {"attack": "inverse_network", "psnr_vs_original": 18.0},
               "inverse_network-3": {"attack": "inverse_network", "psnr_vs_original": 12.0}}
    figures = {
        "none--gi--seed0": cell_figures(fake_record(0.1, [9.0], gi=[30.0, 20.0])),
        "none--gi--seed1": cell_figures(fake_record(0.1, [9.0], gi=[26.0])),
        # Another attack setting beats the inversion in seed 0 only.
        "none--mia--seed0": cell_figures(fake_record(0.80, [10.0, 2.0, 2.0], auc=[0.6, 0.7],
                                                     attacks={"inverse_network": {
                                                         "attack": "inverse_network",
                                                         "psnr_vs_original": 40.0}})),
        "none--mia--seed1": cell_figures(fake_record(0.84, [10.0, 2.0, 2.0], auc=[0.6])),
        "bp--gi--seed0": cell_figures(fake_record(0.1, [9.0], gi=[10.0], vp=0.9,
                                                  attacks=inverse)),
        "bp--mia--seed0": cell_figures(fake_record(0.70, [11.0, 3.0, 3.0], vp=0.8, eps=2.0,
                                                   auc=[0.5])),
        # bp--*--seed1 did not finish: its row is over what there is.
    }
    none, bp = table_rows(grid, figures)
    assert none["accuracy"] == pytest.approx(0.82) and none["accuracy_n"] == 2
    assert none["accuracy_std"] == pytest.approx(0.02 * 2 ** 0.5)
    # The strongest of two inversions in one cell counts; mean over seeds.
    assert none["gradient_inversion.psnr_vs_original"] == pytest.approx(28.0)
    assert none["gradient_inversion.psnr_vs_original_n"] == 2
    assert none["membership.auc"] == pytest.approx(0.65)
    assert none["membership.tpr_at_1pct_fpr"] == pytest.approx(0.065)
    # Misusability of an undisguised model is its plain accuracy; no visual privacy, no ε.
    assert none["misusability"] == pytest.approx(0.81) and none["visual_privacy"] is None
    assert bp["accuracy_gap"] == pytest.approx(0.70 - 0.82) and bp["epsilon"] == 2.0
    assert bp["accuracy_std"] is None and bp["visual_privacy"] == 0.8
    # Steady seconds per round (after the first, which starts clients and disguises once).
    assert none["seconds_per_round"] == 2.0 and bp["time_ratio"] == pytest.approx(1.5)
    assert none["first_round_seconds"] == 10.0
    assert bp["inverse_network.psnr_vs_original"] == 18.0
    assert none["inverse_network.psnr_vs_original"] == 40.0
    assert [m for m, _ in none["accuracy_per_round"]] == pytest.approx([0.62, 0.72, 0.82])
    # What the strongest attack recovers: per seed the strongest over every attack setting
    # (40 from inverse_network, then 26 from the inversion), not the mean of the cells.
    assert none["best.psnr_vs_original"] == pytest.approx(33.0)
    assert none["best.psnr_vs_original_std"] == pytest.approx(14 / 2 ** 0.5)
    assert none["best.attack"] == "inverse_network / gradient_inversion"
    assert bp["best.psnr_vs_original"] == 18.0 and bp["best.attack"] == "inverse_network"
    # Only the inversion declares SSIM here: its best is the inversion's.
    assert none["best.ssim_vs_original"] == pytest.approx((30.0 + 26.0) / 2 / 40)
    # Columns: what some cell measured, best first, then in registry order; no jigsaw.
    assert [c.key for c in attack_columns(figures.values())] == [
        "best.psnr_vs_original", "best.ssim_vs_original",
        "gradient_inversion.psnr_vs_original", "gradient_inversion.ssim_vs_original",
        "gradient_inversion.psnr_vs_disguised", "inverse_network.psnr_vs_original",
        "membership.auc", "membership.tpr_at_1pct_fpr"]
    assert not any(k.startswith("jigsaw") for k in none)


ECHO = fake_attack("echo", Figure("leak", "echo leak (bits)"),
                   Figure("queries", "echo queries needed", higher_is_stronger=False),
                   Figure("psnr_vs_original", "echo PSNR vs original (dB)"))


def test_strongest_follows_each_figures_orientation(monkeypatch):
    use_registry(monkeypatch, ECHO, GI)
    figures = cell_figures(fake_record(0.5, [1.0], gi=[20.0], attacks={
        "echo": {"attack": "echo", "status": "ok", "leak": 0.3, "queries": 50,
                 "psnr_vs_original": 25.0},
        "x-1": {"attack": "echo", "status": "ok", "leak": 0.6, "queries": 80},
        "echo-2": {"leak": 0.1, "queries": 20},  # an older record: the kind from the label
        # Not applicable: its figures do not count, however strong.
        "echo-3": {"attack": "echo", "status": "not applicable", "leak": 9.0, "queries": 1},
    }))
    assert figures["echo.leak"] == 0.6  # higher is stronger
    assert figures["echo.queries"] == 20  # lower is stronger
    assert figures["best.psnr_vs_original"] == 25.0 and figures["best.attack"] == "echo"
    assert figures["gradient_inversion.psnr_vs_original"] == 20.0
    # A lower-is-stronger "best" figure picks the lowest over the attacks that declare it.
    low = Figure("psnr_vs_original", "PSNR", higher_is_stronger=False)
    use_registry(monkeypatch, fake_attack("a", low), fake_attack("b", low))
    figures = cell_figures(fake_record(0.5, [1.0], attacks={
        "a": {"attack": "a", "psnr_vs_original": 12.0},
        "b": {"attack": "b", "psnr_vs_original": 7.0}}))
    assert (figures["best.psnr_vs_original"], figures["best.attack"]) == (7.0, "b")
    with pytest.raises(ValueError, match="disagree"):
        best_figures({"a": (low,), "b": (PSNR,)})


def test_a_newly_registered_attack_reaches_the_table(tmp_path, monkeypatch):
    """One attack class and one registry line: its figures reach table.csv, cells.csv,
    table.md, compare.json and the plot, beside the real attacks, which no cell ran."""
    grid = load_grid(grid_file(tmp_path, "[compare]\nname = 'g'\nseeds = [0, 1]\n"
                               "[[compare.defence]]\nlabel = 'none'\n"), out=str(tmp_path))
    use_registry(monkeypatch, ECHO, keep=True)
    for cell, (leak, queries) in zip(grid.cells, [(0.2, 40), (0.4, 10)], strict=True):
        cell.config.run_dir.mkdir(parents=True)
        (cell.config.run_dir / "metrics.json").write_text(json.dumps(fake_record(
            0.8, [1.0, 1.0], attacks={"echo": {"attack": "echo", "status": "ok",
                                               "leak": leak, "queries": queries},
                                      "echo-1": {"attack": "echo", "status": "ok",
                                                 "leak": 0.0, "queries": 100}})))
        (cell.config.run_dir / "cell.json").write_text(json.dumps(
            {"config": comparable(cell.config)}))
    table = write_table(grid)
    with (grid.out / "table.csv").open() as fh:
        reader = csv.DictReader(fh)
        (row,) = list(reader)
    attack_columns_csv = [c for c in reader.fieldnames if "." in c]
    assert attack_columns_csv == ["echo.leak", "echo.leak_std", "echo.queries",
                                  "echo.queries_std"]
    assert float(row["echo.leak"]) == pytest.approx(0.3)
    assert float(row["echo.queries"]) == pytest.approx(25.0)  # the fewer queries per seed
    assert float(row["echo.queries_std"]) == pytest.approx(15 * 2 ** 0.5)
    with (grid.out / "cells.csv").open() as fh:
        assert [float(r["echo.queries"]) for r in csv.DictReader(fh)] == [40.0, 10.0]
    md = (grid.out / "table.md").read_text()
    # a figure of its own goes to the second table (the first holds the answer's figures)
    header = [line for line in md.splitlines() if line.startswith("| defence |")][1]
    assert "echo leak (bits)" in header and "echo queries needed" in header
    assert "| 0.300 ± 0.141 | 25.0 ± 21.2 |" in md
    titles = {f.title for figures in figure_catalogue().values() for f in figures}
    assert not any(t in header for t in titles - {f.title for f in ECHO.figures})
    summary = json.loads((grid.out / "compare.json").read_text())
    assert summary["columns"] == {"echo.leak": "echo leak (bits)",
                                  "echo.queries": "echo queries needed"}
    assert "accuracy_vs_attack.png" in table["plots"]


def test_every_registered_attack_reaches_the_table():
    """Each registered attack's declared figures become columns (GAN and jigsaw included)."""
    catalogue = figure_catalogue()
    assert {"gan", "jigsaw"} <= set(catalogue) and all(catalogue.values())
    record = fake_record(0.5, [1.0], attacks={
        kind: {"attack": kind, "status": "ok", **{f.name: 0.5 for f in figures}}
        for kind, figures in catalogue.items()})
    keys = {c.key for c in attack_columns([cell_figures(record)])}
    assert keys >= {f"{kind}.{f.name}" for kind, figures in catalogue.items()
                    for f in figures}


def test_finished_cells_are_skipped_only_while_their_config_holds(tmp_path):
    path = grid_file(tmp_path, GRID)
    grid = load_grid(path, out=str(tmp_path))
    cell = grid.cells[1]
    run_dir = cell.config.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(fake_record(0.8, [1.0, 1.0])))
    assert not cell_done(cell)  # metrics without the marker: a run that did not finish
    (run_dir / "cell.json").write_text(json.dumps({"config": comparable(cell.config)}))
    assert cell_done(cell)
    assert cell_done(load_grid(path, out=str(tmp_path)).cells[1])
    changed = load_grid(path, overrides=["train.lr=0.5"], out=str(tmp_path)).cells[1]
    assert changed.name == cell.name and not cell_done(changed)
    # A cell finished before a setting existed (here experiment.plugins) still counts while
    # the setting holds its default, and not once it is set; where it runs never counts.
    older = comparable(cell.config)
    del older["experiment"]["plugins"]
    (run_dir / "cell.json").write_text(json.dumps({"config": older}))
    assert cell_done(cell)
    plugin = tmp_path / "p.py"
    plugin.write_text("")
    assert not cell_done(load_grid(path, overrides=[f"experiment.plugins={plugin}"],
                                   out=str(tmp_path)).cells[1])
    assert cell_done(load_grid(path, overrides=["resources.ray_address=auto"],
                               out=str(tmp_path)).cells[1])
    # The table is written from what finished; the rest is listed as missing.
    table = write_table(grid)
    assert len(table["missing"]) == 7 and table["rows"][0]["accuracy"] == pytest.approx(0.8)
    assert "Not finished (7)" in (grid.out / "table.md").read_text()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_config_builds(path):
    """Compare files (and the paper presets among them) build every cell without data."""
    if "[compare]" not in path.read_text():
        assert load_config(path).experiment.name
        return
    grid = load_grid(path)
    # measured against no defence; the robust-aggregation grid against plain FedAvg
    assert grid.reference == ("fedavg" if path.stem == "compare-robust" else "none")
    assert len(grid.cells) >= 2
    if path.stem.startswith("paper-"):
        # A preset's reduction keeps the paper's disguise and training, on Fashion-MNIST.
        reduction = path.with_name(path.stem.removesuffix("-fmnist") + "-fmnist.toml")
        full = path.with_name(reduction.name.removesuffix("-fmnist.toml") + ".toml")
        small, big = load_grid(reduction).cells[-1].config, load_grid(full).cells[-1].config
        assert small.data.dataset == "fashion-mnist" and big.data.dataset != "fashion-mnist"
        assert small.disguise_name == big.disguise_name
        if small.disguise_name != "transform-net":  # h_θ's training budget is reduced too
            assert small.disguise == big.disguise
        assert small.train.optimizer == big.train.optimizer


def test_the_sweeps_grid_holds_every_setting_of_the_full_grid():
    """The CPU sweeps grid is the full grid's settings at one seed: each of the full grid's
    defences is there, with the same disguise, optimizer, partitioner, key scope and DP
    (transform-net's h_θ budget is cut down too; the authors' VisualMixer is drawn once per
    client, not every batch, for its cost on 2 cores, as the file says)."""
    def settings(name):
        grid = load_grid(REPO / "configs" / name)
        first = {}
        for cell in grid.cells:
            if cell.defence in first:
                continue
            c = cell.config
            disguise = c.disguise
            if c.disguise_name == "transform-net":
                disguise = {k: disguise[k] for k in ("name", "alpha")}
            first[cell.defence] = (c.disguise_name, disguise, c.train.optimizer,
                                   c.data.partitioner, c.client.key_scope,
                                   c.client.redisguise, c.dp)
        return first
    full, cpu = settings("compare-fmnist-full.toml"), settings("compare-fmnist-sweeps.toml")
    assert len(full) == 35 and list(cpu) == list(full)
    for label, setting in full.items():
        if label == "visualmixer-authors":
            assert (setting[5], cpu[label][5]) == ("batch", "once")
            setting = setting[:5] + ("once",) + setting[6:]
        assert cpu[label] == setting, label


def test_the_headline_grid_has_the_rows_the_answer_needs():
    """Each defence at its paper's operating point and a stronger setting, IID rows for
    `none` and two defences, a per-client key, three seeds (five where three leave a cost's
    sign open), 60 rounds of 20 x 1000 images,
    and a centralised row (one client holding the union) for `none` and each disguise,
    measured against a centralised `none`."""
    grid = load_grid(REPO / "configs" / "compare-fmnist-cpu.toml")
    labels = [d.label for d in grid.defences]
    for label in ("none", "none-iid", "visualmixer", "visualmixer-authors", "disguisednets",
                  "disguisednets-per-client", "instahide-k4", "transform-net-a0.005",
                  "dp-sgd-eps1", "dp-sgd-eps8", "central-dp-sigma0.5"):
        assert label in labels
    assert sum(label.endswith("-iid") for label in labels) >= 3
    assert grid.seeds == [0, 1, 2] and grid.more_seeds == [3, 4]
    none = next(c.config for c in grid.cells if c.defence == "none" and c.utility)
    assert (none.experiment.clients, none.data.train_per_client, none.experiment.rounds,
            none.data.partitioner, none.data.alpha) == (20, 1000, 60, "dirichlet", 0.5)
    from fedisguise.grids.figures import row_references
    refs = row_references(grid)
    central = [d for d in grid.defences if d.curve == "central"]
    assert {d.label for d in central} == {"none-central", "visualmixer-central",
                                          "disguisednets-central", "instahide-k4-central",
                                          "transform-net-a0.005-central"}
    for d in central:
        cells = [c for c in grid.cells if c.defence == d.label]
        assert {c.attack for c in cells} == {"utility"} and len(cells) == 3
        cfg = cells[0].config
        assert (cfg.experiment.clients, cfg.data.union_of, cfg.experiment.rounds) == (1, 20, 60)
        assert refs[d.label] == ("none" if d.label == "none-central" else "none-central")
        fl = next(c.config for c in grid.cells
                  if c.defence == d.label.removesuffix("-central") and c.utility)
        assert cfg.disguise == fl.disguise, d.label  # the same disguise as its FL row


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(DEBIAN_FMNIST), reason="needs Debian's Fashion-MNIST")
def test_compare_smoke_grid_end_to_end(tmp_path):
    grid: Grid = load_grid(REPO / "configs" / "compare-smoke.toml", out=str(tmp_path))
    assert [d.label for d in grid.defences] == ["none", "visualmixer"]
    assert len(grid.attacks) == 1 and grid.seeds == [0]
    outcome = run_grid(grid, progress=False)
    assert outcome["failed"] == {} and len(outcome["ran"]) == 2
    with (grid.out / "table.csv").open() as fh:
        rows = {r["defence"]: r for r in csv.DictReader(fh)}
    none, vm = rows["none"], rows["visualmixer"]
    assert float(none["accuracy"]) > 0.6 and float(vm["accuracy"]) > 0.5
    assert float(none["accuracy_gap"]) == 0.0 and float(none["time_ratio"]) == 1.0
    assert none["visual_privacy"] == "" and float(vm["visual_privacy"]) > 0.1
    assert 0.0 <= float(vm["membership.auc"]) <= 1.0 and float(vm["seconds_per_round"]) > 0
    assert "gradient_inversion.psnr_vs_original" not in none  # no cell ran it
    md = (grid.out / "table.md").read_text()
    assert "| visualmixer |" in md and "none--membership--seed0/summary.md" in md
    assert all(f.title in md for f in figure_catalogue()["membership"])
    for png in ("accuracy_per_round.png", "accuracy_vs_attack.png"):
        assert (grid.out / png).read_bytes()[:4] == b"\x89PNG"
    # Run again: nothing re-runs, the table is rewritten from the finished cells.
    again = run_grid(load_grid(REPO / "configs" / "compare-smoke.toml", out=str(tmp_path)),
                     progress=False)
    assert again["ran"] == [] and len(again["skipped"]) == 2


LEVEL_GRID = """
[compare]
name = "g"
seeds = [0, 1]
[[compare.defence]]
label = "none"
[[compare.defence]]
label = "vm"
disguise = "visualmixer"
[[compare.attack]]
label = "utility"
attacks = []
[[compare.attack]]
label = "l0"
attacks = [{name = "chain", level = 0}, {name = "as_observed"}]
train = {local_steps = 1}
[[compare.attack]]
label = "l1"
attacks = [{name = "chain", level = 1}, {name = "window_stats"}, {name = "instahide_attack"}]
train = {local_steps = 1}
"""


def finish_cells(grid, plans: dict, accuracy: dict[str, float]) -> None:
    """Write finished cells as a grid run would: every utility cell, and each attack cell
    with a plan ((defence, setting, seed) -> its attacks' records)."""
    for cell in grid.cells:
        attacks = plans.get((cell.defence, cell.attack, cell.seed), {})
        if cell.attack != "utility" and not attacks:
            continue  # this cell did not finish
        cell.config.run_dir.mkdir(parents=True)
        (cell.config.run_dir / "metrics.json").write_text(json.dumps(fake_record(
            accuracy[cell.defence], [1.0, 1.0], attacks=attacks)))
        (cell.config.run_dir / "cell.json").write_text(json.dumps(
            {"config": comparable(cell.config)}))


def test_the_level_table_takes_the_strongest_attack_at_or_below_each_level(tmp_path):
    """Per defence × level × threat model: the strongest attack of level <= L, per seed,
    by PSNR vs the originals; not-applicable attacks and attacks without images count
    nothing; accuracy cost from the utility cells."""
    grid = load_grid(grid_file(tmp_path, LEVEL_GRID), out=str(tmp_path))

    def entry(kind, level, psnr, **more):
        return {"attack": kind, "status": "ok", "level": level, "psnr_vs_original": psnr,
                "ssim_vs_original": psnr / 100, "recognisability": psnr / 50, **more}

    plans = {  # (defence, setting, seed) -> attacks
        ("none", "l0", 0): {"chain": entry("chain", 0, 20.0),
                            "as_observed": entry("as_observed", 0, 100.0)},
        ("none", "l1", 0): {"chain": entry("chain", 1, 15.0)},  # weaker than Level 0's
        ("vm", "l0", 0): {"chain": entry("chain", 0, 8.0),
                          "as_observed": entry("as_observed", 0, 15.0)},
        ("vm", "l0", 1): {"chain": entry("chain", 0, 9.0),
                          "as_observed": entry("as_observed", 0, 15.5)},
        ("vm", "l1", 0): {"chain": entry("chain", 1, 10.0, grid="images/attack-chain.png"),
                          "window_stats": entry("window_stats", 1, 21.0),
                          "instahide_attack": {"attack": "instahide_attack", "level": 1,
                                               "status": "not applicable",
                                               "psnr_vs_original": 99.0}},
        ("vm", "l1", 1): {"chain": entry("chain", 1, 12.0),
                          "window_stats": entry("window_stats", 1, 19.0)},
    }
    finish_cells(grid, plans, {"none": 0.85, "vm": 0.80})
    levels = write_table(grid)["levels"]
    row = {(r["defence"], r["level"], r["threat_model"]): r for r in levels}
    assert row["none", 0, "server"]["psnr_vs_original"] == 20.0
    assert row["none", 1, "server"]["attack"] == "chain L0"  # a Level-1 attacker keeps it
    assert row["none", 0, "outsourced"]["psnr_vs_original"] == 100.0
    assert row["vm", 0, "server"]["psnr_vs_original"] == pytest.approx(8.5)
    assert row["vm", 0, "server"]["psnr_vs_original_std"] == pytest.approx(0.5 ** 0.5)
    assert row["vm", 1, "server"]["psnr_vs_original"] == pytest.approx(11.0)
    assert row["vm", 1, "outsourced"]["attack"] == "window_stats"
    assert row["vm", 1, "outsourced"]["psnr_vs_original"] == pytest.approx(20.0)
    assert row["vm", 1, "outsourced"]["ssim_vs_original"] == pytest.approx(0.20)
    assert row["vm", 2, "outsourced"]["psnr_vs_original"] == pytest.approx(20.0)
    assert row["vm", 0, "server"]["accuracy_gap"] == pytest.approx(-0.05)
    md = (grid.out / "table.md").read_text()
    assert "## Strongest attack per defence and knowledge level" in md
    assert "| vm | 0.800 | -5.0 | as_observed: 15.2 / 0.152 / 0.30 | window_stats: 20.0 / " \
           "0.200 / 0.40 | window_stats: 20.0 / 0.200 / 0.40 |" in md
    with (grid.out / "levels.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2 * 3 * 2


def test_the_terminal_answer_names_cost_recovery_and_membership():
    rows = [{"defence": "none", "accuracy": 0.74, "accuracy_std": None, "accuracy_gap": 0.0,
             "best.psnr_vs_original": 13.2, "best.attack": "chain",
             "best.recognisability": 1.0, "membership.auc": 0.692},
            {"defence": "dn", "accuracy": 0.70, "accuracy_std": 0.01, "accuracy_gap": -0.041,
             "best.psnr_vs_original": None, "membership.auc": None}]
    none, dn = answer_lines(rows)
    assert "0.740" in none and "13.2 dB" in none and "(chain)" in none and "0.692" in none
    assert "points" not in none  # the reference has no gap to show
    assert "-4.1 points" in dn and "dB" not in dn and "membership" not in dn


# learning rates tuned over 1-round runs with 20% held out; the reference defence `none`
TUNE_TABLE = """
[compare.tune]
key = "train.lr"
values = [0.01, 0.03, 0.1]
validation = 0.2
rounds = 1
[[compare.defence]]
label = "none"
"""
TUNED = """
[compare]
name = "g"
seeds = [0, 1]""" + TUNE_TABLE + """[[compare.defence]]
label = "vm"
disguise = "visualmixer"
train = {optimizer = "st-adam"}
tune = [0.001, 0.003, 0.01]
[[compare.attack]]
label = "mia"
attacks = [{name = "membership", method = "loss", target = "global"}]
[[compare.attack]]
label = "gi"
attacks = [{name = "gradient_inversion", round = 1, client = 0}]
train = {lr = 0.5, local_steps = 1, batch_size = 1}
"""


def fake_tuned_runs(monkeypatch, validation_score) -> list[str]:
    """run_experiment replaced by a finished record at once: a tuning run (validation held
    out) scores `validation_score(cfg)`; returns the names of the runs, as they run."""
    import fedisguise.experiment as experiment

    ran = []

    def fake_run(cfg, force=False):
        ran.append(cfg.experiment.name)
        record = fake_record(0.5, [1.0, 1.0])
        record["final"]["validation_accuracy"] = (validation_score(cfg) if cfg.data.validation
                                                  else None)
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "metrics.json").write_text(json.dumps(record))
        return {"status": "finished"}

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    return ran


def test_each_defence_is_tuned_on_validation_data_and_its_choice_goes_into_its_cells(
        tmp_path, monkeypatch):
    import fedisguise.experiment as experiment

    grid = load_grid(grid_file(tmp_path, TUNED), out=str(tmp_path))
    tuned = {(c.defence, c.config.train.lr) for c in grid.tune_cells}
    # Per defence its own values; one that fixes the key itself is not tuned.
    assert tuned == {("none", 0.01), ("none", 0.03), ("none", 0.1), ("vm", 0.001),
                     ("vm", 0.003), ("vm", 0.01)}
    for c in grid.tune_cells:  # validation held out, no attacks, the tuning's rounds and seed
        assert c.config.data.validation == 0.2 and c.config.attacks == []
        assert c.config.experiment.rounds == 1 and c.config.experiment.seed == 0
    best = {"none": 0.1, "vm": 0.003}  # a tuning run: the best value scores highest
    ran = fake_tuned_runs(monkeypatch, lambda cfg: 0.9 if cfg.train.lr == best[
        cfg.experiment.name.split("--")[0]] else 0.4)
    outcome = run_grid(grid, progress=False)
    assert not outcome["failed"]
    assert ran[:6] == [c.name for c in grid.tune_cells]  # tuning first
    # none's best, 0.1, sat at the top of its values: one more step, 0.3, brackets it
    assert ran[6] == "none--tune-0.3--seed0"
    lrs = {n: json.loads((tmp_path / "g" / n / "cell.json").read_text())["config"]["train"]["lr"]
           for n in ran[7:]}
    assert lrs["none--mia--seed1"] == 0.1 and lrs["vm--mia--seed0"] == 0.003
    assert lrs["vm--gi--seed0"] == 0.5  # the attack setting sets its own lr
    rows = {r["defence"]: r for r in outcome["rows"]}
    assert (rows["none"]["tuned"], rows["vm"]["tuned"]) == (0.1, 0.003)
    text = (tmp_path / "g" / "table.md").read_text()
    assert "## Tuning" in text and "| vm | 0.001: 0.400, 0.003: 0.900, 0.01: 0.400 | 0.003 |" in text
    assert "| none | 0.01: 0.400, 0.03: 0.400, 0.1: 0.900, 0.3: 0.400 | 0.1 |" in text
    summary = json.loads((tmp_path / "g" / "compare.json").read_text())
    assert summary["tuning"]["defences"]["none"]["chosen"] == 0.1
    # Run again: everything is done, nothing reruns.
    ran.clear()
    assert not run_grid(load_grid(grid_file(tmp_path, TUNED), out=str(tmp_path)),
                        progress=False)["ran"] and ran == []


def test_only_runs_the_named_defences_and_the_table_keeps_the_rest_as_missing(
        tmp_path, monkeypatch, capsys):
    import fedisguise.experiment as experiment
    import run

    ran = []

    def fake_run(cfg, force=False):
        ran.append(cfg.experiment.name)
        record = fake_record(0.5, [1.0, 1.0])
        record["final"]["validation_accuracy"] = cfg.train.lr  # the largest lr wins
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "metrics.json").write_text(json.dumps(record))
        return {"status": "finished"}

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    path = grid_file(tmp_path, TUNED)
    outcome = run_grid(load_grid(path, out=str(tmp_path)), progress=False, only=["vm"])
    assert ran and all(name.startswith("vm--") for name in ran)
    # vm's three tuning runs, two more past the top (the largest always wins: 0.03, 0.1,
    # then the bound), then its 2 attacks x 2 seeds
    assert len(ran) == 3 + 2 + 4
    assert ran[3:5] == ["vm--tune-0.03--seed0", "vm--tune-0.1--seed0"]
    assert sorted(outcome["missing"]) == sorted(f"none--{a}--seed{s}" for a in ("mia", "gi")
                                                for s in (0, 1))
    rows = {r["defence"]: r for r in outcome["rows"]}
    assert rows["vm"]["cells"] == 4 and rows["none"]["cells"] == 0
    # The rest later, through the CLI: vm's cells are finished and stay as they are.
    ran.clear()
    assert run.main(["--compare", str(path), "--out", str(tmp_path), "--only", "none"]) == 0
    assert ran and all(name.startswith("none--") for name in ran)
    out = capsys.readouterr().out  # 3 + 2 tuning runs (0.3, 1), 4 cells
    assert "9 cells run, 0 already finished, 0 failed" in out
    table = (tmp_path / "g" / "table.md").read_text()
    assert "| vm | 0.001: 0.001, 0.003: 0.003, 0.01: 0.010, 0.03: 0.030, 0.1: 0.100 | " \
        "0.1 (tuning at bound) |" in table
    assert not json.loads((tmp_path / "g" / "compare.json").read_text())["missing"]
    # A label the grid lacks, or --only without a grid, is refused before anything runs.
    ran.clear()
    assert run.main(["--compare", str(path), "--out", str(tmp_path), "--only", "vm,nope"]) == 2
    assert "not a defence of grid g; its defences: none, vm" in capsys.readouterr().err
    assert run.main(["--config", str(REPO / "configs" / "fedavg.toml"), "--only", "vm"]) == 2
    assert "--only picks defences of a comparison grid" in capsys.readouterr().err
    assert ran == []


@pytest.mark.parametrize("body, match", [
    ("[compare.tune]\nkey = 'train.lr'\nvalues = [0.1, 0.3]\n", "at least three distinct"),
    ("[compare.tune]\nkey = 'train.lr'\nvalues = [0.01, 0.02, 0.1]\n", "must be log-spaced"),
    ("[compare.tune]\nkey = 'train.lr'\nvalues = [0, 0.1, 0.2]\n", "positive"),
    ("[compare.tune]\nkey = 'train.nope'\nvalues = [0.1, 0.2, 0.4]\n",
     "numeric training setting"),
    ("[compare.tune]\nkey = 'train.lr'\nvalues = [0.1, 0.2, 0.4]\nvalidation = 0.6\n",
     "validation must be a fraction"),
    ("[compare.tune]\nkey = 'train.lr'\nvalues = [0.1, 0.2, 0.4]\nextend = -1\n",
     "extend must be a non-negative integer"),
    ("[compare.tune]\nkey = 'train.lr'\nvalues = [0.1, 0.2, 0.4]\nbogus = 1\n", "unknown key"),
])
def test_bad_tuning_is_refused(tmp_path, body, match):
    with pytest.raises(ConfigError, match=match):
        load_grid(grid_file(tmp_path, "[compare]\nname = 'g'\n[[compare.defence]]\n"
                            "label = 'none'\n" + body))


def test_a_defence_that_sets_the_tuned_key_keeps_its_value(tmp_path):
    grid = load_grid(grid_file(tmp_path, "[compare]\nname = 'g'\n[compare.tune]\n"
                               "key = 'train.lr'\nvalues = [0.01, 0.03, 0.1]\n"
                               "[[compare.defence]]\nlabel = 'none'\n[[compare.defence]]\n"
                               "label = 'fixed'\ntrain = {lr = 0.2}\n"), out=str(tmp_path))
    assert {c.defence for c in grid.tune_cells} == {"none"}
    assert [c.config.train.lr for c in grid.cells if c.defence == "fixed"] == [0.2]


def test_tune_values_without_a_tuning_table_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no \\[compare.tune\\]"):
        load_grid(grid_file(tmp_path, "[compare]\nname = 'g'\n[[compare.defence]]\n"
                            "label = 'none'\ntune = [0.1, 0.3, 1.0]\n"))


def test_plateau_is_the_first_round_from_which_the_last_five_stay_near_the_best():
    from fedisguise.grids.figures import plateau_round

    rising = [0.5, 0.6, 0.7, 0.8, 0.85, 0.86, 0.862, 0.861, 0.863, 0.862, 0.864]
    assert plateau_round(rising) == 10  # round 9 still holds 0.85 in its last five
    assert plateau_round(rising[:8]) is None  # still climbing when the run ends
    # A late jump restarts the count: an early flat stretch is not a plateau.
    assert plateau_round([0.5] * 6 + [0.6] * 5) == 11
    assert plateau_round([0.5] * 4) is None and plateau_round([0.5, None, 0.5, 0.5, 0.5]) is None
