"""DP-SGD baseline: accounting that adds up, models it cannot handle rejected, ε reported."""

import pytest
import torch

from fedisguise.config import Config, ConfigError
from fedisguise.data.datasets import ImageDataset
from fedisguise.models import build_model
from fedisguise.privacy.dp import (
    check_model,
    epsilon,
    planned_noise,
    poisson_batches,
    steps_per_round,
    train_dp,
)

from .conftest import synthetic_config


def test_epsilon_grows_with_steps_shrinks_with_noise_and_meets_its_target():
    q = 32 / 1000
    assert epsilon(1.0, q, 0, 1e-5) == 0.0
    assert epsilon(1.0, q, 100, 1e-5) < epsilon(1.0, q, 1000, 1e-5)
    assert epsilon(2.0, q, 1000, 1e-5) < epsilon(1.0, q, 1000, 1e-5)
    sigma = planned_noise(3.0, 1e-5, q, 2000)
    assert epsilon(sigma, q, 2000, 1e-5) == pytest.approx(3.0, abs=0.05)
    assert steps_per_round(1000, 32, 2, 0) == 64 and steps_per_round(1000, 32, 2, 5) == 5


def test_the_noise_search_runs_once_per_question_not_once_per_client_and_round(monkeypatch):
    """Opacus's bisection costs about 8 client rounds of training (bench/dp_round.py); every
    client asks it the same question each round, so it is answered once."""
    import fedisguise.privacy.dp as dp

    searches = []
    real = dp.get_noise_multiplier

    def counted(**kwargs):
        searches.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(dp, "get_noise_multiplier", counted)
    dp.planned_noise.cache_clear()
    sigmas = {planned_noise(8.0, 1e-5, 32 / 250, 160) for _ in range(20 * 3)}
    assert len(searches) == 1 and len(sigmas) == 1
    assert planned_noise(4.0, 1e-5, 32 / 250, 160) > sigmas.pop()  # a new target is searched
    assert len(searches) == 2
    dp.planned_noise.cache_clear()


def test_batchnorm_models_and_soft_labels_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="BatchNorm"):
        check_model(build_model("resnet20", 3, 10, 32), "resnet20")
    with pytest.raises(ConfigError, match="dp.mode = 'dp-sgd'.*resnet20"):
        Config.from_dict({"dp": {"mode": "dp-sgd"}, "model": {"name": "resnet20"}})
    with pytest.raises(ConfigError, match="not fedprox"):
        Config.from_dict({"dp": {"mode": "dp-sgd"}, "strategy": {"name": "fedprox"}})
    with pytest.raises(ConfigError, match="dp.delta"):
        Config.from_dict({"dp": {"mode": "dp-sgd", "delta": 2.0}})
    soft = ImageDataset(torch.rand(64, 1, 28, 28), torch.rand(64, 10).softmax(1), 10)
    with pytest.raises(ValueError, match="hard labels"):
        train_dp(build_model("lenet", 1, 10, 28), soft, epochs=1, batch_size=16,
                 optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, noise_multiplier=1.0,
                 max_grad_norm=1.0, device=torch.device("cpu"), seed=0)


def test_dp_sgd_clips_and_noises_but_still_learns_a_separable_task():
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (512,))
    images = torch.rand(512, 1, 28, 28) * 0.2 + labels.view(-1, 1, 1, 1) * 0.8  # dark vs bright
    data = ImageDataset(images, labels, 2)
    model = build_model("lenet", 1, 2, 28)
    before = [p.detach().clone() for p in model.parameters()]
    loss, steps = train_dp(model, data, epochs=3, batch_size=32, optimizer="sgd", lr=0.5,
                           momentum=0.0, weight_decay=0.0, noise_multiplier=0.5,
                           max_grad_norm=1.0, device=torch.device("cpu"), seed=0)
    assert steps > 30
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9


@pytest.mark.parametrize("batch_size, epochs, max_steps", [(1, 1, 3), (8, 2, 0), (8, 1, 5)])
def test_poisson_batches_name_the_images_dp_sgd_trained_on(batch_size, epochs, max_steps):
    """The attack harness's ground truth for a DP-SGD update: image i carries i in its
    pixels, and the model records which images each step saw."""
    n = 40
    data = ImageDataset(torch.arange(n).float().view(n, 1, 1, 1).expand(n, 1, 28, 28) / n,
                        torch.arange(n) % 2, 2)
    model = build_model("lenet", 1, 2, 28)
    seen = []
    model.register_forward_pre_hook(
        lambda _, args: seen.append(sorted((args[0][:, 0, 0, 0] * n).round().long().tolist())))
    _, steps = train_dp(model, data, epochs=epochs, batch_size=batch_size, optimizer="sgd",
                        lr=0.1, momentum=0.0, weight_decay=0.0, noise_multiplier=1.0,
                        max_grad_norm=1.0, device=torch.device("cpu"), seed=123,
                        max_steps=max_steps)
    expected = [sorted(b.tolist()) for b in poisson_batches(n, batch_size, epochs, 123,
                                                            max_steps)]
    assert len(expected) == steps and seen == expected
    assert expected != [sorted(b.tolist()) for b in poisson_batches(n, batch_size, epochs, 124,
                                                                    max_steps)]


