"""Everything checkable is checked before any Flower process starts: run.py exits 2 with one
line naming the config key, instead of a federation whose clients crash one by one."""

import json
import os
from pathlib import Path

import pytest

import run
from fedisguise import experiment
from fedisguise.config import Config, ConfigError
from fedisguise.disguise import DisguiseKey
from fedisguise.disguise.keys import SECRET_MAGIC, key_path, secret_path, write_key_dir
from fedisguise.preflight import preflight
from tests.conftest import DEBIAN_FMNIST, FEDAVG, synthetic_config

FMNIST = pytest.mark.skipif(not os.path.exists(DEBIAN_FMNIST),
                            reason="dataset-fashion-mnist not installed")
SPEC = '{"name": "disguisednets", "block_size": 7, "noise_level": 25}'
DISGUISED = f"disguise={SPEC}"
root_reads_everything = pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")


@pytest.fixture(autouse=True)
def no_run(monkeypatch):
    """A check that lets a bad config through must fail the test, not start a run."""

    def refuse(*args, **kwargs):
        raise AssertionError("preflight let the run start")

    monkeypatch.setattr(experiment, "run_experiment", refuse)


def cli(capsys, tmp_path, *sets: str, args: tuple[str, ...] = ()) -> tuple[int, str]:
    """run.py on the synthetic dataset with `--set` assignments; (exit code, stderr)."""
    argv = ["--config", str(FEDAVG), "--set", "data.dataset=synthetic", "--clients", "2",
            "--out", str(tmp_path / "out"), *args]
    for assignment in sets:
        argv += ["--set", assignment]
    code = run.main(argv)
    return code, capsys.readouterr().err


def _key(tmp_path, text: str | None = None, mode: int = 0o600, name: str = "k.key") -> Path:
    path = DisguiseKey.generate(1).save(tmp_path / name)
    if text is not None:
        path.write_text(text)
    path.chmod(mode)
    return path


# ---- key files ----------------------------------------------------------------------------
GOOD = DisguiseKey.generate(1)


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"),
    ("directory", "is a directory"),
    ("garbage", "not a fedisguise key file"),
    ("truncated", "truncated or malformed"),
    ("extra line", "unexpected content on line 3"),
    ("open", "are too open"),
])
def test_a_bad_key_file_exits_2_naming_client_key_file(capsys, tmp_path, case, message):
    path = {
        "missing": lambda: tmp_path / "absent.key",
        "directory": lambda: tmp_path,
        "garbage": lambda: _key(tmp_path, "\x00\x01garbage\n"),
        "truncated": lambda: _key(tmp_path, _key(tmp_path).read_text()[:-20]),
        "extra line": lambda: _key(tmp_path, _key(tmp_path).read_text() + "# laptop\n"),
        "open": lambda: _key(tmp_path, mode=0o644),
    }[case]()
    code, err = cli(capsys, tmp_path, DISGUISED, f"client.key_file={path}")
    assert code == 2
    assert err.startswith("error: client.key_file: ") and message in err
    if case == "open":
        assert f"chmod 600 {path}" in err
    assert not (tmp_path / "out").exists()  # nothing made before the failing check


@root_reads_everything
def test_an_unreadable_key_file_exits_2(capsys, tmp_path):
    code, err = cli(capsys, tmp_path, DISGUISED,
                    f"client.key_file={_key(tmp_path, mode=0o000)}")
    assert code == 2 and "client.key_file" in err and "cannot read" in err


def test_a_nodes_damaged_or_exposed_draws_secret_exits_2(capsys, tmp_path):
    write_key_dir(tmp_path / "keys", 2, seed="t")
    secret = secret_path(key_path(tmp_path / "keys", 1), 1)
    DisguiseKey.generate().save(secret)  # a disguise key where node 1's secret should be
    code, err = cli(capsys, tmp_path, DISGUISED, f"client.key_dir={tmp_path / 'keys'}")
    assert code == 2 and "client.key_dir (node 1's draws secret)" in err
    assert "not a fedisguise node secret file" in err
    DisguiseKey.generate().save(secret, SECRET_MAGIC)
    secret.chmod(0o640)
    code, err = cli(capsys, tmp_path, DISGUISED, f"client.key_dir={tmp_path / 'keys'}")
    assert code == 2 and "too open" in err and f"chmod 600 {secret}" in err


def test_a_key_folder_a_node_cannot_write_its_secret_into_exits_2(capsys, tmp_path,
                                                                   monkeypatch):
    key = _key(tmp_path / "ro")
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == key.parent
                        else real(path, mode))
    code, err = cli(capsys, tmp_path, DISGUISED, f"client.key_file={key}")
    assert code == 2 and err.startswith("error: client.key_file: node 0 writes its draws")
    assert "is not writable" in err


