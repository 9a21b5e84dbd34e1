"""One rule for a node's key and disguised data: the ClientApp, the attack suite's ground truth,
the privacy figures and the SuperNodes of a local deployment all use the key the node used."""

import json
import stat
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.common.config import parse_config_args

from fedisguise.attacks.suite import ground_truth
from fedisguise.data.partitions import server_test_set
from fedisguise.deployment import federation as deployment
from fedisguise.disguise import DisguiseKey, build
from fedisguise.disguise.keygen import main as keygen
from fedisguise.disguise.keys import (
    NODE_KEY_FILE,
    key_path,
    node_key,
    node_secret,
    secret_path,
    write_key_dir,
)
from fedisguise.fl.client_work import _PREPARED, prepared_data
from fedisguise.models import build_model
from fedisguise.node_data import node_data
from fedisguise.privacy import figures as privacy
from fedisguise.resolved import resolve
from tests.conftest import synthetic_config

SPEC = {"name": "disguisednets", "block_size": 7, "noise_level": 25}


def _cfg(tmp_path, **extra):
    return synthetic_config(tmp_path / "out", **{
        "data.train_per_client": 32, "data.test_samples": 40, "disguise": json.dumps(SPEC),
        **extra})


def _context(pid: int, clients: int = 2, **node) -> Context:
    return Context(run_id=1, node_id=100 + pid, state=RecordDict(), run_config={},
                   node_config={"partition-id": pid, "num-partitions": clients, **node})


def _disguised(key: DisguiseKey, secret: DisguiseKey, stream: str, images: torch.Tensor
               ) -> torch.Tensor:
    disguise = build(SPEC, key)
    disguise.reseed(stream, secret)
    return disguise.apply(images)[0]


def test_key_dir_client_app_ground_truth_and_privacy_use_the_nodes_key(tmp_path, monkeypatch):
    keys = write_key_dir(tmp_path / "keys", 2, seed="t")
    cfg = _cfg(tmp_path, **{"client.key_dir": str(tmp_path / "keys")})
    own = [DisguiseKey.load(k) for k in keys]
    derived = node_key(_cfg(tmp_path), 1)
    assert own[1] != derived  # so a derived-key copy would show

    _PREPARED.clear()
    trained = prepared_data(resolve(cfg), _context(1), server_round=1).train.images
    secret = node_secret(cfg, 1)  # the node wrote it beside its key file
    assert secret_path(keys[1], 1).is_file()
    truth = ground_truth(resolve(cfg), 1, 1)
    assert truth.disguise_key == own[1] and truth.disguise_secret == secret
    assert torch.equal(truth.train_disguised, trained)
    plain = truth.train_plain.images
    assert torch.equal(trained, _disguised(own[1], secret, "train", plain))
    assert not torch.equal(trained, _disguised(derived, secret, "train", plain))
    assert not torch.equal(trained, _disguised(own[1], own[1], "train", plain))

    shown = {}
    monkeypatch.setattr(privacy, "train_examiner",
                        lambda cfg, device: build_model("lenet", 1, 10, 28))
    monkeypatch.setattr(privacy, "write_grid",
                        lambda cfg, plain, disguised, run_dir: shown.setdefault("d", disguised))
    privacy.privacy_figures(resolve(cfg), {"final": {"plain_test_accuracy": 0.5}}, tmp_path)
    test = server_test_set("synthetic", "", 40, 0)
    assert torch.equal(shown["d"], _disguised(own[0], node_secret(cfg, 0), "privacy",
                                              test.images))


