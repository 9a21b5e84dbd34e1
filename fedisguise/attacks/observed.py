"""The floor of every image attack: the disguised images read as they are (Level 0).

An attacker who holds disguised images and knows nothing of the disguise can still look at
them. Its figures are what a disguise leaves visible by itself, the do-nothing baseline a
de-disguising attack must beat (for `none`, the originals: 100 dB, the undefended case).
Images outside [0, 1] (RMT, InstaHide) are shown min–max scaled, as a viewer would.
"""

from __future__ import annotations

from fedisguise.attacks.base import (
    Attack,
    Evidence,
    Figure,
    GroundTruth,
    Knowledge,
    Reconstruction,
    Runtime,
    register,
)
from fedisguise.attacks.scoring import Scorer, score_outsourced
from fedisguise.privacy.figures import display_range


@register
class AsObserved(Attack):
    """The observed (disguised) images, taken as the reconstruction."""

    name = "as_observed"
    evidence = "images"
    figures = (
        Figure("psnr_vs_original", "as observed PSNR vs original (dB)"),
        Figure("ssim_vs_original", "as observed SSIM vs original"),
        Figure("recognisability", "as observed recognisability"),
    )

    def __init__(self, targets: int = 500) -> None:
        if targets < 1:
            raise ValueError(f"targets must be >= 1, got {targets}")
        self.targets = targets

    def reconstruct(self, evidence: Evidence, knowledge: Knowledge, runtime: Runtime
                    ) -> Reconstruction:
        if evidence.images is None:
            raise ValueError("as_observed needs images")
        images = evidence.images.detach().float().cpu()
        if images.min() < 0 or images.max() > 1:
            images = display_range(images)
        return Reconstruction(images=images, space="original", figures={
            "status": "ok", "targets": len(images), "observed": evidence.images_from})

    def score(self, reconstruction: Reconstruction, truth: GroundTruth, scorer: Scorer
              ) -> dict:
        return score_outsourced(reconstruction, truth, scorer)