def test_a_key_file_with_trailing_blank_lines_passes(tmp_path):
    path = _key(tmp_path, _key(tmp_path).read_text() + "\n\n")
    cfg = synthetic_config(tmp_path / "out", **{"client.key_file": str(path), "disguise": SPEC})
    preflight(cfg)
    assert (tmp_path / "out").is_dir()


def test_a_keyless_disguise_with_a_key_file_exits_2(capsys, tmp_path):
    garbage = _key(tmp_path, "garbage\n")  # old code: every client crashed, yet rc 0
    code, err = cli(capsys, tmp_path, "disguise=none", f"client.key_file={garbage}")
    assert code == 2
    assert "disguise 'none' takes no key; remove client.key_file" in err


def test_a_key_dir_needs_a_key_for_every_node(capsys, tmp_path):
    keys = tmp_path / "keys"
    code, err = cli(capsys, tmp_path, DISGUISED, f"client.key_dir={keys}")
    assert code == 2 and "client.key_dir" in err and "fedisguise.disguise.keygen" in err
    write_key_dir(keys, 2, seed="t")
    key_path(keys, 1).unlink()
    code, err = cli(capsys, tmp_path, DISGUISED, f"client.key_dir={keys}")
    assert code == 2
    assert f"client.key_dir (node 1's key): disguise key file not found: {keys}" in err
    key_path(keys, 1).write_text("x")
    key_path(keys, 1).chmod(0o600)
    code, err = cli(capsys, tmp_path, DISGUISED, f"client.key_dir={keys}")
    assert code == 2 and "client.key_dir (node 1's key)" in err
    code, err = cli(capsys, tmp_path, DISGUISED, f"client.key_dir={keys}",
                    f"client.key_file={_key(tmp_path)}")
    assert code == 2 and "choose one" in err


# ---- the disguise against the data ---------------------------------------------------------
@pytest.mark.parametrize("spec, key", [
    ({"name": "block-permutation", "block_size": 5}, "disguise.block_size"),
    ({"name": "disguisednets", "block_size": 3}, "disguise.block_size"),
    ({"name": "aes", "block_size": 2}, "disguise.block_size"),  # 2²×1 bytes: no AES block
    ({"name": "visualmixer-uniform", "window": 5}, "disguise.window"),
    ({"name": "visualmixer", "min_window": 5, "max_window": 6}, "disguise"),
    ({"name": "instahide", "k": 0}, "disguise.k"),
    ({"name": "disguisednets", "noise_level": -5}, "disguise.noise_level"),
])
def test_disguise_parameters_are_checked_on_the_datasets_images(capsys, tmp_path, spec, key):
    code, err = cli(capsys, tmp_path, f"disguise={json.dumps(spec)}")
    assert code == 2
    assert err.startswith(f"error: {key} ({spec['name']}): ")


@FMNIST
def test_block_size_5_on_fashion_mnist_exits_2(capsys, tmp_path):
    code, err = run.main(["--config", str(FEDAVG),
                          "--set", 'disguise={"name": "disguisednets", "block_size": 5}',
                          "--clients", "2", "--out", str(tmp_path)]), capsys.readouterr().err
    assert code == 2
    assert "disguise.block_size (disguisednets): on fashion-mnist images (1×28×28)" in err
    assert "not divisible by block_size 5" in err


# ---- plain settings and the data -----------------------------------------------------------
@pytest.mark.parametrize("assignment", ["train.lr=inf", "train.lr=nan", "data.alpha=-inf",
                                        "resources.num_cpus=nan"])
def test_a_non_finite_float_exits_2(capsys, tmp_path, assignment):
    code, err = cli(capsys, tmp_path, assignment)
    assert code == 2 and f"{assignment.split('=')[0]} must be a finite number" in err


def test_a_data_dir_that_does_not_exist_exits_2(capsys, tmp_path):
    code, err = cli(capsys, tmp_path, f"data.data_dir={tmp_path / 'nowhere'}")
    assert code == 2 and "data.data_dir" in err and "does not exist" in err


