"""The harness's privacy figures for a disguised run (DisguisedNets §4).

Computed by the experimenter after the federated run, never by the server: it needs a client's
key to disguise the test images, and the server must not hold keys. Figures:
visual privacy (1 − accuracy of a DNN examiner trained on plain images, on disguised test
images), misusability (the final global model on plain test images; from the server's plain
evaluation), VFE of plain vs disguised images, and PSNR/SSIM between them, plus a PNG grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import save_image
from tqdm.auto import tqdm

from fedisguise.config import Config
from fedisguise.data.datasets import load_dataset
from fedisguise.data.partitions import server_test_set
from fedisguise.disguise.base import NoDisguise
from fedisguise.metrics import psnr, ssim, vfe, visual_privacy
from fedisguise.models import build_model
from fedisguise.node_data import node_disguise
from fedisguise.resolved import ResolvedRun
from fedisguise.training import evaluate, train_local

VFE_REGION = 4


def train_examiner(cfg: Config, device: torch.device) -> torch.nn.Module:
    """A DNN examiner: the run's model architecture trained on plain training images."""
    train = load_dataset(cfg.data.source, "train", cfg.data.data_dir)
    n = cfg.privacy.examiner_samples or len(train)
    subset = train.subset(np.random.default_rng([cfg.experiment.seed, 7]).permutation(
        len(train))[:n])
    torch.manual_seed(cfg.experiment.seed)
    c, h, w = subset.image_shape
    examiner = build_model(cfg.model.name, c, subset.num_classes, (h, w))
    gen = torch.Generator().manual_seed(cfg.experiment.seed)
    for _ in tqdm(range(cfg.privacy.examiner_epochs), desc="DNN examiner", unit="epoch"):
        train_local(examiner, subset, epochs=1, batch_size=64, optimizer="adam", lr=1e-3,
                    device=device, generator=gen)
    return examiner


def display_range(images: torch.Tensor) -> torch.Tensor:
    """Min–max scale each image into [0, 1] for viewing (disguises may leave [0, 1])."""
    flat = images.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return ((flat - lo[:, None]) / scale[:, None]).view_as(images)


def privacy_figures(run: ResolvedRun, record: dict[str, Any], run_dir: Path
                    ) -> dict[str, Any]:
    """Visual privacy, VFE, PSNR/SSIM and the plain | disguised grid for client 0's key."""
    cfg, device = run.cfg, run.device
    test = run.data.server_test_set()
    # the key and draws secret node 0 used (in a local run the experimenter's machine is the
    # node's: a node 0 that never disguised gets its secret here)
    disguise, _ = node_disguise(run, 0, "privacy", is_node=True)
    disguised, _ = disguise.apply(test.images, test.labels)
    examiner = train_examiner(cfg, device)
    _, examiner_plain_acc = evaluate(examiner, test, device=device)
    # Disguised images are scored as a model or an examiner sees them (RMT and InstaHide
    # outputs leave [0, 1]); only the picture grid rescales them for viewing.
    figures = {
        "visual_privacy": visual_privacy(examiner, disguised, test.labels),
        "examiner_plain_accuracy": examiner_plain_acc,
        "misusability": record["final"]["plain_test_accuracy"],
        "vfe_plain": vfe(test.images, VFE_REGION).mean().item(),
        "vfe_disguised": vfe(disguised, VFE_REGION).mean().item(),
        "psnr_disguised_vs_plain": psnr(disguised, test.images).mean().item(),
        "ssim_disguised_vs_plain": ssim(disguised, test.images).mean().item(),
        "key_client": 0,
    }
    figures["grid"] = write_grid(cfg, test.images, disguised, run_dir)
    return figures


GRID = "images/plain_vs_disguised.png"


def write_grid(cfg: Config, plain: torch.Tensor, disguised: torch.Tensor, run_dir: Path) -> str:
    """Top row plain test images, bottom row the same images as the run's clients see them."""
    (run_dir / GRID).parent.mkdir(parents=True, exist_ok=True)
    k = min(cfg.privacy.grid_images, len(plain))
    save_image(torch.cat([plain[:k], display_range(disguised[:k])]), run_dir / GRID, nrow=k,
               padding=2, pad_value=1.0)
    return GRID


def plain_grid(cfg: Config, run_dir: Path) -> str:
    """The grid of a run without a disguise: both rows plain, because `none` is the identity
    (applied through the same interface, not assumed). No examiner is trained: a plain run
    has no privacy figures to report."""
    test = server_test_set(cfg.data.source, cfg.data.data_dir, cfg.data.test_samples,
                           cfg.experiment.seed)
    k = min(cfg.privacy.grid_images, len(test))
    shown, _ = NoDisguise().apply(test.images[:k], test.labels[:k])
    return write_grid(cfg, test.images[:k], shown, run_dir)
