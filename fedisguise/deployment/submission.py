"""Submitting a run to a SuperLink: the environment of Flower's processes, the connection `flwr`
reads (FLWR_HOME/config.toml), the security settings checked before anything starts, and
`flwr run` with the run config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fedisguise.config import DRIVER, DRIVER_KEY, Config, ConfigError
from fedisguise.deployment.processes import flower_command
from fedisguise.deployment.tls import ServerCertificates

APP_DIR = Path(__file__).resolve().parents[2]  # the folder whose pyproject.toml is the app
CONNECTION = "fedisguise"
# Flower's SuperExec looks for new tasks every second by default; a message then waits up to
# 1 s on each SuperNode before its ClientApp starts. Its own setting, kept unless set already.
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_POLL = "0.1"


def child_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process started here.

    SuperLink and SuperNodes start their helpers (`flower-superexec`, `flwr-serverapp`,
    `flwr-clientapp`) by name from PATH: this interpreter's bin/ goes first so that they
    come from the same environment as `flower_command`'s executables. Their SuperExecs poll
    for tasks every SUPEREXEC_POLL s (a local SuperLink's keeps Flower's 1 s: `_spawn`).
    """
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path.rstrip(os.pathsep), "FLWR_HOME": str(flwr_home),
            SUPEREXEC_POLL_ENV: os.environ.get(SUPEREXEC_POLL_ENV, SUPEREXEC_POLL)}


def write_connection(flwr_home: Path, address: str, tls: bool = False,
                     root_certificates: str | Path | None = None) -> None:
    """`flwr run` reads SuperLink connections from $FLWR_HOME/config.toml (Flower >= 1.41).

    Without TLS the connection is `insecure`; with TLS `flwr` verifies the SuperLink against
    `root_certificates` (a CA certificate; Flower wants an absolute path) or, when None,
    against the system's CA store.
    """
    if root_certificates and not tls:
        raise ValueError("root_certificates need tls=True")
    lines = [f"address = {_toml_value(address)}"]
    if not tls:
        lines.append("insecure = true")
    elif root_certificates:
        ca = Path(root_certificates).expanduser().resolve()
        lines.append(f"root-certificates = {_toml_value(str(ca))}")
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        + "".join(f"{line}\n" for line in lines)
    )


def check_security(cfg: Config, superlink: str | None = None) -> None:
    """Fail before anything starts when `[deployment]` names files that are not there, or a
    setting that does not apply to where the run goes (local federation or `superlink`)."""
    dep = cfg.deployment
    if superlink:
        for key in ("certificates", "supernode_auth"):
            if getattr(dep, key):
                raise ConfigError(
                    f"deployment.{key} is for the local federation; with --superlink the "
                    "remote SuperLink's operator sets up its certificates and registers its "
                    "SuperNodes (give its CA as deployment.root_certificates)")
        if dep.root_certificates and not Path(dep.root_certificates).expanduser().is_file():
            raise ConfigError(f"deployment.root_certificates: no file {dep.root_certificates}")
        return
    if dep.root_certificates:
        raise ConfigError("deployment.root_certificates is for --superlink; the local "
                          "federation's CA is deployment.certificates/ca.crt")
    if dep.certificates:
        certificates = ServerCertificates.in_dir(dep.certificates)
        missing = certificates.missing()
        if missing:
            raise ConfigError(
                f"deployment.certificates: {dep.certificates} lacks {', '.join(missing)} "
                "(make a set with `python -m fedisguise.deployment.tls certs DIR`)")
        if certificates.key.stat().st_mode & 0o077:
            raise ConfigError(f"deployment.certificates: {certificates.key} is readable by "
                              f"others; `chmod 600` it")
    if dep.fast_nodes:
        from fedisguise.deployment.supernode.launcher import poll_interval

        try:
            poll_interval()
        except ValueError as err:
            raise ConfigError(f"deployment.fast_nodes: {err}") from None


def submit_run(cfg: Config, flwr_home: Path, env: dict[str, str]) -> None:
    """`flwr run` the app with this config as its run config, streaming the logs here."""
    if not (APP_DIR / "pyproject.toml").is_file():
        raise RuntimeError(
            f"deployment mode needs the fedisguise source tree (pyproject.toml in {APP_DIR}); "
            "install with `pip install -e .` from a checkout"
        )
    submit_app(APP_DIR, {**cfg.to_flat(), DRIVER_KEY: DRIVER}, flwr_home, env)


def submit_app(app_dir: Path, run_config: dict[str, bool | float | str], flwr_home: Path,
               env: dict[str, str], quiet: bool = False) -> None:
    """`flwr run app_dir` with `run_config` (flat), streaming its logs here (or, `quiet`,
    keeping them for the error message only)."""
    config_file = flwr_home / "run-config.toml"
    config_file.write_text("".join(f"{_toml_key(k)} = {_toml_value(v)}\n"
                                   for k, v in run_config.items()))
    command = [flower_command("flwr"), "run", str(app_dir), CONNECTION,
               "--run-config", str(config_file), "--stream"]
    completed = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, check=False,
                               capture_output=quiet, text=quiet)
    if completed.returncode != 0:
        tail = ("\n" + (completed.stdout + completed.stderr)[-2000:]) if quiet else ""
        raise RuntimeError(f"`{' '.join(command)}` failed with exit code "
                           f"{completed.returncode}{tail}")


def _toml_key(key: str) -> str:
    return '"' + key + '"'


def _toml_value(value: bool | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
