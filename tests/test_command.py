"""The `fedisguise` command (fedisguise.cli.command): subcommands, shipped configs by name,
and the wheel working outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedisguise.cli import CONFIGS, command, config_path

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_are_package_data_and_the_checkouts_configs_link_to_them():
    assert CONFIGS == ROOT / "fedisguise" / "configs"
    assert (ROOT / "configs").resolve() == CONFIGS
    assert {"default", "smoke", "fedavg", "compare-smoke"} <= {p.stem for p in
                                                               CONFIGS.glob("*.toml")}


def test_a_config_is_a_file_or_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_path("smoke") == CONFIGS / "smoke.toml"
    assert config_path("smoke.toml") == CONFIGS / "smoke.toml"
    (tmp_path / "smoke.toml").write_text("")  # a file of that name here wins
    assert config_path("smoke.toml") == Path("smoke.toml")
    with pytest.raises(FileNotFoundError, match="no shipped config of that name; shipped: "
                                                ".*compare-smoke.*smoke"):
        config_path("smok")


@pytest.mark.parametrize("argv, code, says", [
    ([], 2, "usage: fedisguise {run,compare,keygen}"),
    (["--help"], 0, "shipped configs: "),
    (["train"], 2, "usage: fedisguise"),
    (["run", "no-such-config"], 2, "error: no config file 'no-such-config'"),
    (["compare"], 2, "fedisguise compare needs a grid"),
    (["run", "smoke", "--set", "train.lr=-1"], 2, "train.lr must be > 0"),
    (["keygen", "--clients", "0", "--out", "{tmp}/k"], 2, "error: "),
])
def test_bad_commands_exit_2_with_the_reason(argv, code, says, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert command(argv) == code
    out = capsys.readouterr()
    assert says in (out.out if code == 0 else out.err)


def test_keygen_writes_0600_key_files(tmp_path, capsys):
    assert command(["keygen", "--out", str(tmp_path / "keys"), "--clients", "2"]) == 0
    keys = sorted((tmp_path / "keys").iterdir())
    assert [k.name for k in keys] == ["client-0.key", "client-1.key"]
    assert all(k.stat().st_mode & 0o777 == 0o600 for k in keys)
    printed = capsys.readouterr().out
    assert all(k.read_text().strip() not in printed for k in keys)  # paths, never a key


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist"),
                    reason="needs Debian's Fashion-MNIST")
def test_the_wheel_installed_outside_the_checkout_runs_a_shipped_config(tmp_path):
    """Build the wheel, install it into a fresh venv (its dependencies seen through a path
    entry, so no editable install of the checkout is active there), and run
    `fedisguise run smoke --rounds 1` in a folder far from the checkout."""
    dist = tmp_path / "dist"
    # where the example plugin is installed beside the checkout, its entry point is visible
    # through this interpreter's site folders (below): its wheel goes into the venv too there
    for project in (ROOT, ROOT / "examples" / "plugin-disguise"):
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(dist), str(project)], check=True,
                       timeout=300)
    wheels = sorted(str(w) for w in dist.glob("*.whl"))
    assert len(wheels) == 2, wheels
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # torch, flwr and the rest from this interpreter's site folders; a path line in a .pth
    # runs none of their own .pth files (the checkout's editable finder among them)
    outer = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    Path(site, "outer-dependencies.pth").write_text("\n".join(outer) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", *wheels], check=True,
                   timeout=300, env=env)
    away = tmp_path / "elsewhere"
    away.mkdir()
    where = subprocess.run([python, "-c", "import fedisguise; print(fedisguise.__file__)"],
                           capture_output=True, text=True, cwd=away, env=env, check=True)
    assert where.stdout.startswith(str(venv)), where.stdout
    out = subprocess.run([venv / "bin" / "fedisguise", "run", "smoke", "--rounds", "1",
                          "--out", "results"], capture_output=True, text=True, cwd=away,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((away / "results" / "smoke" / "metrics.json").read_text())
    assert record["status"] == "finished" and len(record["rounds"]) == 1
    helped = subprocess.run([python, "-m", "fedisguise", "--help"], capture_output=True,
                            text=True, cwd=away, env=env, timeout=120)
    assert helped.returncode == 0 and "compare-smoke" in helped.stdout
