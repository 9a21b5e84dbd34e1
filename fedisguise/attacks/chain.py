"""Attack chains: what the server recovers of a client's *original* images (README, "Attacks").

An FL server never sees disguised images, only updates and models. Its attack is a chain:
1. a reconstruction stage estimates the images the client trained on, which are disguised
   images, from what the server holds (gradient inversion of the update, or a GAN against
   the global model);
2. a de-disguising stage maps those estimates to originals using only what its level
   allows: a Level-1 inverse network trained on the attacker's own public data under its own
   key (for transform-net, the inverse of the public h_θ); at Level 2, known-pairs algebra or
   an inverse network on pairs under the victim's key.

The chain is scored against the client's original images by the first stage's own scoring
(PSNR, SSIM and recognisability for gradient inversion), applied to the chain's output, with
the first stage's estimate also scored against the true disguised images.

`stages = []` picks the default chain of the run's disguise at the chain's level
(`default_stages`); the first stage's parameters can be tuned with `inversion = {...}`.
"""

from __future__ import annotations

from typing import Any

from fedisguise.attacks.base import (
    ATTACKS,
    LEVELS,
    Attack,
    Evidence,
    Figure,
    GroundTruth,
    Knowledge,
    Reconstruction,
    Runtime,
    build_attack,
    declared_scope,
    has,
    register,
)
from fedisguise.attacks.scoring import Scorer
from fedisguise.disguise.base import DISGUISES, NoDisguise
from fedisguise.disguise.spec import DisguiseSpec


def specific_stage(disguise: str) -> str | None:
    """The attack a defence fears most, run on a chain's estimate: the registered attack
    that declares itself a chain stage (`chain_stage`) for a capability the defence has."""
    found = sorted(name for name, cls in ATTACKS.items()
                   if cls.chain_stage is True and disguise in declared_scope(cls))
    if len(found) > 1:
        raise ValueError(f"attacks {found} each declare themselves the chain's stage against "
                         f"{disguise!r}; one may")
    return found[0] if found else None


def default_stages(disguise: str, level: int) -> list[dict[str, Any]]:
    """The strongest chain each defence faces at each level, as attack specs.

    Level 0 knows no algorithm, so it keeps the gradient-inversion estimate as its guess of
    the originals; `none` needs no second stage. Level 1 de-disguises with the attack the
    defence fears most where one exists (Carlini et al.'s on InstaHide, the learned
    de-shuffler on VisualMixer), else an inverse network on its own key. Level 2:
    block-affine defences fall to known-pairs algebra (exact without noise); pairs under the
    victim's key do not undo per-image randomness, so InstaHide and the shufflers keep their
    Level-1 attack; the rest get a U-Net on the victim's pairs.
    """
    first = {"name": default_stage("first")}
    if level == 0 or DISGUISES.get(disguise) is NoDisguise:
        return [first]
    specific = specific_stage(disguise)
    if specific is not None:
        return [first, {"name": specific}]
    if level == 1:
        return [first, {"name": default_stage("any"), "level": 1}]
    method = "known-pairs" if has(disguise, "block_affine") else "unet"
    return [first, {"name": default_stage("any"), "level": 2, "method": method}]


def default_stage(role: str) -> str:
    """The registered attack that declares itself the default chain's `role` stage
    (`chain_stage` "first" or "any")."""
    found = sorted(name for name, cls in ATTACKS.items() if cls.chain_stage == role)
    if len(found) != 1:
        raise ValueError(f"the default chain needs one attack with chain_stage = {role!r}; "
                         f"found {found}")
    return found[0]


