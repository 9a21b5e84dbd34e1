"""GAN reconstruction (Hitaj, Ateniese & Perez-Cruz, CCS 2017) from the server's seat.

Hitaj et al.'s adversary trains a generator against the shared model used as the
discriminator, so that the generator learns to produce samples the model assigns to a victim's
class. The server holds that model every round; here a DCGAN-style generator G is trained
against the final global model (frozen, the discriminator role) to maximise its target-class
probability, with a small total-variation prior and a batch-diversity term so that G does not
collapse onto one adversarial pattern.

Scored two ways, as DESIGN.md asks: recognisability (the fraction of samples an independent
classifier, trained by the attacker on public plain data, assigns to the target class) and
similarity to the victim's images of that class (for each sample, the best SSIM against the
victim's originals, and against its disguised images).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fedisguise.attacks.base import Attack, AttackContext, register
from fedisguise.attacks.gradient_inversion import total_variation
from fedisguise.metrics import ssim
from fedisguise.models import build_model
from fedisguise.training import train_local


class Generator(nn.Module):
    """z -> C×S×S image in [0, 1] (DCGAN layout, two ×2 up-samplings)."""

    def __init__(self, channels: int, size: int, latent: int = 64) -> None:
        super().__init__()
        if size % 4:
            raise ValueError(f"the generator needs an image size divisible by 4, got {size}")
        self.latent, self.base = latent, size // 4
        self.fc = nn.Sequential(nn.Linear(latent, 128 * self.base ** 2), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, channels, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(len(z), 128, self.base, self.base))


def train_generator(discriminator: nn.Module, target_class: int, image_shape: tuple[int, ...],
                    *, iterations: int, batch_size: int = 64, lr: float = 2e-3,
                    tv_weight: float = 0.2, diversity_weight: float = 0.1,
                    device: torch.device, seed: int, progress: bool = True) -> Generator:
    torch.manual_seed(seed)
    gen = Generator(image_shape[0], image_shape[1]).to(device)
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
    """A generator of the victim's class, trained against the final global model."""

    name = "gan"

    def __init__(self, round: int = 1, client: int = 0, target_class: int = 0,
                 iterations: int = 500, samples: int = 16, examiner_epochs: int = 2) -> None:
        if min(round, iterations, samples, examiner_epochs) < 1 or min(client, target_class) < 0:
            raise ValueError("round, iterations, samples, examiner_epochs must be >= 1; "
                             "client and target_class >= 0")
        self.round, self.client, self.target_class = round, client, target_class
        self.iterations, self.samples, self.examiner_epochs = iterations, samples, examiner_epochs

    def run(self, ctx: AttackContext) -> dict:
        view, truth = ctx.view, ctx.truth
        classes = ctx.public.num_classes
        if self.target_class >= classes:
            raise ValueError(f"target_class {self.target_class} >= {classes} classes")
        if view.final_global_state is None:
            raise ValueError("the GAN attack needs the final global model capture")
        started = time.perf_counter()
        shape = tuple(truth.train_plain.images.shape[1:])
        model = build_model(ctx.model_name, shape[0], classes, shape[1])
        model.load_state_dict(view.final_global_state)
        gen = train_generator(model, self.target_class, shape, iterations=self.iterations,
                              device=ctx.device, seed=ctx.seed, progress=ctx.progress)
        with torch.no_grad():
            z = torch.randn(self.samples, gen.latent, generator=torch.Generator().manual_seed(
                ctx.seed)).to(ctx.device)
            samples = gen(z).cpu()
        # The attacker's own independent classifier, on its public plain data.
        torch.manual_seed(ctx.seed)
        examiner = build_model(ctx.model_name, shape[0], classes, shape[1])
        train_local(examiner, ctx.public, epochs=self.examiner_epochs, batch_size=64,
                    optimizer="adam", lr=1e-3, device=ctx.device,
                    generator=torch.Generator().manual_seed(ctx.seed))
        with torch.no_grad():
            examiner.eval()
            predicted = examiner.to(ctx.device)(samples.to(ctx.device)).argmax(1).cpu()
            model.eval()
            fooled = model.to(ctx.device)(samples.to(ctx.device)).argmax(1).cpu()
        of_class = truth.train_plain.labels == self.target_class
        victims = truth.train_plain.images[of_class][:500]
        victims_disguised = truth.train_disguised[of_class][:500]
        if not len(victims):
            raise ValueError(f"client {view.partition_id} holds no image of class "
                             f"{self.target_class}")
        return {
            "status": "ok", "target_class": self.target_class, "samples": self.samples,
            "iterations": self.iterations,
            "global_model_target_rate": float((fooled == self.target_class).float().mean()),
            "recognisability": float((predicted == self.target_class).float().mean()),
            "ssim_vs_original": best_ssim(samples, victims).mean().item(),
            "ssim_vs_disguised": best_ssim(samples, victims_disguised.clamp(0, 1)).mean().item(),
            "seconds": time.perf_counter() - started,
            "_grid": (victims[:8], victims_disguised[:8], samples[:8]),
        }
