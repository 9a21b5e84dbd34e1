"""The disguise interface, input validation and the registry.

A disguise maps a float batch N×C×H×W in [0, 1] to its disguised form on the client, before
any model sees it. Inputs are validated here, once, at the public entry (`Disguise.apply`);
the `_apply` of each defence trusts them. Parameters are checked against the constructor's
signature, so an unknown or mistyped parameter is an error, never silently ignored.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any, ClassVar, get_type_hints

import torch

from fedisguise.config import NO_DISGUISE
from fedisguise.disguise.keys import DisguiseKey
from fedisguise.plugins import add


def check_images(images: torch.Tensor) -> None:
    """Reject what a disguise must never silently accept."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must be N×C×H×W, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}")
    if not images.numel():
        return
    lo, hi = (v.item() for v in torch.aminmax(images))  # one pass; NaN propagates to both
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("images contain NaN or inf")
    if lo < 0 or hi > 1:
        raise ValueError(f"images must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]")


def check_labels(labels: torch.Tensor | None, n: int) -> None:
    if labels is None:
        return
    if not isinstance(labels, torch.Tensor) or labels.shape[:1] != (n,):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a tensor with {n} rows, got {shape}")


class Disguise:
    """Base class: validates, then calls `_apply`. Subclasses set `keyed` (a transform fixed by
    the key) and `draws` (random numbers drawn per image or batch, from the node's secret)."""

    name: ClassVar[str] = ""
    keyed: ClassVar[bool] = True
    draws: ClassVar[bool] = False
    # Each image's disguise depends on that image and its own draws alone, not on the batch
    # it comes in (InstaHide mixes within its batch; VisualMixer-authors averages attention
    # over it): then batches can be disguised together in one call.
    per_image: ClassVar[bool] = False
    # Parameters that, left out of a spec, take the run's data's value (fedisguise.resolved):
    # "num_classes" (InstaHide's one-hot labels) is the dataset's number of classes.
    from_data: ClassVar[tuple[str, ...]] = ()
    # What attacks may exploit, declared by the defence (attacks choose by these, never by
    # name): each output block an affine map of its input block under the key, so known
    # (plain, disguised) pairs solve it; one keyed permutation of blocks, the same for every
    # image; blocks moved with their pixels kept (no per-block transform); pixels shuffled
    # within windows; images mixed with other images.
    block_affine: ClassVar[bool] = False
    permutes_blocks: ClassVar[bool] = False
    keeps_block_pixels: ClassVar[bool] = False
    shuffles_windows: ClassVar[bool] = False
    mixes_images: ClassVar[bool] = False
    CAPABILITIES: ClassVar[tuple[str, ...]] = (
        "block_affine", "permutes_blocks", "keeps_block_pixels", "shuffles_windows",
        "mixes_images")

    def apply(self, images: torch.Tensor, labels: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_images(images)
        check_labels(labels, len(images))
        self._check_shape(tuple(images.shape[1:]))
        return self._apply(images, labels)

    def apply_batches(self, images: torch.Tensor, labels: torch.Tensor, sizes: list[int],
                      evaluation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Consecutive batches of `sizes` images, each disguised as a batch of its own, all
        from the current draws, in one call: an epoch's batches under client.redisguise =
        "batch". `evaluation`: as a client prepares images for inference (`apply_eval`)."""
        if sum(sizes) != len(images) or min(sizes, default=1) < 1:
            raise ValueError(f"batch sizes {sizes} do not cut {len(images)} images into "
                             f"non-empty batches")
        if self.per_image:
            return (self.apply_eval if evaluation else self.apply)(images, labels)
        if evaluation:
            parts = [self.apply_eval(x, y) for x, y in zip(images.split(sizes),
                                                           labels.split(sizes))]
            return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
        check_images(images)
        check_labels(labels, len(images))
        self._check_shape(tuple(images.shape[1:]))
        return self._apply_batches(images, labels, sizes)

    def _apply_batches(self, images: torch.Tensor, labels: torch.Tensor, sizes: list[int]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """`apply_batches` on checked inputs: batch by batch unless a defence vectorises it."""
        parts = [self._apply(x, y) for x, y in zip(images.split(sizes), labels.split(sizes))]
        return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])

    def reseed(self, stream: str, secret: DisguiseKey | None = None) -> None:
        """Restart the disguise's random draws (noise, mixing, masks, per-image shuffles) on
        the named `stream` of `secret`: a node passes its own secret
        (`fedisguise.disguise.keys.node_secret`), which no other node holds, so a federation
        key never makes two nodes draw alike. Without one the draws come from the key (a
        disguise on its own: an attacker's copy under its own key, a bench). The keyed
        transform (permutations, matrices) never changes. No draws: nothing to do."""
        if not self.draws:
            return
        source = secret if secret is not None else getattr(self, "key", None)
        if not isinstance(source, DisguiseKey):
            raise ValueError(f"disguise {self.name!r} draws random numbers: pass the node's "
                             f"secret (a DisguiseKey), got {source!r}")
        self._draw_from(source, stream)

    def _draw_from(self, source: DisguiseKey, stream: str) -> None:
        """Set up the draws' generators on `stream` of `source` (defences with `draws`)."""
        raise NotImplementedError

    def apply_eval(self, images: torch.Tensor, labels: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """How a client prepares images for inference; the training transform by default."""
        return self.apply(images, labels)

    def _check_shape(self, chw: tuple[int, int, int]) -> None:
        """Per-defence shape rules (block divisibility, ...)."""

    @classmethod
    def check_spec(cls, params: Mapping[str, Any]) -> None:
        """Check parameter values at config time, before anything runs: the defence is
        built once under a throwaway key, since constructors check their own ranges and are
        cheap. A defence whose constructor loads data or files overrides this."""
        cls(DisguiseKey.generate(seed="check-spec") if cls.keyed else None, **params)

    @classmethod
    def redraws(cls, params: Mapping[str, Any]) -> bool:
        """Whether a disguise of these parameters makes random draws, so that drawing them
        afresh (client.redisguise 'round' or 'batch') changes anything."""
        return cls.draws

    @classmethod
    def buildable(cls, params: Mapping[str, Any]) -> bool:
        """Whether the spec can be built as it stands; False where the harness makes what it
        needs first (transform-net without `path`: `prepare` trains it)."""
        return True

    @classmethod
    def prepare(cls, cfg: Any) -> Any:
        """Work the harness does once before a run of this defence: the Config the run
        uses (transform-net trains its network here and points the spec at it)."""
        return cfg

    @classmethod
    def run_record(cls, cfg: Any) -> dict[str, Any]:
        """What a finished run records about the defence beyond the standard figures (merged
        into metrics.json; never key material)."""
        return {}

    def _apply(self, images: torch.Tensor, labels: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class NoDisguise(Disguise):
    """The plain-FL baseline: images pass through unchanged (but still validated)."""

    name = NO_DISGUISE  # the config's default
    keyed = False
    per_image = True

    def __init__(self, key: DisguiseKey | None = None) -> None:
        pass

    def _apply(self, images, labels):
        return images, labels


def check_block_size(chw: tuple[int, int, int], block_size: int) -> None:
    _, h, w = chw
    if h % block_size or w % block_size:
        raise ValueError(f"image size {h}×{w} is not divisible by block_size {block_size}")


DISGUISES: dict[str, type[Disguise]] = {"none": NoDisguise}


def register(cls: type[Disguise]) -> type[Disguise]:
    """Add a defence under its `name` (fedisguise.api.register_disguise for plugins): a
    subclass of Disguise that implements `_apply`."""
    if not (isinstance(cls, type) and issubclass(cls, Disguise)):
        raise TypeError(f"register_disguise takes a subclass of Disguise, got {cls!r}")
    if cls._apply is Disguise._apply:
        raise TypeError(f"{cls.__qualname__} must implement _apply(images, labels)")
    add(DISGUISES, "disguise", cls.name, cls)
    return cls


def spec_params(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, parameters) of a spec: a name, or a table with `name` and parameters."""
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValueError(f"a disguise spec is a name or a table with a 'name', got {spec!r}")
    params = dict(spec)
    return params.pop("name"), params


def check_params(cls: type, params: Mapping[str, Any], kind: str = "disguise") -> None:
    """Unknown names and wrong types are errors that list what the class accepts (a
    disguise, or an attack with kind="attack")."""
    signature = inspect.signature(cls.__init__)
    hints = get_type_hints(cls.__init__)
    accepted = [p for p in signature.parameters if p not in ("self", "key")]
    for name, value in params.items():
        if name not in accepted:
            raise ValueError(f"unknown parameter {name!r} for {kind} {cls.name!r}; "
                             f"valid: {accepted}")
        expected = hints.get(name)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if expected in (int, float, str, bool) and type(value) is not expected:
            raise ValueError(f"{kind} {cls.name!r} parameter {name!r} must be "
                             f"{expected.__name__}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # JSON admits NaN, Infinity
            raise ValueError(f"{kind} {cls.name!r} parameter {name!r} must be finite, "
                             f"got {value!r}")
