"""The attack contract: what reaches an attack's reconstruction step, the chain, and the
server-side model of a client's FedAvg steps."""

import dataclasses
import inspect
import typing

import pytest
import torch
import torch.nn.functional as F

from fedisguise.attacks import ATTACKS, build_attack, parse_spec
from fedisguise.attacks.base import (
    Attack,
    Evidence,
    Figure,
    GroundTruth,
    Knowledge,
    Reconstruction,
    Runtime,
    ServerView,
    Target,
    register,
    targets,
)
from fedisguise.attacks.chain import Chain, default_stages
from fedisguise.attacks.gradient_inversion import (
    GradientInversion,
    _simulated_delta,
    match_reconstructions,
)
from fedisguise.attacks.scoring import Scorer
from fedisguise.attacks.update_algebra import trainable
from fedisguise.config import Config, ConfigError
from fedisguise.data.datasets import ImageDataset, load_dataset
from fedisguise.disguise import DisguiseKey, build
from fedisguise.metrics import psnr
from fedisguise.models import build_model
from fedisguise.optim import STAdam
from fedisguise.resolved import resolve
from fedisguise.training import batch_order

CPU = Runtime(device=torch.device("cpu"), seed=0, progress=False)


def view_for(model, client_state, *, num_examples, batch_size, local_steps, momentum=0.0,
             lr=0.05, epochs=1, optimizer="sgd", weight_decay=0.0):
    return ServerView(server_round=1, partition_id=0, num_examples=num_examples,
                      global_state={k: v.clone() for k, v in model.state_dict().items()},
                      client_state=client_state, model_name="lenet", image_shape=(1, 28, 28),
                      num_classes=10, lr=lr, local_steps=local_steps, local_epochs=epochs,
                      batch_size=batch_size, momentum=momentum, optimizer=optimizer,
                      weight_decay=weight_decay)


def test_no_reconstruction_step_can_receive_the_ground_truth():
    for name, cls in ATTACKS.items():
        signature = inspect.signature(cls.reconstruct)
        assert list(signature.parameters) == ["self", "evidence", "knowledge", "runtime"], name
        hints = typing.get_type_hints(cls.reconstruct)
        assert GroundTruth not in hints.values(), name
    for holder in (ServerView, Evidence, Knowledge, Runtime):
        hints = typing.get_type_hints(holder)
        assert not any("GroundTruth" in str(h) for h in hints.values()), holder


def test_knowledge_levels_are_enforced_in_the_type():
    public = ImageDataset(torch.rand(4, 1, 28, 28), torch.arange(4), 10)
    with pytest.raises(ValueError, match="Level 0 does not know"):
        Knowledge(level=0, public=public, algorithm="visualmixer")
    with pytest.raises(ValueError, match="only Level 2"):
        Knowledge(level=1, public=public, algorithm="aes",
                  pairs=(torch.rand(1, 1, 28, 28), torch.rand(1, 1, 28, 28)))
    with pytest.raises(ValueError, match="does not know the disguise"):
        Knowledge(level=0, public=public).own_disguise(0)
    own = Knowledge(level=1, public=public, algorithm={"name": "block-permutation",
                                                       "block_size": 7}).own_disguise(0)
    victim = build({"name": "block-permutation", "block_size": 7}, DisguiseKey.generate(0))
    x = torch.rand(2, 1, 28, 28)
    assert not torch.equal(own.apply(x)[0], victim.apply(x)[0])  # never the victim's key


def test_a_target_is_parsed_once_and_attacks_do_not_take_one():
    spec = parse_spec({"name": "gradient_inversion", "round": 3, "client": 2, "iterations": 5})
    assert spec.target == Target(3, 2) and spec.params == {"iterations": 5}
    assert parse_spec({"name": "jigsaw"}).target == Target(1, 0)
    assert build_attack(spec).iterations == 5
    with pytest.raises(TypeError):
        GradientInversion(round=1)
    with pytest.raises(ValueError, match="round must be an integer"):
        parse_spec({"name": "gan", "round": "1"})
    assert targets([{"name": "gan", "round": 2}, {"name": "membership", "client": 1},
                    {"name": "chain", "round": 2}]) == {(2, 0), (1, 1)}