@FMNIST
def test_a_data_dir_without_the_files_exits_2_instead_of_reading_elsewhere(
        capsys, tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run.main(["--config", str(FEDAVG), "--set", f"data.data_dir={empty}", "--clients", "2",
                          "--out", str(tmp_path / "out")]), capsys.readouterr().err
    assert code == 2 and err.startswith("error: data.data_dir (fashion-mnist): ")


def test_fewer_test_samples_than_clients_exits_2(capsys, tmp_path):
    code, err = cli(capsys, tmp_path, "data.test_samples=3", args=("--clients", "4"))
    assert code == 2 and "data.test_samples must be 0 (all) or >= experiment.clients" in err


# ---- the results folder --------------------------------------------------------------------
def test_a_validation_split_that_leaves_a_client_nothing_to_train_on_exits_2(capsys, tmp_path):
    code, err = cli(capsys, tmp_path, "data.train_per_client=1", "data.validation=0.3")
    assert code == 2 and "data.validation 0.3 leaves client 0 no training images" in err
    preflight(synthetic_config(tmp_path, **{"data.train_per_client": 2,
                                            "data.validation": 0.3}))  # one left to train on


def test_an_out_that_is_a_file_or_under_one_exits_2(capsys, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    code, err = cli(capsys, tmp_path)
    assert code == 2 and "experiment.out" in err and "is a file" in err
    code, err = run.main(["--config", str(FEDAVG), "--set", "data.dataset=synthetic", "--clients", "2",
                          "--out", str(tmp_path / "out" / "sub")]), capsys.readouterr().err
    assert code == 2 and "experiment.out" in err and "cannot create" in err


def test_a_run_folder_that_is_a_file_exits_2(capsys, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "fedavg").write_text("")
    code, err = cli(capsys, tmp_path)
    assert code == 2 and "experiment.name" in err


@root_reads_everything
def test_an_unwritable_out_exits_2(capsys, tmp_path):
    (tmp_path / "out").mkdir(mode=0o500)
    code, err = cli(capsys, tmp_path)
    assert code == 2 and "experiment.out" in err and "not writable" in err


def test_a_good_config_passes_and_gets_its_results_folder(tmp_path):
    write_key_dir(tmp_path / "keys", 2, seed="t")
    cfg = synthetic_config(tmp_path / "a" / "b", **{"client.key_dir": str(tmp_path / "keys"),
                                                    "disguise": SPEC})
    preflight(cfg)
    assert (tmp_path / "a" / "b").is_dir()


# ---- grids and remote runs -----------------------------------------------------------------
def test_every_cell_of_a_grid_is_checked(capsys, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(f"""
[compare]
name = "g"
[[compare.defence]]
label = "fine"
disguise = {{name = "disguisednets", block_size = 7}}
[[compare.defence]]
label = "blocks5"
disguise = {{name = "block-permutation", block_size = 5}}
[[compare.defence]]
label = "openkey"
disguise = "aes"
client = {{key_file = "{_key(tmp_path, mode=0o644)}"}}
[data]
dataset = "synthetic"
[experiment]
clients = 2
""")
    code, err = run.main(["--compare", str(grid), "--out", str(tmp_path / "out")]), \
        capsys.readouterr().err
    assert code == 2 and "cell blocks5--base--seed0: disguise.block_size" in err
    grid.write_text(grid.read_text().replace("block_size = 5", "block_size = 4"))
    code, err = run.main(["--compare", str(grid), "--out", str(tmp_path / "out")]), \
        capsys.readouterr().err
    assert code == 2 and "cell openkey--base--seed0: client.key_file" in err
    assert "chmod 600" in err


def test_a_remote_run_never_rebuilds_a_node_with_a_guessed_key(capsys, tmp_path, monkeypatch):
    attack = 'attacks=[{"name": "membership", "method": "loss", "target": "global"}]'
    code, err = cli(capsys, tmp_path, DISGUISED, attack, "experiment.mode=deployment",
                    args=("--superlink", "10.0.0.1:9092"))
    assert code == 2 and err.startswith("error: attacks: ") and "disguise-key-file" in err

    from fedisguise import results
    from fedisguise.deployment import federation as deployment
    from fedisguise.privacy import figures as privacy

    monkeypatch.undo()  # the real run_experiment, around a run that only writes its record
    cfg = synthetic_config(tmp_path / "out", **{"experiment.mode": "deployment",
                                                "disguise": SPEC})

    def remote_run(cfg, superlink):
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "metrics.json").write_text(json.dumps({"status": "finished",
                                                               "privacy": {"misusability": 0.5}}))

    def guessed(*args, **kwargs):
        raise AssertionError("privacy figures under a key the nodes may not have used")

    monkeypatch.setattr(deployment, "run_deployment", remote_run)
    monkeypatch.setattr(privacy, "privacy_figures", guessed)
    monkeypatch.setattr(results, "rewrite_record", lambda run_dir, record: record)
    record = experiment.run_experiment(cfg, superlink="10.0.0.1:9092")
    assert record["privacy"]["misusability"] == 0.5
    assert "disguise-key-file" in record["privacy"]["skipped"]
    assert "a federation this machine did not start" in capsys.readouterr().err


@pytest.mark.parametrize("disguise, known", [("none", True), ("visualmixer-authors", False),
                                             (SPEC, False)])
def test_a_remote_nodes_draws_are_unknown_even_without_a_key(tmp_path, disguise, known):
    from fedisguise.preflight import keys_known

    cfg = synthetic_config(tmp_path / "out", disguise=disguise)
    assert keys_known(cfg, remote=True) is known  # keyless, but its shuffles are the node's
    assert keys_known(cfg, remote=False)


def test_preflight_errors_are_config_errors(tmp_path):
    cfg = Config().with_overrides(["data.dataset=synthetic", f"experiment.out={tmp_path}",
                                   "data.data_dir=/definitely/not/here"])
    with pytest.raises(ConfigError, match="data.data_dir"):
        preflight(cfg)
