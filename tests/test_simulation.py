"""A real Flower simulation (Ray actors) on Fashion-MNIST: accuracy improves, results land."""

import csv
import json
import os

import pytest

from fedisguise.config import Config
from fedisguise.experiment import run_experiment
from tests.conftest import DEBIAN_FMNIST

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not os.path.exists(DEBIAN_FMNIST), reason="dataset-fashion-mnist not installed")
def test_simulation_improves_accuracy_and_writes_results(tmp_path):
    cfg = Config().with_overrides([
        f"experiment.out={tmp_path}", "experiment.name=sim", "experiment.rounds=3",
        "experiment.clients=3", "data.train_per_client=2000", "data.test_samples=1000",
        "data.validation=0.1",
    ])
    record = run_experiment(cfg)
    rounds = record["rounds"]
    # The clients score the global model on the 10% of their images they did not train on.
    assert all(0.3 < r["validation_accuracy"] <= 1.0 for r in rounds)
    assert record["final"]["validation_accuracy"] == rounds[-1]["validation_accuracy"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    accuracies = [record["initial"]["plain_test_accuracy"]] + [r["test_accuracy"] for r in rounds]
    assert accuracies[-1] > accuracies[1] > accuracies[0]
    assert accuracies[-1] > 0.5  # chance is 0.1
    assert record["final"]["test_accuracy"] == rounds[-1]["test_accuracy"]
    for r in rounds:  # no disguise: the clients' shards together are the server's test set
        assert r["test_accuracy"] == pytest.approx(r["plain_test_accuracy"], abs=1e-9)
    for r in rounds:
        assert r["clients"] == [0, 1, 2]
        assert r["bytes_up"] > 0 and r["bytes_down"] >= r["bytes_up"]
        assert r["round_seconds"] > 0 and r["train_loss"] > 0
    assert record["config"]["experiment"]["rounds"] == 3 and record["mode"] == "simulation"

    run_dir = tmp_path / "sim"
    ledger = json.loads((run_dir / "updates.json").read_text())
    assert len(ledger) == 9
    # What the server received is bit-identical to what each client says it sent.
    assert all(e["sha256"] == e["client_sha256"] for e in ledger)
    with (run_dir / "rounds.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["test_accuracy"]) for r in rows] == accuracies[1:]
    summary = (run_dir / "summary.md").read_text()
    assert "Final test accuracy" in summary
    # Even a plain run shows its images: `none` applied through the disguise interface.
    assert record["grid"] == "images/plain_vs_disguised.png" and not record["privacy"]
    assert (run_dir / record["grid"]).stat().st_size > 0 and f"]({record['grid']})" in summary