@pytest.mark.slow
def test_clients_report_cumulative_epsilon_in_a_real_simulation(tmp_path):
    import csv

    from fedisguise.experiment import run_experiment

    cfg = synthetic_config(tmp_path, **{"experiment.rounds": 3, "dp.mode": "dp-sgd",
                                        "dp.target_epsilon": 4.0, "train.optimizer": "sgd",
                                        "train.lr": 0.1})
    record = run_experiment(cfg)
    eps = [r["epsilon"] for r in record["rounds"]]
    assert 0 < eps[0] < eps[1] < eps[2] <= 4.0 + 0.1  # spent across rounds, within the target
    assert record["final"]["epsilon"] == eps[-1] and record["dp"]["delta"] == 1e-5
    with (tmp_path / "t" / "rounds.csv").open() as fh:
        assert [float(row["epsilon"]) for row in csv.DictReader(fh)] == pytest.approx(eps)


@pytest.mark.slow
def test_a_disguise_and_dp_sgd_combine(tmp_path):
    from fedisguise.experiment import run_experiment

    cfg = synthetic_config(tmp_path, **{"dp.mode": "dp-sgd", "dp.noise_multiplier": 1.0,
                                        "disguise": '{"name": "visualmixer"}',
                                        "privacy.examiner_epochs": 1})
    record = run_experiment(cfg)
    assert record["config"]["disguise"] == {"name": "visualmixer"}
    assert record["final"]["epsilon"] > 0
    assert 0 <= record["privacy"]["visual_privacy"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("side,clipping", [("server", "fixed"), ("client", "adaptive")])
def test_central_dp_wrappers_compose_with_the_observed_strategy(tmp_path, side, clipping):
    import json

    from fedisguise.experiment import run_experiment

    cfg = synthetic_config(tmp_path, **{"dp.mode": f"central-{side}", "dp.clipping": clipping,
                                        "dp.noise_multiplier": 0.5, "dp.clipping_norm": 0.5,
                                        "dp.clipped_count_stddev": 1.0})
    record = run_experiment(cfg)
    eps = [r["epsilon"] for r in record["rounds"]]
    assert 0 < eps[0] < eps[1]  # user-level ε grows with the rounds
    assert all(r["test_accuracy"] is not None for r in record["rounds"])
    ledger = json.loads((tmp_path / "t" / "updates.json").read_text())
    assert sorted(e["server_round"] for e in ledger) == [1, 1, 2, 2]  # the observer saw all
    altered = [e["sha256"] != e["client_sha256"] for e in ledger]
    # Server-side clipping happens after the observer; client-side clipping before sending.
    assert not any(altered) if side == "server" else all(altered)


def test_central_dp_config_is_checked():
    with pytest.raises(ConfigError, match="dp.clipping"):
        Config.from_dict({"dp": {"mode": "central-server", "clipping": "sometimes"}})
    with pytest.raises(ConfigError, match="clipped_count_stddev"):  # Flower's own check
        Config.from_dict({"dp": {"mode": "central-server", "clipping": "adaptive",
                                 "noise_multiplier": 0.5}})
    with pytest.raises(ConfigError, match="dp.clipping_norm"):
        Config.from_dict({"dp": {"mode": "central-client", "clipping_norm": 0.0}})


@pytest.mark.slow
def test_a_disguise_and_central_dp_combine(tmp_path):
    from fedisguise.experiment import run_experiment

    cfg = synthetic_config(tmp_path, **{"dp.mode": "central-server", "dp.noise_multiplier": 0.3,
                                        "dp.clipping_norm": 1.0,
                                        "disguise": '{"name": "block-permutation", '
                                                    '"block_size": 7}',
                                        "privacy.examiner_epochs": 1})
    record = run_experiment(cfg)
    assert record["config"]["dp"]["mode"] == "central-server"
    assert record["final"]["epsilon"] > 0
    assert 0 <= record["privacy"]["visual_privacy"] <= 1
