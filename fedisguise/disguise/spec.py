"""A disguise spec parsed once: the defence's class and its parameters, checked.

The config holds the spec as the user wrote it (a name, or a table with `name` and
parameters), and messages and records carry it that way. Everything that builds or asks about
the run's defence takes this typed form instead (fedisguise.resolved.ResolvedRun.disguise,
an attacker's `Knowledge.algorithm`), so the spec is split, looked up and checked in one place.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from fedisguise.disguise.base import DISGUISES, Disguise, check_params, spec_params
from fedisguise.disguise.keys import DisguiseKey
from fedisguise.plugins import choices


@dataclass(frozen=True)
class DisguiseSpec:
    """A registered defence and the parameters it is built with (never a key)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | DisguiseSpec) -> DisguiseSpec:
        """A name or a `{name = ..., <params>}` table: an unknown name, parameter or type
        is a ValueError that lists the choices. Parsed once per process: the config's check
        and the resolved run get the same spec (a failed parse is never kept)."""
        if isinstance(spec, DisguiseSpec):
            return spec
        try:
            token = json.dumps(spec, sort_keys=True)
        except (TypeError, ValueError):
            token = None  # not JSON (a user's own object): parsed, not kept
        if token is not None and token in _PARSED and _PARSED[token].name in DISGUISES:
            return _PARSED[token]
        name, params = spec_params(spec)
        if name not in DISGUISES:
            raise ValueError(f"unknown disguise {name!r}; valid choices: {choices(DISGUISES)}")
        check_params(DISGUISES[name], params)
        parsed = cls(name, MappingProxyType(copy.deepcopy(params)))
        if token is not None:
            _PARSED[token] = parsed
            while len(_PARSED) > PARSED_MAX:
                del _PARSED[next(iter(_PARSED))]
        return parsed

    @property
    def defence(self) -> type[Disguise]:
        """The registered class: what the defence can do (keyed, draws, capabilities)."""
        return DISGUISES[self.name]

    @property
    def keyed(self) -> bool:
        return self.defence.keyed

    def redraws(self) -> bool:
        """Whether, with these parameters, the defence makes random draws to redo."""
        return self.defence.redraws(self.params)

    def value(self, param: str, default: Any = None) -> Any:
        """A parameter as the defence will use it: the spec's, else the defence's default
        (`default` where the defence has no such parameter)."""
        if param in self.params:
            return self.params[param]
        found = inspect.signature(self.defence.__init__).parameters.get(param)
        return default if found is None or found.default is inspect.Parameter.empty \
            else found.default

    def buildable(self) -> bool:
        return self.defence.buildable(self.params)

    def as_config(self) -> str | dict[str, Any]:
        """The spec as a config writes it (a bare name where there are no parameters)."""
        return {"name": self.name, **copy.deepcopy(dict(self.params))} if self.params \
            else self.name

    def build(self, key: DisguiseKey | None = None) -> Disguise:
        """The defence under `key` (a keyed one refuses to be built without one)."""
        if self.keyed and not isinstance(key, DisguiseKey):
            raise ValueError(f"disguise {self.name!r} is keyed: pass a DisguiseKey, "
                             f"got {key!r}")
        return self.defence(key, **copy.deepcopy(dict(self.params)))


_PARSED: dict[str, DisguiseSpec] = {}  # the specs this process parsed, by their JSON
PARSED_MAX = 64


def build(spec: str | Mapping[str, Any] | DisguiseSpec, key: DisguiseKey | None = None
          ) -> Disguise:
    """Build a disguise from a name, a `{name = ..., <params>}` table or a parsed spec,
    under `key`."""
    return DisguiseSpec.parse(spec).build(key)
