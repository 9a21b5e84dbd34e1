"""Faulty clients on purpose (issue 37, point 2): a `faults` entry makes a chosen client
corrupt its train reply; the server refuses it, records the client and the reason, and the
run goes on with the others, in simulation and in a local deployment."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from fedisguise.config import Config, ConfigError
from fedisguise.experiment import run_experiment
from fedisguise.faults import corrupt, describe, fault_for
from fedisguise.models import build_model
from tests.conftest import DEBIAN_FMNIST, synthetic_config

ROOT = Path(__file__).resolve().parents[1]


def state() -> dict:
    torch.manual_seed(0)
    return build_model("lenet", 1, 10, 28).state_dict()


def test_each_fault_corrupts_what_it_names_and_nothing_else():
    honest = state()
    nan, _ = corrupt({"reply": "nan"}, honest, 250)
    assert torch.isnan(nan["features.0.weight"]).all()
    assert all(torch.equal(nan[k], honest[k]) for k in honest if k != "features.0.weight")
    scaled, n = corrupt({"reply": "scale", "factor": -3.0}, honest, 250)
    assert n == 250 and all(torch.equal(scaled[k], -3.0 * honest[k]) for k in honest)
    shaped, _ = corrupt({"reply": "shape"}, honest, 250)
    assert shaped["features.0.weight"].shape == (1,)
    counted, n = corrupt({"reply": "num-examples", "value": 1e12}, honest, 250)
    assert n == 1e12 and all(torch.equal(counted[k], honest[k]) for k in honest)
    assert honest["features.0.weight"].shape == (6, 1, 5, 5)  # the caller's state untouched


def test_a_fault_starts_at_its_round_and_only_for_its_client():
    faults = Config().with_overrides(
        ["experiment.clients=3", "experiment.rounds=4",
         'faults=[{"client": 2, "reply": "scale", "factor": 10, "from_round": 3}]']).faults
    assert [fault_for(faults, 2, r) is not None for r in (1, 2, 3, 4)] == [0, 0, 1, 1]
    assert fault_for(faults, 1, 4) is None
    assert describe(faults[0]) == "client 2: scale factor=10 from round 3"


def test_faults_travel_through_flowers_run_config():
    cfg = Config().with_overrides(["experiment.clients=3",
                                   'faults=[{"client": 1, "reply": "shape"}]'])
    flat = cfg.to_flat()
    assert json.loads(flat["faults"]) == [{"client": 1, "reply": "shape", "from_round": 1}]
    assert Config.from_flat(flat).faults == cfg.faults


@pytest.mark.parametrize("faults, message", [
    ('[{"client": 3, "reply": "nan"}]', r"faults\[0\].client = 3; expected in \[0, "),
    ('[{"client": 0, "reply": "flip"}]', r"faults\[0\].reply = 'flip'; valid choices"),
    ('[{"client": 0, "reply": "scale"}]', r"reply 'scale' needs \['factor'\]"),
    ('[{"client": 0, "reply": "scale", "factor": "big"}]', "factor must be a finite number"),
    ('[{"client": 0, "reply": "nan", "factor": 2}]', r"unknown key\(s\) \['factor'\]"),
    ('[{"client": 0, "reply": "nan", "from_round": 9}]', r"from_round = 9; expected in"),
    ('[{"client": 0, "reply": "nan"}, {"client": 0, "reply": "shape"}]',
     "client 0 already has a fault"),
    ('[{"reply": "nan"}]', "must be a table with 'client' and 'reply'"),
    ('{"client": 0}', "faults must be a list of tables"),
])
def test_a_bad_faults_entry_is_a_config_error(faults, message):
    with pytest.raises(ConfigError, match=message):
        Config().with_overrides(["experiment.clients=3", f"faults={faults}"])


def test_a_scale_fault_is_refused_by_no_check_but_recorded_as_faulty(tmp_path):
    """Scaled weights are finite and well-shaped: the reply checks pass them, FedAvg takes
    them (tests/test_robust_strategies.py), and the record says the client was faulty."""
    cfg = synthetic_config(tmp_path, **{"data.train_per_client": 64,
                                        "faults": '[{"client": 1, "reply": "scale", '
                                                  '"factor": 1.5, "from_round": 2}]'})
    record = run_experiment(cfg)
    assert record["faulty_clients"] == ["client 1: scale factor=1.5 from round 2"]
    # where the run's time went, for a grid to add up
    assert set(record["timing"]) == {"training", "privacy", "attacks"}
    assert record["timing"]["training"] > 1 and record["timing"]["attacks"] < 1
    assert record["failures"] == []
    assert [r["clients"] for r in record["rounds"]] == [[0, 1], [0, 1]]
    summary = (tmp_path / "t" / "summary.md").read_text()
    assert "Faulty on purpose (config `faults`): client 1: scale factor=1.5 from round 2." \
        in summary


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(DEBIAN_FMNIST), reason="dataset-fashion-mnist not installed")
def test_the_issues_nan_client_command_exits_0_and_names_client_2(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "--config", "configs/smoke.toml", "--clients",
         "3", "--rounds", "2", "--out", str(tmp_path),
         "--set", 'faults=[{"client": 2, "reply": "nan"}]'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "smoke" / "metrics.json").read_text())
    assert 0.3 < record["final"]["test_accuracy"] <= 1  # finite, and trained
    assert not record["diverged"]
    assert [(f["server_round"], f["partition_id"], f["error"]) for f in record["failures"]] == [
        (r, 2, "reply refused: non-finite values in features.0.weight") for r in (1, 2)]
    assert [r["clients"] for r in record["rounds"]] == [[0, 1], [0, 1]]
    assert record["faulty_clients"] == ["client 2: nan from round 1"]
    assert "round 1: client 2 (node" in done.stderr


@pytest.mark.slow
def test_a_local_deployment_refuses_a_faulty_nodes_reply_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", tempfile.mkdtemp(prefix="fw-", dir="/tmp"))
    cfg = synthetic_config(tmp_path, **{
        "experiment.mode": "deployment", "experiment.name": "dep", "data.train_per_client": 200,
        "strategy.fraction_evaluate": 0.0,
        "faults": '[{"client": 1, "reply": "num-examples", "value": 1e12, "from_round": 2}]'})
    record = run_experiment(cfg)
    assert record["status"] == "finished" and record["mode"] == "deployment"
    assert [r["clients"] for r in record["rounds"]] == [[0, 1], [0]]
    assert [(f["server_round"], f["partition_id"], f["error"]) for f in record["failures"]] == [
        (2, 1, "reply refused: num-examples 1e+12 > 200")]
    assert record["final"]["test_accuracy"] > record["initial"]["plain_test_accuracy"]


def test_the_report_names_a_cells_faulty_clients(tmp_path):
    from fedisguise.grids.report import write_report

    config = Config().with_overrides(["experiment.clients=3", 'faults=[{"client": 1, "reply": '
                                      '"num-examples", "value": 1e12}]']).to_dict()
    page = write_report(tmp_path, "g", "| a |\n|---|\n| 1 |\n",
                        [("cell", tmp_path / "cell", config)]).read_text()
    assert "Faulty on purpose: client 1: num-examples value=1e+12 from round 1" in page
    clean = write_report(tmp_path, "g", "| a |\n|---|\n| 1 |\n",
                         [("cell", tmp_path / "cell", Config().to_dict())]).read_text()
    assert "Faulty on purpose" not in clean