def test_every_attack_declares_its_figures():
    for name, cls in ATTACKS.items():
        assert cls.figures and all(isinstance(f, Figure) for f in cls.figures), name
    assert Figure("x", "x", higher_is_stronger=False).stronger(1.0, 2.0)
    with pytest.raises(ValueError, match="twice"):
        register(type("Twice", (Attack,), {"name": "twice", "figures": (
            Figure("a", "a"), Figure("a", "b"))}))


def test_the_server_view_knows_the_clients_steps():
    model = build_model("lenet", 1, 10, 28)
    view = view_for(model, model.state_dict(), num_examples=10, batch_size=4, local_steps=2)
    assert view.step_sizes() == [4, 4] and view.images_behind_update() == 8
    epoch = view_for(model, model.state_dict(), num_examples=10, batch_size=4, local_steps=0)
    assert epoch.step_sizes() == [4, 4, 2] and epoch.images_behind_update() == 10
    two = view_for(model, model.state_dict(), num_examples=10, batch_size=4, local_steps=0,
                   epochs=2)
    assert two.step_sizes() == [4, 4, 2] * 2 and two.images_behind_update() == 10


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_unrolled_steps_reproduce_the_clients_fedavg_update(momentum):
    """The server's model of local training (step sizes, momentum) is the client's SGD."""
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    x, y = torch.rand(10, 1, 28, 28), torch.randint(0, 10, (10,))
    client = build_model("lenet", 1, 10, 28)
    client.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(client.parameters(), lr=0.05, momentum=momentum)
    order = list(batch_order(10, 4, 1, torch.Generator().manual_seed(3)))
    for idx in order:
        opt.zero_grad()
        F.cross_entropy(client(x[idx]), y[idx]).backward()
        opt.step()
    params = {n: p.detach().requires_grad_(True) for n, p in trainable(model).items()}
    perm = torch.cat(order)  # the attacker's dummies in the client's batch order
    simulated = _simulated_delta(model, params, x[perm], y[perm], 0.05, [4, 4, 2], momentum,
                                 create_graph=False)
    real = {n: model.state_dict()[n] - client.state_dict()[n] for n in params}
    for n in params:
        torch.testing.assert_close(simulated[n], real[n], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("optimizer, momentum, weight_decay", [
    ("adam", 0.0, 0.0), ("adam", 0.0, 1e-3), ("st-adam", 0.0, 0.0), ("st-adam", 0.5, 1e-3),
    ("sgd", 0.9, 1e-3)])
def test_unrolled_adam_family_steps_reproduce_the_clients_update(optimizer, momentum,
                                                                weight_decay):
    """With softness 0 the server's model of Adam, ST-Adam (and SGD with weight decay) is the
    client's own optimizer, step for step (fedisguise.training.OPTIMIZERS)."""
    from fedisguise.training import OPTIMIZERS

    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    x, y = torch.rand(10, 1, 28, 28), torch.randint(0, 10, (10,))
    client = build_model("lenet", 1, 10, 28)
    client.load_state_dict(model.state_dict())
    opt = OPTIMIZERS[optimizer](client.parameters(), 1e-3, momentum, weight_decay)
    for idx in (slice(0, 4), slice(4, 8), slice(8, 10)):
        opt.zero_grad()
        F.cross_entropy(client(x[idx]), y[idx]).backward()
        opt.step()
    params = {n: p.detach().requires_grad_(True) for n, p in trainable(model).items()}
    simulated = _simulated_delta(model, params, x, y, 1e-3, [4, 4, 2], momentum,
                                 create_graph=False, optimizer=optimizer,
                                 weight_decay=weight_decay)
    real = {n: model.state_dict()[n] - client.state_dict()[n] for n in params}
    for n in params:  # a step is up to 3e-3 here; float32 gradients near Adam's ε differ
        torch.testing.assert_close(simulated[n], real[n], atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="cannot unroll optimizer 'rmsprop'"):
        _simulated_delta(model, params, x, y, 1e-3, 1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="softness must be >= 0"):
        _simulated_delta(model, params, x, y, 1e-3, 1, optimizer="adam", softness=-1)
    with pytest.raises(ValueError, match="adam_tv_weight must be a number >= 0"):
        GradientInversion(adam_tv_weight=float("nan"))


@pytest.mark.skipif(not __import__("os").path.exists(
    "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"),
    reason="dataset-fashion-mnist not installed")
def test_an_st_adam_update_is_inverted_through_its_soft_sign_not_as_a_gradient():
    """One ST-Adam step sends ±lr·(1 − β1)/√(1 − β2) per weight, the gradient's sign: read as
    a gradient it gives images below the dummies' uniform start (bench/adam_inversion.py:
    4.5 dB against 6 dB); the server's unrolling of the client's ST-Adam with a soft sign
    recovers the image (13.9 dB at 1000 iterations)."""
    test = load_dataset("fashion-mnist", "test")
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    x, y = test.images[:1], test.labels[:1]
    client = build_model("lenet", 1, 10, 28)
    client.load_state_dict(model.state_dict())
    opt = STAdam(client.parameters(), lr=1e-3)
    opt.zero_grad()
    F.cross_entropy(client(x), y).backward()
    opt.step()
    view = view_for(model, client.state_dict(), num_examples=1, batch_size=1, local_steps=1,
                    lr=1e-3, optimizer="st-adam")
    public = ImageDataset(test.images[5000:5100], test.labels[5000:5100], 10)
    scored = {}
    for mode in ("auto", "effective-gradient"):
        rec = GradientInversion(iterations=400, delta_mode=mode).reconstruct(
            Evidence(view), Knowledge(0, public), CPU)
        assert rec.labels.tolist() == y.tolist()
        scored[mode] = float(psnr(rec.images, x).mean())
        assert rec.figures["delta_mode"] == ("unrolled" if mode == "auto" else mode)
        assert rec.figures["optimizer"] == "st-adam" and rec.figures["tv_weight"] == 0.15
    start = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    floor = float(psnr(start, x).mean())
    assert scored["auto"] >= floor + 4.0, (scored, floor)
    assert scored["auto"] >= scored["effective-gradient"] + 4.0, (scored, floor)


def test_gradient_inversion_inverts_as_many_images_as_the_server_knows_of():
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()}
    view = view_for(model, state, num_examples=40, batch_size=3, local_steps=2)
    public = ImageDataset(torch.rand(4, 1, 28, 28), torch.arange(4), 10)
    rec = GradientInversion(iterations=2).reconstruct(Evidence(view), Knowledge(0, public), CPU)
    assert rec.images.shape == (6, 1, 28, 28) and len(rec.labels) == 6
    assert rec.figures["delta_mode"] == "unrolled" and rec.figures["local_steps"] == 2
    small = GradientInversion(iterations=2, max_batch=5).reconstruct(
        Evidence(view), Knowledge(0, public), CPU)
    assert small.images is None and small.figures["status"] == "not applicable"


