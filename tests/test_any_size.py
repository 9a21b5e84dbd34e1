"""Every registered defence on images of any size and channels (issue 40 pt 5): it disguises
3×32×32 and 1×25×25 images, or the preflight says why it cannot and which sizes would do."""

import json
import re

import pytest
import torch

from fedisguise.config import Config, ConfigError
from fedisguise.data.datasets import DATASETS, ImageDataset, register_dataset
from fedisguise.disguise import DISGUISES, DisguiseKey
from fedisguise.disguise.spec import DisguiseSpec
from fedisguise.disguise.transform_net_training import (
    save_transform_net,
    train_transform_net,
)
from fedisguise.models import build_model
from fedisguise.preflight import check_disguise

SHAPES = [(3, 32, 32), (1, 25, 25)]


@pytest.fixture
def sized_dataset():
    """A dataset of 8-bit random images of one shape, registered for the test's length."""
    saved = dict(DATASETS)

    def make(shape):
        name = "sized-" + "x".join(map(str, shape))

        @register_dataset(name)
        def load(split: str, data_dir: str) -> ImageDataset:
            gen = torch.Generator().manual_seed(0 if split == "train" else 1)
            images = torch.randint(0, 256, (24, *shape), generator=gen).float() / 255
            return ImageDataset(images, torch.arange(24) % 3, 3)

        return name, load("train", "")

    yield make
    DATASETS.clear()
    DATASETS.update(saved)


def _spec(name, shape, tmp_path):
    if name != "transform-net":
        return {"name": name}
    # h_θ trained for these images' shape, briefly: the defence under test is its application
    torch.manual_seed(0)
    images, labels = torch.rand(16, *shape), torch.arange(16) % 3
    psi = build_model("cnn-small", shape[0], 3, shape[1:])
    net, info = train_transform_net(images, labels, psi, features="vgg16-random", epochs=1,
                                    batch_size=8, width=4, validation=0.25, progress=False)
    path = tmp_path / "h.pt"
    save_transform_net(path, net, info)
    return {"name": name, "path": str(path)}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(DISGUISES))
def test_every_defence_disguises_any_size_or_the_preflight_names_the_sizes_that_would(
        name, shape, sized_dataset, tmp_path):
    dataset, train = sized_dataset(shape)
    spec = _spec(name, shape, tmp_path)
    cfg = Config().with_overrides([f"data.dataset={dataset}", "experiment.clients=2",
                                   f"disguise={spec!r}".replace("'", '"')])
    cfg.validate()
    try:
        check_disguise(cfg, train)
    except ConfigError as err:  # not applicable: the reason, and what would do
        message = str(err)
        assert re.search(r"divisible|divides|multiple of", message), message
        listed = re.search(r"values that work on \d+×\d+: \[([\d, ]+)\]", message)
        if listed:  # the first size it names works
            param = re.search(r"(block_size|window) values", message).group(1)
            size = int(listed.group(1).split(",")[0])
            spec = {**spec, param: size}
        else:
            pytest.skip(f"{name} on {shape}: {message}")
    built = DisguiseSpec.parse({**spec, **({"num_classes": 3} if name == "instahide" else {})})
    disguise = built.build(DisguiseKey.generate(seed="t") if built.keyed else None)
    out = disguise.apply(train.images[:8], train.labels[:8])[0]
    assert out.shape == (8, *shape) and torch.isfinite(out).all()
    if name != "none":
        assert not torch.equal(out, train.images[:8])  # it disguised something


ATTACKS_ON_ANY_SIZE = [
    {"name": "gradient_inversion", "round": 1, "client": 0, "iterations": 40},
    *({"name": "chain", "round": 1, "client": 0, "level": level,
       "stages": [{"name": "gradient_inversion", "iterations": 40},
                  {"name": "deshuffler", "pairs": 100, "epochs": 1, "targets": 50}]}
      for level in (1, 2)),
    {"name": "window_stats", "round": 1, "client": 0, "targets": 50, "calibration": 100},
    {"name": "deshuffler", "round": 1, "client": 0, "pairs": 100, "epochs": 1, "targets": 50},
    {"name": "inverse_network", "round": 1, "client": 0, "level": 1, "pairs": 100,
     "epochs": 1, "targets": 50},
    {"name": "as_observed", "round": 1, "client": 0},
    {"name": "jigsaw", "round": 1, "client": 0, "images": 50},
    {"name": "instahide_attack", "round": 1, "client": 0},
    {"name": "membership", "method": "loss", "candidates": 20},
    {"name": "gan", "round": 1, "client": 0, "iterations": 10, "samples": 4},
]


