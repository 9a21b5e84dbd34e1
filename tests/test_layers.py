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
    assert "3 kept, 0 broken" in done.stdout


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
