"""Identical attack computations, run once per process.

A grid's chain cell runs the chain at Level 1 and at Level 2 on one captured update. Both
levels invert that update with the same settings, and against VisualMixer and InstaHide
both train the same Level-1 network on the attacker's own images under its own key, so
half of the cell's attack time computed what it already had. `once` keys a computation by
the content of its inputs (tensors by their bytes, modules by their state), not by object
identity, so only a computation that would give the same result is reused.

A reused result is returned as if it had run again: tensors are copies, and where the
computation seeds torch's global generator (`seeds_global_rng`), that generator is left in
the state the computation left it in, so what draws from it afterwards draws the same.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

MAX_ENTRIES = 8  # a chain cell needs 2 (an inversion, a network); memory stays small
T = TypeVar("T")

_results: OrderedDict[str, tuple[Any, tuple | None]] = OrderedDict()
_enabled = True


def fingerprint(*parts: Any) -> str:
    """A digest of `parts`' content: tensors by dtype, shape and bytes, modules by class and
    state, mappings and sequences item by item, anything else by type and repr."""
    digest = hashlib.blake2b(digest_size=20)

    def feed(part: Any) -> None:
        if isinstance(part, torch.Tensor):
            flat = part.detach().cpu().contiguous().reshape(-1)
            digest.update(f"tensor {part.dtype} {tuple(part.shape)}|".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(part, nn.Module):
            digest.update(f"module {type(part).__qualname__}|".encode())
            feed(part.state_dict())
        elif isinstance(part, Mapping):
            digest.update(f"map {len(part)}|".encode())
            for key in sorted(part, key=repr):
                feed(key)
                feed(part[key])
        elif isinstance(part, list | tuple):
            digest.update(f"seq {len(part)}|".encode())
            for item in part:
                feed(item)
        else:
            digest.update(f"{type(part).__qualname__} {part!r}|".encode())

    for part in parts:
        feed(part)
    return digest.hexdigest()


def once(kind: str, inputs: tuple[Any, ...], compute: Callable[[], T],
         seeds_global_rng: bool = False) -> tuple[T, bool]:
    """`compute()`'s result, computed once per process for one `kind` and content of
    `inputs` (everything the result depends on); returns it and whether it was reused."""
    if not _enabled:
        return compute(), False
    key = kind + ":" + fingerprint(*inputs)
    if key in _results:
        _results.move_to_end(key)
        result, rng_after = _results[key]
        if rng_after is not None:
            _set_rng_state(rng_after)
        return _copied(result), True
    result = compute()
    _results[key] = (_copied(result), _rng_state() if seeds_global_rng else None)
    while len(_results) > MAX_ENTRIES:
        _results.popitem(last=False)
    return result, False


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _copied(result: Any) -> Any:
    """Tensors cloned, containers rebuilt; modules shared (the attacks only evaluate them)."""
    if isinstance(result, torch.Tensor):
        return result.clone()
    if isinstance(result, dict):
        return {k: _copied(v) for k, v in result.items()}
    if isinstance(result, tuple):
        return tuple(_copied(v) for v in result)
    if isinstance(result, list):
        return [_copied(v) for v in result]
    return result


def clear() -> None:
    _results.clear()


@contextmanager
def disabled() -> Iterator[None]:
    """Every computation runs, as before this module existed (bench/chain_reuse.py)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before
