"""Attacks on VisualMixer that know how it works (Level 1): what a window shuffle keeps.

A shuffle inside a window keeps that window's pixel multiset exactly, so its mean and
histogram: the attacker reads a low-resolution copy of the image for free. The window sizes
follow from the public algorithm and parameters (VisualMixer's bounds; the uniform
variant's `window`); which regions VisualMixer split into smaller windows depends on the
original image's VFE and is detected (below).

- `window_stats`: the image from each window's preserved statistics. The window means give
  the exact low-pass image (the box-filtered original, at each window's own size); a
  smoothness prior then spreads them (the smoothest image with those window means), and
  rank matching puts each window's own pixel values back in the order of that estimate, so
  the result is itself a valid preimage of the shuffle. `method = "auto"` takes whichever
  of the three scores best on the attacker's own public images shuffled under its own key.
- `deshuffler`: a learned de-shuffler (Level 1): a U-Net trained on the attacker's public
  images shuffled by the public algorithm under its own key, fed the shuffled image with
  the window statistics' two estimates beside it.

VisualMixer's split detection (§IV-D, Algorithm 1): a region is shuffled whole when its VFE
density is not above the image's median, else split into quadrants. A region shuffled whole
has quadrant means of a random draw from its pixels; a split one keeps its quadrants' means,
which also continue the neighbouring regions smoothly. Regions are ranked by those two
signs, and the top ones marked split, as many as the median rule allows; deeper levels use
the threshold that is best on the attacker's own shuffles, where it knows its own plan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
from fedisguise.attacks.inverse import apply_inverse, train_inverse
from fedisguise.attacks.scoring import Scorer, score_outsourced
from fedisguise.disguise.visualmixer import VisualMixer, window_levels
from fedisguise.metrics import psnr

METHODS = ("auto", "lowpass", "smooth", "rank")


def levels_of(disguise: object, h: int, w: int) -> list[int]:
    """The window sizes a shuffler uses on h×w images, largest first (public knowledge)."""
    if isinstance(disguise, VisualMixer):
        return window_levels(h, w, *disguise.bounds(h, w))
    return [disguise.window]


def window_ids(masks: dict[int, torch.Tensor], h: int, w: int) -> torch.Tensor:
    """N×H×W: each pixel's final window, numbered across levels, from per-level masks
    (size s -> N×H/s×W/s, True where a window of size s was shuffled as one)."""
    ids, offset = None, 0
    for size, mask in masks.items():
        gh, gw = h // size, w // size
        number = torch.arange(gh * gw, device=mask.device).view(1, gh, gw) + offset
        here = F.interpolate(mask[:, None].float(), scale_factor=size, mode="nearest")[:, 0]
        full = F.interpolate(number[:, None].float().expand(len(mask), -1, -1, -1),
                             scale_factor=size, mode="nearest")[:, 0].long()
        ids = torch.where(here.bool(), full, ids if ids is not None else full)
        offset += gh * gw
    return ids


def window_mean(images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Each pixel replaced by the mean of its window (per image and channel)."""
    n, c, h, w = images.shape
    count = int(ids.max()) + 1
    index = (torch.arange(n * c, device=ids.device).view(n, c, 1) * count +
             ids.view(n, 1, h * w)).flatten()
    flat = images.reshape(-1)
    sums = torch.zeros(n * c * count, dtype=images.dtype, device=images.device)
    sums.index_add_(0, index, flat)
    sizes = torch.zeros_like(sums).index_add_(0, index, torch.ones_like(flat))
    return (sums / sizes.clamp(min=1))[index].view(n, c, h, w)


