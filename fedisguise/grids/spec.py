"""Comparison grids: defences × attack settings × seeds, one normal run per cell, one table.

This module reads a grid (the compare file) into its cells; fedisguise.grids.tuned picks each
defence's tuned value, .runner runs the cells, .figures turns finished cells into rows, and
.table writes table.md, table.csv, the plots and report.html.

A compare file is an ordinary experiment config (the base every cell starts from; with
`[compare] base = "other.toml"` it inherits that file first) plus a `[compare]` table:

    [compare]
    name = "compare-smoke"        # cells in <out>/<name>/<cell>/, the table beside them
    seeds = [0, 1]
    more_seeds = [2, 3]           # optional: for rows whose gap the seeds leave open

    [[compare.defence]]           # a label plus the config keys the defence changes
    label = "visualmixer"
    disguise = "visualmixer"

    [[compare.attack]]            # a label, the attacks, and the training they assume
    label = "gi-fedsgd"
    attacks = [{name = "gradient_inversion", round = 1, client = 0}]
    train = {local_steps = 1, batch_size = 1}

Each cell is a whole run (results/<name>/<defence>--<attack>--seed<k>/ with its own
metrics.json, rounds.csv, images and summary.md), so a reader can open any figure's source.
A cell whose config is unchanged since it finished is skipped when the grid runs again.

Fair tuning: with `[compare.tune]` every defence gets its own value of one training
parameter (its learning rate, say), chosen on validation data, never on the test set:

    [compare.tune]
    key = "train.lr"
    values = [0.01, 0.02, 0.05, 0.1]  # a defence entry's own `tune = [...]` replaces them
    validation = 0.1                  # data.validation of the tuning runs
    seed = 0                          # default: the first of compare.seeds
    rounds = 0                        # 0 = the cells' own experiment.rounds

Before any other cell, one tuning run per defence and value (`<defence>--tune-<value>`, no
attacks, that fraction of each client's own training images held out) trains the base
training; the value with the best final validation accuracy then goes into every cell of
the defence (an attack setting that sets the key itself keeps its own). A defence entry that
sets the key itself is not tuned. The table records the chosen value and the scores.

Utility figures (accuracy, privacy, ε, time) come from the cells of attack settings that keep
the base training ("utility" settings: only `attacks` given); attack figures from every cell
that ran that attack. An attack setting that changes training (FedSGD on one image for
gradient inversion, say) thus prices the attack in its own regime without distorting accuracy.

More seeds where they decide something: a row whose gap against its reference has a 95 %
interval wider than the gap itself on `seeds` also runs `more_seeds`, and so does its reference
(fedisguise.grids.more_seeds); the tables count every finished seed and name the rows that took
more.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedisguise.config import SECTIONS, STRUCTURED_KEYS, Config, ConfigError, read_toml
from fedisguise.grids import frontier
from fedisguise.grids.references import is_plain
from fedisguise.grids.tuning import BASE, Tuning, literal, parse_tuning, tune_values

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
COMPARE_KEYS = {"name", "seeds", "more_seeds", "base", "defence", "attack", "tune"}
OWNED_BY_GRID = ("experiment.name", "experiment.seed", "experiment.out")

@dataclass(frozen=True)
class Entry:
    """One value of a grid axis: a label and the partial config it merges into the base."""

    label: str
    changes: dict[str, Any]
    utility: bool = True
    curve: str = ""  # defences: the frontier curve it is a point of (fedisguise.grids.frontier)
    tune: tuple[float, ...] | None = None  # defences: their own values of compare.tune.key
    tuned: bool = False  # attack settings: `tune = true`, its training regime tuned apart
    # defences: the attack settings it is crossed with (`attack_settings`), None = every one
    settings: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Cell:
    defence: str
    attack: str
    seed: int
    utility: bool
    config: Config

    @property
    def name(self) -> str:
        return f"{self.defence}--{self.attack}--seed{self.seed}"


@dataclass(frozen=True)
class Grid:
    name: str
    source: Path
    out: Path
    seeds: list[int]
    defences: list[Entry]
    attacks: list[Entry]
    cells: list[Cell]
    tuning: Tuning | None = None
    tune_cells: tuple[Cell, ...] = ()  # each sweep's first values, run first
    # (defence, regime, value) -> its tuning cell; the sweeps' further values are built
    # with it as the finished runs call for them (fedisguise.grids.tuning)
    tune_cell: Callable[[str, str, float], Cell] | None = field(default=None, compare=False)
    tune_start: dict[tuple[str, str], tuple[float, ...]] = field(default_factory=dict)
    more_seeds: list[int] = field(default_factory=list)
    extra_cells: tuple[Cell, ...] = ()  # every defence's cells for more_seeds, run on call

    @property
    def all_cells(self) -> list[Cell]:
        """The cells of every seed: a table counts those of them that finished."""
        return [*self.cells, *self.extra_cells]

    @property
    def reference(self) -> str:
        """The defence others are measured against: the first plain one (no disguise, no
        DP, no faults: fedisguise.grids.references.is_plain), else the first."""
        plain = {c.defence for c in self.cells if is_plain(c.config)}
        return next((d.label for d in self.defences if d.label in plain),
                    self.defences[0].label)


# ---- loading ----------------------------------------------------------------------------
def load_grid(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
              out: str | None = None) -> Grid:
    """Read a compare file and build (and validate) every cell's config before anything runs.

    `overrides` (`section.key=value`, as `--set`) apply to every cell; `out` replaces the
    results folder the cells go under.
    """
    path = Path(path)
    owned = [o for o in overrides if o.partition("=")[0].strip() in OWNED_BY_GRID]
    if owned:
        raise ConfigError(f"{owned}: a grid sets every cell's name, seed (compare.seeds) and "
                          f"output folder (--out) itself")
    raw = read_toml(path)
    spec = raw.pop("compare", None)
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a compare file needs a [compare] table (name, seeds, "
                          f"[[compare.defence]], [[compare.attack]])")
    unknown = sorted(set(spec) - COMPARE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown [compare] key(s) {unknown}; valid: "
                          f"{sorted(COMPARE_KEYS)}")
    if spec.get("base"):
        base_path = (path.parent / spec["base"]).resolve()
        base = read_toml(base_path)
        if "compare" in base:
            raise ConfigError(f"{path}: base {base_path} is itself a compare file")
        raw = _merge(base, raw)
    name = spec.get("name")
    if not isinstance(name, str) or not LABEL.match(name):
        raise ConfigError(f"{path}: compare.name must be a name of letters, digits, '_.+-', "
                          f"got {name!r}")
    seeds = spec.get("seeds", [raw.get("experiment", {}).get("seed", 0)])
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"{path}: compare.seeds must be a non-empty list of distinct "
                          f"integers, got {seeds!r}")
    extra_seeds = spec.get("more_seeds", [])
    if (not isinstance(extra_seeds, list)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in extra_seeds)
            or len(set(extra_seeds)) != len(extra_seeds) or set(extra_seeds) & set(seeds)):
        raise ConfigError(f"{path}: compare.more_seeds must be a list of distinct integers "
                          f"not in compare.seeds {seeds}, got {extra_seeds!r}")
    defences = _entries(path, spec.get("defence"), "defence")
    if not defences:
        raise ConfigError(f"{path}: the grid needs at least one [[compare.defence]]")
    attacks = _entries(path, spec.get("attack"), "attack") or [
        Entry("base", {"attacks": copy.deepcopy(raw.get("attacks", []))})]
    root = Path(out if out is not None else raw.get("experiment", {}).get("out", "results"))
    grid_out = (root / name).resolve()
    _check_settings(path, defences, attacks)
    tuning = _tuning(path, spec.get("tune"), seeds, defences, attacks)
    regimes = {BASE: {"attacks": []}} | {
        a.label: {**a.changes, "attacks": []} for a in attacks if a.tuned}

    def tune_cell(defence_label: str, regime: str, value: float) -> Cell:
        """The tuning run of a defence in a regime at one value: no attacks, a validation
        split held out, the tuning's seed and rounds."""
        defence = next(d for d in defences if d.label == defence_label)
        name = f"tune-{literal(value)}" if regime == BASE else f"tune-{regime}-{literal(value)}"
        return _built(path, Cell(defence.label, name, tuning.seed, False, Config()),
                      _merge(_merge(raw, defence.changes), regimes[regime]),
                      [*overrides, f"{tuning.key}={literal(value)}",
                       f"data.validation={tuning.validation!r}",
                       *([f"experiment.rounds={tuning.rounds}"] if tuning.rounds else [])],
                      grid_out)

    tune_start, tune_cells = {}, []
    for defence in defences if tuning else ():
        if tuning.key in changed_keys(defence.changes):
            continue  # the defence fixes the value itself
        for regime in regimes:
            if regime != BASE and not crossed(defence, regime):
                continue  # an attack setting this defence is not run under
            tune_start[defence.label, regime] = defence.tune or tuning.values
            tune_cells += [tune_cell(defence.label, regime, v)
                           for v in tune_start[defence.label, regime]]
    cells = []
    for seed in [*seeds, *extra_seeds]:
        for defence in defences:
            for attack in attacks:
                if not crossed(defence, attack.label):
                    continue
                _check_disjoint(path, defence, attack)
                cells.append(_built(
                    path, Cell(defence.label, attack.label, seed, attack.utility, Config()),
                    _merge(_merge(raw, defence.changes), attack.changes), list(overrides),
                    grid_out))
    base = [c for c in cells if c.seed in seeds]
    return Grid(name, path, grid_out, seeds, defences, attacks, base, tuning,
                tuple(tune_cells), tune_cell if tuning else None, tune_start, extra_seeds,
                tuple(c for c in cells if c.seed not in seeds))


