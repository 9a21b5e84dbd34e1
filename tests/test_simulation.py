"""A real Flower simulation (Ray actors) on Fashion-MNIST: accuracy improves, results land."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedisguise.config import Config, ConfigError
from fedisguise.experiment import run_experiment
from tests.conftest import DEBIAN_FMNIST

ROOT = Path(__file__).resolve().parents[1]

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


# ---- a Ray cluster that is already running (resources.ray_address, RAY_ADDRESS) -----------
def test_joining_a_ray_cluster_passes_only_its_address(monkeypatch):
    from fedisguise.experiment import ray_init_args

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    alone = ray_init_args(Config())
    assert alone["address"] == "local" and alone["num_cpus"] >= 1  # never someone else's Ray
    joined = Config().with_overrides(["resources.ray_address=10.0.0.5:6379"])
    assert ray_init_args(joined) == {"address": "10.0.0.5:6379"}  # Ray refuses num_cpus then
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert ray_init_args(Config()) == {"address": "auto"}
    assert ray_init_args(joined) == {"address": "10.0.0.5:6379"}  # the config wins
    for bad in ("10.0.0.5", "http://x:1", "a b:1"):
        with pytest.raises(ConfigError, match="resources.ray_address"):
            Config().with_overrides([f"resources.ray_address={bad}"])


@pytest.mark.slow
def test_a_run_joins_a_ray_head_started_apart_and_ships_the_package(tmp_path):
    """`ray start --head` on 127.0.0.1 (its own temp folder, so no other run joins it); a
    run with resources.ray_address trains on it, and the job ships fedisguise and strategies
    as py_modules for nodes that lack them."""
    import signal
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # Ray's socket paths stay short
    head = subprocess.Popen(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp}", "--block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(temp.glob("session_*/logs/gcs_server.out")):
            assert head.poll() is None and time.monotonic() < deadline, "the head did not start"
            time.sleep(1)
        out = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), "--config", str(ROOT / "configs" / "fedavg.toml"),
             "--set", "data.dataset=synthetic", "--set", "data.train_per_client=200",
             "--set", "train.optimizer=adam", "--set", "train.lr=0.003",
             "--clients", "2", "--rounds", "2", "--out", str(tmp_path),
             "--set", f"resources.ray_address=127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        record = json.loads((tmp_path / "fedavg" / "metrics.json").read_text())
        assert record["status"] == "finished"
        assert record["final"]["test_accuracy"] > 0.5
        shipped = list(temp.glob("session_*/runtime_resources/py_modules_files/_ray_pkg_*"))
        # fedisguise and strategies (session_latest links to the session: count names)
        assert len({p.name for p in shipped if p.is_dir()}) == 2
        assert list(temp.glob("session_*/logs/worker-*.out"))  # the head's workers trained
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block ends the head's processes with it
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def test_flowers_run_simulation_deprecation_is_said_once_a_process(monkeypatch):
    import logging

    from flwr.common.logger import warn_deprecated_feature

    from fedisguise.experiment import OnceDeprecated

    monkeypatch.setattr(OnceDeprecated, "said", False)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    flwr_log, keep, once = logging.getLogger("flwr"), Keep(), OnceDeprecated()
    # an earlier simulation in this process may have added its own: one filter at a time
    earlier = [f for f in flwr_log.filters if isinstance(f, OnceDeprecated)]
    for f in earlier:
        flwr_log.removeFilter(f)
    flwr_log.addHandler(keep)
    flwr_log.addFilter(once)
    try:
        for _ in range(3):
            warn_deprecated_feature("The `run_simulation` function is deprecated")
        warn_deprecated_feature("something else")
    finally:
        flwr_log.removeHandler(keep)
        flwr_log.removeFilter(once)
        for f in earlier:
            flwr_log.addFilter(f)
    assert [m.count("run_simulation") for m in seen] == [1, 0]
