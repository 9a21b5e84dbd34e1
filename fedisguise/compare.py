"""Comparison runs: defences × attack settings × seeds, one normal run per cell, one table.

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
(fedisguise.more_seeds); the tables count every finished seed and name the rows that took more.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import re
import statistics
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

# Importing attacks.base loads the attacks package, whose modules register every attack.
from fedisguise import frontier, more_seeds, report, strongest
from fedisguise.attacks.base import Figure, figure_catalogue, finite
from fedisguise.config import SECTIONS, STRUCTURED_KEYS, Config, ConfigError, read_toml
from fedisguise.intervals import difference_halfwidth
from fedisguise.references import is_plain, references
from fedisguise.tuning import (
    BASE,
    Sweep,
    Tuning,
    chosen_text,
    literal,
    parse_tuning,
    sweep,
    tune_values,
    tuning_markdown,
)

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
COMPARE_KEYS = {"name", "seeds", "more_seeds", "base", "defence", "attack", "tune"}
OWNED_BY_GRID = ("experiment.name", "experiment.seed", "experiment.out")
# table.csv: one row per defence; each column with its *_std (empty with fewer than two
# values). Utility columns come first and last; the attack columns between them are built
# from the attack registry (`figure_catalogue`), for the attacks some cell ran.
UTILITY_HEAD = ("accuracy", "accuracy_gap", "visual_privacy", "misusability", "epsilon")
UTILITY_TAIL = ("seconds_per_round", "time_ratio", "first_round_seconds")
UTILITY_FIGURES = ("accuracy", "visual_privacy", "misusability", "epsilon",
                   "seconds_per_round", "first_round_seconds")
# What the strongest attack recovers of the client's originals: `best.<figure>`, over every
# attack that declares the figure; `best.attack` names the one that reached the best BEST_BY.
BEST_FIGURES = {"psnr_vs_original": "best PSNR vs original (dB)",
                "ssim_vs_original": "best SSIM vs original",
                "recognisability": "best recognisability"}
BEST_BY = "psnr_vs_original"
N = "@n"  # `<figure>@n`: how many images or candidates a cell's figure is over
# The figures of the first table, beside accuracy and its gap: what the answer is made of.
MAIN_FIGURES = (f"best.{BEST_BY}", "best.recognisability", "membership.auc")
BEST_ATTACK = "best.attack"


@dataclass(frozen=True)
class Entry:
    """One value of a grid axis: a label and the partial config it merges into the base."""

    label: str
    changes: dict[str, Any]
    utility: bool = True
    curve: str = ""  # defences: the frontier curve it is a point of (fedisguise.frontier)
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
    # with it as the finished runs call for them (fedisguise.tuning)
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
        DP, no faults: fedisguise.references.is_plain), else the first."""
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
        if tuning.key in _keys(defence.changes):
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
        if attack.tuned and tuning.key in _keys(attack.changes):
            raise ConfigError(f"{path}: attack setting {attack.label!r} sets {tuning.key} "
                              f"itself and asks for it to be tuned (`tune = true`); choose one")
    return tuning


def sweep_label(defence: str, regime: str) -> str:
    """A sweep's name in the tables: `defence`, or `defence@setting` for an attack setting
    whose regime is tuned apart."""
    return defence if regime == BASE else f"{defence}@{regime}"


def sweeps(grid: Grid) -> dict[tuple[str, str], Sweep]:
    """Per tuned (defence, regime): its sweep as far as the finished tuning runs decide it."""
    if grid.tuning is None:
        return {}

    def outcome(cell: Cell) -> tuple[bool, float | None]:
        if not cell_done(cell):
            return False, None
        record = json.loads((cell.config.run_dir / "metrics.json").read_text())
        if diverged(record):  # marked done by _run_cells: the worst value
            return True, None
        return True, finite((record.get("final") or {}).get("validation_accuracy"))

    def allowed(defence: str, regime: str, value: float) -> bool:
        try:
            grid.tune_cell(defence, regime, value)
        except ConfigError:
            return False
        return True

    return {
        (defence, regime): sweep(
            start, grid.tuning.extend,
            lambda v, d=defence, r=regime: outcome(grid.tune_cell(d, r, v)),
            lambda v, d=defence, r=regime: allowed(d, r, v))
        for (defence, regime), start in grid.tune_start.items()}


