"""The attack contract: what an attack may see, what it returns, and how it is scored.

An attack works in two steps with a wall between them (STYLE principle 12; breaching's
`(shared_data, true_user_data)` split):

1. `reconstruct(evidence, knowledge, runtime)` sees only
   - `Evidence`: the server's view of one update (`ServerView`: the global model it sent, the
     update as received, num_examples, and the training settings the server itself sent),
     plus, where the game hands them over, images the attacker observes (disguised images in
     the outsourcing threat model, or a previous chain stage's estimates) or membership
     candidates (without their membership);
   - `Knowledge` of its declared level: Level 0 public data from the same distribution;
     Level 1 also the disguise algorithm and its parameters (never the key); Level 2 also k
     plain/disguised pairs under the victim's key.
   It returns a `Reconstruction`.
2. `score(reconstruction, truth, scorer)` compares that reconstruction with the
   experimenter's `GroundTruth`. Nothing of the truth reaches step 1: no parameter carries
   it, and the batch size and image shape an attack inverts come from the `ServerView`.

An attack's target update (round, client) is parsed once, into a `Target`, by `parse_spec`;
attack constructors take only their own parameters. Each attack class declares the figures it
reports (`Figure`: name, title, and whether higher means a stronger attack), so tables,
strongest-attack choices and plots are built from the registry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from fedisguise.data.datasets import ImageDataset
from fedisguise.disguise.base import DISGUISES, Disguise, check_params
from fedisguise.disguise.spec import DisguiseSpec
from fedisguise.plugins import add, choices

LEVELS = (0, 1, 2)
EVIDENCE_KINDS = ("update", "images", "candidates")


@dataclass(frozen=True)
class Target:
    """The captured update an attack works on."""

    round: int = 1
    client: int = 0


@dataclass(frozen=True)
class AttackSpec:
    """One `attacks = [...]` entry, parsed: the attack's name, target and own parameters."""

    name: str
    target: Target
    params: dict[str, Any]