class Oracle(Attack):
    """A test-only first stage that 'estimates' disguised images it was given."""

    name = "oracle"
    evidence = "update"
    figures = (Figure("psnr_vs_original", "oracle"),)

    def __init__(self, images=None):
        self.images = images

    def reconstruct(self, evidence, knowledge, runtime):
        return Reconstruction(images=self.images, labels=torch.zeros(len(self.images)).long(),
                              space="disguised", figures={"status": "ok"})

    def score(self, reconstruction, truth, scorer):
        return GradientInversion.score(self, reconstruction, truth, scorer)


def test_a_chain_maps_estimates_to_originals_with_only_its_levels_knowledge(monkeypatch):
    """Stage 1's estimate is scored against the disguised images, the chain's output
    against the originals; the Level-2 stage recovers what the estimate hid."""
    monkeypatch.setitem(ATTACKS, "oracle", Oracle)
    torch.manual_seed(0)
    images = torch.rand(60, 1, 28, 28).clamp(0.05, 0.95)
    labels = torch.arange(60) % 10
    spec = {"name": "block-permutation", "block_size": 7}
    disguised = build(spec, DisguiseKey.generate(4)).apply(images)[0]
    batch, spare = torch.arange(4), torch.arange(4, 60)
    chain = Chain(level=2, stages=[{"name": "oracle"},
                                   {"name": "inverse_network", "level": 2,
                                    "method": "known-pairs"}])
    chain.stages[0].images = disguised[batch]
    model = build_model("lenet", 1, 10, 28)
    view = view_for(model, model.state_dict(), num_examples=60, batch_size=4, local_steps=1)
    public = ImageDataset(torch.rand(64, 1, 28, 28), torch.arange(64) % 10, 10)
    knowledge = Knowledge(level=2, public=public, algorithm=spec,
                          pairs=(images[spare], disguised[spare]))
    rec = chain.reconstruct(Evidence(view), knowledge, CPU)
    truth = GroundTruth(batch_plain=images[batch], batch_disguised=disguised[batch],
                        batch_labels=labels[batch],
                        train_plain=ImageDataset(images, labels, 10),
                        train_disguised=disguised, disguise_spec=spec, disguise_key=None,
                        batch_index=batch)
    figures = chain.score(rec, truth, Scorer(public, "lenet", torch.device("cpu"), 0,
                                             epochs=1, progress=False))
    assert figures["stages"] == ["oracle", "inverse_network"]
    assert figures["estimate_psnr_vs_disguised"] == 100.0  # the oracle's exact estimate
    assert figures["estimate_psnr_vs_original"] < 15
    assert figures["psnr_vs_original"] >= 40
    assert 0.0 <= figures["recognisability"] <= 1.0


