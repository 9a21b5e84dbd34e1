"""Clients disguise once per run, per round or per batch (client.redisguise), under their own
key and their own secret's draws."""

import json

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from fedisguise.attacks.suite import ground_truth, trained_batches
from fedisguise.config import ConfigError
from fedisguise.disguise import DisguiseKey, build
from fedisguise.disguise.keys import node_key
from fedisguise.fl import client_work
from fedisguise.fl.client_work import _PREPARED, evaluate_reply, prepared_data, train_reply
from fedisguise.models import build_model
from fedisguise.node_data import node_batch_draws, node_data
from fedisguise.resolved import resolve
from fedisguise.training import training_order_seed
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
    first = prepared_data(resolve(cfg), _context(0), server_round=1)
    assert prepared_data(resolve(cfg), _context(0), server_round=2) is first
    assert first.test.images.shape == (50, 1, 28, 28)  # its shard of the 100 test images


def test_an_actor_serving_many_clients_keeps_them_all_where_they_fit(tmp_path, monkeypatch):
    # An actor serves its clients in turn each round: a cache bounded by count below their
    # number missed on every call (each client's data disguised again each round).
    _PREPARED.clear()
    cfg = _cfg(tmp_path, **{"experiment.clients": 12})
    first = [prepared_data(resolve(cfg), _context(i, 12), server_round=1) for i in range(12)]
    again = [prepared_data(resolve(cfg), _context(i, 12), server_round=2) for i in range(12)]
    assert all(a is b for a, b in zip(first, again, strict=True))
    # Bounded by bytes: past the bound the least recent go, the newest always stays.
    one = client_work._nbytes(first[0])
    monkeypatch.setattr(client_work, "PREPARED_MAX_BYTES", 3 * one)
    newest = prepared_data(resolve(cfg), _context(0, 12), server_round=3)
    assert newest is first[0] and len(_PREPARED) == 12  # a hit evicts nothing
    _PREPARED.clear()
    monkeypatch.setattr(client_work, "PREPARED_MAX_BYTES", 0)
    kept = [prepared_data(resolve(cfg), _context(i, 12), server_round=1) for i in range(3)]
    assert list(_PREPARED.values()) == [kept[-1]]


def test_fresh_noise_each_round_only_when_asked(tmp_path):
    _PREPARED.clear()
    cfg = _cfg(tmp_path, **{"client.redisguise": "round"})
    r1 = prepared_data(resolve(cfg), _context(0), server_round=1)
    r2 = prepared_data(resolve(cfg), _context(0), server_round=2)
    assert not torch.equal(r1.train.images, r2.train.images)
    assert torch.equal(r1.test.images, r2.test.images)  # evaluation stays comparable
    _PREPARED.clear()
    again = prepared_data(resolve(cfg), _context(0), server_round=2)
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
    before = prepared_data(resolve(cfg), _context(0), server_round=1)
    assert prepared_data(resolve(cfg), _context(0), server_round=2) is before  # cached
    DisguiseKey.generate(seed="two").save(key_file)  # same path, new key
    after = prepared_data(resolve(cfg), _context(0), server_round=2)
    assert after is not before and not torch.equal(after.train.images, before.train.images)
    # exactly what the node's data is under the new key (fedisguise.node_data's rule)
    assert torch.equal(after.train.images, node_data(resolve(cfg), 0, 2).train.images)
    material = DisguiseKey.load(key_file)._material
    for entry_key, entry in _PREPARED.items():
        assert not any(isinstance(part, DisguiseKey) or part == material
                       or part == material.hex() for part in entry_key)
        for split in (entry.train, entry.test, entry.validation):
            assert split is None or set(vars(split)) == {"images", "labels", "num_classes",
                                                          "classes"}
    with pytest.raises(FileNotFoundError, match="disguise key file not found"):
        key_file.unlink()
        # a missing key is an error, not stale
        prepared_data(resolve(cfg), _context(0), server_round=3)


def test_the_cache_notices_a_replaced_dataset_file(tmp_path):
    _PREPARED.clear()
    folder = tmp_path / "fmnist"
    folder.mkdir()
    _write_fmnist(folder, seed=1)
    cfg = synthetic_config(tmp_path, **{"data.dataset": "fashion-mnist",
                                        "data.data_dir": str(folder)})
    before = prepared_data(resolve(cfg), _context(0), server_round=1)
    assert prepared_data(resolve(cfg), _context(0), server_round=2) is before
    _write_fmnist(folder, seed=2)  # new pixels, same file names
    # the files are walked once a round: the round goes on with the data it started with
    assert prepared_data(resolve(cfg), _context(0), server_round=2) is before
    after = prepared_data(resolve(cfg), _context(0), server_round=3)
    assert not torch.equal(after.train.images, before.train.images)


def test_redisguise_each_round_is_a_deprecated_alias_of_round(tmp_path):
    with pytest.warns(FutureWarning, match='client.redisguise = "round"'):
        cfg = _cfg(tmp_path, **{"client.redisguise_each_round": True})
    assert (cfg.client.redisguise, cfg.client.redisguise_each_round) == ("round", False)
    with pytest.raises(ConfigError, match="contradicts client.redisguise = 'batch'"):
        _cfg(tmp_path, **{"client.redisguise_each_round": True, "client.redisguise": "batch"})
    with pytest.raises(ConfigError, match="unknown client.redisguise 'epoch'"):
        _cfg(tmp_path, **{"client.redisguise": "epoch"})
    for spec in ('"aes"', '{"name": "block-permutation", "block_size": 4}'):
        with pytest.raises(ConfigError, match="nothing to draw afresh"):
            _cfg(tmp_path, **{"client.redisguise": "batch", "disguise": spec})


