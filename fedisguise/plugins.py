"""Plugins: a user's own defences, attacks, datasets and models, loaded in every process that
may need them (the driver, Ray actors, ClientApps, SuperNodes and their workers).

A plugin is a Python module that registers what it defines through `fedisguise.api`'s
decorators when it is imported. Two ways in:
- an installed package names its modules in the entry-point group `fedisguise.plugins`; they
  load wherever fedisguise resolves a config, with nothing in the config;
- `experiment.plugins` (or `run.py --plugin`) lists module names or `.py` files. The list
  travels in Flower's run config, so each process imports the same modules before it builds
  anything. A file is found by its absolute path, which `absolute` fixes in the driver.

Loading is once per process and module; a plugin that fails to import is a PluginError
naming it, never a later "unknown disguise".
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

ENTRY_POINT_GROUP = "fedisguise.plugins"
F = TypeVar("F", bound=Callable[..., Any])

_loaded: dict[str, ModuleType] = {}  # spec (absolute path or module name) -> module
_installed_done = False
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class PluginError(ValueError):
    """A plugin that cannot be loaded: the message names it and why."""


def is_path(spec: str) -> bool:
    """A `.py` file (or any spec with a path separator), not a dotted module name."""
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def absolute(specs: Iterable[str], base: Path | None = None) -> list[str]:
    """Files made absolute against `base` (the working directory), module names as given:
    a Ray actor or a SuperNode's worker need not share the driver's working directory."""
    root = Path.cwd() if base is None else base
    return [str((root / Path(s).expanduser()).resolve()) if is_path(s) else s for s in specs]


def load(specs: Iterable[str] = ()) -> list[ModuleType]:
    """Import the installed plugins and then `specs`, each once per process."""
    load_installed()
    return [load_one(spec) for spec in specs]


def load_installed() -> None:
    """Import every module the installed packages name under ENTRY_POINT_GROUP."""
    global _installed_done
    if _installed_done:
        return
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        module = point.value.partition(":")[0]
        try:
            load_one(module)
        except PluginError as err:  # said again on every call: never a later unknown name
            raise PluginError(f"installed plugin {point.name!r} "
                              f"({point.dist.name if point.dist else '?'}): {err}") from None
    _installed_done = True


def load_one(spec: str) -> ModuleType:
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"a plugin is a module name or a .py file, got {spec!r}")
    if spec in _loaded:
        return _loaded[spec]
    module = _import_file(spec) if is_path(spec) else _import_module(spec)
    _loaded[spec] = module
    return module


def loaded() -> list[str]:
    """The plugins this process has imported, in order."""
    return list(_loaded)


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(f"{err.name}.")):  # itself
            raise PluginError(f"plugin {name!r}: no module of that name is installed (a file "
                              "needs its .py path)") from None
        raise PluginError(f"plugin {name!r} failed to import: {err}") from err
    except Exception as err:  # noqa: BLE001 - any error in user code, named with its plugin
        raise PluginError(f"plugin {name!r} failed to import: "
                          f"{type(err).__name__}: {err}") from err


def _import_file(spec: str) -> ModuleType:
    path = Path(spec)
    if not path.is_absolute():
        path = Path(absolute([spec])[0])
    if not path.is_file():
        raise PluginError(f"plugin {spec!r}: no such file")
    if path.suffix != ".py":
        raise PluginError(f"plugin {spec!r}: a plugin file must be a .py file")
    # A stable name from the path: every process gives the file the same module name, so
    # classes it defines pickle by reference between them.
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    name = f"fedisguise_plugin_{path.stem.replace('-', '_')}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise PluginError(f"plugin {spec!r}: cannot be imported as a module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - any error in user code, named with its plugin
        del sys.modules[name]
        raise PluginError(f"plugin {spec!r} failed to import: "
                          f"{type(err).__name__}: {err}") from err
    return module


def origin(obj: object) -> str:
    """"plugin" for what a plugin registered, "built-in" for fedisguise's own."""
    module = getattr(obj, "__module__", "") or ""
    return "built-in" if module.split(".")[0] in ("fedisguise", "strategies") else "plugin"


def add(registry: dict[str, object], kind: str, name: object, obj: object) -> None:
    """Register `obj` under `name`: a name another class or function already holds is an
    error naming both (re-importing the same module is not)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"a {kind} needs a name of letters, digits, '.', '_' or '-' "
                         f"(set `name` on {qualname(obj)}), got {name!r}")
    held = registry.get(name)
    if held is not None and held is not obj and qualname(held) != qualname(obj):
        raise ValueError(f"{kind} name {name!r} is taken by {qualname(held)} ({origin(held)}); "
                         f"give {qualname(obj)} another name")
    registry[name] = obj


def registrar(registry: dict[str, Any], kind: str, name: str) -> Callable[[F], F]:
    """A decorator that adds a function (a dataset loader, a model builder) under `name`."""
    def decorate(function: F) -> F:
        if not callable(function):
            raise TypeError(f"register_{kind}({name!r}) decorates a function, got {function!r}")
        add(registry, kind, name, function)
        return function

    return decorate


def qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def choices(registry: dict[str, object]) -> str:
    """A registry's names for an error message: the built-in ones, then the plugins'."""
    builtin = sorted(n for n, v in registry.items() if origin(v) == "built-in")
    extra = sorted(n for n, v in registry.items() if origin(v) == "plugin")
    return f"{builtin}" + (f"; from plugins: {extra}" if extra else "")