def test_a_supernodes_own_key_file_wins_over_the_config(tmp_path):
    write_key_dir(tmp_path / "keys", 2, seed="t")
    cfg = _cfg(tmp_path, **{"client.key_dir": str(tmp_path / "keys")})
    own = DisguiseKey.generate(9).save(tmp_path / "node.key")
    _PREPARED.clear()
    data = prepared_data(resolve(cfg), _context(0, **{NODE_KEY_FILE: str(own)}), server_round=1)
    assert node_key(cfg, 0, str(own)) == DisguiseKey.generate(9)
    with pytest.raises(FileNotFoundError, match="client-0.node-0.secret does not exist"):
        ground_truth(resolve(cfg), 1, 0)  # node 0 never drew from a secret beside the config's key
    plain = node_data(resolve(cfg), 0, 1, str(own)).plain.train.images
    secret = node_secret(cfg, 0, str(own))  # written beside the node's own key file
    assert secret_path(own, 0).is_file() and secret != node_secret(_cfg(tmp_path), 0)
    assert torch.equal(data.train.images, _disguised(DisguiseKey.generate(9), secret, "train",
                                                     plain))


@pytest.mark.parametrize("fast", [True, False])
def test_local_deployment_gives_each_supernode_its_key_file(tmp_path, monkeypatch, fast):
    write_key_dir(tmp_path / "keys", 3, seed="t")
    cfg = _cfg(tmp_path, **{"client.key_dir": str(tmp_path / "keys"), "experiment.clients": 3,
                            "experiment.mode": "deployment", "deployment.fast_nodes": fast})
    spawned = []

    class Process:
        args = ("fake",)
        pid = 0

        def poll(self):
            return None

    def spawn(self, args, log_name, node):  # record the command lines; start nothing
        spawned.append(args)
        return Process()

    monkeypatch.setattr(deployment.LocalFederation, "_spawn", spawn)
    monkeypatch.setattr("fedisguise.deployment.ports.await_listen", lambda *a, **k: True)
    monkeypatch.setattr(deployment, "submit_run", lambda *a, **k: None)
    deployment.run_deployment(cfg)
    launcher = "fedisguise.deployment.supernode.launcher"
    launched = [a for a in spawned if a[1:4] == ["-m", launcher, "supernode"]]
    stock = [a for a in spawned if Path(a[0]).name == "flower-supernode"]
    nodes = launched if fast else stock  # deployment.fast_nodes picks the launcher
    assert len(nodes) == 3 and len(launched + stock) == 3
    workers = [a for a in spawned if a[1:3] == ["-m", "fedisguise.deployment.supernode.worker"]]
    assert len(workers) == 3  # each node's warm worker starts beside its SuperNode
    for pid, args in enumerate(nodes):
        config = parse_config_args([args[args.index("--node-config") + 1]])
        assert config == {"partition-id": pid, "num-partitions": 3,
                          NODE_KEY_FILE: str(key_path(tmp_path / "keys", pid).resolve())}


def test_node_config_strings_survive_flowers_parser(tmp_path):
    federation = deployment.LocalFederation(
        2, tmp_path, key_files=[tmp_path / "a b" / "k.key", tmp_path / "it's" / "k.key"])
    for pid, expected in enumerate(["a b", "it's"]):
        config = parse_config_args([federation.node_config(pid)])
        assert config[NODE_KEY_FILE] == str(tmp_path / expected / "k.key")
    with pytest.raises(ValueError, match="one key file per SuperNode"):
        deployment.LocalFederation(2, tmp_path, key_files=[tmp_path / "k"])
    plain = deployment.LocalFederation(1, tmp_path).node_config(0)
    assert NODE_KEY_FILE not in plain  # no key dir: the config's key rules


def test_key_dir_writer_makes_private_distinct_keys_and_keeps_existing_ones(tmp_path, capsys):
    assert keygen(["--out", str(tmp_path / "k"), "--clients", "3"]) == 0
    paths = [key_path(tmp_path / "k", i) for i in range(3)]
    assert capsys.readouterr().out.split() == [str(p) for p in paths]
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in paths)
    keys = [DisguiseKey.load(p) for p in paths]
    assert len({k.secret_bytes("id").hex() for k in keys}) == 3
    assert keygen(["--out", str(tmp_path / "k"), "--clients", "3"]) == 2
    assert "exist already" in capsys.readouterr().err
    assert [DisguiseKey.load(p) for p in paths] == keys  # untouched