@pytest.mark.slow
def test_every_attack_runs_on_any_size_or_says_why_not(tmp_path):
    """Image folders of 3×32×24 (as stored) and of 20×16 RGB read as 1×25×25
    (data.image_size, data.channels), window-shuffled under a key (window 4 tiles 32×24, 5
    tiles 25×25): the run finishes, records the folder's classes, and every attack either
    scores or reports "not applicable" with a reason."""
    from fedisguise.experiment import ray_kept_between_runs, run_experiment
    from tests.conftest import synthetic_config
    from tests.test_folder_data import image_folder

    cases = [((3, 32, 24), (32, 24), [], 4), ((1, 25, 25), (20, 16), [25, 25], 5)]
    with ray_kept_between_runs():  # one Ray for both runs
        for (c, h, w), stored, size, window in cases:
            root = image_folder(tmp_path / f"data{h}", train=20, test=10, size=stored)
            cfg = synthetic_config(tmp_path, **{
                "experiment.name": f"s{h}", "experiment.rounds": "1",
                "data.dataset": "folder", "data.data_dir": str(root),
                "data.image_size": json.dumps(size), "data.channels": str(c),
                "model.name": "cnn-small", "train.local_steps": "1", "train.batch_size": "4",
                "disguise": f'{{"name": "visualmixer-uniform", "window": {window}}}',
                "attacks": json.dumps(ATTACKS_ON_ANY_SIZE)})
            cfg.validate()
            record = run_experiment(cfg)
            assert record["status"] == "finished", record.get("error")
            assert record["data"] == {"image_shape": [c, h, w], "num_classes": 3,
                                      "classes": ["ant", "bee", "cat"]}
            for label, figures in record["attacks"].items():
                if figures["status"] == "not applicable":
                    assert figures["reason"], label
                    continue
                assert figures["status"] == "ok", (label, figures)
                score = figures.get("psnr_vs_original", figures.get("auc",
                                                                    figures.get("recognisability")))
                assert score is not None and score == score, (label, figures)  # not NaN
            statuses = {k: v["status"] for k, v in record["attacks"].items()}
            assert statuses["jigsaw"] == statuses["instahide_attack"] == "not applicable"
            assert sum(s == "ok" for s in statuses.values()) == 9, statuses


def test_the_jigsaw_takes_the_disguises_block_size_or_says_it_does_not_tile():
    from fedisguise.attacks.base import Evidence, Knowledge, Runtime
    from fedisguise.attacks.jigsaw import Jigsaw

    torch.manual_seed(0)
    plain = torch.rand(12, 1, 25, 25)
    public = ImageDataset(torch.rand(20, 1, 25, 25), torch.arange(20) % 2, 2)
    runtime = Runtime(device=torch.device("cpu"), seed=0, progress=False)
    fives = DisguiseSpec.parse({"name": "block-permutation", "block_size": 5})
    disguised = fives.build(DisguiseKey.generate(seed="j")).apply(plain)[0]
    for params, status in (({}, "not applicable"), ({"block_size": 5}, "ok")):
        spec = DisguiseSpec.parse({"name": "block-permutation", **params})  # what it knows
        out = Jigsaw().reconstruct(Evidence(view=None, images=disguised),
                                   Knowledge(level=1, public=public, algorithm=spec), runtime)
        assert out.figures["status"] == status, out.figures
        if status == "ok":  # the default (4) is the spec's: named by the defence, not by 7
            assert out.figures["block_size"] == 5 and out.images.shape == plain.shape
        else:
            assert "blocks of 4 pixels do not tile 25×25" in out.figures["reason"]
