"""Faulty clients on purpose: chosen clients send a bad train reply, for tests of the server's
reply checks and robust strategies, and for research on poisoning.

A config's top-level `faults` list names them: `faults = [{client = 2, reply = "nan"}]`.
`reply` is one of FAULTS; `scale` takes a `factor`, `num-examples` a `value`; every entry may
set `from_round` (default 1). The client trains honestly, then corrupts what it sends, so the
reply is what a broken or hostile node would send after a real round of work.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# What each fault does to the reply (the first floating-point array is the one corrupted
# where one array is: conv1's or features.0's weight in the models here).
FAULTS = {
    "nan": "the first weight tensor becomes NaN",
    "scale": "every floating-point array is multiplied by `factor`",
    "shape": "the first weight tensor is sent with shape (1,)",
    "num-examples": "the reply claims `value` training examples",
}
_PARAMS = {"nan": set(), "scale": {"factor"}, "shape": set(), "num-examples": {"value"}}
_COMMON = {"client", "reply", "from_round"}


def check_faults(faults: Any, clients: int, rounds: int) -> list[dict[str, Any]]:
    """The `faults` list, each entry complete (from_round filled in); ValueError naming the
    entry and key for anything else: an unknown reply or key, a client outside the
    federation, a missing or non-finite factor, two entries for one client."""
    if not isinstance(faults, list):
        raise ValueError(f"faults must be a list of tables, got {faults!r}")
    seen: set[int] = set()
    checked = []
    for i, fault in enumerate(faults):
        where = f"faults[{i}]"
        if not isinstance(fault, dict) or "client" not in fault or "reply" not in fault:
            raise ValueError(f"{where} must be a table with 'client' and 'reply', got {fault!r}")
        reply = fault["reply"]
        if reply not in FAULTS:
            raise ValueError(f"{where}.reply = {reply!r}; valid choices: {sorted(FAULTS)}")
        allowed = _COMMON | _PARAMS[reply]
        unknown = sorted(set(fault) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} for reply {reply!r}; "
                             f"valid keys: {sorted(allowed)}")
        missing = sorted(_PARAMS[reply] - set(fault))
        if missing:
            raise ValueError(f"{where}: reply {reply!r} needs {missing}")
        client, start = fault["client"], fault.get("from_round", 1)
        for key, value in (("client", client), ("from_round", start)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{where}.{key} must be an integer, got {value!r}")
        if not 0 <= client < clients:
            raise ValueError(f"{where}.client = {client}; expected in [0, experiment.clients "
                             f"= {clients})")
        if not 1 <= start <= rounds:
            raise ValueError(f"{where}.from_round = {start}; expected in [1, "
                             f"experiment.rounds = {rounds}]")
        if client in seen:
            raise ValueError(f"{where}: client {client} already has a fault; one per client")
        seen.add(client)
        for key in _PARAMS[reply]:  # factor, value: any finite number (negative is a fault too)
            value = fault[key]
            if (not isinstance(value, int | float) or isinstance(value, bool)
                    or not math.isfinite(value)):
                raise ValueError(f"{where}.{key} must be a finite number, got {value!r}")
        checked.append({**fault, "from_round": start})
    return checked


def fault_for(faults: list[dict[str, Any]], client: int, server_round: int
              ) -> dict[str, Any] | None:
    """The fault `client` commits in `server_round`, if any."""
    for fault in faults:
        if fault["client"] == client and server_round >= fault.get("from_round", 1):
            return fault
    return None


def corrupt(fault: dict[str, Any], state: dict[str, torch.Tensor], num_examples: int
            ) -> tuple[dict[str, torch.Tensor], int | float]:
    """The reply a client with `fault` sends instead of (`state`, `num_examples`)."""
    import torch  # here: the config and the report read this module without torch

    state = dict(state)
    first = next(k for k, v in state.items() if v.is_floating_point())
    reply = fault["reply"]
    if reply == "nan":
        state[first] = torch.full_like(state[first], float("nan"))
    elif reply == "scale":
        state = {k: v * fault["factor"] if v.is_floating_point() else v
                 for k, v in state.items()}
    elif reply == "shape":
        state[first] = state[first].reshape(-1)[:1].clone()
    elif reply == "num-examples":
        num_examples = fault["value"]
    return state, num_examples


def describe(fault: dict[str, Any]) -> str:
    """One line for the summary and the report: "client 2: nan from round 1"."""
    extra = "".join(f" {k}={fault[k]:g}" for k in sorted(_PARAMS[fault["reply"]]))
    return f"client {fault['client']}: {fault['reply']}{extra} from round {fault['from_round']}"
