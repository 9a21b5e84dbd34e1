"""Layers you can see: the import contracts in pyproject hold (`lint-imports`, also run by
.ci/run), and the check itself fails on an import that breaks one."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is a dev dependency")


def lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contracts_hold():
    done = lint()
    assert done.returncode == 0, done.stdout[-3000:]
    assert "4 kept, 0 broken" in done.stdout


def test_a_contract_the_code_breaks_is_reported(tmp_path):
    """The experiment imports the config: a contract forbidding that must fail."""
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["fedisguise", "strategies"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "must break"\n'
                      'type = "forbidden"\nsource_modules = ["fedisguise.experiment"]\n'
                      'forbidden_modules = ["fedisguise.config"]\n')
    done = lint("--config", str(config))
    assert done.returncode != 0
    assert "must break BROKEN" in done.stdout


def test_no_module_is_over_400_lines_and_each_layer_has_its_folder():
    """Small modules, and a tree a newcomer can read: the Flower apps, the deployment (with
    the SuperNode launcher and its warm worker together), data, privacy and the grids each in
    their own folder."""
    package = ROOT / "fedisguise"
    long = {str(p.relative_to(ROOT)): n for p in [*package.rglob("*.py"), *(ROOT / "strategies")
                                                  .rglob("*.py")]
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
    for module in ("fl/client_app.py", "fl/server_app.py", "deployment/federation.py",
                   "deployment/supernode/launcher.py", "deployment/supernode/worker.py",
                   "data/datasets.py", "data/partitions.py", "privacy/dp.py",
                   "grids/report.py"):
        assert (package / module).is_file(), module
