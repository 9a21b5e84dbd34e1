"""A user's own `flwr run` (no run.py driver): the ServerApp refuses, in one line and before
training, what it cannot do, and otherwise adds the privacy figures and attacks itself."""

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fedisguise.config import DRIVER, DRIVER_KEY, Config
from fedisguise.deployment.federation import LocalFederation, flower_command
from fedisguise.deployment.submission import APP_DIR, CONNECTION
from fedisguise.fl.server_app import flwr_run_refusal, make_server_app
from tests.conftest import synthetic_config

ATTACK = {"name": "gradient_inversion", "round": 1, "client": 0, "iterations": 30}


def context(flat: dict) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=flat)


@pytest.mark.parametrize("changes, says", [
    ({"disguise": '{"name": "block-rmt", "block_size": 4}', "attacks": json.dumps([ATTACK])},
     "`flwr run` cannot run these attacks"),
    ({"disguise": '{"name": "transform-net"}'}, "`flwr run` cannot prepare disguise "
                                                "'transform-net'"),
])
def test_your_own_flwr_run_refuses_in_one_line_before_training(tmp_path, changes, says):
    flat = {**synthetic_config(tmp_path).to_flat(), **changes}
    # the grid is never touched: the refusal comes first
    with pytest.raises(RuntimeError, match=says) as raised:
        make_server_app()(None, context(flat))
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "t" / "metrics.json").exists()


def test_the_driver_marker_is_not_a_config_key(tmp_path):
    cfg = synthetic_config(tmp_path)
    assert Config.from_flat({**cfg.to_flat(), DRIVER_KEY: DRIVER}) == cfg
    assert flwr_run_refusal(cfg) is None  # plain, no attacks: everything can be done
    with_attack = cfg.with_overrides([f"attacks={json.dumps([ATTACK])}"])
    assert flwr_run_refusal(with_attack) is None  # no key: the server rebuilds the data


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="needs Debian's Fashion-MNIST (the attack's public images)")
def test_your_own_flwr_run_writes_what_run_py_writes(tmp_path, monkeypatch):
    """`flwr run <app> <connection> --run-config FILE`, as a user types it, against real
    SuperLink and SuperNode processes: the attack and the picture grid are in metrics.json,
    as run.py would put them. A refused config leaves no results, and `flwr run` still
    exits 0 (Flower's CLI does not report the run's end), so the README says to read the
    run's metrics.json."""
    root = Path(tempfile.mkdtemp(prefix="fr-", dir="/tmp"))  # a socket path stays short
    monkeypatch.setenv("FEDISGUISE_WORKER_DIR", str(root))
    cfg = synthetic_config(tmp_path, **{
        "experiment.mode": "deployment", "experiment.name": "own", "experiment.rounds": 1,
        "data.dataset": "fashion-mnist", "data.train_per_client": 64,
        "data.test_samples": 64, "privacy.examiner_samples": 500,
        "strategy.fraction_evaluate": 0.0, "attacks": json.dumps([ATTACK])})
    with LocalFederation.from_config(cfg, log_dir=tmp_path / "logs") as federation:
        def flwr_run(flat: dict) -> subprocess.CompletedProcess:
            config_file = tmp_path / "run-config.toml"
            config_file.write_text("".join(f'"{k}" = {json.dumps(v)}\n'
                                           for k, v in flat.items()))
            return subprocess.run([flower_command("flwr"), "run", str(APP_DIR), CONNECTION,
                                   "--run-config", str(config_file), "--stream"],
                                  env=federation.env, capture_output=True, text=True,
                                  timeout=300)

        ran = flwr_run(cfg.to_flat())
        assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
        record = json.loads((cfg.run_dir / "metrics.json").read_text())
        assert record["status"] == "finished", record.get("error")
        assert "gradient_inversion" in record["attacks"], ran.stdout[-3000:]
        attack = record["attacks"]["gradient_inversion"]
        assert attack.get("status", "ok") == "ok" and attack["psnr_vs_original"] > 0
        assert record["grid"] and set(record["timing"]) == {"training", "privacy", "attacks"}
        assert "gradient_inversion" in (cfg.run_dir / "summary.md").read_text()

        refused = cfg.with_overrides(["experiment.name=refused",
                                      'disguise={"name": "block-rmt", "block_size": 4}'])
        ran = flwr_run(refused.to_flat())
        assert ran.returncode == 0  # Flower's: the run's failure is in its status, not here
        assert "`flwr run` cannot run these attacks" in ran.stdout + ran.stderr
        assert not (tmp_path / "refused" / "metrics.json").exists()
