import dataclasses
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedisguise.config import DRIVER_KEY, Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"train.learning_rate.*valid keys in \[train\].*'lr'"):
        Config.from_dict({"train": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError, match="unknown config key.*'optimiser'.*valid top-level"):
        Config.from_dict({"optimiser": {}})


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="experiment.rounds must be int, got str"):
        Config.from_dict({"experiment": {"rounds": "3"}})
    with pytest.raises(ConfigError, match="experiment.rounds must be int, got bool"):
        Config.from_dict({"experiment": {"rounds": True}})
    assert Config.from_dict({"train": {"lr": 1}}).train.lr == 1.0  # an int is a valid float


@pytest.mark.parametrize("key,value,listed", [
    ("data.dataset", "imagenet", "fashion-mnist"),
    ("model.name", "vit", "resnet20"),
    ("strategy.name", "scaffold", "fedprox"),
    ("data.partitioner", "shards", "dirichlet"),
    ("disguise", "rot13", "none"),
])
def test_unknown_names_list_the_valid_choices(key, value, listed):
    with pytest.raises(ConfigError, match=f"unknown {key} '{value}'; valid choices:.*{listed}"):
        Config().with_overrides([f"{key}={value}"])


def test_out_of_range_values_are_errors():
    for assignment, message in [("experiment.rounds=0", "experiment.rounds must be >= 1"),
                                ("strategy.fraction_train=1.5", "fraction_train must be in"),
                                ("resources.num_gpus=-1", "num_gpus must be >= 0"),
                                ("data.validation=0.5", "data.validation must be a fraction"),
                                ("data.validation=-0.1", "data.validation must be a fraction")]:
        with pytest.raises(ConfigError, match=message):
            Config().with_overrides([assignment])


def test_set_overrides_are_typed_by_their_field():
    cfg = Config().with_overrides(["train.lr=0.01", "experiment.rounds=7",
                                   "resources.num_gpus=0.25", "data.partitioner=dirichlet",
                                   'attacks=[]', "disguise=none"])
    assert (cfg.train.lr, cfg.experiment.rounds, cfg.resources.num_gpus) == (0.01, 7, 0.25)
    assert cfg.data.partitioner == "dirichlet"
    with pytest.raises(ConfigError, match="experiment.rounds must be int, got '2.5'"):
        Config().with_overrides(["experiment.rounds=2.5"])
    with pytest.raises(ConfigError, match="expects key=value"):
        Config().with_overrides(["train.lr"])


def test_flat_round_trip_keeps_everything():
    cfg = Config().with_overrides(["train.lr=0.2", "data.alpha=0.1", "disguise=none"])
    assert Config.from_flat(cfg.to_flat()) == cfg


def test_pyproject_flower_defaults_mirror_the_config_defaults():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == {**Config().to_flat(), DRIVER_KEY: ""}


@pytest.mark.parametrize("name", ["fedavg", "smoke"])
def test_shipped_configs_validate(name):
    cfg = load_config(ROOT / "configs" / f"{name}.toml")
    assert cfg.data.dataset == "fashion-mnist" and cfg.model.name == "lenet"
    assert cfg.experiment.clients == 4 and cfg.experiment.rounds >= 3
    assert cfg.disguise == "none" and cfg.attacks == []


def test_the_default_config_is_the_quickstart_grid():
    """`python run.py` shows what the product is for: plain FL beside a disguise, and against
    both the server's chain attack and membership inference in a regime where it bites."""
    import run
    from fedisguise.grids.spec import load_grid

    assert run.is_compare_file(run.DEFAULT_CONFIG)
    assert not run.is_compare_file(ROOT / "configs" / "fedavg.toml")
    grid = load_grid(run.DEFAULT_CONFIG)
    assert grid.reference == "none" and len(grid.defences) == 2
    disguised = next(c.config for c in grid.cells if c.defence != "none")
    assert disguised.disguise_name != "none" and disguised.client.key_scope == "federation"
    kinds = {a["name"] for c in grid.cells for a in c.config.attacks}
    assert {"chain", "membership"} <= kinds
    membership = next(c.config for c in grid.cells if c.attack == "membership")
    assert membership.data.train_per_client <= 200 and membership.train.local_epochs >= 5
    # the chain scores one FedSGD update of >= 8 images: recognisability is a fraction of 8
    chain = next(c.config for c in grid.cells if c.attack == "chain")
    assert chain.train.local_steps == 1 and chain.train.batch_size >= 8


