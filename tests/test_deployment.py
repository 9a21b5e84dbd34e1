"""Real `flower-superlink` / `flower-supernode` processes on loopback, and their clean-up."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedisguise.deployment import (
    FLOWER_COMMANDS,
    LocalFederation,
    child_env,
    flower_command,
)
from fedisguise.experiment import run_experiment
from tests.conftest import synthetic_config

ROOT = Path(__file__).resolve().parents[1]


def federation_processes() -> list[int]:
    """Live processes started by any LocalFederation (they carry its FLWR_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"FLWR_HOME=" in environ and b"fedisguise-flwr-" in environ and state != "Z":
            found.append(int(entry.name))
    return found


def test_flower_commands_resolve_next_to_the_interpreter_without_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an unactivated virtualenv: its bin/ is off PATH
    for name in FLOWER_COMMANDS:
        path = Path(flower_command(name))
        assert path.is_absolute() and path.is_file(), name
        assert path.parent == Path(sys.executable).parent
    # The helpers the SuperLink/SuperNode start by name must come from the same bin/.
    assert child_env(tmp_path)["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_a_missing_flower_command_names_what_was_looked_for(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"`flower-nonesuch` is neither in .* nor on PATH"):
        flower_command("flower-nonesuch")


@pytest.mark.slow
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


@pytest.mark.slow
def test_federation_ends_its_processes_when_the_body_fails(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with LocalFederation(1, log_dir=tmp_path) as federation:
            time.sleep(2)  # let the SuperNode start its helpers
            assert len(federation.pids()) >= 2
            raise RuntimeError("boom")
    assert federation_processes() == []
    assert not federation.flwr_home.exists()


@pytest.mark.slow
def test_ctrl_c_ends_every_process(tmp_path):
    command = [sys.executable, str(ROOT / "run.py"), "--mode", "deployment", "--clients", "2",
               "--out", str(tmp_path), "--set", "data.dataset=synthetic",
               "--set", "experiment.name=interrupted", "--rounds", "50"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    logs = tmp_path / "interrupted" / "logs"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(federation_processes()) < 4:
        time.sleep(0.5)
    assert len(federation_processes()) >= 4, "the federation never came up"
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0
    time.sleep(1)
    assert federation_processes() == []
    assert (logs / "superlink.log").is_file()