def test_chain_stages_follow_the_contract():
    assert default_stages("none", 2) == [{"name": "gradient_inversion"}]
    assert default_stages("visualmixer", 0) == [{"name": "gradient_inversion"}]
    assert default_stages("disguisednets", 1)[1] == {"name": "inverse_network", "level": 1}
    assert default_stages("disguisednets", 2)[1]["method"] == "known-pairs"
    assert default_stages("aes", 2)[1]["method"] == "unet"
    # The attack a defence fears most, at Level 1 and (pairs do not undo per-image
    # randomness) at Level 2.
    for level in (1, 2):
        assert default_stages("instahide", level)[1] == {"name": "instahide_attack"}
        assert default_stages("visualmixer", level)[1] == {"name": "deshuffler"}
    with pytest.raises(ValueError, match="cannot take an update"):
        Chain(stages=[{"name": "inverse_network"}])
    with pytest.raises(ValueError, match="cannot take images"):
        Chain(stages=[{"name": "gradient_inversion"}, {"name": "membership"}])
    with pytest.raises(ValueError, match="Level 2 > the chain's level 1"):
        Chain(level=1, stages=[{"name": "gradient_inversion"},
                               {"name": "inverse_network", "level": 2}])
    with pytest.raises(ValueError, match="without round/client"):
        Chain(stages=[{"name": "gradient_inversion", "round": 2}])
    with pytest.raises(ConfigError, match="attacks\\[0\\].*iters"):
        Config.from_dict({"attacks": [{"name": "chain", "inversion": {"iters": 3}}]})
    plan = Chain(level=1, inversion={"iterations": 7}).plan({"name": "aes"})
    assert [s.name for s in plan] == ["gradient_inversion", "inverse_network"]
    assert plan[0].iterations == 7 and plan[1].level == 1


@pytest.mark.skipif(not __import__("os").path.exists(
    "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"),
    reason="dataset-fashion-mnist not installed")
