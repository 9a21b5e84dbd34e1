"""Attacks on window shuffles: what a shuffle keeps is exactly recovered, and the attacks
built on it beat the shuffled images on real data."""

import os

import pytest
import torch
import torch.nn.functional as F

from fedisguise.attacks import build_attack
from fedisguise.attacks.base import Evidence, GroundTruth, Knowledge, Runtime, ServerView
from fedisguise.attacks.deshuffle import (
    detect_windows,
    levels_of,
    rank_match,
    statistics_estimates,
    window_ids,
    window_mean,
)
from fedisguise.attacks.scoring import Scorer
from fedisguise.data.datasets import ImageDataset, load_dataset
from fedisguise.disguise import DisguiseKey, build
from fedisguise.metrics import psnr

from .conftest import DEBIAN_FMNIST

needs_fmnist = pytest.mark.skipif(not os.path.exists(DEBIAN_FMNIST),
                                  reason="dataset-fashion-mnist not installed")
KEY = DisguiseKey.generate(5)
RUNTIME = Runtime(device=torch.device("cpu"), seed=0, progress=False)


def box(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(F.avg_pool2d(x, size), scale_factor=size, mode="nearest")


@pytest.mark.parametrize("window", [2, 4, 7])
def test_window_statistics_reach_the_exact_low_pass_image_of_a_uniform_shuffle(window):
    x = torch.rand(16, 3, 28, 28)
    shuffled = build({"name": "visualmixer-uniform", "window": window}, KEY).apply(x)[0]
    assert not torch.allclose(shuffled, x)
    lowpass = statistics_estimates(shuffled, [window])["lowpass"]
    assert (lowpass - box(x, window)).abs().max() < 1e-5


def test_visualmixer_keeps_every_windows_multiset_and_its_4x4_means():
    """Under the true plan the window means are exact and rank matching against the
    original returns it exactly; the 4×4 region means are exact whatever the detection."""
    x = load_dataset("synthetic", "test").images[:32]
    vm = build("visualmixer", KEY)
    shuffled = vm.apply(x)[0]
    assert levels_of(vm, 28, 28) == [4, 2]
    ids = window_ids(vm.plan(x), 28, 28)
    assert (window_mean(shuffled, ids) - window_mean(x, ids)).abs().max() < 1e-5
    assert torch.equal(rank_match(x, shuffled, ids), x)
    detected = window_ids(detect_windows(shuffled, [4, 2]), 28, 28)
    assert (box(window_mean(shuffled, detected), 4) - box(x, 4)).abs().max() < 1e-5


def test_rank_matching_is_a_preimage_of_the_shuffle():
    x = torch.rand(4, 1, 8, 8)
    ids = window_ids({4: torch.ones(4, 2, 2, dtype=torch.bool)}, 8, 8)
    estimate = torch.rand(4, 1, 8, 8)
    out = rank_match(estimate, x, ids)
    for a, b in ((out, x), (out, estimate)):
        blocks = F.unfold(a, 4, stride=4)
        other = F.unfold(b, 4, stride=4)
        if b is x:  # the same values in every window
            assert torch.equal(blocks.sort(1).values, other.sort(1).values)
        else:  # in the estimate's order
            assert torch.equal(blocks.argsort(1), other.argsort(1))


def outsourced(plain: ImageDataset, disguised: torch.Tensor) -> tuple[Evidence, GroundTruth]:
    view = ServerView(1, 0, len(plain), {}, {}, "lenet", (1, 28, 28), 10, 0.05, 0, 1, 32)
    truth = GroundTruth(batch_plain=plain.images, batch_disguised=disguised,
                        batch_labels=plain.labels, train_plain=plain,
                        train_disguised=disguised, disguise_spec=None, disguise_key=KEY,
                        observed_plain=plain.images, observed_disguised=disguised,
                        observed_labels=plain.labels)
    return Evidence(view=view, images=disguised, images_from="outsourced"), truth


@needs_fmnist
def test_window_statistics_beat_the_shuffled_images_on_fashion_mnist():
    test = load_dataset("fashion-mnist", "test")
    public, plain = test.subset(torch.arange(5000, 10000)), test.subset(torch.arange(300))
    scorer = Scorer(public, "lenet", torch.device("cpu"), 0, epochs=1, progress=False)
    for spec, gain in (("visualmixer", 4.0), ({"name": "visualmixer-uniform",
                                                "window": 4}, 3.0)):
        shuffled = build(spec, KEY).apply(plain.images)[0]
        evidence, truth = outsourced(plain, shuffled)
        attack = build_attack({"name": "window_stats", "calibration": 300})
        rec = attack.reconstruct(evidence, Knowledge(level=1, public=public, algorithm=spec),
                                 RUNTIME)
        figures = attack.score(rec, truth, scorer)
        assert figures["method"] in ("lowpass", "smooth", "rank")
        assert figures["psnr_vs_original"] > figures["psnr_disguised_vs_original"] + gain
        assert figures["recognisability"] > 0.5


@needs_fmnist
@pytest.mark.slow
def test_the_learned_deshuffler_beats_the_window_statistics():
    test = load_dataset("fashion-mnist", "test")
    public, plain = test.subset(torch.arange(5000, 10000)), test.subset(torch.arange(200))
    shuffled = build("visualmixer", KEY).apply(plain.images)[0]
    evidence, truth = outsourced(plain, shuffled)
    knowledge = Knowledge(level=1, public=public, algorithm="visualmixer")
    stats = build_attack({"name": "window_stats", "calibration": 300}).reconstruct(
        evidence, knowledge, RUNTIME)
    learned = build_attack({"name": "deshuffler", "pairs": 1000, "epochs": 3}).reconstruct(
        evidence, knowledge, RUNTIME)
    baseline = psnr(shuffled, plain.images).mean()
    stats_psnr = psnr(stats.images, plain.images).mean()
    learned_psnr = psnr(learned.images, plain.images).mean()
    # measured: shuffled 15.2 dB, statistics 20.9, learned 22.2
    assert learned_psnr > stats_psnr + 0.8 and learned_psnr > baseline + 5


def test_shuffle_attacks_are_for_shuffles_only():
    tiny = ImageDataset(torch.rand(2, 1, 28, 28), torch.zeros(2).long(), 10)
    for name in ("window_stats", "deshuffler"):
        attack = build_attack({"name": name})
        assert attack.applies_to("visualmixer") and attack.applies_to("visualmixer-uniform")
        assert not attack.applies_to("instahide")
        evidence, _ = outsourced(tiny, torch.rand(2, 1, 28, 28))
        knowledge = Knowledge(level=1, public=tiny, algorithm="aes")
        assert attack.reconstruct(evidence, knowledge, RUNTIME).figures["status"] == \
            "not applicable"
    with pytest.raises(ValueError, match="method must be one of"):
        build_attack({"name": "window_stats", "method": "magic"})
    bad = torch.rand(2, 1, 28, 28)
    bad[1, 0, 5, 5] = float("inf")
    evidence, _ = outsourced(tiny, bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        build_attack({"name": "window_stats"}).reconstruct(
            evidence, Knowledge(level=1, public=tiny, algorithm="visualmixer"), RUNTIME)
