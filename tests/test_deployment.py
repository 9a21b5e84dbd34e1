"""Real `flower-superlink` / `flower-supernode` processes on loopback, and their clean-up."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedisguise.deployment import LocalFederation
from fedisguise.experiment import run_experiment
from tests.conftest import synthetic_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def federation_processes(node: str | None = None) -> list[int]:
    """Live processes started by any LocalFederation (they carry its FLWR_HOME), or by one of
    its nodes only (`superlink`, `supernode-<i>`: the marker their environment carries)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"FLWR_HOME=" in environ and b"fedisguise-flwr-" in environ and state != "Z" and (
                node is None or f"FEDISGUISE_NODE={node}".encode() in environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def test_two_supernodes_both_contribute_and_nothing_is_left_behind(tmp_path):
    assert federation_processes() == []
    cfg = synthetic_config(tmp_path, **{"experiment.mode": "deployment",
                                        "experiment.name": "dep",
                                        "data.train_per_client": 300})
    record = run_experiment(cfg)
    assert record["mode"] == "deployment"
    ledger = json.loads((tmp_path / "dep" / "updates.json").read_text())
    by_round = {}
    for entry in ledger:
        by_round.setdefault(entry["server_round"], []).append(entry)
    assert sorted(by_round) == [1, 2]
    for entries in by_round.values():
        assert sorted(e["partition_id"] for e in entries) == [0, 1]
        assert len({e["node_id"] for e in entries}) == 2  # two distinct SuperNodes
        assert all(e["sha256"] == e["client_sha256"] for e in entries)
    assert record["final"]["test_accuracy"] > record["initial"]["plain_test_accuracy"]
    assert (tmp_path / "dep" / "logs" / "supernode-1.log").is_file()
    assert federation_processes() == []


def test_federation_ends_its_processes_when_the_body_fails(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with LocalFederation(1, log_dir=tmp_path) as federation:
            time.sleep(2)  # let the SuperNode start its helpers
            assert len(federation.pids()) >= 2
            raise RuntimeError("boom")
    assert federation_processes() == []
    assert not federation.flwr_home.exists()


def start_run(tmp_path, name: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "run.py"), "--mode", "deployment",
               "--out", str(tmp_path), "--set", "data.dataset=synthetic",
               "--set", f"experiment.name={name}", *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout:.0f} s")


def test_ctrl_c_ends_every_process_and_keeps_the_run_marked(tmp_path):
    proc = start_run(tmp_path, "interrupted", "--clients", "2", "--rounds", "50")
    wait_for(lambda: len(federation_processes()) >= 4, 90, "the federation came up")
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    assert proc.wait(timeout=30) == 130
    assert time.monotonic() - sent < 15
    time.sleep(1)
    assert federation_processes() == []
    record = json.loads((tmp_path / "interrupted" / "metrics.json").read_text())
    assert record["status"] == "interrupted"
    assert (tmp_path / "interrupted" / "logs" / "superlink.log").is_file()


def test_sigkill_of_run_py_takes_every_flower_process_with_it(tmp_path):
    proc = start_run(tmp_path, "killed", "--clients", "2", "--rounds", "50")
    wait_for(lambda: len(federation_processes()) >= 4, 90, "the federation came up")
    time.sleep(3)
    assert federation_processes()
    proc.kill()
    proc.wait(timeout=10)
    wait_for(lambda: federation_processes() == [], 15, "every Flower process ended")


def test_a_dead_supernode_is_recorded_and_the_others_finish_the_run(tmp_path):
    proc = start_run(tmp_path, "dead", "--clients", "3", "--rounds", "2",
                     "--set", "data.train_per_client=200", "--set", "data.test_samples=300")
    metrics = tmp_path / "dead" / "metrics.json"

    def rounds_done() -> int:
        try:
            return len(json.loads(metrics.read_text())["rounds"])
        except (OSError, ValueError, KeyError):
            return 0

    wait_for(lambda: rounds_done() >= 1, 240, "round 1 finished")
    victim = federation_processes("supernode-2")
    assert victim, "SuperNode 2 was not running"
    supernode = min(victim)  # the SuperNode itself started before its helpers
    os.kill(supernode, signal.SIGKILL)
    wait_for(lambda: federation_processes("supernode-2") == [], 15,
             "the dead SuperNode's helpers ended")
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-2000:]
    record = json.loads(metrics.read_text())
    assert record["status"] == "finished"
    assert record["rounds"][0]["clients"] == [0, 1, 2]
    assert record["rounds"][1]["clients"] == [0, 1]
    assert [(f["server_round"], f["partition_id"]) for f in record["failures"]] == [(2, 2)]
    assert "client 2" in err
    assert federation_processes() == []
