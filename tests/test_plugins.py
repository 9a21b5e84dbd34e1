"""Plugins (fedisguise.api, fedisguise.plugins): a defence, attack, dataset or model of the
user's own joins every process of a run without an edit to the package."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fedisguise import plugins
from fedisguise.api import Disguise, register_dataset, register_disguise, register_model
from fedisguise.attacks.base import ATTACKS
from fedisguise.config import Config, ConfigError
from fedisguise.data.datasets import DATASETS, ImageDataset, dataset_fingerprint, load_dataset
from fedisguise.disguise import DISGUISES, build
from fedisguise.disguise.keys import DisguiseKey
from fedisguise.models import MODELS, build_model
from tests.conftest import DEBIAN_FMNIST

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "plugin-disguise"

NEGATE = '''
from fedisguise.api import Disguise, register_disguise

@register_disguise
class Negate(Disguise):
    name = "negate-{tag}"
    keyed = False
    per_image = True

    def __init__(self, key=None, strength: float = 1.0):
        self.strength = strength

    def _apply(self, images, labels):
        return images + self.strength * (1 - 2 * images), labels
'''


@pytest.fixture
def isolated():
    """Registries and the loaded-plugin list as they were, after the test (installed
    plugins, such as the example's, stay loaded)."""
    plugins.load_installed()
    saved = [(registry, dict(registry))
             for registry in (DISGUISES, ATTACKS, DATASETS, MODELS, plugins._loaded)]
    before = set(sys.modules)
    yield
    for registry, contents in saved:
        registry.clear()
        registry.update(contents)
    for name in set(sys.modules) - before:
        if name.startswith("fedisguise_plugin_"):
            del sys.modules[name]


def plugin_file(tmp_path: Path, tag: str, body: str = NEGATE) -> Path:
    path = tmp_path / f"plug_{tag}.py"
    path.write_text(body.format(tag=tag))
    return path


def test_a_plugin_file_in_the_config_makes_its_defence_a_valid_name(tmp_path, isolated):
    path = plugin_file(tmp_path, "a")
    with pytest.raises(ConfigError, match="unknown disguise 'negate-a'"):
        Config().with_overrides(["disguise=negate-a"])
    cfg = Config().with_overrides([f"experiment.plugins+={path}", "disguise=negate-a"])
    assert cfg.experiment.plugins == [str(path)]
    images = torch.full((2, 1, 4, 4), 0.25)
    out, _ = build(cfg.disguise).apply(images)
    assert torch.allclose(out, torch.full_like(images, 0.75))
    # an unknown name lists the built-in choices and the plugins' together
    with pytest.raises(ConfigError) as err:
        cfg.with_overrides(["disguise=negate-b"])
    builtin, _, extra = str(err.value).partition("; from plugins: ")
    assert "'visualmixer'" in builtin and "'negate-a'" in extra and "negate-a" not in builtin


def test_plugins_travel_in_flowers_flat_run_config_as_absolute_paths(tmp_path, isolated,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    plugin_file(tmp_path, "c")
    cfg = Config().with_overrides(["experiment.plugins=plug_c.py", "disguise=negate-c"])
    flat = cfg.to_flat()
    assert json.loads(flat["experiment.plugins"]) == [str(tmp_path / "plug_c.py")]
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())
    # A process elsewhere (another working directory) reads the same file.
    code = ("import sys, json; from fedisguise.config import Config; "
            "cfg = Config.from_flat(json.loads(sys.argv[1])); "
            "from fedisguise.disguise import build; print(type(build(cfg.disguise)).__name__)")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(flat)], cwd="/",
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Negate"


@pytest.mark.parametrize("body, spec, match", [
    ("raise RuntimeError('boom')\n", "file", r"plug_bad.py' failed to import: RuntimeError: boom"),
    ("", "missing", r"plug_none.py': no such file"),
    ("", "no_such_module_xyz.sub", r"'no_such_module_xyz.sub': no module of that name"),
    ("", "notes.txt", r"a plugin file must be a .py file"),
])
def test_a_plugin_that_cannot_load_is_an_error_naming_it(tmp_path, isolated, body, spec, match):
    if spec == "file":
        spec = str(plugin_file(tmp_path, "bad", body))
    elif spec == "missing":
        spec = str(tmp_path / "plug_none.py")
    elif spec == "notes.txt":
        (tmp_path / "notes.txt").write_text("x")
        spec = str(tmp_path / "notes.txt")
    with pytest.raises(ConfigError, match=f"experiment.plugins: .*{match}"):
        Config().with_overrides([f"experiment.plugins+={json.dumps([spec])}"])