def tune_choices(grid: Grid) -> dict[str, dict[str, Any]]:
    """Per sweep (`sweeps`): every value's final validation accuracy (None: diverged), the
    values not run yet, the chosen value (None until the sweep is decided) and whether it
    sits at a bound."""
    return {sweep_label(*key): s.summary() for key, s in sweeps(grid).items()}


def pending_tune_cells(grid: Grid) -> list[Cell]:
    """The tuning runs the sweeps need next: their first values, then each value past an
    end where the best sits there."""
    if grid.tuning is None:
        return []
    return [grid.tune_cell(defence, regime, v)
            for (defence, regime), s in sweeps(grid).items() for v in s.pending]


def resolve_tuning(grid: Grid) -> tuple[Grid, dict[str, dict[str, Any]]]:
    """The grid with each tuned defence's chosen value in its cells (the cells of a defence
    whose tuning has not finished keep the base value), and the choices. A cell of an
    attack setting tuned apart takes that regime's choice; one that sets the key keeps it."""
    if grid.tuning is None:
        return grid, {}
    choices, key = tune_choices(grid), grid.tuning.key
    own = {a.label for a in grid.attacks if key in _keys(a.changes)}

    def tuned(cell: Cell) -> Cell:
        chosen = choices.get(tuned_label(grid, cell), {}).get("chosen")
        if chosen is not None and cell.attack not in own:
            cell = replace(cell, config=cell.config.with_overrides([f"{key}={literal(chosen)}"]))
        return cell

    return replace(grid, cells=[tuned(c) for c in grid.cells],
                   extra_cells=tuple(tuned(c) for c in grid.extra_cells)), choices


def tuned_label(grid: Grid, cell: Cell) -> str:
    """The sweep whose choice a cell takes (`defence` or `defence@setting`)."""
    tuned = {a.label for a in grid.attacks if a.tuned}
    return sweep_label(cell.defence, cell.attack if cell.attack in tuned else BASE)


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


def _keys(changes: dict[str, Any]) -> set[str]:
    return {f"{k}.{n}" for k, v in changes.items() if k in SECTIONS and isinstance(v, dict)
            for n in v} | {k for k in changes if k not in SECTIONS}


def _check_disjoint(path: Path, defence: Entry, attack: Entry) -> None:
    """A key both axes set has no single meaning in the cell: refuse rather than pick one."""
    both = sorted(_keys(defence.changes) & _keys(attack.changes))
    if both:
        raise ConfigError(f"{path}: defence {defence.label!r} and attack setting "
                          f"{attack.label!r} both set {both}")


# ---- running ----------------------------------------------------------------------------
def _comparable(cfg: Config) -> dict[str, Any]:
    """What decides whether a finished cell still answers the grid's question."""
    settings = cfg.to_dict()
    settings["experiment"].pop("out")
    # where and how the processes run does not change what a cell answers
    settings.pop("deployment")
    settings["resources"].pop("ray_address")
    return settings


