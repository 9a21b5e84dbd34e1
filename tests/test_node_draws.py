"""Under a federation key every node still draws its own random numbers, from a secret no other
node and not the server can recompute; the shared key fixes the keyed transform alone."""

import json
import stat

import pytest
import torch

from fedisguise.attacks.suite import ground_truth
from fedisguise.disguise import DisguiseKey, build
from fedisguise.disguise.keys import (
    SECRET_MAGIC,
    load_or_create_secret,
    node_key,
    node_secret,
    secret_path,
)
from fedisguise.fl.client_work import _PREPARED, prepared_data
from fedisguise.node_data import node_disguise
from fedisguise.resolved import resolve
from tests.conftest import synthetic_config
from tests.test_node_data import _context

NETS = {"name": "disguisednets", "block_size": 7, "noise_level": 100.0}
IMAGES = torch.rand(60, 1, 28, 28, generator=torch.Generator().manual_seed(5))


def _cfg(tmp_path, spec, **extra):
    return synthetic_config(tmp_path / "out", **{
        "client.key_scope": "federation", "data.train_per_client": 40,
        "data.test_samples": 40, "disguise": json.dumps(spec), **extra})


def _federation_file(tmp_path, spec):
    key_file = DisguiseKey.generate().save(tmp_path / "keys" / "federation.key")
    return _cfg(tmp_path, spec, **{"client.key_file": str(key_file)}), key_file


def _noise(cfg, node: int) -> torch.Tensor:
    """Node `node`'s Δ on IMAGES: its disguise minus the same keyed transform without noise."""
    noisy, key = node_disguise(resolve(cfg), node, "train", is_node=True)
    quiet = build({**NETS, "noise_level": 0.0}, key)
    return noisy.apply(IMAGES)[0] - quiet.apply(IMAGES)[0]


@pytest.mark.parametrize("source", ["derived", "file"])
def test_two_nodes_under_one_federation_key_draw_uncorrelated_noise(tmp_path, source):
    cfg = _cfg(tmp_path, NETS) if source == "derived" else _federation_file(tmp_path, NETS)[0]
    assert node_key(cfg, 0) == node_key(cfg, 1)  # one federation key
    a, b = _noise(cfg, 0), _noise(cfg, 1)
    assert a.min() >= 0 and a.max() <= 100 / 255  # both are U[0, N] noise...
    r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
    assert abs(r) <= 0.05  # ...that does not cancel between nodes (it was exactly equal)
    assert torch.equal(a, _noise(cfg, 0))  # and each node's is reproducible


def test_the_keyed_transform_stays_the_federations(tmp_path):
    cfg, _ = _federation_file(tmp_path, {**NETS, "noise_level": 0.0})
    nodes = [node_disguise(resolve(cfg), node, "train", is_node=True)[0] for node in (0, 1)]
    assert torch.equal(nodes[0].block_permutation(16), nodes[1].block_permutation(16))
    assert torch.equal(nodes[0]._block_matrices(16, torch.device("cpu")),
                       nodes[1]._block_matrices(16, torch.device("cpu")))
    assert torch.equal(nodes[0].apply(IMAGES)[0], nodes[1].apply(IMAGES)[0])


def test_instahide_nodes_draw_their_own_masks_weights_and_partners(tmp_path):
    cfg = _cfg(tmp_path, {"name": "instahide", "k": 4})
    ones, labels = torch.ones(60, 1, 28, 28), torch.arange(60) % 10
    # All-ones images mix to 1 whatever the weights: the output is the sign mask σ itself.
    out = [node_disguise(resolve(cfg), node, "train", is_node=True)[0].apply(ones, labels)
           for node in (0, 1)]
    assert torch.allclose(out[0][0].abs(), ones)
    agree = (out[0][0].sign() == out[1][0].sign()).float().mean().item()
    assert 0.48 <= agree <= 0.52
    # Soft labels are Σ λ_j·onehot(y_j): another node's weights and partners differ.
    assert not torch.allclose(out[0][1], out[1][1])


def test_the_attack_suite_rebuilds_each_nodes_data_from_its_secret(tmp_path):
    cfg, key_file = _federation_file(tmp_path, NETS)
    _PREPARED.clear()
    trained = [prepared_data(resolve(cfg), _context(node), server_round=1).train.images
               for node in (0, 1)]
    for node in (0, 1):
        truth = ground_truth(resolve(cfg), 1, node)
        assert torch.equal(truth.train_disguised, trained[node])
        assert truth.disguise_secret == node_secret(cfg, node)
    assert node_secret(cfg, 0) != node_secret(cfg, 1)


def test_a_node_writes_its_secret_once_0600_beside_its_key_and_only_the_node_does(tmp_path):
    cfg, key_file = _federation_file(tmp_path, NETS)
    path = secret_path(key_file, 1)
    assert path == key_file.parent / "federation.node-1.secret"
    with pytest.raises(FileNotFoundError, match="never disguised"):
        node_secret(cfg, 1)  # the experimenter reads a node's secret, never makes it
    made = node_secret(cfg, 1, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().splitlines()[0] == SECRET_MAGIC
    assert node_secret(cfg, 1) == made == node_secret(cfg, 1, create=True)  # kept, not redrawn
    assert made not in (node_key(cfg, 1), DisguiseKey.load(key_file))
    other = _federation_file(tmp_path / "again", NETS)[0]
    assert node_secret(other, 1, create=True) != made  # OS entropy, not the key's child


def test_a_damaged_or_exposed_secret_is_an_error(tmp_path):
    path = tmp_path / "k.node-0.secret"
    DisguiseKey.generate().save(path)  # a disguise key's header, not a secret's
    with pytest.raises(ValueError, match="not a fedisguise node secret file"):
        load_or_create_secret(path)
    DisguiseKey.generate().save(path, SECRET_MAGIC)
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_secret(path)


def test_derived_secrets_reproduce_per_node(tmp_path):
    cfg = _cfg(tmp_path, NETS)
    assert node_secret(cfg, 0) == node_secret(cfg, 0, create=True)  # no file: from the seed
    assert node_secret(cfg, 0) != node_secret(cfg, 1)
    assert node_secret(cfg, 0) != node_key(cfg, 0)
    reseeded = _cfg(tmp_path, NETS, **{"experiment.seed": 1})
    assert node_secret(reseeded, 0) != node_secret(cfg, 0)
    assert not list(tmp_path.rglob("*.secret"))
