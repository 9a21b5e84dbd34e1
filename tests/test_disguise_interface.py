"""Contract shared by every defence: keys, determinism, shapes, and loud errors."""

import pytest
import torch

from fedisguise.config import Config, ConfigError
from fedisguise.disguise import DISGUISES, DisguiseKey, build
from fedisguise.plugins import origin

KEYED = {
    "visualmixer": {},
    "visualmixer-uniform": {"window": 4},
    "block-permutation": {"block_size": 7},
    "rmt": {},
    "block-rmt": {"block_size": 7},
    "disguisednets": {"block_size": 7, "noise_level": 25},
    "aes": {"block_size": 4},
    "instahide": {"k": 2},
}


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(6, 1, 28, 28, generator=gen), torch.randint(0, 10, (6,), generator=gen)


# Keyless defences built from a trained file; their contract is in tests/test_transform_net.py.
KEYLESS_FROM_FILE = {"transform-net"}
# Keyless defences whose every choice is a draw: the same draws source gives the same output.
KEYLESS_DRAWS = {"visualmixer-authors": {}}


def test_every_registered_defence_is_covered():
    builtin = {name for name, cls in DISGUISES.items() if origin(cls) == "built-in"}
    assert builtin - {"none"} == set(KEYED) | KEYLESS_FROM_FILE | set(KEYLESS_DRAWS)


@pytest.mark.parametrize("name", sorted(KEYLESS_DRAWS))
def test_keyless_draws_follow_their_source_and_shapes_hold(name, batch):
    images, labels = batch
    spec = {"name": name, **KEYLESS_DRAWS[name]}
    assert not DISGUISES[name].keyed and DISGUISES[name].draws
    a, la = build(spec, None).apply(images, labels)
    b, _ = build(spec, None).apply(images, labels)
    assert not torch.equal(a, b)  # no key, no secret: fresh OS entropy
    secret = DisguiseKey.generate(1)
    same = []
    for _ in range(2):
        d = build(spec, None)
        d.reseed("train", secret)
        same.append(d.apply(images, labels)[0])
    assert torch.equal(*same) and a.shape == images.shape and la is labels
    empty, _ = build(spec, None).apply(torch.rand(0, 1, 28, 28))
    assert empty.shape == (0, 1, 28, 28)
    with pytest.raises(ValueError, match="draws random numbers: pass the node's secret"):
        build(spec, None).reseed("train", "not a key")


@pytest.mark.parametrize("name", sorted(KEYED))
def test_same_key_same_output_other_key_other_output(name, batch):
    images, labels = batch
    spec = {"name": name, **KEYED[name]}
    a, la = build(spec, DisguiseKey.generate(1)).apply(images, labels)
    b, lb = build(spec, DisguiseKey.generate(1)).apply(images, labels)
    c, _ = build(spec, DisguiseKey.generate(2)).apply(images, labels)
    assert a.shape == images.shape and torch.isfinite(a).all()
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, images)


@pytest.mark.parametrize("name", sorted(KEYED))
def test_memory_layout_does_not_change_the_output(name):
    images = torch.rand(4, 3, 28, 56, generator=torch.Generator().manual_seed(3))
    dense = images[..., ::2].contiguous()
    spec = {"name": name, **KEYED[name]}
    expected, _ = build(spec, DisguiseKey.generate(1)).apply(dense)
    for layout in (dense.to(memory_format=torch.channels_last), images[..., ::2]):
        out, _ = build(spec, DisguiseKey.generate(1)).apply(layout)
        assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("name", sorted(KEYED))
def test_an_empty_batch_gives_an_empty_batch(name):
    out, labels = build({"name": name, **KEYED[name]}, DisguiseKey.generate(1)).apply(
        torch.rand(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, 1, 28, 28) and len(labels) == 0


@pytest.mark.parametrize("name", sorted(KEYED))
def test_keyed_defences_refuse_to_run_without_a_key(name):
    with pytest.raises(ValueError, match="is keyed: pass a DisguiseKey"):
        build({"name": name, **KEYED[name]}, None)


def test_none_passes_images_through_unchanged(batch):
    images, labels = batch
    out, out_labels = build("none").apply(images, labels)
    assert out is images and out_labels is labels


@pytest.mark.parametrize("bad,message", [
    (torch.rand(1, 28, 28), "N×C×H×W"),
    ((torch.rand(2, 1, 28, 28) * 255).to(torch.uint8), "float tensor"),
    (torch.rand(2, 1, 28, 28) * 2, r"\[0, 1\]"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    (torch.full((2, 1, 28, 28), float("inf")), "NaN or inf"),
])
@pytest.mark.parametrize("name", ["none", "disguisednets", "instahide"])
def test_bad_images_are_value_errors(name, bad, message):
    disguise = build({"name": name, **KEYED.get(name, {})}, DisguiseKey.generate(0))
    with pytest.raises(ValueError, match=message):
        disguise.apply(bad)


@pytest.mark.parametrize("name", ["block-permutation", "block-rmt", "disguisednets", "aes"])
def test_size_not_divisible_by_block_size_is_an_error(name):
    disguise = build({"name": name, "block_size": 8}, DisguiseKey.generate(0))
    with pytest.raises(ValueError, match="28×28 is not divisible by block_size 8"):
        disguise.apply(torch.rand(2, 1, 28, 28))


def test_unknown_names_and_parameters_are_errors():
    key = DisguiseKey.generate(0)
    with pytest.raises(ValueError, match="unknown disguise 'rot13'; valid choices"):
        build("rot13", key)
    with pytest.raises(ValueError, match="unknown parameter 'blocksize'.*'block_size'"):
        build({"name": "block-rmt", "blocksize": 4}, key)
    with pytest.raises(ValueError, match="'block_size' must be int"):
        build({"name": "block-rmt", "block_size": 4.0}, key)
    with pytest.raises(ValueError, match="unknown matrix 'hadamard'"):
        build({"name": "rmt", "matrix": "hadamard"}, key)
    with pytest.raises(ValueError, match="unknown parameter 'matrix'"):
        build({"name": "block-permutation", "matrix": "orthogonal"}, key)


def test_config_validates_disguise_parameters():
    with pytest.raises(ConfigError,
                       match=r"disguise.noise \(disguisednets\): unknown parameter 'noise'"):
        Config.from_dict({"disguise": {"name": "disguisednets", "noise": 3}})
    cfg = Config.from_dict({"disguise": {"name": "disguisednets", "block_size": 7}})
    assert Config.from_flat(cfg.to_flat()).disguise == {"name": "disguisednets", "block_size": 7}
