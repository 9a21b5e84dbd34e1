"""Jigsaw reassembly of keyed block permutation (DisguisedNets §3.1) from disguised images only.

The permutation is one per key, the same for every image, so edge evidence pools over the
whole disguised set: the cost of putting block j right of (or below) block i is the mean
squared difference of the touching pixel edges over all images, normalised by the best
alternative (Pomeranz et al. 2011's compatibility). A greedy solver then fills the grid in
raster order from every possible top-left block, each time taking the block with the lowest
summed cost to its left and upper neighbours, and keeps the cheapest arrangement.

Edges alone leave the arrangement free to shift where the data's border is uniform (on
Fashion-MNIST's black border a one-column cyclic shift costs no more than the truth, and
with 300 images it wins). A permutation keeps each block's pixels, so the mean disguised
block also tells where it sits: with public images of the same kind (`prior`) each grid
position costs the block's distance to the public mean image's block there, added to every
fill, and the position-only assignment (Hungarian) competes as one more arrangement.

Scored by direct accuracy (blocks at their true position) and neighbour accuracy (true
horizontal/vertical neighbour pairs that are neighbours in the same way in the solution).
"""

from __future__ import annotations

import time

import torch
from scipy.optimize import linear_sum_assignment

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
from fedisguise.attacks.inverse import block_size_of
from fedisguise.attacks.scoring import Scorer, score_outsourced
from fedisguise.metrics import ssim


def _blocks(images: torch.Tensor, b: int) -> torch.Tensor:
    """T × (images·channels) × b × b: every image's blocks in raster order."""
    n, c, h, w = images.shape
    gh, gw = h // b, w // b
    blocks = images.reshape(n, c, gh, b, gw, b).permute(2, 4, 0, 1, 3, 5)
    return blocks.reshape(gh * gw, n * c, b, b)


