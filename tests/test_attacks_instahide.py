"""Carlini et al.'s attack on InstaHide: first where the mixing is known (the solver must
recover the images up to each pixel's sign), then from the encodings alone."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedisguise.attacks import build_attack
from fedisguise.attacks.base import Evidence, GroundTruth, Knowledge, Runtime, ServerView
from fedisguise.attacks.instahide_attack import score_recovery
from fedisguise.attacks.instahide_recovery import (
    Mixing,
    challenge_members,
    fit_weights,
    orient,
    retrieve_signs,
)
from fedisguise.data.datasets import ImageDataset, load_synthetic
from fedisguise.disguise import DisguiseKey, build
from fedisguise.metrics import psnr

KEY = DisguiseKey.generate(11)


def smooth_images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Images with the structure the sign step relies on: smooth, dark at the border."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 3, 3, generator=gen)
    x = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    ramp = torch.minimum(torch.arange(size), torch.arange(size).flip(0)).float()
    border = (torch.minimum(ramp[:, None], ramp[None, :]) / 2).clamp(max=1)
    return (x * border).clamp(0, 1)


def view(n: int) -> ServerView:
    return ServerView(server_round=1, partition_id=0, num_examples=n, global_state={},
                      client_state={}, model_name="lenet", image_shape=(1, 28, 28),
                      num_classes=10, lr=0.05, local_steps=0, local_epochs=1, batch_size=32)


def test_challenge_members_put_each_image_in_t_encodings_once_each():
    members = challenge_members(30, 3, 10, np.random.default_rng(0))
    assert members.shape == (100, 3)
    assert torch.equal(torch.bincount(members.flatten(), minlength=30), torch.full((30,), 10))
    assert all(len(set(row.tolist())) == 3 for row in members)
    with pytest.raises(ValueError, match="multiple of k"):
        challenge_members(10, 3, 5, np.random.default_rng(0))


def test_encode_is_instahide_mixing_of_the_given_members():
    x = torch.rand(6, 1, 4, 4)
    d = build({"name": "instahide", "k": 2}, KEY)
    members = torch.tensor([[0, 1], [2, 3], [4, 5], [1, 0]])
    out, _ = d.encode(x, members)
    s = 2 * x - 1
    # |x̃| is |λ·s_a + (1 − λ)·s_b| for one λ per row: fit it and check the residual is 0.
    w, residual = fit_weights(out.abs().flatten(1), s.flatten(1)[members], iterations=20)
    assert residual.max() < 1e-10 and torch.allclose(w.sum(1), torch.ones(4))
    assert (w.max(1).values <= 0.65 + 1e-6).all()
    with pytest.raises(ValueError, match="M×k"):
        d.encode(x, torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="out of range"):
        d.encode(x, torch.tensor([[0, 6]]))


def test_known_mixing_recovers_every_image_up_to_each_pixels_sign():
    """The solver alone, on a synthetic setting where the mixing is known: |2x − 1| exactly
    (≥ 40 dB), and after the sign step the images themselves."""
    x = smooth_images(30)
    members = challenge_members(30, 2, 20, np.random.default_rng(1))
    d = build({"name": "instahide", "k": 2}, KEY)
    encodings = d.encode(x, members)[0].abs().flatten(1)
    s_true = (2 * x - 1).flatten(1)
    weights, _ = fit_weights(encodings, s_true[members])
    mixing = Mixing(members, weights, 30, None, None)
    s, residual = retrieve_signs(mixing, encodings, None, restarts=32, iterations=60,
                                 gen=torch.Generator().manual_seed(0))
    assert residual.mean() < 1e-6
    recovered = s.view_as(x)
    unsigned = psnr(recovered.abs(), (2 * x - 1).abs())
    assert unsigned.min() > 40
    # Each pixel is right or flipped for all images at once; the prior fixes the flips.
    agree = (torch.sign(recovered) == torch.sign(2 * x - 1)) | (recovered.abs() < 1e-3)
    per_pixel = agree.float().mean(0)
    assert ((per_pixel > 0.99) | (per_pixel < 0.01)).float().mean() > 0.95
    oriented = orient(recovered, (2 * x - 1).mean(0))
    assert psnr((oriented + 1) / 2, x).mean() > 35


def test_scores_separate_the_sign_ambiguity_from_the_images():
    x = smooth_images(12)
    flip = torch.where(torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(3))
                       < 0.5, -1.0, 1.0)
    flipped = ((2 * x - 1) * flip + 1) / 2
    exact = score_recovery(x.flip(0), (2 * x - 1).abs().flip(0), x, torch.zeros(12))
    assert exact["psnr_vs_original"] == 100 and exact["abs_ssim"] > 0.999
    signless = score_recovery(flipped, (2 * x - 1).abs(), x, torch.zeros(12))
    assert signless["abs_ssim"] > 0.999 and signless["ssim_vs_original"] < 0.9


def test_the_attack_recovers_private_images_from_the_encodings_alone():
    """End to end under the contract on synthetic data: similarity learned on the attacker's
    own encodings, clusters, solve, sign. The recovered |2x − 1| must match the private
    images far better than the encodings themselves do."""
    public = load_synthetic("train")
    private = load_synthetic("test").subset(torch.arange(40))
    spec = {"name": "instahide", "k": 2}
    victim = build(spec, KEY)
    members = challenge_members(40, 2, 20, np.random.default_rng(2))
    encodings = victim.encode(private.images, members)[0]
    attack = build_attack({"name": "instahide_attack", "steps": 150, "public_images": 600,
                           "restarts": 2, "rounds": 2})
    rec = attack.reconstruct(Evidence(view=view(40), images=encodings,
                                      images_from="outsourced"),
                             Knowledge(level=1, public=public, algorithm=spec),
                             Runtime(device=torch.device("cpu"), seed=0, progress=False))
    assert rec.images.shape == (40, 1, 28, 28) and rec.figures["encodings_per_image"] == 20
    truth = GroundTruth(batch_plain=private.images, batch_disguised=encodings,
                        batch_labels=private.labels, train_plain=private,
                        train_disguised=encodings, disguise_spec=spec, disguise_key=KEY,
                        observed_plain=private.images, observed_disguised=encodings,
                        observed_labels=private.labels)

    class NoScorer:
        def recognisability(self, images, labels):
            return float("nan")

    figures = attack.score(rec, truth, NoScorer())
    baseline = score_recovery(encodings[:40].abs(), encodings[:40].abs(), private.images,
                              private.labels)
    # measured: |2x − 1| SSIM 0.93 (the encodings themselves: 0.43), PSNR 14.5 dB (8.2); 4
    # restarts instead of 2 gave the same SSIM for a quarter more time
    assert figures["abs_ssim"] > 0.6
    assert figures["abs_ssim"] > baseline["abs_ssim"] + 0.3
    assert figures["psnr_vs_original"] > baseline["psnr_vs_original"] + 3


@pytest.mark.slow
def test_cross_dataset_encodings_are_attacked_with_the_public_partners_as_noise():
    """Cross mode: one private image and k − 1 public ones per encoding. The public partners
    are unknown, modelled by their mean; |2x − 1| still comes out well above what the
    encodings show (measured: SSIM 0.33 against 0.18)."""
    public = load_synthetic("train")
    private = load_synthetic("test").subset(torch.arange(20))
    spec = {"name": "instahide", "k": 3, "mode": "cross", "public": public.images[:500]}
    rows = torch.arange(20).repeat(10)
    partners = torch.from_numpy(np.random.default_rng(0).integers(0, 500, (200, 2)))
    encodings = build(spec, KEY).encode(private.images, torch.cat([rows[:, None], partners],
                                                                  1))[0]
    attack = build_attack({"name": "instahide_attack", "steps": 100, "public_images": 600,
                           "restarts": 4, "rounds": 2})
    rec = attack.reconstruct(Evidence(view=view(20), images=encodings,
                                      images_from="outsourced"),
                             Knowledge(level=1, public=public, algorithm=spec),
                             Runtime(device=torch.device("cpu"), seed=0, progress=False))
    assert rec.figures["mode"] == "cross" and rec.images.shape == (20, 1, 28, 28)
    found = score_recovery(rec.images, rec.extra["unsigned"], private.images, None)
    seen = score_recovery(encodings[:20].abs(), encodings[:20].abs(), private.images, None)
    assert found["abs_ssim"] > seen["abs_ssim"] + 0.08


def test_the_attack_is_for_instahide_and_checks_its_parameters():
    attack = build_attack({"name": "instahide_attack"})
    assert attack.applies_to("instahide") and not attack.applies_to("visualmixer")
    with pytest.raises(ValueError, match=">= 1"):
        build_attack({"name": "instahide_attack", "steps": 0})
    other = attack.reconstruct(
        Evidence(view=view(4), images=torch.rand(4, 1, 28, 28)),
        Knowledge(level=1, public=ImageDataset(torch.rand(4, 1, 28, 28),
                                               torch.zeros(4).long(), 10),
                  algorithm="visualmixer"),
        Runtime(device=torch.device("cpu"), seed=0, progress=False))
    assert other.figures["status"] == "not applicable" and other.images is None
    bad = torch.rand(4, 1, 28, 28)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        attack.reconstruct(Evidence(view=view(4), images=bad),
                           Knowledge(level=1, public=ImageDataset(
                               torch.rand(4, 1, 28, 28), torch.zeros(4).long(), 10),
                               algorithm={"name": "instahide", "k": 2}),
                           Runtime(device=torch.device("cpu"), seed=0, progress=False))
