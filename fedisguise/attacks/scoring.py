"""The scoring side of the wall: reconstructions against the experimenter's ground truth.

Only `Attack.score` calls these. Figures for reconstructed images (README, "Attacks"):
- PSNR and SSIM against the originals, after ordering the reconstructions like the originals
  (the attacker does not know the batch order; greedy on pairwise MSE, best pair first);
- recognisability: the accuracy, against the true labels, of a classifier the attacker
  trained on plain public images, applied to the reconstructions (matched as above). It asks
  whether what was recovered still shows what the image was, even where PSNR is low.
"""

from __future__ import annotations

from typing import Any

import torch

from fedisguise.data.datasets import ImageDataset
from fedisguise.metrics import psnr, ssim
from fedisguise.models import build_model
from fedisguise.training import train_local

PSNR_CAP = 100.0  # identical images have infinite PSNR; JSON and means need a number


def matching_order(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """For each original, the index of its reconstruction (greedy on pairwise MSE, best pair
    first); -1 where there are fewer reconstructions than originals."""
    rec = reconstructed.detach().float().cpu()
    cost = (original.flatten(1).float().cpu()[:, None] - rec.flatten(1)[None]).pow(2).mean(-1)
    k = min(len(original), len(rec))
    order = torch.full((len(original),), -1, dtype=torch.long)
    for _ in range(k):
        i, j = divmod(int(torch.argmin(cost)), cost.shape[1])
        order[i] = j
        cost[i, :] = torch.inf
        cost[:, j] = torch.inf
    return order


class Scorer:
    """Shared by every attack of a run: the recognisability classifier is trained once."""

    def __init__(self, public: ImageDataset, model_name: str, device: torch.device, seed: int,
                 epochs: int = 2, progress: bool = True) -> None:
        self.public, self.model_name, self.device, self.seed = public, model_name, device, seed
        self.epochs, self.progress = epochs, progress
        self._classifier: torch.nn.Module | None = None

    def classifier(self) -> torch.nn.Module:
        if self._classifier is None:
            c, h, w = self.public.image_shape
            torch.manual_seed(self.seed + 101)
            net = build_model(self.model_name, c, self.public.num_classes, (h, w))
            train_local(net, self.public, epochs=self.epochs, batch_size=64, optimizer="adam",
                        lr=1e-3, device=self.device,
                        generator=torch.Generator().manual_seed(self.seed + 101))
            self._classifier = net.eval()
        return self._classifier

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        net = self.classifier()  # trained outside no_grad
        x = images.detach().float().clamp(0, 1)
        with torch.no_grad():
            return torch.cat([net(x[i:i + 512].to(self.device)).argmax(1).cpu()
                              for i in range(0, len(x), 512)])

    def recognisability(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Accuracy of the attacker's plain-trained classifier on `images` vs `labels`."""
        if not len(images):
            return float("nan")  # nothing recovered: not measured
        return float((self.predict(images) == labels.cpu()).float().mean())

    def images(self, reconstructed: torch.Tensor, original: torch.Tensor,
               labels: torch.Tensor, disguised: torch.Tensor | None = None,
               prefix: str = "") -> dict[str, Any]:
        """PSNR, SSIM and recognisability of reconstructions against the originals (and PSNR
        against the disguised images, where given), each matched in its own order."""
        order = matching_order(reconstructed, original)
        keep = order >= 0
        rec = reconstructed.detach().float().cpu()[order[keep]]
        plain = original.float().cpu()[keep]
        figures = {
            f"{prefix}psnr_vs_original": psnr(rec, plain).clamp(max=PSNR_CAP).mean().item(),
            f"{prefix}ssim_vs_original": ssim(rec.clamp(0, 1), plain).mean().item(),
            f"{prefix}recognisability": self.recognisability(rec, labels.cpu()[keep]),
        }
        if disguised is not None:
            d_order = matching_order(reconstructed, disguised)
            d_keep = d_order >= 0
            rec_d = reconstructed.detach().float().cpu()[d_order[d_keep]]
            figures[f"{prefix}psnr_vs_disguised"] = psnr(
                rec_d, disguised.float().cpu()[d_keep]).clamp(max=PSNR_CAP).mean().item()
            figures[f"{prefix}ssim_vs_disguised"] = ssim(
                rec_d.clamp(0, 1), disguised.float().cpu()[d_keep].clamp(0, 1)).mean().item()
        figures["_matched"] = rec
        return figures


def score_outsourced(reconstruction: Any, truth: Any, scorer: Scorer) -> dict[str, Any]:
    """An attack on images handed over (the papers' outsourcing threat model): image i of
    the evidence is the disguise of original i, so no matching is needed. The figures, and
    what doing nothing gives: the disguised images themselves against the originals."""
    figures = dict(reconstruction.figures)
    if reconstruction.images is None:
        return figures
    rec = reconstruction.images
    observed = truth.observed_plain is not None
    plain = truth.observed_plain if observed else truth.batch_plain
    labels = truth.observed_labels if observed else truth.batch_labels
    disguised = truth.observed_disguised if observed else truth.batch_disguised
    figures.update({
        "psnr_vs_original": psnr(rec, plain).clamp(max=PSNR_CAP).mean().item(),
        "ssim_vs_original": ssim(rec, plain).mean().item(),
        "recognisability": scorer.recognisability(rec, labels),
        "psnr_disguised_vs_original": psnr(disguised, plain).clamp(max=PSNR_CAP).mean().item(),
        "_grid": (plain[:8], disguised[:8], rec[:8]),
    })
    return figures