def crossed(defence: Entry, attack: str) -> bool:
    """Whether the grid runs `defence` under the attack setting labelled `attack`."""
    return defence.settings is None or attack in defence.settings


def _check_settings(path: Path, defences: list[Entry], attacks: list[Entry]) -> None:
    """Each defence's attack_settings name the grid's own, and include a utility setting
    where the grid has one (its accuracy, gap and time come from there)."""
    labels = [a.label for a in attacks]
    utility = {a.label for a in attacks if a.utility}
    for d in defences:
        if d.settings is None:
            continue
        unknown = [s for s in d.settings if s not in labels]
        if unknown:
            raise ConfigError(f"{path}: defence {d.label!r}: attack_settings {unknown} are not "
                              f"attack settings of the grid; its settings: {', '.join(labels)}")
        if utility and not utility & set(d.settings):
            raise ConfigError(f"{path}: defence {d.label!r}: attack_settings {list(d.settings)} "
                              f"leave out every utility setting ({', '.join(sorted(utility))}), "
                              f"where its accuracy comes from")


def _built(path: Path, cell: Cell, merged: dict[str, Any], overrides: list[str],
           grid_out: Path) -> Cell:
    """The cell with its validated config: the merged tables, then the overrides, then the
    name, seed and folder the grid gives it."""
    try:
        cfg = Config.from_dict(merged).with_overrides(overrides)
        cfg = replace(cfg, experiment=replace(cfg.experiment, name=cell.name, seed=cell.seed,
                                              out=str(grid_out)))
        cfg.validate()
    except ConfigError as err:
        raise ConfigError(f"{path}: cell {cell.name}: {err}") from err
    return replace(cell, config=cfg)