def rank_match(estimate: torch.Tensor, observed: torch.Tensor, ids: torch.Tensor
               ) -> torch.Tensor:
    """Each window's observed pixel values, placed in the order of `estimate` inside it:
    the preimage of the shuffle that agrees in rank with the estimate."""
    n, c, h, w = observed.shape
    win = ids.view(n, 1, h * w).expand(n, c, -1).double()
    by_estimate = torch.argsort(win + estimate.reshape(n, c, -1).double().clamp(0, 1) * 0.5,
                                dim=-1)
    by_value = torch.sort(win + observed.reshape(n, c, -1).double().clamp(0, 1) * 0.5,
                          dim=-1).indices
    values = torch.gather(observed.reshape(n, c, -1), -1, by_value)
    out = torch.empty_like(values)
    out.scatter_(-1, by_estimate, values)
    return out.view(n, c, h, w)


def smooth_within(means: torch.Tensor, ids: torch.Tensor, iterations: int = 50
                  ) -> torch.Tensor:
    """The smoothest image in [0, 1] with the given window means: 3×3 averaging, each time
    projected back onto the window means."""
    x = means
    for _ in range(iterations):
        blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        x = (blurred + means - window_mean(blurred, ids)).clamp(0, 1)
    return x


def _split_scores(shuffled: torch.Tensor, size: int, child: int) -> torch.Tensor:
    """Per size×size window: how much its child windows' means look kept, in units of what
    a whole-window shuffle gives (N×H/size×W/size). Two signs: their spread (a random
    draw's is predictable from the window's pixel variance) and how well a smooth
    interpolation of the size-level means predicts them."""
    n, c, h, w = shuffled.shape
    r = size // child
    means = F.avg_pool2d(shuffled, size)  # N×C×gh×gw
    children = F.avg_pool2d(shuffled, child)  # N×C×(gh·r)×(gw·r)
    predicted = F.interpolate(means, size=children.shape[-2:], mode="bilinear",
                              align_corners=False)
    variance = F.avg_pool2d(shuffled ** 2, size) - means ** 2
    # spread of the means of r² groups of child² pixels drawn without replacement
    pixels, group = size * size, child * child
    expected = variance * (pixels - group) / (group * (pixels - 1)) * r * r
    flat = F.interpolate(means, scale_factor=r, mode="nearest")
    spread = F.avg_pool2d((children - flat) ** 2, r) * r * r
    gain = spread - F.avg_pool2d((children - predicted) ** 2, r) * r * r
    score = ((spread + gain) / (expected + 1e-8)).mean(1)
    constant = variance.amax(1) < 1e-10  # no pixel differs: split or not is the same image
    return torch.where(constant, torch.full_like(score, -torch.inf), score)