def test_a_plugin_cannot_take_a_name_that_is_held_or_skip_apply(isolated):
    with pytest.raises(ValueError, match="disguise name 'visualmixer' is taken by "
                                         r"fedisguise.disguise.visualmixer.VisualMixer \(built-in\)"):
        @register_disguise
        class Impostor(Disguise):
            name = "visualmixer"

            def _apply(self, images, labels):
                return images, labels
    with pytest.raises(TypeError, match="must implement _apply"):
        @register_disguise
        class Empty(Disguise):
            name = "empty"
    with pytest.raises(ValueError, match="a disguise needs a name"):
        @register_disguise
        class Nameless(Disguise):
            def _apply(self, images, labels):
                return images, labels
    assert DISGUISES["visualmixer"].__module__ == "fedisguise.disguise.visualmixer"


def test_a_registered_dataset_without_data_dir_and_a_registered_model(isolated):
    @register_dataset("tiny-rgb")
    def tiny(split: str, data_dir: str) -> ImageDataset:
        gen = torch.Generator().manual_seed(0 if split == "train" else 1)
        labels = torch.arange(40) % 4
        return ImageDataset(torch.rand(40, 3, 16, 16, generator=gen), labels, 4)

    @register_model("linear")
    def linear(in_channels: int, num_classes: int, image_size: tuple[int, int]
               ) -> torch.nn.Module:
        h, w = image_size
        return torch.nn.Sequential(torch.nn.Flatten(),
                                   torch.nn.Linear(in_channels * h * w, num_classes))

    assert dataset_fingerprint("tiny-rgb") == ()  # was a KeyError
    data = load_dataset("tiny-rgb", "test")
    assert data.images.shape == (40, 3, 16, 16) and data.num_classes == 4
    model = build_model("linear", 3, 4, 16)
    assert model(data.images).shape == (40, 4)
    cfg = Config().with_overrides(["data.dataset=tiny-rgb", "model.name=linear"])
    assert (cfg.data.dataset, cfg.model.name) == ("tiny-rgb", "linear")


def test_plus_equals_adds_to_a_list_and_only_to_a_list(tmp_path, isolated):
    a, b = plugin_file(tmp_path, "d"), plugin_file(tmp_path, "e")
    cfg = Config().with_overrides([f"experiment.plugins={a}", f"experiment.plugins+={b}"])
    assert cfg.experiment.plugins == [str(a), str(b)]
    assert Config().with_overrides(
        [f"experiment.plugins+={a}", f"experiment.plugins={b}"]).experiment.plugins == [str(b)]
    with pytest.raises(ConfigError, match=r"train.lr\+= adds to a list"):
        Config().with_overrides(["train.lr+=0.1"])


def test_a_keyed_plugin_changes_with_the_key(isolated):
    """The example's defence (loaded from its file, installed or not)."""
    if "pixelflip" not in DISGUISES:
        Config().with_overrides([f"experiment.plugins={EXAMPLE / 'fedisguise_pixelflip.py'}"])
    images = torch.rand(4, 1, 28, 28)
    one = build({"name": "pixelflip"}, DisguiseKey.generate(1)).apply(images)[0]
    again = build({"name": "pixelflip"}, DisguiseKey.generate(1)).apply(images)[0]
    other = build({"name": "pixelflip"}, DisguiseKey.generate(2)).apply(images)[0]
    assert torch.equal(one, again) and not torch.equal(one, other)
    assert torch.allclose(torch.where(one == images, images, 1 - one), images)