def test_multi_step_momentum_update_is_inverted_from_the_server_view_alone():
    """Two local steps of one image each, SGD with momentum 0.9: the attack reads the steps,
    lr and momentum from the server's settings and recovers both labels and images."""
    test = load_dataset("fashion-mnist", "test")
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 28)
    idx = torch.stack([(test.labels == c).nonzero()[0, 0] for c in (1, 8)])
    x, y = test.images[idx], test.labels[idx]
    client = build_model("lenet", 1, 10, 28)
    client.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(client.parameters(), lr=0.05, momentum=0.9)
    for i in range(2):
        opt.zero_grad()
        F.cross_entropy(client(x[i:i + 1]), y[i:i + 1]).backward()
        opt.step()
    view = view_for(model, client.state_dict(), num_examples=2, batch_size=1, local_steps=2,
                    momentum=0.9)
    public = ImageDataset(test.images[5000:5100], test.labels[5000:5100], 10)
    rec = GradientInversion(iterations=400).reconstruct(Evidence(view), Knowledge(0, public),
                                                        CPU)
    assert sorted(rec.labels.tolist()) == [1, 8]
    start = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    gained = psnr(match_reconstructions(rec.images, x), x).mean()
    assert gained >= psnr(match_reconstructions(start, x), x).mean() + 4.0


def test_a_level_one_inversion_searches_the_disguises_output_range():
    from fedisguise.attacks.gradient_inversion import output_range

    public = ImageDataset(torch.rand(64, 1, 28, 28), torch.arange(64) % 10, 10)
    assert output_range(Knowledge(0, public), 0) == (0.0, 1.0)
    assert output_range(Knowledge(1, public, algorithm="visualmixer"), 0) == (0.0, 1.0)
    low, high = output_range(Knowledge(1, public, algorithm={
        "name": "disguisednets", "block_size": 7, "noise_level": 25}), 0)
    assert low < 0.0 or high > 1.0  # X·R + Δ leaves [0, 1]; a [0, 1] box could not match it


def test_an_attack_built_for_another_defence_is_reported_not_applicable(tmp_path,
                                                                        monkeypatch):
    from fedisguise.attacks import suite
    from tests.conftest import synthetic_config

    cfg = synthetic_config(tmp_path, disguise="visualmixer")
    cfg = dataclasses.replace(cfg, attacks=[{"name": "instahide_attack"},
                                            {"name": "jigsaw", "client": 1},
                                            {"name": "inverse_network", "level": 2,
                                             "method": "known-pairs"}])
    def unused(*args):
        raise AssertionError("nothing is loaded for an attack that does not apply")

    monkeypatch.setattr(suite, "load_view", unused)
    monkeypatch.setattr(suite, "ground_truth", unused)
    results = suite.run_attacks(resolve(cfg), tmp_path, progress=False)
    assert [r["status"] for r in results.values()] == ["not applicable"] * 3
    assert results["instahide_attack"]["reason"] == "built for ['instahide'], not visualmixer"
    assert results["jigsaw"]["target"] == {"round": 1, "client": 1}
    assert results["inverse_network-level2"]["level"] == 2  # labelled by its level
    assert results["inverse_network-level2"]["reason"].startswith(
        "built for ['block-permutation'")


def test_as_observed_is_the_do_nothing_floor():
    class Stub:
        def recognisability(self, images, labels):
            return 1.0

    x = torch.rand(6, 1, 28, 28)
    attack = build_attack({"name": "as_observed"})
    public = ImageDataset(x, torch.zeros(6).long(), 10)
    for spec, floor in (("none", 100.0), ({"name": "instahide", "k": 2}, None)):
        disguised = build(spec, DisguiseKey.generate(1)).apply(x)[0]
        rec = attack.reconstruct(Evidence(view=None, images=disguised), Knowledge(0, public),
                                 CPU)
        assert 0 <= rec.images.min() and rec.images.max() <= 1  # shown as a viewer would
        truth = GroundTruth(batch_plain=x, batch_disguised=disguised, batch_labels=public.labels,
                            train_plain=public, train_disguised=disguised, disguise_spec=spec,
                            disguise_key=None, observed_plain=x, observed_disguised=disguised,
                            observed_labels=public.labels)
        figures = attack.score(rec, truth, Stub())
        if floor is not None:
            assert figures["psnr_vs_original"] == floor
        else:
            assert figures["psnr_vs_original"] < 15
