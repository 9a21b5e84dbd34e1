"""The differential-privacy modes (`dp.mode`) as a registry, like defences and attacks.

The pipeline asks a mode what it does, never what it is called:
- `per_example`: every client trains with DP-SGD (Opacus: Poisson batches, per-sample
  clipping and noise; fedisguise.privacy.dp), and reports its own ε;
- `clips_on`: "server" or "client", where Flower's central-DP wrapper clips each update
  before the server noises the aggregate (None: no wrapper); ε is then user-level, the
  server's estimate;
- `curve`: the frontier curve its rows join.

A leaf: the config validates `dp.mode` against it, and strategies/ picks Flower's wrapper by
`clips_on`, with nothing else imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedisguise.plugins import add


@dataclass(frozen=True)
class DPMode:
    name: str
    description: str
    per_example: bool = False
    clips_on: str | None = None  # "server" | "client": Flower's central-DP wrapper
    curve: str = ""  # the frontier curve (default: the name)

    def __post_init__(self) -> None:
        if self.clips_on not in (None, "server", "client"):
            raise ValueError(f"DP mode {self.name!r}: clips_on must be None, 'server' or "
                             f"'client', got {self.clips_on!r}")
        if self.per_example and self.clips_on:
            raise ValueError(f"DP mode {self.name!r}: per-example DP-SGD and a central-DP "
                             "wrapper are two modes, not one")

    @property
    def central(self) -> bool:
        """Noise added by the server to the aggregate (Flower's DP wrappers)."""
        return self.clips_on is not None

    @property
    def private(self) -> bool:
        """Any differential privacy at all."""
        return self.per_example or self.central

    @property
    def frontier_curve(self) -> str:
        return self.curve or self.name


DP_MODES: dict[str, DPMode] = {}


def register_dp_mode(mode: DPMode) -> DPMode:
    """Add a mode under its name (a name another mode holds is an error)."""
    if not isinstance(mode, DPMode):
        raise TypeError(f"register_dp_mode takes a DPMode, got {mode!r}")
    add(DP_MODES, "DP mode", mode.name, mode)
    return mode


def dp_mode(name: str) -> DPMode:
    """The registered mode `name`; an unknown one is a ValueError listing the choices."""
    if name not in DP_MODES:
        raise ValueError(f"unknown dp.mode {name!r}; valid choices: {list(DP_MODES)}")
    return DP_MODES[name]


NO_DP = register_dp_mode(DPMode("none", "no differential privacy"))
register_dp_mode(DPMode("dp-sgd", "DP-SGD on every client (Opacus)", per_example=True))
register_dp_mode(DPMode("central-server", "update clipping on the server, server noise "
                        "(Flower's server-side DP wrapper)", clips_on="server",
                        curve="central-dp"))
register_dp_mode(DPMode("central-client", "update clipping on the clients, server noise "
                        "(Flower's client-side DP wrapper and clipping mod)", clips_on="client",
                        curve="central-dp"))