# ---- whole runs ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(DEBIAN_FMNIST), reason="needs Debian's Fashion-MNIST")
def test_the_installed_example_plugin_gets_its_row_in_every_table(tmp_path):
    """examples/plugin-disguise, pip-installed (here into a folder of its own, so the test
    changes no environment): its entry point alone puts `pixelflip` in table.md, the level
    table and report.html, against every attack that applies, with no file under
    fedisguise/ edited and nothing in the grid naming its module."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(EXAMPLE)],
                   check=True, timeout=300)
    code = ("from importlib.metadata import entry_points; "
            "print([p.value for p in entry_points(group='fedisguise.plugins')])")
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{REPO}"}
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, check=True).stdout
    assert "fedisguise_pixelflip" in names
    # the plugin's row alone (`none` is a built-in row, listed as missing): half the cells
    out = subprocess.run([sys.executable, str(REPO / "run.py"), "--compare",
                          str(EXAMPLE / "grid.toml"), "--only", "pixelflip",
                          "--out", str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    grid = tmp_path / "plugin-pixelflip"
    with (grid / "table.csv").open() as fh:
        rows = {r["defence"]: r for r in csv.DictReader(fh)}
    flip = rows["pixelflip"]
    for figure in ("chain.psnr_vs_original", "chain.recognisability", "membership.auc"):
        assert flip[figure] not in ("", None), figure
    assert float(flip["visual_privacy"]) > 0.5  # the examiner cannot read flipped pixels
    md = (grid / "table.md").read_text()
    level_table = md.split("## Strongest attack per defence and knowledge level")[1]
    assert "| pixelflip |" in md.split("More figures")[0] and "| pixelflip |" in level_table
    assert "pixelflip" in (grid / "report.html").read_text()
    assert "pixelflip: accuracy" in out.stdout


ATTACK = '''
import os
from fedisguise.api import Attack, Figure, Reconstruction, register_attack

with open(os.environ["PLUGIN_PIDS"], "a") as fh:  # every process that imports the plugin
    fh.write(f"{os.getpid()}\\n")


@register_attack
class CountImages(Attack):
    """Reports how many examples the captured update covers: a figure of its own."""

    name = "count_images"
    evidence = "update"
    figures = (Figure("examples", "examples behind the update"),)

    def reconstruct(self, evidence, knowledge, runtime):
        return Reconstruction(figures={"status": "ok",
                                       "examples": evidence.view.num_examples})

    def score(self, reconstruction, truth, scorer):
        return {"examples": reconstruction.figures["examples"]}
'''


@pytest.mark.slow
def test_an_attack_plugin_from_a_file_reaches_ray_actors_and_the_table(tmp_path):
    """experiment.plugins names a .py file: the driver and both Ray actors import it, and the
    attack's own figure is a column of the table."""
    (tmp_path / "count_attack.py").write_text(ATTACK)
    (tmp_path / "grid.toml").write_text(textwrap.dedent("""
        [compare]
        name = "plugin-attack"
        seeds = [0]
        [[compare.defence]]
        label = "none"
        [[compare.attack]]
        label = "count"
        utility = true
        attacks = [{name = "count_images", round = 1, client = 1}]
        [experiment]
        clients = 2
        rounds = 1
        plugins = ["count_attack.py"]
        [data]
        dataset = "synthetic"
        train_per_client = 50
        [train]
        optimizer = "adam"
        lr = 0.003
        [resources]
        num_cpus = 1.0
    """))
    pids = tmp_path / "pids.txt"
    out = subprocess.run([sys.executable, str(REPO / "run.py"), "--compare", "grid.toml",
                          "--out", str(tmp_path / "out")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO), "PLUGIN_PIDS": str(pids)})
    assert out.returncode == 0, out.stderr[-3000:]
    with (tmp_path / "out" / "plugin-attack" / "table.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert float(row["count_images.examples"]) == 50
    md = (tmp_path / "out" / "plugin-attack" / "table.md").read_text()
    assert "examples behind the update" in md
    # the driver, and the two Ray actors that trained the two clients
    assert len(set(pids.read_text().split())) >= 3, pids.read_text()


def test_a_plugin_defence_meets_the_attacks_its_capabilities_call_for(isolated):
    """Stages and scopes follow what a defence declares, not its name."""
    from fedisguise.api import Attack, Figure, register_attack
    from fedisguise.attacks.chain import default_stages

    @register_disguise
    class Affine(Disguise):
        name = "keyed-affine"
        block_affine = True

        def __init__(self, key=None):
            pass

        def _apply(self, images, labels):
            return 0.5 * images + 0.25, labels

    @register_disguise
    class Mixer(Disguise):
        name = "my-mixer"
        mixes_images = True
        keyed = False

        def __init__(self, key=None):
            pass

        def _apply(self, images, labels):
            return images.flip(0), labels

    assert default_stages("keyed-affine", 2)[1] == {"name": "inverse_network", "level": 2,
                                                    "method": "known-pairs"}
    assert default_stages("keyed-affine", 1)[1] == {"name": "inverse_network", "level": 1}
    assert default_stages("my-mixer", 1)[1] == {"name": "instahide_attack"}
    assert "keyed-affine" in build_attack_scope("inverse_network", level=2, method="known-pairs")
    assert "my-mixer" in build_attack_scope("instahide_attack")

    @register_attack
    class Rival(Attack):
        name = "rival"
        evidence = "images"
        targets = "mixes_images"
        chain_stage = True
        figures = (Figure("psnr_vs_original", "rival PSNR"),)

        def reconstruct(self, evidence, knowledge, runtime):
            raise AssertionError

        def score(self, reconstruction, truth, scorer):
            raise AssertionError

    with pytest.raises(ValueError, match=r"attacks \['instahide_attack', 'rival'\] each "
                                         r"declare themselves the chain's stage"):
        default_stages("my-mixer", 1)
    Rival.targets = "no_such_capability"
    with pytest.raises(ValueError, match="unknown capability 'no_such_capability'"):
        Rival().scope()


def build_attack_scope(name: str, **params) -> tuple[str, ...]:
    from fedisguise.attacks import build_attack

    return build_attack({"name": name, **params}).scope()


def test_a_broken_installed_plugin_is_named_on_every_call(monkeypatch, isolated):
    """An entry point whose module fails stops every config that loads it, not just the
    first (a second call must not fall through to a later "unknown disguise")."""
    class Point:
        name, value, dist = "broken", "no_such_plugin_module_xyz", None

    monkeypatch.setattr(plugins, "_installed_done", False)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [Point()])
    for _ in range(2):
        with pytest.raises(ConfigError, match="installed plugin 'broken' .*no module of that"):
            Config().load_plugins()