@register
class Chain(Attack):
    """Reconstruction stage, then de-disguising stages, scored against the originals."""

    name = "chain"
    evidence = "update"
    named_by_level = True
    figures = (
        Figure("psnr_vs_original", "chain PSNR vs original (dB)"),
        Figure("ssim_vs_original", "chain SSIM vs original"),
        Figure("recognisability", "chain recognisability"),
        Figure("estimate_psnr_vs_disguised", "chain estimate PSNR vs disguised (dB)"),
        Figure("label_accuracy", "chain label recovery"),
    )

    def __init__(self, level: int = 1, stages: list = (), inversion: dict | None = None
                 ) -> None:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        if not isinstance(stages, list | tuple) or not isinstance(inversion, dict | None):
            raise ValueError(f"stages must be a list of attack tables and inversion a table, "
                             f"got {stages!r}, {inversion!r}")
        self.level, self.inversion = level, dict(inversion or {})
        self.stages = [self._check_stage(i, s) for i, s in enumerate(stages)]
        if self.inversion and self.stages:
            raise ValueError("`inversion` tunes the default chain's first stage; with explicit "
                             "`stages`, set the parameters in the first stage")
        if self.inversion:
            build_attack({"name": default_stage("first"), **self.inversion})

    def _check_stage(self, i: int, spec: Any) -> Attack:
        if not isinstance(spec, dict) or "round" in spec or "client" in spec:
            raise ValueError(f"stages[{i}] must be an attack table without round/client "
                             f"(the chain's target is the stages' target), got {spec!r}")
        stage = build_attack(spec)
        wanted = ("update",) if i == 0 else ("images",)
        if stage.evidence not in wanted or stage.name == "chain":
            fitting = sorted(n for n, c in ATTACKS.items() if c.evidence in wanted
                             and n != "chain")
            raise ValueError(f"stages[{i}] ({spec['name']}) cannot take "
                             f"{'an update' if i == 0 else 'images'}; valid: {fitting}")
        if getattr(stage, "level", 0) > self.level:
            raise ValueError(f"stages[{i}] needs Level {stage.level} > the chain's level "
                             f"{self.level}")
        return stage

    def plan(self, disguise: Any) -> list[Attack]:
        """The stages this chain runs against a defence (named by the run's config)."""
        if self.stages:
            return self.stages
        name = DisguiseSpec.parse(disguise).name
        specs = default_stages(name, self.level)
        specs[0] = {**specs[0], **self.inversion}
        return [build_attack(s) for s in specs]

    def pairs_wanted(self) -> int:
        return max((s.pairs_wanted() for s in self.stages), default=1000 if self.level == 2
                   else 0)

    def reconstruct(self, evidence: Evidence, knowledge: Knowledge, runtime: Runtime
                    ) -> Reconstruction:
        # The defence a Level-0 attacker faces is unknown to it: it runs inversion only.
        stages = self.plan(knowledge.algorithm if knowledge.level else NoDisguise.name)
        first = stages[0].reconstruct(evidence, knowledge, runtime)
        names = [s.name for s in stages]
        figures = {"status": first.figures.get("status", "ok"), "level": self.level,
                   "stages": names, "first": first.figures}
        if first.images is None:
            return Reconstruction(figures=figures, extra={"first": first, "stages": stages})
        current = first
        for i, stage in enumerate(stages[1:], start=1):  # by position: names may repeat
            current = stage.reconstruct(
                Evidence(view=evidence.view, images=current.images,
                         images_from=" → ".join(names[:i])),
                knowledge, runtime)
            figures[stage.name if names.count(stage.name) == 1 else f"{stage.name}-{i}"] = \
                current.figures
        final = Reconstruction(images=current.images, labels=first.labels, space="original",
                               figures=figures, extra={"first": first, "stages": stages})
        return final

    def score(self, reconstruction: Reconstruction, truth: GroundTruth, scorer: Scorer
              ) -> dict:
        figures = dict(reconstruction.figures)
        first, stages = reconstruction.extra["first"], reconstruction.extra["stages"]
        if reconstruction.images is None:
            return figures
        # The first stage's own scoring, applied to the chain's output.
        scored = stages[0].score(
            Reconstruction(images=reconstruction.images, labels=first.labels,
                           space="original", figures={}), truth, scorer)
        estimate = stages[0].score(first, truth, scorer)
        figures.update({k: v for k, v in scored.items() if k in (
            "psnr_vs_original", "ssim_vs_original", "recognisability", "label_accuracy")})
        figures["estimate_psnr_vs_disguised"] = estimate.get("psnr_vs_disguised")
        figures["estimate_psnr_vs_original"] = estimate.get("psnr_vs_original")
        figures["estimate_recognisability"] = estimate.get("recognisability")
        grid = scored.get("_grid")
        if grid is not None:
            figures["_grid"] = grid
        return figures