def _tuning(path: Path, spec: Any, seeds: list[int], defences: list[Entry],
            attacks: list[Entry]) -> Tuning | None:
    if spec is None:
        if any(d.tune for d in defences) or any(a.tuned for a in attacks):
            raise ConfigError(f"{path}: an entry asks for tuning (`tune`) but there is no "
                              f"[compare.tune] naming the key it tunes")
        return None
    tuning = parse_tuning(f"{path}: compare.tune", spec, seeds[0])
    for attack in attacks:
        if attack.tuned and tuning.key in changed_keys(attack.changes):
            raise ConfigError(f"{path}: attack setting {attack.label!r} sets {tuning.key} "
                              f"itself and asks for it to be tuned (`tune = true`); choose one")
    return tuning

def _entries(path: Path, tables: Any, axis: str) -> list[Entry]:
    if tables is None:
        return []
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: compare.{axis} must be an array of tables "
                          f"([[compare.{axis}]])")
    entries, seen = [], set()
    for i, table in enumerate(tables):
        where = f"{path}: compare.{axis}[{i}]"
        changes = dict(table)
        label = changes.pop("label", None)
        if not isinstance(label, str) or not LABEL.match(label):
            raise ConfigError(f"{where}: label must be a name of letters, digits, '_.+-', "
                              f"got {label!r}")
        if label in seen:
            raise ConfigError(f"{where}: label {label!r} appears twice")
        seen.add(label)
        unknown = sorted(set(changes) - set(SECTIONS) - set(STRUCTURED_KEYS)
                         - {"utility", "curve", "tune", "attack_settings"})
        if unknown:
            raise ConfigError(f"{where} ({label}): unknown key(s) {unknown}; an entry holds "
                              f"config sections {list(SECTIONS)} and {list(STRUCTURED_KEYS)}")
        for owned in OWNED_BY_GRID:
            section, _, key = owned.partition(".")
            if key in changes.get(section, {}):
                raise ConfigError(f"{where} ({label}): {owned} is set by the grid "
                                  f"(cell name, compare.seeds, the output folder)")
        utility = changes.pop("utility", None)
        curve = changes.pop("curve", None)
        tune = changes.pop("tune", None)
        settings = changes.pop("attack_settings", None)
        if settings is not None and (axis != "defence" or not isinstance(settings, list)
                                     or not settings
                                     or not all(isinstance(a, str) for a in settings)):
            raise ConfigError(f"{where} ({label}): attack_settings is a [[compare.defence]] "
                              f"entry's non-empty list of [[compare.attack]] labels, got "
                              f"{settings!r}")
        if axis == "defence":
            if "attacks" in changes or utility is not None:
                raise ConfigError(f"{where} ({label}): attacks belong in [[compare.attack]]")
            if curve is not None and (not isinstance(curve, str) or not LABEL.match(curve)):
                raise ConfigError(f"{where} ({label}): curve must be a name of letters, "
                                  f"digits, '_.+-', got {curve!r}")
            entries.append(Entry(label, changes, curve=curve or frontier.curve_name(changes),
                                 tune=None if tune is None else tune_values(
                                     f"{where} ({label}).tune", tune),
                                 settings=None if settings is None else tuple(settings)))
            continue
        if tune is not None and not isinstance(tune, bool):
            raise ConfigError(f"{where} ({label}): an attack setting's tune is true or false "
                              f"(its training regime tuned apart); values belong to "
                              f"[[compare.defence]] entries")
        if curve is not None:
            raise ConfigError(f"{where} ({label}): curve belongs to [[compare.defence]] "
                              f"entries (the frontier a defence setting is a point of)")
        if not isinstance(changes.get("attacks"), list):
            raise ConfigError(f"{where} ({label}): an attack setting needs `attacks = [...]`")
        if utility is None:  # only attacks given: the base training, so its accuracy counts
            utility = set(changes) == {"attacks"}
        if not isinstance(utility, bool):
            raise ConfigError(f"{where} ({label}): utility must be true or false")
        if tune and (set(changes) == {"attacks"} or label == BASE):
            raise ConfigError(f"{where} ({label}): tune = true tunes an attack setting's own "
                              f"training regime apart, and this one has none (it changes "
                              f"only `attacks`), or is labelled {BASE!r}")
        entries.append(Entry(label, changes, utility, tuned=bool(tune)))
    return entries


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Sections merge key by key; `disguise` and `attacks` are replaced whole."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if key in SECTIONS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **copy.deepcopy(value)}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def changed_keys(changes: dict[str, Any]) -> set[str]:
    return {f"{k}.{n}" for k, v in changes.items() if k in SECTIONS and isinstance(v, dict)
            for n in v} | {k for k in changes if k not in SECTIONS}


def _check_disjoint(path: Path, defence: Entry, attack: Entry) -> None:
    """A key both axes set has no single meaning in the cell: refuse rather than pick one."""
    both = sorted(changed_keys(defence.changes) & changed_keys(attack.changes))
    if both:
        raise ConfigError(f"{path}: defence {defence.label!r} and attack setting "
                          f"{attack.label!r} both set {both}")