def _same_settings(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    """A finished cell's settings against the grid's: equal, except that a setting added to
    the config since the cell ran counts as equal while it holds its default (so that a new
    option does not invalidate every finished cell of every grid)."""
    default = _comparable(Config())
    current = {section: ({k: v for k, v in values.items()
                          if k in stored.get(section, {}) or v != default[section].get(k)}
                         if isinstance(values, dict) and isinstance(stored.get(section), dict)
                         else values)
               for section, values in current.items()}
    return stored == current


def cell_done(cell: Cell) -> bool:
    """Finished with exactly this config (its marker is written only after a whole run, or
    a tuning run that diverged)."""
    marker = cell.config.run_dir / "cell.json"
    if not marker.is_file() or not (cell.config.run_dir / "metrics.json").is_file():
        return False
    try:
        stored = json.loads(marker.read_text()).get("config")
    except json.JSONDecodeError:
        return False
    return isinstance(stored, dict) and _same_settings(stored, _comparable(cell.config))


def selected_defences(grid: Grid, only: Iterable[str] | None) -> set[str]:
    """The defences whose cells a run covers: all of them, or the labels in `only` (each one
    the grid's own, else a ConfigError naming the grid's labels)."""
    labels = [d.label for d in grid.defences]
    if only is None:
        return set(labels)
    chosen = [label.strip() for label in only if label.strip()]
    unknown = [label for label in chosen if label not in labels]
    if unknown or not chosen:
        raise ConfigError(f"{grid.source}: --only {unknown or list(only)}: not a defence of "
                          f"grid {grid.name}; its defences: {', '.join(labels)}")
    return set(chosen)


def run_grid(grid: Grid, progress: bool = True,
             only: Iterable[str] | None = None) -> dict[str, Any]:
    """Run every unfinished cell (of the defences in `only`, when given: selected_defences),
    then write table.md, table.csv, cells.csv and the plots from every finished cell of the
    grid; the cells not run yet are listed as missing, never dropped.

    A cell that fails is reported (and left unfinished for the next run) while the others go
    on; the return value lists it under `failed`.
    """
    from fedisguise.experiment import run_experiment

    chosen = selected_defences(grid, only)
    grid.out.mkdir(parents=True, exist_ok=True)
    skipped, ran, failed = [], [], {}
    bar = tqdm(total=sum(c.defence in chosen for c in (*grid.tune_cells, *grid.cells)),
               desc=f"compare {grid.name}", unit="cell", disable=not progress)
    # Tuning first: each sweep's first values, then, round by round, a value past an end
    # where the best sits there (fedisguise.tuning); a run that fails is not retried here.
    initial = [c for c in grid.tune_cells if c.defence in chosen]
    tried = {c.name for c in initial if cell_done(c)}
    skipped += sorted(tried)
    bar.update(len(tried))
    while cells := [c for c in pending_tune_cells(grid)
                    if c.defence in chosen and c.name not in tried]:
        bar.total += len([c for c in cells if c.name not in {i.name for i in initial}])
        _run_cells(cells, bar, run_experiment, skipped, ran, failed, tuning=True)
        tried |= {c.name for c in cells}
    grid, choices = resolve_tuning(grid)  # the tuned values are known now
    cells = [c for c in grid.cells if c.defence in chosen]
    untuned = [c for c in cells if choices.get(tuned_label(grid, c), {"chosen": 0})["chosen"]
               is None]
    for cell in untuned:
        failed[cell.name] = "its defence's tuning runs did not all finish"
        bar.update(1)
    _run_cells([c for c in cells if c not in untuned], bar, run_experiment, skipped, ran,
               failed)
    # More seeds where the grid's own leave a row's gap open (fedisguise.more_seeds): the
    # chosen rows so called, and their references, even where --only leaves those out.
    called, references_of = seeds_called(grid), row_references(grid)
    wanted = {label for label in called if label in chosen}
    wanted |= {references_of[label] for label in wanted if references_of[label] in called}
    extra = [c for c in grid.extra_cells if c.defence in wanted]
    if extra:
        for label in sorted(wanted):
            tqdm.write(f"seeds {grid.more_seeds} for {label}: {called[label]}")
        bar.total += len(extra)
        _run_cells(extra, bar, run_experiment, skipped, ran, failed)
    bar.close()
    table = write_table(grid)
    return {"ran": ran, "skipped": skipped, "failed": failed, **table}


def finished(cells: Iterable[Cell]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The finished cells' records (metrics.json) and figures, by cell name."""
    records, figures = {}, {}
    for cell in cells:
        if cell_done(cell):
            records[cell.name] = json.loads((cell.config.run_dir / "metrics.json").read_text())
            figures[cell.name] = cell_figures(records[cell.name])
    return records, figures


def seeds_called(grid: Grid, figures: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The rows that take compare.more_seeds, and why, decided on the base seeds' finished
    cells alone (fedisguise.more_seeds); `figures`: the finished cells' figures where the
    caller has read them already."""
    if not grid.more_seeds:
        return {}
    grid, _ = resolve_tuning(grid)
    base = replace(grid, extra_cells=())
    figures = finished(base.cells)[1] if figures is None else figures
    plain = {c.defence for c in grid.cells if is_plain(c.config)}
    return more_seeds.called_for(
        table_rows(base, {c.name: figures[c.name] for c in base.cells if c.name in figures}),
        len(grid.seeds), plain)


def diverged(record: dict[str, Any]) -> bool:
    """A run that ended because every client's training turned non-finite: for a tuning
    run, a finished measurement of a value too large (the server refuses non-finite replies,
    so such a run fails in the round after it diverged)."""
    return record.get("status") == "failed" and "non-finite values" in str(record.get("error"))


def _run_cells(cells: list[Cell], bar: Any, run_experiment: Any, skipped: list[str],
               ran: list[str], failed: dict[str, str], tuning: bool = False) -> None:
    for cell in cells:
        bar.update(1)
        bar.set_postfix_str(cell.name)
        if cell_done(cell):
            skipped.append(cell.name)
            continue
        marker = cell.config.run_dir / "cell.json"
        marker.unlink(missing_ok=True)
        try:  # an unfinished cell's folder holds no finished result: it is replaced
            record = run_experiment(cell.config, force=True)
        except Exception as err:  # noqa: BLE001 - one broken cell must not lose the others
            failed[cell.name] = f"{type(err).__name__}: {err}"
            tqdm.write(f"cell {cell.name} failed:\n{traceback.format_exc()}")
            continue
        if record.get("status") != "finished" and not (tuning and diverged(record)):
            failed[cell.name] = f"{record.get('status')}: {record.get('error')}"
            tqdm.write(f"cell {cell.name} {failed[cell.name]}")
            continue
        if record.get("status") != "finished":
            tqdm.write(f"tuning run {cell.name} diverged: the worst value of its sweep")
        marker.write_text(json.dumps({"config": _comparable(cell.config),
                                      "finished_at": datetime.now(UTC).isoformat(
                                          timespec="seconds")}, indent=2) + "\n")
        ran.append(cell.name)


# ---- the table --------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """An attack column: `<kind>.<figure>` for a figure a registered attack declares, or
    `best.<figure>` across attacks; the figure gives the title and which way is stronger."""

    key: str
    kind: str  # the attack's registered name, or "best"
    figure: Figure


def attack_kind(label: str, entry: Mapping[str, Any]) -> str:
    """The registered attack behind a metrics.json label (`name`, or `name-<i>` for a later
    one of the same name); records from before attacks named themselves have only the label."""
    kind = entry.get("attack")
    return kind if isinstance(kind, str) else re.sub(r"-\d+$", "", label)


def _strongest(figure: Figure, candidates: Iterable[tuple[float | None, Any]]
               ) -> tuple[float, Any] | None:
    """The strongest (value, who reached it) by the figure's orientation; the first on a tie."""
    top = None
    for value, who in candidates:
        if value is not None and (top is None or figure.stronger(value, top[0])):
            top = (value, who)
    return top


def best_figures(catalogue: Mapping[str, tuple[Figure, ...]]
                 ) -> dict[str, tuple[Figure, list[str]]]:
    """Each cross-attack figure (BEST_FIGURES) some attack declares, oriented as they declare
    it, with the attacks that declare it."""
    best = {}
    for name, title in BEST_FIGURES.items():
        declared = {kind: f for kind, figures in catalogue.items() for f in figures
                    if f.name == name}
        orientation = {f.higher_is_stronger for f in declared.values()}
        if len(orientation) > 1:
            raise ValueError(f"attacks disagree on whether a higher {name} is stronger: "
                             f"{ {k: f.higher_is_stronger for k, f in declared.items()} }")
        if declared:
            best[name] = (Figure(name, title, orientation.pop()), list(declared))
    return best


def cell_figures(record: dict[str, Any]) -> dict[str, Any]:
    """One cell's figures: utility; `<kind>.<figure>` for every figure each attack that ran
    declares (several of one kind in a cell: the strongest counts); `best.*` over all kinds.

    Attacks that reported "not applicable" contribute nothing.
    """
    final, catalogue = record["final"], figure_catalogue()
    ran: dict[str, list[Mapping[str, Any]]] = {}
    for label, entry in (record.get("attacks") or {}).items():
        if entry.get("status", "ok") == "ok":
            ran.setdefault(attack_kind(label, entry), []).append(entry)
    privacy = record.get("privacy") or {}
    # Round 1 also starts the clients and disguises their data once; later rounds are the
    # steady cost of training on it. Both are reported, the steady one in the table.
    seconds = [r["round_seconds"] for r in record["rounds"]]
    steady = seconds[1:] or seconds
    figures: dict[str, Any] = {
        "accuracy": final["test_accuracy"],
        "accuracy_per_round": [r["test_accuracy"] for r in record["rounds"]],
        "visual_privacy": privacy.get("visual_privacy"),
        # An undisguised model is used on plain images as it is: misusability = its accuracy.
        "misusability": privacy.get("misusability", final["plain_test_accuracy"]),
        "epsilon": final.get("epsilon"),
        "seconds_per_round": statistics.fmean(steady) if steady else None,
        "first_round_seconds": seconds[0] if seconds else None,
    }
    for kind, declared in catalogue.items():
        for figure in declared if kind in ran else ():
            top = _strongest(figure, ((finite(e.get(figure.name)), e) for e in ran[kind]))
            figures[f"{kind}.{figure.name}"] = None if top is None else top[0]
            # how many images (or candidates) the figure is over: `n` in the tables
            figures[f"{kind}.{figure.name}{N}"] = None if top is None else top[1].get("n")
    for name, (figure, kinds) in best_figures(catalogue).items():
        top = _strongest(figure, ((figures.get(f"{k}.{name}"), k) for k in kinds))
        figures[f"best.{name}"] = None if top is None else top[0]
        figures[f"best.{name}{N}"] = None if top is None else figures[f"{top[1]}.{name}{N}"]
        if name == BEST_BY:
            figures[BEST_ATTACK] = None if top is None else top[1]
    return figures


def attack_columns(figures: Iterable[Mapping[str, Any]]) -> list[Column]:
    """The attack columns with a value in at least one of these cells' figures: `best.*`
    first, then each registered attack's declared figures, in registry order."""
    figures, catalogue = list(figures), figure_catalogue()
    columns = [Column(f"best.{name}", "best", figure)
               for name, (figure, _) in best_figures(catalogue).items()]
    columns += [Column(f"{kind}.{figure.name}", kind, figure)
                for kind, declared in catalogue.items() for figure in declared]
    return [c for c in columns if any(f.get(c.key) is not None for f in figures)]


def _stats(values: list[float | None]) -> tuple[float | None, float | None, int]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, 0
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std, len(values)


def _counts(values: Iterable[int | None]) -> list[int]:
    """The distinct image (or candidate) counts behind a row's figure, ascending."""
    return sorted({int(v) for v in values if v is not None})


def table_rows(grid: Grid, figures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per defence: mean/std over its finished cells (utility figures from utility cells, an
    attack's figures from every cell that ran it). `best.*`: per seed, the strongest over
    every attack setting run against the defence; then mean/std over seeds."""
    any_utility = any(a.utility for a in grid.attacks)
    columns = attack_columns(figures.values())
    rows = []
    for defence in grid.defences:
        cells = [c for c in grid.all_cells if c.defence == defence.label
                 and c.name in figures]
        util = [figures[c.name] for c in cells if c.utility or not any_utility]
        every = [figures[c.name] for c in cells]
        row: dict[str, Any] = {"defence": defence.label, "curve": defence.curve,
                               "cells": len(cells)}
        for key in UTILITY_FIGURES:
            row[key], row[f"{key}_std"], row[f"{key}_n"] = _stats([f[key] for f in util])
        for column in columns:
            key = column.key
            if column.kind != "best":
                row[key], row[f"{key}_std"], row[f"{key}_n"] = _stats(
                    [f.get(key) for f in every])
                row[f"{key}{N}"] = _counts(f.get(f"{key}{N}") for f in every
                                           if f.get(key) is not None)
                continue
            tops = [_strongest(column.figure, ((figures[c.name].get(key),
                                                (figures[c.name].get(BEST_ATTACK),
                                                 figures[c.name].get(f"{key}{N}")))
                                               for c in cells if c.seed == seed))
                    for seed in (*grid.seeds, *grid.more_seeds)]
            tops = [t for t in tops if t is not None]
            row[key], row[f"{key}_std"], row[f"{key}_n"] = _stats([v for v, _ in tops])
            row[f"{key}{N}"] = _counts(n for _, (_, n) in tops)
            if key == f"best.{BEST_BY}":
                reached = Counter(who for _, (who, _) in tops).most_common()
                row[BEST_ATTACK] = " / ".join(who for who, _ in reached) or None
        # each seed's own, so that one seed that never learned is seen as such, not only
        # as a wide interval
        row["accuracy_seeds"] = {str(c.seed): figures[c.name]["accuracy"] for c in cells
                                 if (c.utility or not any_utility)
                                 and figures[c.name]["accuracy"] is not None}
        rounds = [f["accuracy_per_round"] for f in util]
        row["accuracy_per_round"] = [_stats(list(r))[:2] for r in zip(*rounds, strict=False)]
        rows.append(row)
    by_label = {r["defence"]: r for r in rows}
    ref_of = row_references(grid)
    for row in rows:
        # the gap against the plain row that trains the same way (fedisguise.references)
        row["reference"] = ref_of[row["defence"]]
        ref = by_label.get(row["reference"], {})
        row["accuracy_gap"] = (None if row["accuracy"] is None or ref.get("accuracy") is None
                               else row["accuracy"] - ref["accuracy"])
        row["accuracy_gap_ci"] = None if row["accuracy_gap"] is None else difference_halfwidth(
            row["accuracy_std"], row["accuracy_n"], ref["accuracy_std"], ref["accuracy_n"])
        # more accurate than its own reference beyond the interval: a tuning or training
        # artefact to look into, never a gain a disguise buys
        row["above_reference"] = bool(
            row["defence"] != row["reference"] and row["accuracy_gap"] is not None
            and row["accuracy_gap_ci"] is not None
            and row["accuracy_gap"] > row["accuracy_gap_ci"])
        time_ref = by_label[grid.reference]
        row["time_ratio"] = (None if not row["seconds_per_round"]
                             or not time_ref["seconds_per_round"]
                             else row["seconds_per_round"] / time_ref["seconds_per_round"])
        row["accuracy_gap_std"] = row["time_ratio_std"] = None
    frontier.mark_dominated(rows)
    return rows


def row_references(grid: Grid) -> dict[str, str | None]:
    """Per defence, the plain row its accuracy gap is against (fedisguise.references)."""
    any_utility = any(a.utility for a in grid.attacks)
    configs = {d.label: next(c.config for c in grid.cells if c.defence == d.label
                             and (c.utility or not any_utility)) for d in grid.defences}
    return references(grid.defences, configs, grid.reference,
                      grid.tuning.key if grid.tuning else None)


PLATEAU_WINDOW, PLATEAU_TOLERANCE = 5, 0.005


def plateau_round(accuracies: list[float | None]) -> int | None:
    """The first round from which training has plateaued for good: at it and at every later
    round, the last PLATEAU_WINDOW rounds' accuracies are all within PLATEAU_TOLERANCE
    (0.5 points) of the best so far. None if the run ends before that holds."""
    if len(accuracies) < PLATEAU_WINDOW or any(a is None for a in accuracies):
        return None
    holds = []
    for end in range(PLATEAU_WINDOW, len(accuracies) + 1):
        best = max(accuracies[:end])
        holds.append(min(accuracies[end - PLATEAU_WINDOW:end]) >= best - PLATEAU_TOLERANCE)
    if not holds[-1]:
        return None
    first = len(holds) - 1
    while first > 0 and holds[first - 1]:
        first -= 1
    return first + PLATEAU_WINDOW


def plateau_texts(rows: list[dict[str, Any]]) -> list[str]:
    """Per row with a learning curve: `label round N`, or `label not within R rounds`."""
    texts = []
    for r in rows:
        curve = [m for m, _ in r.get("accuracy_per_round") or []]
        if curve:
            at = plateau_round(curve)
            texts.append(f"{r['defence']} " + (f"round {at}" if at else
                                               f"not within {len(curve)} rounds"))
    return texts


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
    compare.json alone (fedisguise.results_page)."""
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
        f"settings, data split, model, strategy, rounds: fedisguise/references.py; "
        f"`{grid.reference}` for a plain row), ± its 95 % interval over seeds (Welch), "
        f"flagged \"above its reference\" where the row beats it beyond that; time ratio "
        f"against `{grid.reference}`. – : not defined or not measured "
        f"(visual privacy needs disguised images; ε needs DP). \"dominated by\": the "
        f"settings at least as accurate that let every shared attack figure (best PSNR, best "
        f"recognisability, membership AUC) reach at most as much, one of them strictly "
        f"(fedisguise/frontier.py); – where no attack was measured.", ""]
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
                      f"gap's sign open (fedisguise/more_seeds.py): " + "; ".join(
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