def _edge_costs(disguised: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """T×T costs: right[i, j] = block j right of block i, down[i, j] = j below i."""
    blocks = _blocks(disguised, b)
    right_edge, left_edge = blocks[..., :, -1].flatten(1), blocks[..., :, 0].flatten(1)
    bottom_edge, top_edge = blocks[..., -1, :].flatten(1), blocks[..., 0, :].flatten(1)
    right = torch.cdist(right_edge, left_edge).pow(2) / right_edge.shape[1]
    down = torch.cdist(bottom_edge, top_edge).pow(2) / bottom_edge.shape[1]
    eye = torch.eye(len(blocks), dtype=torch.bool, device=disguised.device)
    return (_normalise(right.masked_fill(eye, torch.inf)),
            _normalise(down.masked_fill(eye, torch.inf)))


def position_costs(disguised: torch.Tensor, public: torch.Tensor, b: int) -> torch.Tensor:
    """T×T: cost[q, p] = disguised block q at grid position p, the distance of its mean over
    the disguised images to the mean public image's block at p (normalised per block)."""
    if public.shape[1:] != disguised.shape[1:]:
        raise ValueError(f"public images {tuple(public.shape[1:])} and disguised images "
                         f"{tuple(disguised.shape[1:])} differ in shape")
    mine = _blocks(disguised.float(), b).mean(1).flatten(1)
    theirs = _blocks(public.float(), b).mean(1).flatten(1)
    return _normalise(torch.cdist(mine, theirs).pow(2) / mine.shape[1])


def _normalise(cost: torch.Tensor) -> torch.Tensor:
    """Divide by each row's second-best cost: a match stands out only if it beats the rest."""
    second = cost.topk(2, dim=1, largest=False).values[:, 1:2].clamp(min=1e-12)
    return cost / second


def solve(disguised: torch.Tensor, block_size: int, prior: torch.Tensor | None = None
          ) -> dict:
    """Arrangement of the disguised blocks: `placement[p]` = the disguised block index put at
    grid position p (raster order). Works on many images at once (one shared permutation);
    `prior`: public images of the same kind for the position costs (module docstring)."""
    if disguised.ndim != 4:
        raise ValueError(f"disguised images must be N×C×H×W, got {tuple(disguised.shape)}")
    _, _, h, w = disguised.shape
    if h % block_size or w % block_size:
        raise ValueError(f"image size {h}×{w} is not divisible by block_size {block_size}")
    started = time.perf_counter()
    gh, gw = h // block_size, w // block_size
    right, down = _edge_costs(disguised.float(), block_size)
    t = gh * gw
    where = (torch.zeros(t, t) if prior is None
             else position_costs(disguised, prior, block_size).cpu())
    # Every start block at once: row r of `placed` is the greedy fill begun from block r.
    placed = torch.empty(t, t, dtype=torch.long)
    placed[:, 0] = torch.arange(t)
    used = torch.eye(t, dtype=torch.bool)
    for p in range(1, t):
        row, col = divmod(p, gw)
        cost = where[:, p].to(right.dtype).expand(t, t).clone()
        if col:
            cost += right[placed[:, p - 1]]
        if row:
            cost += down[placed[:, p - gw]]
        cost[used] = torch.inf
        pick = cost.argmin(1)
        placed[:, p] = pick
        used[torch.arange(t), pick] = True
    if prior is not None:  # the position-only assignment competes
        blocks, positions = linear_sum_assignment(where.double().numpy())
        alone = torch.empty(t, dtype=torch.long)
        alone[torch.from_numpy(positions)] = torch.from_numpy(blocks)
        placed = torch.cat([placed, alone[None]])
    total = arrangement_costs(placed, right, down, where, gw)
    first = int(total.argmin())
    return {"placement": placed[first].clone(), "cost": float(total[first]),
            "grid": (gh, gw), "seconds": time.perf_counter() - started}


def arrangement_costs(placed: torch.Tensor, right: torch.Tensor, down: torch.Tensor,
                      where: torch.Tensor, gw: int) -> torch.Tensor:
    """Per arrangement (rows of `placed`): its summed edge and position costs, in double."""
    grid = placed.view(len(placed), -1, gw)
    total = where.double().T.gather(1, placed.T.cpu()).T.sum(1)  # zeros without a prior
    total = total + right.double()[grid[:, :, :-1], grid[:, :, 1:]].flatten(1).sum(1)
    return total + down.double()[grid[:, :-1], grid[:, 1:]].flatten(1).sum(1)


def reassemble(disguised: torch.Tensor, placement: torch.Tensor, block_size: int) -> torch.Tensor:
    """Put block placement[p] at position p for every image."""
    n, c, h, w = disguised.shape
    b, gh, gw = block_size, h // block_size, w // block_size
    blocks = disguised.reshape(n, c, gh, b, gw, b).permute(0, 1, 2, 4, 3, 5).reshape(n, c, -1, b, b)
    out = blocks[:, :, placement.to(disguised.device)]
    return out.reshape(n, c, gh, gw, b, b).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def accuracy(placement: torch.Tensor, truth: torch.Tensor, grid: tuple[int, int]) -> dict:
    """`truth[p]` = the disguised block that belongs at position p. Direct: positions right;
    neighbour: true right/down neighbour pairs kept as such anywhere in the solution."""
    gh, gw = grid
    direct = float((placement == truth).float().mean())
    where = torch.empty_like(placement)
    where[placement] = torch.arange(len(placement))  # disguised block -> solved position
    kept = total = 0
    for p in range(gh * gw):
        row, col = divmod(p, gw)
        a = int(where[truth[p]])
        if col + 1 < gw:
            total += 1
            q = int(where[truth[p + 1]])
            kept += q == a + 1 and a % gw + 1 < gw
        if row + 1 < gh:
            total += 1
            kept += int(where[truth[p + gw]]) == a + gw
    return {"direct_accuracy": direct, "neighbour_accuracy": kept / max(total, 1),
            "random_direct_accuracy": 1 / (gh * gw)}


@register
class Jigsaw(Attack):
    """Reassembles disguised images whose blocks share one keyed permutation, from the
    disguised images alone (the target client's own, outsourced, or a chain's estimates).
    Level 1: it knows the algorithm (one permutation of blocks for every image) and its
    block size, never the key. Direct accuracy is scored against the key's permutation."""

    name = "jigsaw"
    evidence = "images"
    targets = "permutes_blocks"  # one keyed permutation of blocks for every image
    level = 1
    figures = (
        Figure("direct_accuracy", "jigsaw blocks placed right"),
        Figure("neighbour_accuracy", "jigsaw neighbours kept"),
        Figure("psnr_vs_original", "jigsaw PSNR vs original (dB)"),
        Figure("ssim_vs_original", "jigsaw SSIM vs original"),
        Figure("recognisability", "jigsaw recognisability"),
    )

    def __init__(self, block_size: int | None = None, images: int = 1000) -> None:
        if images < 1 or (block_size is not None and block_size < 1):
            raise ValueError("block_size (None: the disguise's) and images must be >= 1")
        self.block_size, self.images = block_size, images
        self.targets, self.target_set = images, "client"

    def reconstruct(self, evidence: Evidence, knowledge: Knowledge, runtime: Runtime
                    ) -> Reconstruction:
        if evidence.images is None:
            raise ValueError("the jigsaw attack needs disguised images to reassemble")
        disguised = evidence.images[:self.images]
        h, w = disguised.shape[-2:]
        # Level 1 knows the algorithm's public parameters: its block size, unless given.
        block = self.block_size or (block_size_of(knowledge.algorithm, 0)
                                    if knowledge.algorithm else 0)
        if not block or h % block or w % block:
            return Reconstruction(figures={
                "status": "not applicable", "reason": f"blocks of {block or 'unknown'} "
                f"pixels do not tile {h}×{w} images: set the attack's block_size"})
        # A pure permutation keeps each block's pixels, so the public mean image says where
        # a block sits; DisguisedNets' per-block transforms change them, so edges alone there.
        name = knowledge.algorithm.name if knowledge.algorithm else None
        prior = knowledge.public.images if name and has(name, "keeps_block_pixels") else None
        solved = solve(disguised, block, prior)
        rec = reassemble(disguised, solved["placement"], block)
        return Reconstruction(
            images=rec, space="original",
            figures={"status": "ok", "block_size": block, "images": len(disguised),
                     "position_prior": prior is not None,
                     "seconds": solved["seconds"], "observed": evidence.images_from},
            extra={"placement": solved["placement"], "grid": solved["grid"]})

    def score(self, reconstruction: Reconstruction, truth: GroundTruth, scorer: Scorer
              ) -> dict:
        figures = score_outsourced(reconstruction, truth, scorer)
        if reconstruction.images is None:
            return figures
        rec, plain = reconstruction.images, truth.observed_plain
        # DisguisedNets' blocks leave [0, 1]: SSIM on the displayable range, as before.
        figures["ssim_vs_original"] = ssim(rec.clamp(0, 1), plain).mean().item()
        disguise = truth.disguise_spec.build(truth.disguise_key)
        gh, gw = reconstruction.extra["grid"]
        permutation = getattr(disguise, "block_permutation", None)
        perm = permutation(gh * gw) if permutation is not None else None
        if perm is not None and getattr(disguise, "block_size", None) == figures["block_size"]:
            # Disguised position q holds source block perm[q]: source p sits at argsort(perm)[p].
            truth_placement = torch.argsort(perm.cpu())
            figures.update(accuracy(reconstruction.extra["placement"], truth_placement,
                                    (gh, gw)))
        else:
            figures["direct_accuracy"] = None  # no keyed block permutation of this size
        return figures