def _message(cfg, server_round: int) -> RecordDict:
    torch.manual_seed(0)
    model = build_model(cfg.model.name, 1, 10, 28)
    return RecordDict({"arrays": ArrayRecord(model.state_dict()),
                       "config": ConfigRecord({"server-round": server_round})})


def _recording(monkeypatch, name: str, module=client_work) -> list:
    """Every batch the client's model sees in `<module>.<name>` (train_local, evaluate,
    fedisguise.privacy.dp.train_dp)."""
    seen, real = [], getattr(module, name)

    def wrapped(*args, batch_transform=None, **kwargs):
        def record(images, labels, batches, first):
            out = batch_transform(images, labels, batches, first)
            seen.extend(out)
            return out
        return real(*args, batch_transform=batch_transform and record, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return seen


@pytest.mark.parametrize("spec", [{"name": "disguisednets", "block_size": 7, "noise_level": 25},
                                  {"name": "instahide", "k": 2}])
def test_batch_mode_draws_every_batch_afresh_and_the_attack_suite_replays_it(
        tmp_path, monkeypatch, spec):
    _PREPARED.clear()
    cfg = _cfg(tmp_path, **{"client.redisguise": "batch", "disguise": json.dumps(spec),
                            "train.batch_size": 16, "train.local_epochs": 2})
    run = resolve(cfg)  # nothing disguised ahead:
    assert torch.equal(prepared_data(run, _context(0), 1).train.images,
                       node_data(run, 0, 1).plain.train.images)
    seen = _recording(monkeypatch, "train_local")
    train_reply(_message(cfg, 1), _context(0), resolve(cfg))
    assert len(seen) == 8  # 64 images, batches of 16, two epochs
    # each epoch holds every image once: epoch two shows them again under other draws
    first = torch.cat([x for x, _ in seen[:4]])
    assert not any(torch.equal(a, b) for a in first for b in seen[4][0])
    truth = ground_truth(resolve(cfg), 1, 0)
    assert torch.equal(truth.batch_index, torch.arange(64))  # two whole epochs
    # every image as the client first trained on it, exactly
    calls = trained_batches(cfg, 64, training_order_seed(0, 1, 0))
    assert [len(batches) for batches in calls] == [4, 4]  # one call per epoch
    for (x, _), idx in zip(seen[:4], calls[0]):
        assert torch.equal(truth.train_disguised[idx], x)
    # a new round draws anew
    train_reply(_message(cfg, 2), _context(0), resolve(cfg))
    assert not torch.equal(seen[8][0], seen[0][0])


def test_batch_mode_evaluates_on_freshly_disguised_test_batches(tmp_path, monkeypatch):
    _PREPARED.clear()
    spec = {"name": "visualmixer-uniform", "window": 4}
    cfg = _cfg(tmp_path, **{"client.redisguise": "batch", "disguise": json.dumps(spec),
                            "train.batch_size": 10})
    seen = _recording(monkeypatch, "evaluate")
    reply = evaluate_reply(_message(cfg, 1), _context(0), resolve(cfg))
    assert reply["metrics"]["num-examples"] == 50
    assert [len(x) for x, _ in seen] == [10] * 5  # the training batch size, as the authors
    plain = node_data(resolve(cfg), 0, 1).plain.test.images
    assert not torch.equal(seen[0][0], plain[:10])
    replay = node_batch_draws(resolve(cfg), 0).evaluation("test", 1)
    labels = node_data(resolve(cfg), 0, 1).plain.test.labels
    batches = list(torch.arange(50).split(10))
    assert torch.equal(replay(plain, labels, batches, 0)[0][0], seen[0][0])  # its own draws
    evaluate_reply(_message(cfg, 2), _context(0), resolve(cfg))
    assert not torch.equal(seen[5][0], seen[0][0])  # another round, other draws


@pytest.mark.parametrize("dp", ["none", "dp-sgd"])
def test_batch_mode_ground_truth_of_a_few_steps_is_the_batches_the_client_drew(
        tmp_path, monkeypatch, dp):
    _PREPARED.clear()
    cfg = _cfg(tmp_path, **{"client.redisguise": "batch", "train.batch_size": 16,
                            "train.local_steps": 2, "dp.mode": dp, "train.optimizer": "sgd",
                            "train.lr": 0.01})
    if dp == "dp-sgd":  # the DP round imports train_dp when it runs: record it at its source
        from fedisguise.privacy import dp as dp_module

        seen = _recording(monkeypatch, "train_dp", dp_module)
    else:
        seen = _recording(monkeypatch, "train_local")
    train_reply(_message(cfg, 3), _context(1), resolve(cfg))
    assert len(seen) == 2
    truth = ground_truth(resolve(cfg), 3, 1)
    first, second = (x for x, _ in seen)
    assert torch.equal(truth.batch_disguised, truth.train_disguised[truth.batch_index])
    rows = {tuple(r.flatten().tolist()) for r in torch.cat([first, second])}
    assert all(tuple(r.flatten().tolist()) in rows for r in truth.batch_disguised)
    # the images no step drew are disguised too (Level-2 pairs come from them), not plain
    rest = torch.ones(64, dtype=torch.bool)
    rest[truth.batch_index] = False
    plain = truth.train_plain.images
    assert rest.any() and not torch.equal(truth.train_disguised[rest], plain[rest])
