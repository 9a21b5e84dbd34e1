"""The attack on InstaHide from its encodings alone (Carlini, Deng, Garg, Jha, Mahloujifar,
Mahmoody, Song, Thakurta, Tramèr: "Is Private Learning Possible with Instance Encoding?",
IEEE S&P 2021), the attack InstaHide fears most.

An encoding is x̃_i = σ_i ∘ (Σ_j λ_ij·s_j + o_i) with s_j = 2·x_j − 1 the private images on
InstaHide's scale, k of them per encoding (`inside`), or one private image and k − 1 public
ones (`cross`, whose sum we call o_i). The attack, as Carlini et al. run it on the InstaHide
Challenge:

1. **Absolute values** remove the sign mask: a_i = |x̃_i| = |Σ_j λ_ij·s_j + o_i|.
2. **Similarity.** A network learns whether two encodings share a private image, trained on
   the attacker's own encodings (Level 1: its public images under its own key, with the
   victim's k, mode and upper bound). Carlini et al. score stacked pairs with a ResNet; ours
   is a dense siamese net, each encoding mapped once to a feature map and a pair scored by
   the cosine of the two maps, so that all M² pairs are one matrix product on a CPU.
3. **Clustering.** The k-nearest-neighbour graph of that similarity is factorised by
   symmetric NMF into N overlapping communities, one per private image (N is the client's
   num_examples, which the server knows); each encoding's strongest communities are its
   candidate members.
4. **Solving for the images.** Given members and weights, every pixel p is a real
   phase-retrieval problem: |L·s_p + o_p| = a_p for the N values s_p ∈ [−1, 1]. It is solved
   by relaxed averaged alternating reflections between the magnitudes and what images can
   produce (plain alternating projections stall on 15 % of pixels even with the true
   mixing), from a few starts, keeping per pixel the start that fits best. Each encoding is then
   re-assigned to the k candidates, and weights, that explain it best, and the images
   solved again (Carlini et al. solve images and weights jointly by gradient descent; the
   alternation is the same fixed point, reached faster).
5. **The sign left.** |L·s_p| is the same for −s_p: at every pixel all images may flip at
   once, which no encoding can tell. The attacker fixes each pixel's sign with its prior:
   an Ising model over neighbouring pixels (images are smooth), its field the agreement
   with the mean of its public images. Scores are given both for x and for |2x − 1|, the
   part the encodings determine.

In cross mode o_i is unknown (public images the attacker cannot identify); like Carlini et
al., who treat the public images as noise, the solver models it by its mean, the public set's
mean image times the weight it carries.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from fedisguise.attacks.base import (
    Attack,
    Evidence,
    Figure,
    GroundTruth,
    Knowledge,
    Reconstruction,
    Runtime,
    has,
    register,
)
from fedisguise.attacks.instahide_recovery import (
    PairSimilarity,
    candidates_from,
    challenge_members,
    recover,
    train_similarity,
)
from fedisguise.attacks.scoring import PSNR_CAP, Scorer, matching_order
from fedisguise.metrics import psnr, ssim


# ---- the attack under the contract -------------------------------------------------------
@register
class InstaHideAttack(Attack):
    """Carlini et al.'s attack on a set of InstaHide encodings (Level 1: it knows k, mode
    and upper bound, and encodes its own public images to learn the similarity). Its
    evidence is encodings: the client's own (outsourced), or a chain's estimates of them
    from an update. It recovers the private images up to each pixel's common sign."""

    name = "instahide_attack"
    evidence = "images"
    targets = "mixes_images"
    chain_stage = True
    figures = (
        Figure("psnr_vs_original", "InstaHide attack PSNR vs original (dB)"),
        Figure("ssim_vs_original", "InstaHide attack SSIM vs original"),
        Figure("recognisability", "InstaHide attack recognisability"),
        Figure("abs_ssim", "InstaHide attack SSIM of |2x − 1|"),
    )
    level = 1

    def __init__(self, public_images: int = 2000, train_encodings_per_image: int = 20,
                 steps: int = 1500, restarts: int = 4, iterations: int = 100, rounds: int = 4,
                 candidates: int = 4, private: int = 0) -> None:
        if min(public_images, train_encodings_per_image, steps, restarts, iterations) < 1 \
                or rounds < 0 or candidates < 0 or private < 0:
            raise ValueError("public_images, train_encodings_per_image, steps, restarts and "
                             "iterations must be >= 1; rounds, candidates and private >= 0")
        self.public_images, self.per_image = public_images, train_encodings_per_image
        self.steps, self.restarts, self.iterations = steps, restarts, iterations
        self.rounds, self.candidates, self.private = rounds, candidates, private
        self._similarity: dict[tuple, tuple[PairSimilarity, dict]] = {}

    def reconstruct(self, evidence: Evidence, knowledge: Knowledge, runtime: Runtime
                    ) -> Reconstruction:
        if evidence.images is None:
            raise ValueError("the InstaHide attack needs encodings")
        name = knowledge.algorithm.name
        if not has(name, "mixes_images"):
            return Reconstruction(figures={"status": "not applicable",
                                           "reason": f"an attack on InstaHide, not {name}"})
        started = time.perf_counter()
        own = knowledge.own_disguise(runtime.seed)  # the public algorithm, the attacker's key
        k, mode = own.k, own.mode
        absolute = evidence.images.detach().float().cpu().abs()
        if absolute.ndim != 4 or not torch.isfinite(absolute).all():
            raise ValueError(f"encodings must be finite N×C×H×W, got shape "
                             f"{tuple(absolute.shape)}"
                             + ("" if torch.isfinite(absolute).all() else " with NaN or inf"))
        m = len(absolute)
        # How many private images the encodings hold: the server knows the client's
        # num_examples; no more than the encodings can hold.
        slots = k if mode == "inside" else 1
        n = min(self.private or evidence.view.num_examples, m * slots)
        per_image = round(m * slots / n)
        if per_image >= 2:
            similarity, learned = self.similarity(absolute, knowledge, own, runtime)
            candidates = candidates_from(similarity, n, slots, per_image, self.candidates,
                                         runtime.seed)
        else:  # no two encodings share an image: each holds images of its own
            n, per_image, learned = m * slots, 1, None
            candidates = torch.arange(n).view(m, slots)
        public_mean = None
        if mode == "cross":
            public_mean = (2 * own.public.float().mean(0) - 1).flatten()[None]
        prior = 2 * knowledge.public.images.float().mean(0) - 1
        images, unsigned, history = recover(
            absolute, candidates, n, k, public_mean, prior, restarts=self.restarts,
            iterations=self.iterations, rounds=self.rounds, seed=runtime.seed,
            progress=runtime.progress)
        return Reconstruction(
            images=images, space="original",
            figures={"status": "ok", "level": knowledge.level, "k": k, "mode": mode,
                     "encodings": m, "private_images": n, "encodings_per_image": per_image,
                     "observed": evidence.images_from, "similarity": learned,
                     "fit_residual": history, "seconds": time.perf_counter() - started},
            extra={"unsigned": unsigned})

    def similarity(self, absolute: torch.Tensor, knowledge: Knowledge, own: Any,
                   runtime: Runtime) -> tuple[torch.Tensor, dict]:
        """Step 2: the similarity of every pair of encodings, by a network learned on the
        attacker's own encodings of its public images (one network per algorithm)."""
        cache = (repr(knowledge.algorithm), runtime.seed, len(knowledge.public))
        if cache not in self._similarity:
            k, mode = own.k, own.mode
            rng = np.random.default_rng(runtime.seed)
            public = knowledge.public.images[:self.public_images]
            if mode == "inside":  # a multiple of k images: n·t/k rows come out whole
                public = public[:len(public) - len(public) % k]
            own.reseed("attacker")
            if mode == "inside":
                private_members = challenge_members(len(public), k, self.per_image, rng)
                own_members = private_members
            else:
                rows = torch.arange(len(public)).repeat(self.per_image)
                partners = torch.from_numpy(rng.integers(0, len(own.public),
                                                         (len(rows), k - 1)))
                own_members, private_members = torch.cat([rows[:, None], partners], 1), \
                    rows[:, None]
            own_absolute = own.encode(public, own_members)[0].abs()
            self._similarity[cache] = train_similarity(
                own_absolute, private_members, len(public), steps=self.steps,
                device=runtime.device, seed=runtime.seed, progress=runtime.progress)
        net, learned = self._similarity[cache]
        return net.matrix(absolute), learned

    def score(self, reconstruction: Reconstruction, truth: GroundTruth, scorer: Scorer
              ) -> dict:
        """Recovered private images against the originals behind the encodings, each
        matched to its nearest original: x, and |2x − 1| (free of the per-pixel sign)."""
        figures = dict(reconstruction.figures)
        if reconstruction.images is None:
            return figures
        plain = truth.observed_plain if truth.observed_plain is not None else \
            truth.batch_plain
        labels = truth.observed_labels if truth.observed_labels is not None else \
            truth.batch_labels
        figures.update(score_recovery(reconstruction.images, reconstruction.extra["unsigned"],
                                      plain, labels, scorer))
        disguised = truth.observed_disguised if truth.observed_disguised is not None else \
            truth.batch_disguised
        matched = figures.pop("_matched")
        figures["_grid"] = (plain[:8], disguised[:8], matched[:8])
        return figures


