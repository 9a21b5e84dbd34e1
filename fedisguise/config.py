"""Typed experiment configuration: TOML in, validated dataclasses out.

One `Config` describes one reproducible run. It is validated once, before anything starts
(unknown key, wrong type, unknown dataset/model/strategy name, out-of-range value), and the
resolved form is saved with every result. Flower's run config holds flat scalars only, so
`to_flat()` / `from_flat()` carry a Config through `[tool.flwr.app.config]` and `--run-config`.

A leaf: types and structure are checked here; names against the registries and values against
their ranges in fedisguise.validation, which sits above the registries and hands its check to
`Config.validate` when imported.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from fedisguise.config_sections import (
    ClientConfig,
    DataConfig,
    DeploymentConfig,
    DPConfig,
    ExperimentConfig,
    ModelConfig,
    PrivacyConfig,
    ResourcesConfig,
    StrategyConfig,
    TrainConfig,
)
from fedisguise.dp_modes import DPMode, dp_mode
from fedisguise.plugins import PluginError, absolute, load

MODES = ("simulation", "deployment")
DEVICES = ("auto", "cpu", "cuda")
KEY_SCOPES = ("per-client", "federation")
# When a node draws its disguise's randomness afresh: once for the run, every round (the
# InstaHide authors remix their whole training set every epoch), or every batch it trains or
# evaluates on (the VisualMixer authors reshuffle every batch, test batches too).
REDISGUISE = ("once", "round", "batch")
# Keys whose values are structured (a spec or a list): JSON strings in Flower's flat run config.
STRUCTURED_KEYS = ("disguise", "attacks", "faults")
# Flower's run config also says who finishes the run, outside the Config: DRIVER where
# run.py's driver submits it and adds the figures itself; empty in a user's own `flwr run`,
# whose ServerApp then adds them (fedisguise.fl.server_app, fedisguise.finish).
DRIVER_KEY, DRIVER = "driver", "fedisguise"
# The absence of a defence, as a run names it: the default, and the name under which
# fedisguise.disguise.base registers NoDisguise (the config is a leaf: it imports no registry).
NO_DISGUISE = "none"
NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems


class ConfigError(ValueError):
    """A config that cannot run: the message says which key and what is allowed."""


SECTIONS: dict[str, type] = {
    "experiment": ExperimentConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "strategy": StrategyConfig,
    "resources": ResourcesConfig,
    "client": ClientConfig,
    "privacy": PrivacyConfig,
    "dp": DPConfig,
    "deployment": DeploymentConfig,
}


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    disguise: str | dict[str, Any] = NO_DISGUISE
    attacks: list[dict[str, Any]] = field(default_factory=list)
    # clients that send bad train replies on purpose (fedisguise.faults)
    faults: list[dict[str, Any]] = field(default_factory=list)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], validate: bool = True) -> Config:
        """Build and validate from a nested mapping (as parsed from TOML). Only a caller that
        hands the config on to code that validates it may skip `validate` (it imports every
        registry: torch and all, seconds in a one-message process)."""
        if not isinstance(raw, dict):
            raise ConfigError(f"config must be a table, got {type(raw).__name__}")
        known = list(SECTIONS) + list(STRUCTURED_KEYS)
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid top-level keys: {known}")
        sections = {}
        for name, section_cls in SECTIONS.items():
            table = raw.get(name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"[{name}] must be a table, got {type(table).__name__}")
            sections[name] = _build_section(name, section_cls, table)
        _resolve_deprecated(sections["client"])
        cfg = cls(
            **sections,
            disguise=copy.deepcopy(raw.get("disguise", NO_DISGUISE)),
            attacks=copy.deepcopy(raw.get("attacks", [])),
            faults=copy.deepcopy(raw.get("faults", [])),
        )
        if validate:
            cfg.validate()
        return cfg

    @classmethod
    def from_flat(cls, flat: dict[str, Any], validate: bool = True) -> Config:
        """Inverse of `to_flat`: dotted scalar keys plus JSON-encoded structured keys."""
        nested: dict[str, Any] = {}
        for key, value in flat.items():
            if key == DRIVER_KEY:
                continue
            if key in STRUCTURED_KEYS:
                try:
                    nested[key] = json.loads(value) if isinstance(value, str) else value
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{key}: expected a JSON string, got {value!r}") from err
                continue
            section, _, name = key.partition(".")
            if not name:
                raise ConfigError(f"unknown config key {key!r}; expected <section>.<name>")
            nested.setdefault(section, {})[name] = value
        return cls.from_dict(nested, validate)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_flat(self) -> dict[str, bool | int | float | str]:
        """Flower run-config form: scalars only, nested tables as dotted keys."""
        flat: dict[str, bool | int | float | str] = {}
        for section in SECTIONS:
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                flat[f"{section}.{key}"] = json.dumps(value) if isinstance(value, list) else value
        for key in STRUCTURED_KEYS:
            flat[key] = json.dumps(getattr(self, key))
        return flat

    # ---- overrides ----------------------------------------------------------------------
    def with_overrides(self, assignments: list[str]) -> Config:
        """Apply `section.key=value` strings, typed by the field they set; returns a new Config."""
        raw = self.to_dict()
        for assignment in assignments:
            key, sep, text = assignment.partition("=")
            key = key.strip()
            append = key.endswith("+")
            key = key.removesuffix("+").strip()
            if not sep:
                raise ConfigError(f"--set expects key=value, got {assignment!r}")
            if key in STRUCTURED_KEYS:
                value = _parse_structured(key, text)
                if append and not (isinstance(raw[key], list) and isinstance(value, list)):
                    raise ConfigError(f"{key}+= adds a list to a list; use {key}=")
                raw[key] = raw[key] + value if append else value
                continue
            section, _, name = key.partition(".")
            if section not in SECTIONS:
                raise ConfigError(
                    f"unknown config key {key!r}; valid sections: {list(SECTIONS)} "
                    f"and {list(STRUCTURED_KEYS)}"
                )
            hints = get_type_hints(SECTIONS[section])
            if name not in hints:
                raise ConfigError(
                    f"unknown config key {key!r}; valid keys in [{section}]: {list(hints)}"
                )
            if hints[name] == list[str]:  # JSON; `key+=` adds to what the config lists
                text = text.strip()  # a bare name is one plugin
                value = _json_list(key, text) if text[:1] in '["' else text
                raw[section][name] = (list(raw[section][name]) if append else []) + (
                    value if isinstance(value, list) else [value])
                continue
            if hints[name] == list[int]:  # JSON, e.g. data.image_size=[64,48]
                raw[section][name] = _json_list(key, text.strip(), "integers")
                continue
            if append:
                raise ConfigError(f"{key}+= adds to a list; {key} is not one")
            raw[section][name] = _parse_scalar(key, text, hints[name])
        return Config.from_dict(raw)

    # ---- validation ---------------------------------------------------------------------
    def load_plugins(self) -> None:
        """Import the installed plugins and experiment.plugins in this process: every
        process that builds anything from a config calls it first (fedisguise.plugins)."""
        try:
            load(self.experiment.plugins)
        except PluginError as err:
            raise ConfigError(f"experiment.plugins: {err}") from None

    def validate(self) -> None:
        """Check names against the registries (the plugins' names too: they load first) and
        values against their ranges: fedisguise.validation, which sits above the registries
        and hands its check to the config when imported (the config imports no registry;
        the package's __init__ imports it). Without it, an error, never an unchecked run."""
        if _validator is None:
            raise RuntimeError("a Config was validated before fedisguise.validation was "
                               "imported in this process (the package's __init__ imports it): "
                               "import it first, so that names are checked against the "
                               "registries")
        _validator(self)

    @property
    def disguised(self) -> bool:
        """Whether the clients disguise their images at all."""
        return self.disguise_name != NO_DISGUISE

    @property
    def dp_mode(self) -> DPMode:
        """The run's DP mode (fedisguise.dp_modes): what it does, not what it is called."""
        return dp_mode(self.dp.mode)

    @property
    def disguise_name(self) -> str:
        spec = self.disguise
        if isinstance(spec, str):
            return spec
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            return spec["name"]
        raise ConfigError(f"disguise must be a name or a table with a 'name', got {spec!r}")

    @property
    def examples_cap(self) -> int:
        """The most training examples one reply may claim: a client's partition size where
        the config fixes it (data.train_per_client, times data.union_of for a client holding
        a union), else strategy.max_examples. The server refuses a reply claiming more
        (strategies.reply_check), and the attack suite believes no more."""
        d = self.data
        return d.train_per_client * max(1, d.union_of) or self.strategy.max_examples

    @property
    def run_dir(self) -> Path:
        return Path(self.experiment.out) / self.experiment.name


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a mapping; a missing file, one that is not UTF-8 or not TOML is an
    error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open("rb") as fh:
        try:
            return tomllib.load(fh)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from err
        except UnicodeDecodeError as err:  # TOML is UTF-8 by definition
            raise ConfigError(f"{path}: not a UTF-8 text file (byte "
                              f"{err.object[err.start]:#04x} at offset {err.start}); TOML "
                              f"files are UTF-8") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML experiment config."""
    raw = read_toml(path)
    try:
        return Config.from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


# ---- helpers ----------------------------------------------------------------------------
def _resolve_deprecated(client: ClientConfig) -> None:
    """`client.redisguise_each_round = true` still means `client.redisguise = "round"`, said
    once, with the key to use instead; together with another mode it is an error."""
    if not client.redisguise_each_round:
        return
    if client.redisguise not in ("once", "round"):
        raise ConfigError(f"client.redisguise_each_round = true (deprecated: it means "
                          f"redisguise = 'round') contradicts client.redisguise = "
                          f"{client.redisguise!r}; remove redisguise_each_round")
    warnings.warn("client.redisguise_each_round is deprecated and will be removed: write "
                  "client.redisguise = \"round\" instead", FutureWarning, stacklevel=4)
    client.redisguise, client.redisguise_each_round = "round", False


def _build_section(name: str, section_cls: type, table: dict[str, Any]) -> Any:
    hints = get_type_hints(section_cls)
    unknown = sorted(set(table) - set(hints))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[f'{name}.{k}' for k in unknown]}; "
            f"valid keys in [{name}]: {list(hints)}"
        )
    values = {}
    for key, value in table.items():
        expected = hints[key]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected == list[str]:
            if isinstance(value, str):  # Flower's flat run config carries lists as JSON
                value = _json_list(f"{name}.{key}", value)
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{name}.{key} must be a list of strings, got {value!r}")
            values[key] = list(value)
            continue
        if expected == list[int]:
            if isinstance(value, str):
                value = _json_list(f"{name}.{key}", value, "integers")
            if not (isinstance(value, list) and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value)):
                raise ConfigError(f"{name}.{key} must be a list of integers, got {value!r}")
            values[key] = list(value)
            continue
        if type(value) is not expected:
            raise ConfigError(
                f"{name}.{key} must be {expected.__name__}, "
                f"got {type(value).__name__} ({value!r})"
            )
        values[key] = value
    section = section_cls(**values)
    if name == "experiment":  # a file travels to other processes by its absolute path
        section.plugins = absolute(section.plugins)
    return section


def _json_list(key: str, text: str, of: str = "strings") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{key} must be a list of {of} (JSON in a flat run config), "
                          f"got {text!r}") from None


def _parse_scalar(key: str, text: str, expected: type) -> Any:
    text = text.strip()
    try:
        if expected is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if expected is int:
            return int(text)
        if expected is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{key} must be {expected.__name__}, got {text!r}") from None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return text


def _parse_structured(key: str, text: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if key == "disguise":  # a bare name is the common case
            return text
        raise ConfigError(
            f"{key} expects JSON (e.g. '[{{\"name\": ...}}]'), got {text!r}"
        ) from None


_validator: Callable[[Config], None] | None = None


def set_validator(check: Callable[[Config], None]) -> None:
    """Install the full check (fedisguise.validation does, once, when imported)."""
    global _validator
    _validator = check
