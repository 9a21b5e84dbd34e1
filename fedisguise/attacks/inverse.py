"""Inverse-transformation attacks: map disguised images back to originals.

- Learned inverse (ITN; DisguisedNets-vs-InstaHide's Level 1/2, Ito et al.'s inverse network):
  a small U-Net trained on (disguised, original) pairs. Level 1: the attacker disguises its own
  public data with its own key (same algorithm and parameters). Level 2: pairs made with the
  victim's key, optionally with the Level-1 pairs beside them.
- Known-pairs algebra (Level 2, stronger where the disguise is block-affine): every block
  position j of the disguised image is fitted by least squares as an affine map of every
  source block position i over the known pairs, rows as the disguise computes them
  (Y_j = X_i·R + c); the best-fitting source gives the permutation, R and c, and the victim's
  images are recovered by inverting each block's map. Exact for noiseless block permutation,
  a noisy estimate under RMT noise, and useless against per-image randomness (VisualMixer,
  InstaHide), which is the point of measuring it.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fedisguise.attacks.base import (
    Attack,
    Evidence,
    Figure,
    GroundTruth,
    Knowledge,
    Reconstruction,
    Runtime,
    capable,
    register,
)
from fedisguise.attacks.memo import once
from fedisguise.attacks.scoring import Scorer, score_outsourced
from fedisguise.disguise.spec import DisguiseSpec
from fedisguise.unet import UNet


def train_inverse(disguised: torch.Tensor, original: torch.Tensor, *, epochs: int = 5,
                  batch_size: int = 64, lr: float = 2e-3, width: int = 32,
                  device: torch.device | str = "cpu", seed: int = 0,
                  progress: bool = True) -> tuple[UNet, dict]:
    """Fit a U-Net disguised -> original with MSE; returns it and its training figures.
    The disguised side may carry extra channels (features an attack adds to the input).
    The same pairs and settings train once per process (fedisguise.attacks.memo); the
    figures of a network trained earlier say `reused`."""
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "width": width,
                "device": str(torch.device(device)), "seed": seed}
    (net, info), reused = once("inverse network", (disguised, original, settings),
                               lambda: _train_inverse(disguised, original, **settings,
                                                      progress=progress),
                               seeds_global_rng=True)
    return net, {**info, "reused": True} if reused else info


def _train_inverse(disguised: torch.Tensor, original: torch.Tensor, *, epochs: int,
                   batch_size: int, lr: float, width: int, device: str, seed: int,
                   progress: bool) -> tuple[UNet, dict]:
    if disguised.ndim != 4 or original.ndim != 4 or disguised.shape[0] != original.shape[0] \
            or disguised.shape[2:] != original.shape[2:]:
        raise ValueError(f"pairs must be two N×C×H×W tensors of one N, H and W, got "
                         f"{tuple(disguised.shape)} and {tuple(original.shape)}")
    started = time.perf_counter()
    device = torch.device(device)
    torch.manual_seed(seed)
    net = UNet(disguised.shape[1], width, out_channels=original.shape[1]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(disguised) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    bar = tqdm(total=steps, desc="inverse network", disable=not progress, leave=False)
    net.train()
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        for idx in torch.randperm(len(disguised), generator=gen).split(batch_size):
            x, y = disguised[idx].to(device), original[idx].to(device)
            opt.zero_grad()
            loss = F.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return net.eval(), {"epochs": epochs, "pairs": len(disguised), "final_mse": loss.item(),
                        "seconds": time.perf_counter() - started}


@torch.no_grad()
def apply_inverse(net: UNet, disguised: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    device = next(net.parameters()).device
    return torch.cat([net(disguised[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(disguised), batch_size)])


def _rows(images: torch.Tensor, b: int) -> torch.Tensor:
    """N×C×H×W -> T×(N·C·b)×b: every block's pixel rows, blocks in raster order."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // b, b, w // b, b).permute(2, 4, 0, 1, 3, 5)
    return x.reshape((h // b) * (w // b), n * c * b, b)


def fit_known_pairs(original: torch.Tensor, disguised: torch.Tensor, block_size: int) -> dict:
    """Per disguised block j: its source block, affine map (R, c) and fit residual."""
    if original.shape != disguised.shape:
        raise ValueError("known pairs must have one shape")
    started = time.perf_counter()
    x, y = _rows(original.double(), block_size), _rows(disguised.double(), block_size)
    t, m, b = x.shape
    design = torch.cat([x, torch.ones(t, m, 1, dtype=x.dtype)], 2)  # T×M×(b+1)
    if m < b + 1:
        raise ValueError(f"need at least {b + 1} known block rows, got {m}: more pairs")
    # Solve for every (source i, target j): W_ij = argmin ||design_i W − y_j||.
    pinv = torch.linalg.pinv(design)  # T×(b+1)×M
    weights = torch.einsum("ikm,jmb->ijkb", pinv, y)  # T×T×(b+1)×b
    fitted = torch.einsum("imk,ijkb->ijmb", design, weights)
    residual = (fitted - y.unsqueeze(0)).pow(2).mean((2, 3))  # T(source)×T(target)
    source = residual.argmin(0)
    chosen = weights[source, torch.arange(t)]  # T×(b+1)×b
    return {"source": source, "matrix": chosen[:, :b].float(), "offset": chosen[:, b].float(),
            "residual": residual[source, torch.arange(t)].mean().item(),
            "seconds": time.perf_counter() - started}


def invert_known_pairs(fit: dict, disguised: torch.Tensor, block_size: int) -> torch.Tensor:
    """Undo each block's fitted map and put it back at its source position."""
    n, c, h, w = disguised.shape
    b, gh, gw = block_size, h // block_size, w // block_size
    rows = _rows(disguised.float(), b)  # T×(N·C·b)×b
    recovered = torch.linalg.lstsq(
        fit["matrix"].transpose(1, 2),  # X·R = Y − c  <=>  Rᵀ·Xᵀ = (Y − c)ᵀ
        (rows - fit["offset"][:, None, :]).transpose(1, 2)).solution.transpose(1, 2)
    out = torch.empty_like(recovered)
    out[fit["source"]] = recovered  # disguised block j came from source block source[j]
    out = out.reshape(gh, gw, n, c, b, b).permute(2, 3, 0, 4, 1, 5).reshape(n, c, h, w)
    return out.clamp(0, 1)


LEVELS = (1, 2)
INVERSE_METHODS = ("unet", "known-pairs")
TARGET_SETS = ("client", "test")


def block_size_of(algorithm: DisguiseSpec, image_size: int) -> int:
    """The disguise's block size from its public parameters, its default where the spec
    leaves it out (the whole image if it has none)."""
    return int(algorithm.value("block_size", image_size))


@register
class InverseNetwork(Attack):
    """Maps disguised images back to originals. Level 1: a U-Net trained on the attacker's
    public data disguised under its own key (for a keyless defence such as transform-net,
    the public h_θ itself: Ito et al.'s ITN attack). Level 2: pairs under the victim's key,
    inverted by a U-Net or by known-pairs algebra.

    The disguised images it inverts are its evidence: on its own, the true disguised images
    (the papers' outsourcing threat model; the client's own, `target_set = "client"`, or
    held-out test images under the victim's disguise, `"test"`); in a chain, what gradient
    inversion estimated from an update."""

    name = "inverse_network"
    evidence = "images"
    chain_stage = "any"  # the default chain's stage against defences with no specific one
    figures = (
        Figure("psnr_vs_original", "inverse net PSNR vs original (dB)"),
        Figure("ssim_vs_original", "inverse net SSIM vs original"),
        Figure("recognisability", "inverse net recognisability"),
    )

    def __init__(self, level: int = 1, method: str = "unet", pairs: int = 1000,
                 epochs: int = 5, targets: int = 500, target_set: str = "client") -> None:
        if level not in LEVELS or method not in INVERSE_METHODS:
            raise ValueError(f"level must be one of {LEVELS} and method one of "
                             f"{INVERSE_METHODS}, got {level!r}, {method!r}")
        if target_set not in TARGET_SETS:
            raise ValueError(f"target_set must be one of {TARGET_SETS}, got {target_set!r}")
        if method == "known-pairs" and level == 1:
            raise ValueError("known-pairs needs pairs under the victim's key: level = 2")
        if min(pairs, epochs, targets) < 1:
            raise ValueError("pairs, epochs and targets must be >= 1")
        self.level, self.method = level, method
        self.pairs, self.epochs, self.targets = pairs, epochs, targets
        self.target_set = target_set

    def pairs_wanted(self) -> int:
        return self.pairs if self.level == 2 else 0

    def scope(self) -> tuple[str, ...]:
        """Known-pairs algebra inverts block-affine maps; the U-Net tries any defence."""
        return capable("block_affine") if self.method == "known-pairs" else ()

    def reconstruct(self, evidence: Evidence, knowledge: Knowledge, runtime: Runtime
                    ) -> Reconstruction:
        if evidence.images is None:
            raise ValueError("the inverse network needs disguised images to invert")
        goal = evidence.images
        if self.level == 1:
            own = knowledge.own_disguise(runtime.seed)
            public = knowledge.public.images[:self.pairs]
            pair_plain = public
            pair_disguised = own.apply(public, knowledge.public.labels[:self.pairs])[0]
        else:
            if knowledge.pairs is None:
                raise ValueError("a Level-2 inverse needs pairs under the victim's key")
            pair_plain, pair_disguised = knowledge.pairs
        figures: dict = {"status": "ok", "level": self.level, "method": self.method,
                         "pairs": len(pair_plain), "targets": len(goal),
                         "observed": evidence.images_from}
        if evidence.images_from == "outsourced":  # which images the game handed over
            figures["target_set"] = self.target_set
        if self.method == "known-pairs":
            block = block_size_of(knowledge.algorithm, goal.shape[-1])
            fit = fit_known_pairs(pair_plain, pair_disguised, block)
            rec = invert_known_pairs(fit, goal, block)
            figures.update(block_size=block, fit_residual=fit["residual"],
                           seconds=fit["seconds"])
        else:
            net, info = train_inverse(pair_disguised, pair_plain, epochs=self.epochs,
                                      device=runtime.device, seed=runtime.seed,
                                      progress=runtime.progress)
            rec = apply_inverse(net, goal).clamp(0, 1)
            figures.update(info)
        return Reconstruction(images=rec, space="original", figures=figures)

    def score(self, reconstruction: Reconstruction, truth: GroundTruth, scorer: Scorer
              ) -> dict:
        return score_outsourced(reconstruction, truth, scorer)
