"""GAN reconstruction (Hitaj, Ateniese & Perez-Cruz, CCS 2017) from the server's seat.

Hitaj et al.'s adversary trains a generator against the shared model used as the
discriminator, so that the generator learns to produce samples the model assigns to a victim's
class. The server holds that model every round; here a DCGAN-style generator G is trained
against the final global model (frozen, the discriminator role) to maximise its target-class
probability, with a small total-variation prior and a batch-diversity term so that G does not
collapse onto one adversarial pattern.

Scored two ways (README, "Attacks"): recognisability (the fraction of samples an independent
classifier, trained by the attacker on public plain data, assigns to the target class; the
scorer's classifier) and
similarity to the victim's images of that class (for each sample, the best SSIM against the
victim's originals, and against its disguised images).
"""

from __future__ import annotations

import time

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
from fedisguise.attacks.update_algebra import total_variation
from fedisguise.metrics import ssim
from fedisguise.models import build_model


class Generator(nn.Module):
    """z -> C×H×W image in [0, 1] (DCGAN layout, two ×2 up-samplings from ⌈H/4⌉×⌈W/4⌉,
    cropped to H×W where a side is not a multiple of 4)."""

    def __init__(self, channels: int, size: int | tuple[int, int], latent: int = 64) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if min(self.size) < 1:
            raise ValueError(f"the generator needs an image of at least 1×1, got {self.size}")
        self.latent, self.base = latent, tuple(-(-side // 4) for side in self.size)
        self.fc = nn.Sequential(nn.Linear(latent, 128 * self.base[0] * self.base[1]), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, channels, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        return self.net(self.fc(z).view(len(z), 128, *self.base))[..., :h, :w]


def train_generator(discriminator: nn.Module, target_class: int, image_shape: tuple[int, ...],
                    *, iterations: int, batch_size: int = 64, lr: float = 2e-3,
                    tv_weight: float = 0.2, diversity_weight: float = 0.1,
                    device: torch.device, seed: int, progress: bool = True) -> Generator:
    torch.manual_seed(seed)
    gen = Generator(image_shape[0], tuple(image_shape[1:])).to(device)
    discriminator.to(device).eval()
    for p in discriminator.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
    target = torch.full((batch_size,), target_class, device=device)
    for _ in tqdm(range(iterations), desc="GAN generator", disable=not progress, leave=False):
        x = gen(torch.randn(batch_size, gen.latent, device=device))
        flat = x.flatten(1)
        # Diversity: penalise samples that are close to each other (mode collapse).
        pairs = batch_size * (batch_size - 1)
        spread = torch.cdist(flat, flat).sum() / pairs / flat.shape[1] ** 0.5
        loss = F.cross_entropy(discriminator(x), target) + tv_weight * total_variation(x) - \
            diversity_weight * spread
        opt.zero_grad()
        loss.backward()
        opt.step()
    return gen.eval()


def best_ssim(samples: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """For each sample, the highest SSIM against any reference image (all pairs batched)."""
    best = torch.full((len(samples),), -1.0)
    for ref in references.split(64):
        pairs = ssim(samples.repeat_interleave(len(ref), 0), ref.repeat(len(samples), 1, 1, 1))
        best = torch.maximum(best, pairs.view(len(samples), len(ref)).max(1).values)
    return best


@register
class GanReconstruction(Attack):
    """A generator of the victim's class, trained against the final global model the server
    holds. Its samples estimate what the model was trained on: disguised images."""

    name = "gan"
    evidence = "update"
    figures = (
        Figure("recognisability", "GAN recognisability"),
        Figure("ssim_vs_original", "GAN best SSIM vs original"),
        Figure("ssim_vs_disguised", "GAN best SSIM vs disguised"),
    )

    def __init__(self, target_class: int = 0, iterations: int = 500, samples: int = 16) -> None:
        if min(iterations, samples) < 1 or target_class < 0:
            raise ValueError("iterations and samples must be >= 1; target_class >= 0")
        self.target_class, self.iterations, self.samples = target_class, iterations, samples

    def reconstruct(self, evidence: Evidence, knowledge: Knowledge, runtime: Runtime
                    ) -> Reconstruction:
        view = evidence.view
        if self.target_class >= view.num_classes:
            raise ValueError(f"target_class {self.target_class} >= {view.num_classes} classes")
        if view.final_global_state is None:
            raise ValueError("the GAN attack needs the final global model capture")
        started = time.perf_counter()
        c, h, w = view.image_shape
        model = build_model(view.model_name, c, view.num_classes, (h, w))
        model.load_state_dict(view.final_global_state)
        gen = train_generator(model, self.target_class, view.image_shape,
                              iterations=self.iterations, device=runtime.device,
                              seed=runtime.seed, progress=runtime.progress)
        with torch.no_grad():
            z = torch.randn(self.samples, gen.latent, generator=torch.Generator().manual_seed(
                runtime.seed)).to(runtime.device)
            samples = gen(z).cpu()
            fooled = model.to(runtime.device)(samples.to(runtime.device)).argmax(1).cpu()
        return Reconstruction(
            images=samples, labels=torch.full((self.samples,), self.target_class),
            space="disguised",
            figures={"status": "ok", "target_class": self.target_class,
                     "samples": self.samples, "iterations": self.iterations,
                     "global_model_target_rate": float(
                         (fooled == self.target_class).float().mean()),
                     "seconds": time.perf_counter() - started})

    def score(self, reconstruction: Reconstruction, truth: GroundTruth, scorer: Scorer
              ) -> dict:
        """Hitaj et al. ask for class representatives, not a given image: each sample is
        scored by its best SSIM against the victim's images of the class."""
        figures = dict(reconstruction.figures)
        samples = reconstruction.images
        of_class = truth.train_plain.labels == self.target_class
        victims = truth.train_plain.images[of_class][:500]
        victims_disguised = truth.train_disguised[of_class][:500]
        if not len(victims):
            figures.update(status="not applicable",
                           reason=f"the client holds no image of class {self.target_class}")
            return figures
        figures.update({
            "recognisability": scorer.recognisability(samples, reconstruction.labels),
            "ssim_vs_original": best_ssim(samples.clamp(0, 1), victims).mean().item(),
            "ssim_vs_disguised": best_ssim(samples.clamp(0, 1),
                                           victims_disguised.clamp(0, 1)).mean().item(),
            "_grid": (victims[:8], victims_disguised[:8], samples[:8]),
        })
        return figures