def score_recovery(images: torch.Tensor, unsigned: torch.Tensor, plain: torch.Tensor,
                   labels: torch.Tensor, scorer: Scorer | None = None) -> dict[str, Any]:
    """PSNR/SSIM of recovered private images (matched to the originals on MSE) and of their
    |2x − 1| (matched on that), mean and max over the originals that got an image."""
    order = matching_order(images, plain)
    keep = order >= 0
    rec, truth = images[order[keep]], plain[keep]
    ssim_x = ssim(rec, truth)
    absolute = (2 * plain - 1).abs()
    order_abs = matching_order(unsigned, absolute)
    keep_abs = order_abs >= 0
    rec_abs, truth_abs = unsigned[order_abs[keep_abs]], absolute[keep_abs]
    ssim_abs = ssim(rec_abs, truth_abs)
    figures = {
        "psnr_vs_original": psnr(rec, truth).clamp(max=PSNR_CAP).mean().item(),
        "ssim_vs_original": ssim_x.mean().item(),
        "ssim_max": ssim_x.max().item(),
        "abs_psnr": psnr(rec_abs, truth_abs).clamp(max=PSNR_CAP).mean().item(),
        "abs_ssim": ssim_abs.mean().item(),
        "abs_ssim_max": ssim_abs.max().item(),
        "matched": int(keep.sum()),
        "_matched": rec,
    }
    if scorer is not None:
        figures["recognisability"] = scorer.recognisability(rec, labels[keep])
    return figures