def parse_spec(spec: Mapping[str, Any]) -> AttackSpec:
    """Split a config table into name, target (round, client) and the attack's parameters."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValueError(f"an attack spec is a table with a 'name', got {spec!r}")
    params = dict(spec)
    name = params.pop("name")
    where = {k: params.pop(k) for k in ("round", "client") if k in params}
    for key, value in where.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {value!r}")
    target = Target(**where)
    if target.round < 1 or target.client < 0:
        raise ValueError(f"round must be >= 1 and client >= 0, got round {target.round}, "
                         f"client {target.client}")
    return AttackSpec(name, target, params)


@dataclass(frozen=True)
class Figure:
    """One number an attack reports: `higher_is_stronger` orients 'strongest attack'."""

    name: str
    title: str
    higher_is_stronger: bool = True

    def stronger(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_stronger else a < b


@dataclass(frozen=True)
class ServerView:
    """One captured client update, exactly as the server received it, with what the server
    knows because it configured it: the model's input shape and classes, and the client's
    training settings."""

    server_round: int
    partition_id: int
    num_examples: int
    global_state: dict[str, torch.Tensor]  # the model the server sent that round
    client_state: dict[str, torch.Tensor]  # the model the client sent back
    model_name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    lr: float
    local_steps: int  # 0: whole local epochs
    local_epochs: int
    batch_size: int
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    final_global_state: dict[str, torch.Tensor] | None = None

    def step_sizes(self) -> list[int]:
        """The batch sizes of the client's local steps, as `training.batch_order` cuts them:
        `batch_size` images per step, a shorter last batch at each epoch's end."""
        n, b = self.num_examples, self.batch_size
        per_epoch = -(-n // b)
        if self.local_steps:  # only as many steps as were taken, whatever n claims
            steps = min(self.local_steps, per_epoch * self.local_epochs)
            return [b if i % per_epoch < n // b else n % b for i in range(steps)]
        epoch = [b] * (n // b) + ([n % b] if n % b else [])
        return epoch * self.local_epochs

    def images_behind_update(self) -> int:
        """How many distinct images the update covers (at most the client's partition)."""
        return min(self.num_examples, sum(self.step_sizes()))


@dataclass(frozen=True)
class Evidence:
    """What one attack is handed: the server's view, and what the game adds to it."""

    view: ServerView
    images: torch.Tensor | None = None  # disguised images the attacker observes
    images_from: str = ""  # "outsourced": the true disguised images (the papers' threat
    #                        model); otherwise the chain stage that estimated them
    candidates: ImageDataset | None = None  # membership candidates, membership withheld


@dataclass(frozen=True)
class Knowledge:
    """What an attacker of `level` holds besides the evidence."""

    level: int
    public: ImageDataset  # Level 0+: same distribution, disjoint from every client
    # Level 1+: the disguise algorithm and its parameters, no key (a name or a spec table is
    # parsed into a DisguiseSpec)
    algorithm: DisguiseSpec | None = None
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None  # Level 2: (plain, disguised)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"knowledge level must be one of {LEVELS}, got {self.level}")
        if self.level < 1 and self.algorithm is not None:
            raise ValueError("Level 0 does not know the disguise algorithm")
        if self.algorithm is not None:
            object.__setattr__(self, "algorithm", DisguiseSpec.parse(self.algorithm))
        if self.level < 2 and self.pairs is not None:
            raise ValueError("only Level 2 holds pairs under the victim's key")

    def own_disguise(self, seed: int) -> Any:
        """The public algorithm under the attacker's own key (Level 1 and up)."""
        if self.level < 1 or self.algorithm is None:
            raise ValueError("a Level-0 attacker does not know the disguise algorithm")
        from fedisguise.disguise import DisguiseKey

        return self.algorithm.build(DisguiseKey.generate(seed + 7919))


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    seed: int
    progress: bool = True


@dataclass
class Reconstruction:
    """An attack's output before scoring. `images` estimate originals or disguised images
    (`space`), in an order the attacker does not know; `scores` rank membership candidates;
    `figures` are what the attacker can report without the truth (loss, time, iterations)."""

    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    space: str = "original"  # "original" | "disguised"
    scores: torch.Tensor | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # attack-specific outputs


@dataclass
class GroundTruth:
    """The experimenter's view of the target client, for scoring only."""

    batch_plain: torch.Tensor  # the images behind the captured update
    batch_disguised: torch.Tensor
    batch_labels: torch.Tensor
    train_plain: ImageDataset  # the client's whole partition (members)
    train_disguised: torch.Tensor
    disguise_spec: DisguiseSpec
    disguise_key: Any  # the victim's DisguiseKey; makes Level-2 pairs, never logged
    disguise_secret: Any = None  # the victim's own draws secret (DisguiseKey), never logged
    batch_index: torch.Tensor | None = None  # partition indices behind the update
    observed_plain: torch.Tensor | None = None  # originals behind Evidence.images
    observed_disguised: torch.Tensor | None = None
    observed_labels: torch.Tensor | None = None
    candidates_member: torch.Tensor | None = None  # membership of Evidence.candidates


class Attack:
    """Base class. Subclasses set `name`, `evidence` (what they consume), `figures`, and
    implement `reconstruct` and `score`."""

    name: ClassVar[str] = ""
    evidence: ClassVar[str] = "update"  # one of EVIDENCE_KINDS
    figures: ClassVar[tuple[Figure, ...]] = ()
    # The defences a defence-specific attack is built for (None: any). Against another one
    # the suite reports it "not applicable" without running it.
    defences: ClassVar[tuple[str, ...] | None] = None
    # Or, by what the defences declare: the Disguise capability (a class attribute, e.g.
    # "shuffles_windows") a defence must have for this attack to apply.
    targets: ClassVar[str | None] = None
    # Its place in the server's chain (fedisguise.attacks.chain): True, the de-disguising
    # stage against the defences this attack applies to (the attack each of them fears most);
    # "first", the default first stage (images estimated from an update); "any", the default
    # de-disguising stage against every other defence, given the chain's `level`.
    chain_stage: ClassVar[bool | str] = False
    # Tables name it with its level ("chain L2"): the level decides what it runs.
    named_by_level: ClassVar[bool] = False
    level: int = 0

    def scope(self) -> tuple[str, ...]:
        """The defences this attack, with its parameters, is built for (empty: any)."""
        return declared_scope(type(self))

    def applies_to(self, disguise: str) -> bool:
        """Whether this attack is built for the run's defence (by its registered name)."""
        return not self.scope() or disguise in self.scope()

    def reconstruct(self, evidence: Evidence, knowledge: Knowledge, runtime: Runtime
                    ) -> Reconstruction:
        raise NotImplementedError

    def score(self, reconstruction: Reconstruction, truth: GroundTruth, scorer: Any
              ) -> dict[str, Any]:
        raise NotImplementedError

    def pairs_wanted(self) -> int:
        """How many victim-key pairs a Level-2 attacker of this kind holds."""
        return 0


def declared_scope(cls: type[Attack]) -> tuple[str, ...]:
    """The registered defences an attack class declares itself for: those with its
    `targets` capability, else its `defences` by name (empty: any)."""
    if cls.targets is None:
        return cls.defences or ()
    return capable(cls.targets)


def capable(capability: str) -> tuple[str, ...]:
    """The registered defences that declare `capability` (a Disguise class attribute)."""
    if capability not in Disguise.CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; a Disguise declares "
                         f"{list(Disguise.CAPABILITIES)}")
    return tuple(sorted(n for n, c in DISGUISES.items() if getattr(c, capability)))


def has(defence: str, capability: str) -> bool:
    """Whether the registered defence `defence` declares `capability`."""
    return defence in capable(capability)


ATTACKS: dict[str, type[Attack]] = {}
# chain_stage values -> the evidence such a stage takes ("": not a stage)
CHAIN_STAGES = {False: "", True: "images", "first": "update", "any": "images"}


def register(cls: type[Attack]) -> type[Attack]:
    """Add an attack under its `name` (fedisguise.api.register_attack for plugins): a
    subclass of Attack that implements `reconstruct` and `score`."""
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise TypeError(f"register_attack takes a subclass of Attack, got {cls!r}")
    if cls.evidence not in EVIDENCE_KINDS:
        raise ValueError(f"{cls.__name__}.evidence must be one of {EVIDENCE_KINDS}")
    takes = CHAIN_STAGES.get(cls.chain_stage) if isinstance(cls.chain_stage, bool | str) \
        else None
    if takes is None:
        raise ValueError(f"{cls.__name__}.chain_stage must be one of {list(CHAIN_STAGES)}, "
                         f"got {cls.chain_stage!r}")
    if takes and cls.evidence != takes:
        raise ValueError(f"{cls.__name__}.chain_stage = {cls.chain_stage!r} takes evidence "
                         f"{takes!r}, not {cls.evidence!r}")
    names = [f.name for f in cls.figures]
    if len(set(names)) != len(names):
        raise ValueError(f"{cls.__name__} declares a figure twice: {names}")
    missing = [m for m in ("reconstruct", "score") if getattr(cls, m) is getattr(Attack, m)]
    if missing:
        raise TypeError(f"{cls.__qualname__} must implement {' and '.join(missing)}")
    add(ATTACKS, "attack", cls.name, cls)
    return cls


def build_attack(spec: Mapping[str, Any] | AttackSpec) -> Attack:
    """The attack of a spec; its target is not the attack's business (see `parse_spec`)."""
    parsed = spec if isinstance(spec, AttackSpec) else parse_spec(spec)
    if parsed.name not in ATTACKS:
        raise ValueError(f"unknown attack {parsed.name!r}; valid choices: {choices(ATTACKS)}")
    cls = ATTACKS[parsed.name]
    check_params(cls, parsed.params, kind="attack")
    return cls(**parsed.params)


def targets(specs: list[Mapping[str, Any]]) -> set[tuple[int, int]]:
    """(round, client) pairs whose updates the server must capture for these attacks."""
    return {(t.round, t.client) for t in (parse_spec(s).target for s in specs)}


def figure_catalogue() -> dict[str, tuple[Figure, ...]]:
    """Every registered attack's declared figures, for tables and plots."""
    return {name: cls.figures for name, cls in sorted(ATTACKS.items())}


def finite(value: Any) -> float | None:
    """A figure as a finite float, or None (JSON has no inf/NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
