"""Membership inference against a model the server holds: the global model, or one client's
model (global + that client's update).

- Loss threshold (Yeom et al., CSF 2018): members have lower loss; score = −loss.
- Reference models, LiRA offline (Carlini et al., S&P 2022): the attacker trains `references`
  models of the same architecture on its own public data (which excludes the candidates), so
  every candidate is "out" for them. Per candidate, the logit-scaled confidence on its true
  label φ = log(p / (1 − p)) under the references gives a Gaussian (μ_out, σ_out); the score
  is how far the target's φ lies above it, (φ − μ_out) / σ_out, the one-sided offline test.

Success figures: ROC AUC and TPR at 1% FPR over a balanced candidate set.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

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
from fedisguise.attacks.scoring import Scorer
from fedisguise.data.datasets import ImageDataset
from fedisguise.models import build_model
from fedisguise.training import train_local

METHODS = ("loss", "lira")


def roc_auc(scores: torch.Tensor, is_member: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a member > score of a non-member), ties = 1/2."""
    scores, is_member = scores.double().flatten(), is_member.bool().flatten()
    if not torch.isfinite(scores).all():
        raise ValueError("membership scores must be finite (NaN/inf: a diverged model?)")
    pos, neg = int(is_member.sum()), int((~is_member).sum())
    if pos == 0 or neg == 0:
        raise ValueError("AUC needs both members and non-members among the candidates")
    ranks = _average_ranks(scores)
    return float((ranks[is_member].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    # Tied values share the mean of their ranks.
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True,
                                                  return_counts=True)
    sums = torch.zeros(len(counts), dtype=x.dtype).index_add_(0, inverse, ranks[order])
    ranks[order] = (sums / counts)[inverse]
    return ranks


def tpr_at_fpr(scores: torch.Tensor, is_member: torch.Tensor, fpr: float = 0.01) -> float:
    """Fraction of members flagged at the strictest threshold that flags at most `fpr` of
    the non-members (Carlini et al.'s low-FPR figure)."""
    scores, is_member = scores.double().flatten(), is_member.bool().flatten()
    negatives = scores[~is_member].sort(descending=True).values
    allowed = int(fpr * len(negatives))  # non-members we may flag
    threshold = negatives[allowed] if allowed < len(negatives) else -torch.inf
    return float((scores[is_member] > threshold).double().mean())


@torch.no_grad()
def per_sample_loss(model: nn.Module, data: ImageDataset, device: torch.device,
                    batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, logit-scaled confidence log(p/(1−p)) on the true label) per sample."""
    model.to(device).eval()
    losses, phis = [], []
    for start in range(0, len(data), batch_size):
        x = data.images[start:start + batch_size].to(device)
        y = data.labels[start:start + batch_size].to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y, reduction="none")
        log_p = -loss
        # log(p) − log(1 − p), stable for p near 1
        log_not_p = torch.log1p(-torch.exp(log_p).clamp(max=1 - 1e-7))
        losses.append(loss.cpu())
        phis.append((log_p - log_not_p).cpu())
    return torch.cat(losses), torch.cat(phis)


def reference_statistics(build: Callable[[], nn.Module], public: ImageDataset,
                         candidates: ImageDataset, *,
                         references: int, epochs: int, batch_size: int, lr: float,
                         device: torch.device, seed: int, progress: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ_out, σ_out) of φ per candidate over `references` models trained on halves of the
    attacker's public data."""
    phis = []
    for r in tqdm(range(references), desc="membership reference models", disable=not progress,
                  leave=False):
        gen = torch.Generator().manual_seed(seed * 1000 + r)
        half = public.subset(torch.randperm(len(public), generator=gen)[:len(public) // 2])
        torch.manual_seed(seed * 1000 + r)
        model = build()
        train_local(model, half, epochs=epochs, batch_size=batch_size, optimizer="adam", lr=lr,
                    device=device, generator=gen)
        phis.append(per_sample_loss(model, candidates, device)[1])
    stacked = torch.stack(phis)
    return stacked.mean(0), stacked.std(0).clamp(min=1e-3)


def membership_scores(model: nn.Module, candidates: ImageDataset, *, method: str,
                      device: torch.device, reference: tuple[torch.Tensor, torch.Tensor] | None
                      = None) -> torch.Tensor:
    """Higher = more likely a member."""
    if method not in METHODS:
        raise ValueError(f"unknown membership method {method!r}; valid: {METHODS}")
    loss, phi = per_sample_loss(model, candidates, device)
    if method == "loss":
        return -loss
    if reference is None:
        raise ValueError("the lira method needs reference statistics")
    mu, sigma = reference
    return (phi - mu) / sigma


def evaluate_membership(model: nn.Module, candidates: ImageDataset, is_member: torch.Tensor,
                        *, method: str, device: torch.device,
                        reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    started = time.perf_counter()
    scores = membership_scores(model, candidates, method=method, device=device,
                               reference=reference)
    return {"auc": roc_auc(scores, is_member), "tpr_at_1pct_fpr": tpr_at_fpr(scores, is_member),
            "candidates": len(candidates), "members": int(is_member.sum()),
            "seconds": time.perf_counter() - started}


TARGETS = ("global", "update")


@register
class Membership(Attack):
    """Was a candidate image in the target client's training data? The game hands the
    attacker a balanced candidate set (half from the client's partition, plain images; half
    from held-out test images) without saying which is which."""

    name = "membership"
    evidence = "candidates"
    figures = (
        Figure("auc", "membership AUC"),
        Figure("tpr_at_1pct_fpr", "membership TPR @ 1% FPR"),
    )

    def __init__(self, method: str = "lira", target: str = "global", candidates: int = 500,
                 references: int = 4, reference_epochs: int = 3) -> None:
        if method not in METHODS or target not in TARGETS:
            raise ValueError(f"method must be one of {METHODS} and target one of {TARGETS}, "
                             f"got {method!r}, {target!r}")
        if min(candidates, references, reference_epochs) < 1:
            raise ValueError("candidates, references, reference_epochs must be >= 1")
        self.method, self.target, self.candidates = method, target, candidates
        self.references, self.reference_epochs = references, reference_epochs

    def reconstruct(self, evidence: Evidence, knowledge: Knowledge, runtime: Runtime
                    ) -> Reconstruction:
        view, candidates = evidence.view, evidence.candidates
        if candidates is None:
            raise ValueError("membership inference needs candidates")
        state = view.client_state if self.target == "update" else view.final_global_state
        if state is None:
            raise ValueError("membership against the global model needs the final global "
                             "model capture")
        c, h, w = view.image_shape

        def build() -> nn.Module:
            return build_model(view.model_name, c, view.num_classes, (h, w))

        model = build()
        model.load_state_dict(state)
        started = time.perf_counter()
        reference = None
        if self.method == "lira":
            reference = reference_statistics(build, knowledge.public, candidates,
                                             references=self.references,
                                             epochs=self.reference_epochs, batch_size=64,
                                             lr=1e-3, device=runtime.device,
                                             seed=runtime.seed, progress=runtime.progress)
        scores = membership_scores(model, candidates, method=self.method,
                                   device=runtime.device, reference=reference)
        if not torch.isfinite(scores).all():
            # A diverged model (non-finite weights or outputs) ranks every candidate alike
            # or not at all: any AUC from it would be an artefact, so none is reported.
            return Reconstruction(figures={
                "status": "undefined", "method": self.method, "target": self.target,
                "reason": "the target model's outputs are not finite (training diverged)",
                "round": view.server_round, "client": view.partition_id,
                "candidates": len(candidates), "seconds": time.perf_counter() - started})
        return Reconstruction(scores=scores, figures={
            "status": "ok", "method": self.method, "target": self.target,
            "round": view.server_round, "client": view.partition_id,
            "candidates": len(candidates), "seconds": time.perf_counter() - started})

    def score(self, reconstruction: Reconstruction, truth: GroundTruth, scorer: Scorer
              ) -> dict:
        figures = dict(reconstruction.figures)
        if reconstruction.scores is None:  # undefined (see reconstruct): nothing to score
            return figures
        member = truth.candidates_member
        figures.update({"auc": roc_auc(reconstruction.scores, member),
                        "tpr_at_1pct_fpr": tpr_at_fpr(reconstruction.scores, member),
                        "members": int(member.sum())})
        return figures
