"""Clients disguise once per run (or per round when asked), under their own key."""

import pytest
import torch
from flwr.app import Context, RecordDict

from fedisguise.client_work import _PREPARED, prepared_data
from fedisguise.disguise import DisguiseKey, build
from fedisguise.disguise.keys import node_key
from fedisguise.node_data import node_data
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


def _write_fmnist(folder, seed: int, n: int = 40) -> None:
    """A tiny Fashion-MNIST in IDX form (train and test), its pixels drawn from `seed`."""
    import gzip

    import numpy as np

    rng = np.random.default_rng(seed)
    for split, stem in (("train", "train"), ("test", "t10k")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(
                d.to_bytes(4, "big") for d in array.shape)
            with gzip.open(folder / f"{stem}-{kind}-ubyte.gz", "wb") as fh:
                fh.write(header + array.tobytes())


def test_the_cache_notices_a_key_file_rewritten_in_place_and_holds_no_key(tmp_path):
    """A long-lived worker must not serve data disguised under a key that was replaced, and
    what it keeps is disguised tensors, never the key."""
    _PREPARED.clear()
    key_file = tmp_path / "federation.key"
    DisguiseKey.generate(seed="one").save(key_file)
    cfg = _cfg(tmp_path, **{"client.key_file": str(key_file),
                            "disguise": '{"name": "block-permutation", "block_size": 7}'})
    before = prepared_data(cfg, _context(0), server_round=1)
    assert prepared_data(cfg, _context(0), server_round=2) is before  # cached
    DisguiseKey.generate(seed="two").save(key_file)  # same path, new key
    after = prepared_data(cfg, _context(0), server_round=2)
    assert after is not before and not torch.equal(after.train.images, before.train.images)
    # exactly what the node's data is under the new key (fedisguise.node_data's rule)
    assert torch.equal(after.train.images, node_data(cfg, 0, 2).train.images)
    material = DisguiseKey.load(key_file)._material
    for entry_key, entry in _PREPARED.items():
        assert not any(isinstance(part, DisguiseKey) or part == material
                       or part == material.hex() for part in entry_key)
        for split in (entry.train, entry.test, entry.validation):
            assert split is None or set(vars(split)) == {"images", "labels", "num_classes"}
    with pytest.raises(FileNotFoundError, match="disguise key file not found"):
        key_file.unlink()
        prepared_data(cfg, _context(0), server_round=3)  # a missing key is an error, not stale


def test_the_cache_notices_a_replaced_dataset_file(tmp_path):
    _PREPARED.clear()
    folder = tmp_path / "fmnist"
    folder.mkdir()
    _write_fmnist(folder, seed=1)
    cfg = synthetic_config(tmp_path, **{"data.dataset": "fashion-mnist",
                                        "data.data_dir": str(folder)})
    before = prepared_data(cfg, _context(0), server_round=1)
    assert prepared_data(cfg, _context(0), server_round=2) is before
    _write_fmnist(folder, seed=2)  # new pixels, same file names
    after = prepared_data(cfg, _context(0), server_round=2)
    assert not torch.equal(after.train.images, before.train.images)