def test_cli_rejects_a_bad_config_before_starting_anything(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "--set", "model.name=vit", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "unknown model.name 'vit'; valid choices" in result.stderr
    assert not any(tmp_path.iterdir())


def test_a_run_that_writes_nothing_never_reports_an_old_runs_figures(tmp_path, monkeypatch):
    import fedisguise.experiment as experiment

    cfg = Config().with_overrides([f"experiment.out={tmp_path}", "experiment.name=stale",
                                   "data.dataset=synthetic"])
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / "metrics.json").write_text(
        '{"status": "finished", "final": {"test_accuracy": 0.99}}')
    monkeypatch.setattr(experiment, "run_simulation", lambda cfg: None)  # a run that dies
    with pytest.raises(ConfigError, match="already holds results.*--force"):
        experiment.run_experiment(cfg)  # an earlier run's folder is never reused silently
    assert (tmp_path / "stale" / "metrics.json").is_file()
    with pytest.raises(RuntimeError, match="ended without writing"):
        experiment.run_experiment(cfg, force=True)  # replaced: the old figures are gone
    assert not (tmp_path / "stale" / "metrics.json").exists()


def _float_keys():
    from fedisguise.config import SECTIONS

    return [f"{section}.{f.name}" for section, cls in SECTIONS.items()
            for f in dataclasses.fields(cls) if f.type in (float, "float")]


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_setting_must_be_finite(key, value):
    with pytest.raises(ConfigError, match=f"{re.escape(key)} must be a finite number"):
        Config().with_overrides([f"{key}={value}"])


@pytest.mark.parametrize("spec, key", [
    ({"name": "disguisednets", "noise_level": -5}, "disguise.noise_level"),
    ({"name": "instahide", "k": 0}, "disguise.k"),
    ({"name": "instahide", "mode": "cross"}, "disguise.public_dataset"),
    ({"name": "block-rmt", "block_size": 0}, "disguise.block_size"),
    ({"name": "visualmixer", "max_bias": float("nan")}, "disguise.max_bias"),
    ({"name": "aes", "blok": 4}, "disguise.blok"),
])
def test_disguise_parameter_ranges_fail_at_config_time_naming_the_parameter(spec, key):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)} "):
        Config.from_dict({"disguise": spec})


@pytest.mark.parametrize("disguise", ["none", "transform-net"])
@pytest.mark.parametrize("key", ["client.key_file", "client.key_dir"])
def test_a_keyless_disguise_refuses_a_key(disguise, key):
    with pytest.raises(ConfigError, match=f"disguise '{disguise}' takes no key; remove {key}"):
        Config().with_overrides([f"disguise={disguise}", f"{key}=/some/where"])


def test_key_file_and_key_dir_are_exclusive_and_key_dir_is_per_client():
    base = ["disguise=aes"]
    with pytest.raises(ConfigError, match="client.key_file and client.key_dir.*choose one"):
        Config().with_overrides(base + ["client.key_file=a.key", "client.key_dir=keys"])
    with pytest.raises(ConfigError, match="client.key_dir .*key_scope = 'per-client'"):
        Config().with_overrides(base + ["client.key_dir=keys", "client.key_scope=federation"])
    assert Config().with_overrides(base + ["client.key_dir=keys"]).client.key_dir == "keys"


def test_every_client_needs_a_test_shard():
    with pytest.raises(ConfigError, match=r"data.test_samples must be 0 \(all\) or >= "
                                          r"experiment.clients \(4\)"):
        Config().with_overrides(["experiment.clients=4", "data.test_samples=3"])
    Config().with_overrides(["experiment.clients=4", "data.test_samples=4"])
