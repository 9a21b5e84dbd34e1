"""Clients disguise once per run (or per round when asked), under their own key."""

import torch
from flwr.app import Context, RecordDict

from fedisguise.client_app import _PREPARED, prepared_data
from fedisguise.disguise import DisguiseKey, build
from fedisguise.disguise.keys import node_key
from tests.conftest import synthetic_config


def _context(pid: int, clients: int = 2) -> Context:
    return Context(run_id=1, node_id=100 + pid, state=RecordDict(), run_config={},
                   node_config={"partition-id": pid, "num-partitions": clients})


def _cfg(tmp_path, **extra):
    return synthetic_config(tmp_path, **{
        "data.train_per_client": 64, "data.test_samples": 100,
        "disguise": '{"name": "disguisednets", "block_size": 7, "noise_level": 25}', **extra})


def test_disguised_once_and_reused_across_rounds(tmp_path):
    _PREPARED.clear()
    cfg = _cfg(tmp_path)
    first = prepared_data(cfg, _context(0), server_round=1)
    assert prepared_data(cfg, _context(0), server_round=2) is first
    assert first.test.images.shape == (50, 1, 28, 28)  # its shard of the 100 test images


def test_fresh_noise_each_round_only_when_asked(tmp_path):
    _PREPARED.clear()
    cfg = _cfg(tmp_path, **{"client.redisguise_each_round": True})
    r1 = prepared_data(cfg, _context(0), server_round=1)
    r2 = prepared_data(cfg, _context(0), server_round=2)
    assert not torch.equal(r1.train.images, r2.train.images)
    assert torch.equal(r1.test.images, r2.test.images)  # evaluation stays comparable
    _PREPARED.clear()
    again = prepared_data(cfg, _context(0), server_round=2)
    assert torch.equal(again.train.images, r2.train.images)  # reproducible per round


def test_key_scope_decides_whether_clients_share_a_disguise(tmp_path):
    spec = {"name": "disguisednets", "block_size": 7, "noise_level": 0.0}
    img = torch.rand(1, 1, 28, 28)

    def cfg(scope: str, key_file: str = ""):
        return _cfg(tmp_path, **{"client.key_scope": scope, "client.key_file": key_file})

    def disguised(scope: str, pid: int, key_file: str = "") -> torch.Tensor:
        return build(spec, node_key(cfg(scope, key_file), pid)).apply(img)[0]

    assert not torch.equal(disguised("per-client", 0), disguised("per-client", 1))
    assert torch.equal(disguised("federation", 0), disguised("federation", 1))
    key_file = str(DisguiseKey.generate().save(tmp_path / "fed.key"))
    assert not torch.equal(disguised("federation", 0, key_file), disguised("federation", 0))
    own = str(DisguiseKey.generate().save(tmp_path / "node.key"))  # a SuperNode's own key
    assert node_key(cfg("federation", key_file), 0, own) == DisguiseKey.load(own)