def detect_windows(shuffled: torch.Tensor, levels: list[int],
                   thresholds: dict[int, float] | None = None) -> dict[int, torch.Tensor]:
    """Per level size s: N×H/s×W/s masks of the windows taken as shuffled whole at size s.
    The top level follows VisualMixer's median rule (at least half the regions whole);
    deeper levels split where the score passes `thresholds[s]` (default 1)."""
    n, _, h, w = shuffled.shape
    top = levels[0]
    active = torch.ones(n, h // top, w // top, dtype=torch.bool, device=shuffled.device)
    masks: dict[int, torch.Tensor] = {}
    for i, size in enumerate(levels):
        if i == len(levels) - 1:
            masks[size] = active
            break
        score = _split_scores(shuffled, size, levels[i + 1])
        score = torch.where(active, score, torch.full_like(score, -torch.inf))
        if i == 0:
            regions = score[0].numel()
            whole_at_least = (regions - 1) // 2 + 1  # elements <= the lower median
            split_count = regions - whole_at_least
            rank = score.flatten(1).argsort(1, descending=True).argsort(1)
            split = (rank < split_count) & torch.isfinite(score.flatten(1))
            split = split.view_as(score)
        else:
            split = score > (thresholds or {}).get(size, 1.0)
        masks[size] = active & ~split
        r = size // levels[i + 1]
        active = F.interpolate((active & split)[:, None].float(), scale_factor=r,
                               mode="nearest")[:, 0].bool()
    return masks


def statistics_estimates(shuffled: torch.Tensor, levels: list[int],
                         thresholds: dict[int, float] | None = None
                         ) -> dict[str, torch.Tensor]:
    """The three window-statistics estimates of the originals: `lowpass` (window means),
    `smooth`, `rank` (see the module docstring), and the window ids behind them."""
    _, _, h, w = shuffled.shape
    ids = window_ids(detect_windows(shuffled, levels, thresholds), h, w)
    lowpass = window_mean(shuffled, ids)
    smooth = smooth_within(lowpass, ids)
    return {"lowpass": lowpass, "smooth": smooth, "rank": rank_match(smooth, shuffled, ids),
            "ids": ids}


@dataclass(frozen=True)
class AttackerShuffles:
    """What both attacks start from: the targets, and the attacker's own public images
    shuffled by the public algorithm under its own key, with the window sizes and split
    thresholds that follow from them."""

    targets: torch.Tensor
    plain: torch.Tensor
    shuffled: torch.Tensor
    levels: list[int]
    thresholds: dict[int, float]


def attacker_shuffles(evidence: Evidence, knowledge: Knowledge, runtime: Runtime,
                      count: int) -> AttackerShuffles | str:
    """The attacker's shuffles of `count` public images, or why the attack does not apply."""
    if evidence.images is None:
        raise ValueError("an attack on window shuffles needs the shuffled images")
    name = knowledge.algorithm.name
    if not has(name, "shuffles_windows"):
        return f"an attack on window shuffles, not {name}"
    if evidence.images.ndim != 4 or not torch.isfinite(evidence.images).all():
        raise ValueError(f"shuffled images must be finite N×C×H×W, got shape "
                         f"{tuple(evidence.images.shape)}"
                         + ("" if torch.isfinite(evidence.images).all() else
                            " with NaN or inf"))
    targets = evidence.images.detach().float().cpu().clamp(0, 1)
    own = knowledge.own_disguise(runtime.seed)
    own.reseed("attacker")
    plain = knowledge.public.images[:count]
    own_shuffled = own.apply(plain)[0]
    levels = levels_of(own, *targets.shape[-2:])
    thresholds = calibrate_thresholds(own, plain, own_shuffled, levels)
    return AttackerShuffles(targets, plain, own_shuffled, levels, thresholds)


@register
class WindowStatistics(Attack):
    """The image from each window's preserved statistics (Level 1)."""

    name = "window_stats"
    evidence = "images"
    targets = "shuffles_windows"
    level = 1
    figures = (
        Figure("psnr_vs_original", "window statistics PSNR vs original (dB)"),
        Figure("ssim_vs_original", "window statistics SSIM vs original"),
        Figure("recognisability", "window statistics recognisability"),
    )

    def __init__(self, method: str = "auto", targets: int = 500, calibration: int = 500
                 ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if min(targets, calibration) < 1:
            raise ValueError("targets and calibration must be >= 1")
        self.method, self.targets, self.calibration = method, targets, calibration

    def reconstruct(self, evidence: Evidence, knowledge: Knowledge, runtime: Runtime
                    ) -> Reconstruction:
        started = time.perf_counter()
        view = attacker_shuffles(evidence, knowledge, runtime, self.calibration)
        if isinstance(view, str):
            return Reconstruction(figures={"status": "not applicable", "reason": view})
        method, calibration = self.method, {}
        if method == "auto":  # the attacker's own images tell it which estimate is best
            mine = statistics_estimates(view.shuffled, view.levels, view.thresholds)
            calibration = {m: psnr(mine[m], view.plain).mean().item()
                           for m in METHODS[1:]}
            method = max(calibration, key=calibration.get)
        rec = statistics_estimates(view.targets, view.levels, view.thresholds)[method]
        return Reconstruction(images=rec, space="original", figures={
            "status": "ok", "level": knowledge.level, "method": method,
            "levels": view.levels, "calibration_psnr": calibration,
            "targets": len(view.targets),
            "observed": evidence.images_from, "seconds": time.perf_counter() - started})

    def score(self, reconstruction: Reconstruction, truth: GroundTruth, scorer: Scorer
              ) -> dict:
        return score_outsourced(reconstruction, truth, scorer)


def calibrate_thresholds(own: object, plain: torch.Tensor, shuffled: torch.Tensor,
                         levels: list[int]) -> dict[int, float]:
    """For levels below the top: the split threshold that best reproduces the attacker's
    own plan on its own images (where it knows which windows it shuffled whole)."""
    if not isinstance(own, VisualMixer) or len(levels) < 3:
        return {}
    plan = own.plan(plain)
    thresholds: dict[int, float] = {}
    active = torch.ones_like(plan[levels[0]])
    for i, size in enumerate(levels[:-1]):
        split = active & ~plan[size]
        if i:
            score = _split_scores(shuffled, size, levels[i + 1])
            judged = active & torch.isfinite(score)
            if judged.any():
                candidates = score[judged].quantile(torch.linspace(0.05, 0.95, 19))
                right = [((score[judged] > t) == split[judged]).float().mean()
                         for t in candidates]
                thresholds[size] = candidates[int(torch.stack(right).argmax())].item()
        r = size // levels[i + 1]
        active = split.repeat_interleave(r, 1).repeat_interleave(r, 2)
    return thresholds


@register
class Deshuffler(Attack):
    """A learned de-shuffler (Level 1): a U-Net from (shuffled, window means, rank-matched
    estimate) to the original's difference from that estimate, trained on the attacker's
    own public images shuffled by the public algorithm under its own key."""

    name = "deshuffler"
    evidence = "images"
    targets = "shuffles_windows"
    chain_stage = True
    level = 1
    figures = (
        Figure("psnr_vs_original", "de-shuffler PSNR vs original (dB)"),
        Figure("ssim_vs_original", "de-shuffler SSIM vs original"),
        Figure("recognisability", "de-shuffler recognisability"),
    )

    def __init__(self, pairs: int = 3000, epochs: int = 6, targets: int = 500) -> None:
        if min(pairs, epochs, targets) < 1:
            raise ValueError("pairs, epochs and targets must be >= 1")
        self.pairs, self.epochs, self.targets = pairs, epochs, targets

    def reconstruct(self, evidence: Evidence, knowledge: Knowledge, runtime: Runtime
                    ) -> Reconstruction:
        started = time.perf_counter()
        view = attacker_shuffles(evidence, knowledge, runtime, self.pairs)
        if isinstance(view, str):
            return Reconstruction(figures={"status": "not applicable", "reason": view})
        # The network learns the correction to the rank-matched estimate, (original −
        # estimate + 1) / 2 in its sigmoid's range: it starts from the statistics attack.
        features = deshuffler_input(view.shuffled, view.levels, view.thresholds)
        correction = (view.plain - features[:, -view.plain.shape[1]:] + 1) / 2
        net, info = train_inverse(features, correction, epochs=self.epochs,
                                  device=runtime.device, seed=runtime.seed,
                                  progress=runtime.progress)
        features = deshuffler_input(view.targets, view.levels, view.thresholds)
        estimate = features[:, -view.targets.shape[1]:]
        rec = (estimate + 2 * apply_inverse(net, features) - 1).clamp(0, 1)
        return Reconstruction(images=rec, space="original", figures={
            "status": "ok", "level": knowledge.level, "levels": view.levels, **info,
            "targets": len(view.targets), "observed": evidence.images_from,
            "seconds": time.perf_counter() - started})

    def score(self, reconstruction: Reconstruction, truth: GroundTruth, scorer: Scorer
              ) -> dict:
        return score_outsourced(reconstruction, truth, scorer)


def deshuffler_input(shuffled: torch.Tensor, levels: list[int],
                     thresholds: dict[int, float]) -> torch.Tensor:
    """The shuffled image with its window-statistics estimates as extra channels."""
    est = statistics_estimates(shuffled, levels, thresholds)
    return torch.cat([shuffled, est["lowpass"], est["rank"]], 1)
