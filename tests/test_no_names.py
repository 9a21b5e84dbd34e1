"""Capabilities, not names: outside a registered class's own module, no string literal names
a registered defence, attack or DP mode. The pipeline asks what a defence or attack can do
(fedisguise.disguise.base.Disguise.CAPABILITIES, Attack.targets / chain_stage, DPMode), so a
plugin gets every path a built-in one gets.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import fedisguise.attacks  # noqa: F401 - registers the built-in attacks
import fedisguise.disguise  # noqa: F401 - registers the built-in defences
from fedisguise import dp_modes
from fedisguise.attacks.base import ATTACKS, Attack, register
from fedisguise.disguise.base import DISGUISES
from fedisguise.plugins import origin

ROOT = Path(__file__).resolve().parents[1]

# (module, literal): why the literal is not a lookup of the registered thing. At most 8.
ALLOWED = {
    ("fedisguise/config.py", "none"):
        "NO_DISGUISE, the config's default; the config is a leaf and imports no registry "
        "(NoDisguise registers under it)",
    ("fedisguise/attacks/membership.py", "none"):
        "torch's cross_entropy(reduction='none')",
    ("fedisguise/disguise/visualmixer_authors.py", "none"):
        "an option of the authors' normalisation ('imagenet' or 'none')",
    ("fedisguise/grids/frontier.py", "membership"):
        "the frontier figure's family and file name (frontier_membership.png): the "
        "membership-AUC axis, not the attack",
}


def registered_names() -> dict[str, set[Path]]:
    """Every built-in registered name -> the modules that define what it names."""
    owners: dict[str, set[Path]] = {}
    for registry in (DISGUISES, ATTACKS):
        for name, cls in registry.items():
            if origin(cls) == "built-in":
                owners.setdefault(name, set()).add(Path(inspect.getsourcefile(cls)).resolve())
    for name in dp_modes.DP_MODES:
        owners.setdefault(name, set()).add(Path(dp_modes.__file__).resolve())
    return owners


def modules() -> list[Path]:
    return sorted([*(ROOT / "fedisguise").rglob("*.py"), *(ROOT / "strategies").rglob("*.py"),
                   ROOT / "run.py"])


def name_literals(path: Path, owners: dict[str, set[Path]]) -> list[tuple[int, str]]:
    """(line, literal) for each string constant in `path` equal to a name it does not own."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value in owners and path.resolve() not in owners[node.value])


def test_no_module_names_a_registered_defence_attack_or_dp_mode():
    owners = registered_names()
    assert {"none", "visualmixer", "disguisednets", "chain", "gradient_inversion",
            "dp-sgd", "central-client"} <= set(owners)
    found = {}
    for path in modules():
        rel = path.relative_to(ROOT).as_posix()
        hits = [(line, lit) for line, lit in name_literals(path, owners)
                if (rel, lit) not in ALLOWED]
        if hits:
            found[rel] = hits
    assert not found, ("string literals naming a registered defence, attack or DP mode "
                       f"(ask for a capability instead): {found}")
    assert len(ALLOWED) <= 8


def test_every_allowlist_entry_is_still_needed():
    owners = registered_names()
    for (rel, literal), why in ALLOWED.items():
        assert why
        assert (literal in dict(name_literals(ROOT / rel, owners)).values()), \
            f"{rel} no longer holds {literal!r}: drop it from ALLOWED"


def test_the_walk_finds_a_name_where_one_is_written(tmp_path):
    """The check itself can fail: a module that asks a name is caught."""
    bad = tmp_path / "asks.py"
    bad.write_text('def f(cfg):\n    return cfg.disguise_name == "visualmixer"\n')
    assert name_literals(bad, registered_names()) == [(2, "visualmixer")]


def test_dp_modes_say_what_they_do():
    by_name = dp_modes.DP_MODES
    assert not by_name["none"].private
    assert by_name["dp-sgd"].per_example and not by_name["dp-sgd"].central
    assert by_name["central-server"].clips_on == "server"
    assert by_name["central-client"].clips_on == "client"
    assert {m.frontier_curve for m in by_name.values()} == {"none", "dp-sgd", "central-dp"}
    with pytest.raises(ValueError, match="unknown dp.mode 'laplace'; valid choices"):
        dp_modes.dp_mode("laplace")
    with pytest.raises(ValueError, match="taken by"):
        dp_modes.register_dp_mode(dp_modes.DPMode("dp-sgd", "another", clips_on="server"))
    with pytest.raises(ValueError, match="two modes, not one"):
        dp_modes.DPMode("both", "x", per_example=True, clips_on="server")
    with pytest.raises(ValueError, match="clips_on must be"):
        dp_modes.DPMode("where", "x", clips_on="edge")


def test_an_unknown_dp_mode_is_a_config_error_listing_the_registry():
    from fedisguise.config import Config, ConfigError

    with pytest.raises(ConfigError, match=r"unknown dp.mode 'laplace'; valid choices: "
                                          r"\['central-client', 'central-server', 'dp-sgd', "
                                          r"'none'\]"):
        Config.from_dict({"dp": {"mode": "laplace"}})


def test_a_chain_stage_is_declared_with_the_evidence_it_takes():
    class Wrong(Attack):
        name = "wrong-stage"
        evidence = "images"
        chain_stage = "first"  # a first stage takes an update

        def reconstruct(self, evidence, knowledge, runtime):
            raise AssertionError

        def score(self, reconstruction, truth, scorer):
            raise AssertionError

    with pytest.raises(ValueError, match="chain_stage = 'first' takes evidence 'update'"):
        register(Wrong)
    Wrong.chain_stage = "last"
    with pytest.raises(ValueError, match="chain_stage must be one of"):
        register(Wrong)
    assert "wrong-stage" not in ATTACKS
