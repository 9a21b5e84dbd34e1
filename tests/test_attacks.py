"""Every attack proves itself on the undefended baseline before it is trusted on a defence."""

import os

import pytest
import torch
import torch.nn.functional as F

from fedisguise.attacks import build_attack, inverse, jigsaw
from fedisguise.attacks.gradient_inversion import invert
from fedisguise.attacks.membership import evaluate_membership, roc_auc, tpr_at_fpr
from fedisguise.attacks.update_algebra import recover_labels, update_delta
from fedisguise.config import Config, ConfigError
from fedisguise.data.datasets import ImageDataset, load_dataset
from fedisguise.disguise import DisguiseKey, build
from fedisguise.metrics import psnr
from fedisguise.models import build_model
from fedisguise.resolved import resolve
from fedisguise.training import train_local

from .conftest import DEBIAN_FMNIST

needs_fmnist = pytest.mark.skipif(not os.path.exists(DEBIAN_FMNIST),
                                  reason="dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion-mnist", "test")


def fedsgd_delta(model, images, labels, lr=0.05):
    """θ_before − θ_after of one plain SGD step, as a client would upload it."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    client = build_model("lenet", 1, 10, 28)
    client.load_state_dict(before)
    torch.optim.SGD(client.parameters(), lr=lr).zero_grad()
    F.cross_entropy(client(images), labels).backward()
    with torch.no_grad():
        for p in client.parameters():
            p -= lr * p.grad
    return update_delta(model, before, client.state_dict())


def test_a_diverged_target_model_gives_no_membership_figures_not_a_perfect_auc():
    """A model with NaN weights scores every candidate NaN; ranking those would print an AUC
    of 1.0 (seen on a central-DP run that diverged), so the attack reports `undefined`."""
    from fedisguise.attacks.base import Evidence, Knowledge, Runtime, ServerView
    from fedisguise.attacks.membership import Membership
    from fedisguise.data.datasets import load_synthetic
    from fedisguise.models import build_model

    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in build_model("lenet", 1, 10, 28).state_dict().items()}
    view = ServerView(1, 0, 10, state, state, "lenet", (1, 28, 28), 10, 0.05, 0, 1, 32,
                      final_global_state=state)
    data = load_synthetic("test")
    candidates = data.subset(torch.arange(20))
    attack = Membership(method="loss", candidates=20)
    rec = attack.reconstruct(Evidence(view, candidates=candidates),
                             Knowledge(0, data.subset(torch.arange(20, 60))),
                             Runtime(device=torch.device("cpu"), seed=0, progress=False))
    assert rec.figures["status"] == "undefined" and "diverged" in rec.figures["reason"]
    figures = attack.score(rec, None, None)
    assert "auc" not in figures
    with pytest.raises(ValueError, match="must be finite"):
        roc_auc(torch.tensor([1.0, float("nan")]), torch.tensor([True, False]))


def test_roc_auc_and_low_fpr_rate_are_exact_on_known_scores():
    member = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)
    assert roc_auc(torch.tensor([6., 5, 4, 3, 2, 1]), member) == 1.0
    assert roc_auc(torch.tensor([1., 2, 3, 4, 5, 6]), member) == 0.0
    assert roc_auc(torch.ones(6), member) == 0.5  # ties count one half
    assert roc_auc(torch.tensor([6., 2, 4, 5, 1, 3]), member) == pytest.approx(6 / 9)
    assert tpr_at_fpr(torch.tensor([6., 5, 4, 3, 2, 1]), member, 0.01) == 1.0
    with pytest.raises(ValueError, match="both members and non-members"):
        roc_auc(torch.ones(3), torch.ones(3, dtype=torch.bool))


@needs_fmnist
def test_idlg_recovers_the_labels_of_single_image_and_small_batch_updates(fmnist):
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    hits = 0
    for i in range(20):
        delta = fedsgd_delta(model, fmnist.images[i:i + 1], fmnist.labels[i:i + 1])
        gradient = {k: v / 0.05 for k, v in delta.items()}
        hits += int(recover_labels(model, gradient, 1).item() == fmnist.labels[i].item())
    assert hits / 20 >= 0.95
    distinct = torch.tensor([0, 1, 2, 3])  # one image of each of four classes
    idx = torch.stack([(fmnist.labels == c).nonzero()[0, 0] for c in distinct])
    delta = fedsgd_delta(model, fmnist.images[idx], fmnist.labels[idx])
    recovered = recover_labels(model, {k: v / 0.05 for k, v in delta.items()}, 4)
    assert torch.equal(recovered, distinct)


@needs_fmnist
def test_inverting_gradients_reconstructs_a_single_image_from_a_fedsgd_update(fmnist):
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    x, y = fmnist.images[:1], fmnist.labels[:1]
    delta = fedsgd_delta(model, x, y)
    out = invert(model, delta, batch_size=1, image_shape=(1, 28, 28), lr=0.05,
                 iterations=1000, tv_weight=0.01, progress=False)
    start = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert out["labels"].tolist() == y.tolist()
    gained = psnr(out["images"], x).item()
    assert gained >= 15.0
    assert gained >= psnr(start, x).item() + 6.0  # far beyond the starting point


@needs_fmnist
def test_membership_separates_members_of_an_overfit_model(fmnist):
    torch.manual_seed(0)
    members, outsiders = fmnist.subset(torch.arange(200)), fmnist.subset(torch.arange(200, 400))
    model = build_model("lenet", 1, 10, 28)
    train_local(model, members, epochs=40, batch_size=32, optimizer="adam", lr=2e-3,
                generator=torch.Generator().manual_seed(0))
    candidates = ImageDataset(torch.cat([members.images, outsiders.images]),
                              torch.cat([members.labels, outsiders.labels]), 10)
    is_member = torch.arange(400) < 200
    figures = evaluate_membership(model, candidates, is_member, method="loss",
                                  device=torch.device("cpu"))
    assert figures["auc"] >= 0.6
    assert figures["tpr_at_1pct_fpr"] > 0.01


@needs_fmnist
def test_level2_known_pairs_undo_block_permutation_and_noisy_disguisednets(fmnist):
    x = fmnist.images[:400]
    for spec, floor in (({"name": "block-permutation", "block_size": 7}, 40.0),
                        ({"name": "disguisednets", "block_size": 7, "noise_level": 25.0}, 25.0)):
        disguised, _ = build(spec, DisguiseKey.generate(3)).apply(x)
        fit = inverse.fit_known_pairs(x[:100], disguised[:100], 7)  # victim-key pairs
        recovered = inverse.invert_known_pairs(fit, disguised[100:], 7)
        assert psnr(recovered, x[100:]).clamp(max=100).mean() >= floor
        assert psnr(disguised[100:], x[100:]).mean() < 15  # the disguise itself hides


@needs_fmnist
def test_jigsaw_reassembles_noiseless_block_permutation(fmnist):
    x = fmnist.images[:1000]
    disguise = build({"name": "block-permutation", "block_size": 7}, DisguiseKey.generate(5))
    disguised, _ = disguise.apply(x)
    solved = jigsaw.solve(disguised, 7)
    truth = torch.argsort(disguise._permutation(16, torch.device("cpu")))
    acc = jigsaw.accuracy(solved["placement"], truth, solved["grid"])
    assert acc["direct_accuracy"] >= 0.9
    assert acc["direct_accuracy"] >= 10 * acc["random_direct_accuracy"]
    assert acc["neighbour_accuracy"] >= 0.9
    assert psnr(jigsaw.reassemble(disguised, solved["placement"], 7), x).mean() > 40


@needs_fmnist
def test_the_public_mean_image_places_every_block_where_edges_alone_shift_them(fmnist):
    """On 100 images the edges leave Fashion-MNIST's border free to shift (0 blocks right);
    public images of the same kind put every block where it belongs."""
    x, public = fmnist.images[:100], fmnist.images[1000:3000]
    disguise = build({"name": "block-permutation", "block_size": 7}, DisguiseKey.generate(5))
    disguised, _ = disguise.apply(x)
    truth = torch.argsort(disguise.block_permutation(16))
    edges = jigsaw.accuracy(jigsaw.solve(disguised, 7)["placement"], truth, (4, 4))
    placed = jigsaw.solve(disguised, 7, public)["placement"]
    assert edges["direct_accuracy"] < 0.5
    assert jigsaw.accuracy(placed, truth, (4, 4))["direct_accuracy"] == 1.0
    assert psnr(jigsaw.reassemble(disguised, placed, 7), x).clamp(max=100).mean() == 100
    with pytest.raises(ValueError, match="differ in shape"):
        jigsaw.solve(disguised, 7, public[:, :, :14])


def test_unet_keeps_the_image_shape_and_learns_an_invertible_map():
    torch.manual_seed(0)
    x = torch.rand(256, 1, 28, 28)
    disguised = 1 - x  # an easy, exactly invertible "disguise"
    net, info = inverse.train_inverse(disguised, x, epochs=4, batch_size=32, width=8,
                                      progress=False)
    out = inverse.apply_inverse(net, disguised)
    assert out.shape == x.shape
    assert F.mse_loss(out, x) < F.mse_loss(disguised, x) / 4


def test_a_broken_update_is_an_error_not_a_reconstruction():
    model = build_model("lenet", 1, 10, 28)
    state = model.state_dict()
    bad = {k: v.clone() for k, v in state.items()}
    bad["classifier.5.bias"][0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        update_delta(model, state, bad)
    bad = {k: v.clone() for k, v in state.items()}
    bad["classifier.5.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        update_delta(model, state, bad)


def test_attack_specs_are_validated_before_a_run():
    with pytest.raises(ValueError, match="unknown parameter 'iters'"):
        build_attack({"name": "gradient_inversion", "iters": 3})
    with pytest.raises(ValueError, match="level = 2"):
        build_attack({"name": "inverse_network", "level": 1, "method": "known-pairs"})
    with pytest.raises(ConfigError, match="attacks\\[0\\]"):
        Config.from_dict({"attacks": [{"name": "membership", "method": "shadowy"}]})
    with pytest.raises(ConfigError, match="attacks\\[0\\].round"):
        Config.from_dict({"experiment": {"rounds": 3},
                          "attacks": [{"name": "gradient_inversion", "round": 4}]})
    with pytest.raises(ConfigError, match="attacks\\[0\\].client"):
        Config.from_dict({"experiment": {"clients": 2},
                          "attacks": [{"name": "jigsaw", "client": 2}]})
    with pytest.raises(ConfigError, match="unknown attacks\\[0\\].name|valid choices"):
        Config.from_dict({"attacks": [{"name": "telepathy"}]})


@pytest.mark.slow
@needs_fmnist
def test_attacks_run_on_the_updates_the_server_captured_in_a_real_simulation(tmp_path):
    import json

    from fedisguise.experiment import run_experiment

    cfg = Config.from_dict({
        "attacks": [
            {"name": "gradient_inversion", "round": 2, "client": 1, "iterations": 300,
             "tv_weight": 0.01},
            {"name": "membership", "round": 2, "client": 1, "method": "loss",
             "target": "update", "candidates": 100},
            {"name": "chain", "round": 2, "client": 1, "level": 1, "stages": [
                {"name": "gradient_inversion", "iterations": 50},
                {"name": "inverse_network", "level": 1, "pairs": 200, "epochs": 1}]},
        ],
        "experiment": {"name": "att", "rounds": 2, "clients": 2, "out": str(tmp_path)},
        "data": {"train_per_client": 300, "test_samples": 500},
        "train": {"local_steps": 1, "batch_size": 1, "momentum": 0.0, "lr": 0.05},
        # the target's round-2 reply claims too many examples: the server refuses to
        # aggregate it, and still attacks it as received, saying so
        "faults": [{"client": 1, "reply": "num-examples", "value": 1e12, "from_round": 2}],
    })
    record = run_experiment(cfg)
    gi, mia = record["attacks"]["gradient_inversion"], record["attacks"]["membership"]
    assert gi["refused"] == mia["refused"] == "num-examples 1e+12 > 300"
    assert gi["n"] == 1 and mia["n"] == 100  # one image reconstructed; candidates ranked
    assert record["rounds"][1]["clients"] == [0]
    assert gi["round"] == 2 and gi["client"] == 1 and gi["batch_size"] == 1
    assert gi["label_accuracy"] == 1.0
    from fedisguise.attacks.suite import ground_truth

    # the image behind that update, and the attack's start
    truth = ground_truth(resolve(cfg), 2, 1)
    start = torch.rand(truth.batch_plain.shape, generator=torch.Generator().manual_seed(0))
    assert gi["psnr_vs_original"] >= psnr(start, truth.batch_plain).item() + 4.0
    assert gi["psnr_vs_disguised"] == gi["psnr_vs_original"]  # no disguise
    assert (tmp_path / "att" / gi["grid"]).is_file()
    assert 0.0 <= mia["auc"] <= 1.0 and mia["candidates"] == 100
    # update -> estimate -> Level-1 inverse -> originals, named by its level
    chain = record["attacks"]["chain-level1"]
    assert chain["attack"] == "chain" and chain["level"] == 1
    assert chain["stages"] == ["gradient_inversion", "inverse_network"]
    assert chain["target"] == {"round": 2, "client": 1}
    for figure in ("psnr_vs_original", "ssim_vs_original", "recognisability"):
        assert isinstance(chain[figure], float)
    assert chain["inverse_network"]["observed"] == "gradient_inversion"
    assert (tmp_path / "att" / chain["grid"]).is_file()
    # The attack ran on exactly the arrays the server received from that client.
    capture = torch.load(tmp_path / "att" / "captures" / "round-2-client-1.pt",
                         weights_only=True)
    ledger = json.loads((tmp_path / "att" / "updates.json").read_text())
    (entry,) = [e for e in ledger if e["server_round"] == 2 and e["partition_id"] == 1]
    assert capture["sha256"] == entry["sha256"] == entry["client_sha256"]
    assert entry["refused"] == capture["refused"] == "num-examples 1e+12 > 300"


def test_attack_figures_stay_valid_json():
    from fedisguise.attacks.suite import _json_safe

    figures = {"psnr": float("inf"), "nested": {"x": float("nan")}, "auc": 0.7, "n": 3}
    assert _json_safe(figures) == {"psnr": None, "nested": {"x": None}, "auc": 0.7, "n": 3}


@pytest.mark.slow
@needs_fmnist
def test_gan_generator_produces_samples_an_independent_classifier_recognises():
    from fedisguise.attacks.gan import train_generator

    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    torch.manual_seed(0)
    target = build_model("lenet", 1, 10, 28)  # the global model the server holds
    train_local(target, train.subset(torch.arange(10000)), epochs=2, batch_size=32,
                optimizer="adam", lr=1e-3, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    examiner = build_model("lenet", 1, 10, 28)  # the attacker's own, on public data
    train_local(examiner, test.subset(torch.arange(5000, 10000)), epochs=2, batch_size=64,
                optimizer="adam", lr=1e-3, generator=torch.Generator().manual_seed(1))
    examiner.eval()
    rates = []
    for c in range(5):
        gen = train_generator(target, c, (1, 28, 28), iterations=200, batch_size=32,
                              tv_weight=0.2, device=torch.device("cpu"), seed=0,
                              progress=False)
        with torch.no_grad():
            rates.append((examiner(gen(torch.randn(32, gen.latent))).argmax(1) == c)
                         .float().mean().item())
    assert sum(rates) / len(rates) >= 0.3  # chance is 0.1


@needs_fmnist
def test_multi_step_delta_is_inverted_by_unrolling_the_clients_local_steps(fmnist):
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    idx = torch.stack([(fmnist.labels == c).nonzero()[0, 0] for c in (1, 8)])
    x, y = fmnist.images[idx], fmnist.labels[idx]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    client = build_model("lenet", 1, 10, 28)
    client.load_state_dict(before)
    opt = torch.optim.SGD(client.parameters(), lr=0.05)
    for i in range(2):  # two local steps, one image each: a FedAvg delta, not a gradient
        opt.zero_grad()
        F.cross_entropy(client(x[i:i + 1]), y[i:i + 1]).backward()
        opt.step()
    delta = update_delta(model, before, client.state_dict())
    out = invert(model, delta, batch_size=2, image_shape=(1, 28, 28), lr=0.05, steps=2,
                 delta_mode="unrolled", iterations=400, tv_weight=0.01, progress=False)
    assert sorted(out["labels"].tolist()) == [1, 8]
    start = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    from fedisguise.attacks.gradient_inversion import match_reconstructions

    rec = match_reconstructions(out["images"], x)
    assert psnr(rec, x).mean() >= psnr(match_reconstructions(start, x), x).mean() + 4.0


def test_batch_indices_name_the_images_train_local_uses():
    from fedisguise.training import batch_indices

    seen = []

    class Recorder(torch.nn.Module):  # a model that notes which images it was fed
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            seen.append(x[:, 0, 0, 0].long())
            return torch.zeros(len(x), 2) + self.w

    data = ImageDataset(torch.arange(10.).view(10, 1, 1, 1), torch.zeros(10, dtype=torch.long), 2)
    train_local(Recorder(), data, epochs=3, batch_size=4, optimizer="sgd", lr=0.1,
                generator=torch.Generator().manual_seed(7), max_steps=5)  # crosses epochs
    assert torch.equal(torch.cat(seen), batch_indices(10, 7, 4, 5, epochs=3))
    assert len(torch.cat(seen)) == 4 + 4 + 2 + 4 + 4
