"""Real multi-process deployment: a `flower-superlink` and N `flower-supernode` processes.

`LocalFederation` starts them on loopback, each SuperNode with its own `partition-id`, and
always ends every process it started (and their helpers: `flower-superexec`,
`flwr-serverapp`, `flwr-clientapp`) on success, failure and Ctrl-C. `run_deployment` then
submits the run with `flwr run <app> <connection> --run-config <file> --stream`.
With `superlink="host:port"` nothing is started: the run goes to SuperNodes elsewhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from fedisguise.config import Config

APP_DIR = Path(__file__).resolve().parents[1]  # the folder whose pyproject.toml is the app
CONNECTION = "fedisguise"
FLOWER_COMMANDS = ("flower-superlink", "flower-supernode", "flwr")


def flower_command(name: str) -> str:
    """Absolute path of Flower's executable `name`: the one installed next to this
    interpreter, else the one on PATH.

    A virtualenv's python run without activation has its bin/ off PATH, so PATH alone
    would miss (or, worse, pick another environment's) Flower.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found:
        return os.path.abspath(found)
    raise FileNotFoundError(
        f"Flower's `{name}` is neither in {beside.parent} (next to {sys.executable}) nor on "
        f"PATH; install flwr into this environment (`pip install -e .`)"
    )


def child_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process started here.

    SuperLink and SuperNodes start their helpers (`flower-superexec`, `flwr-serverapp`,
    `flwr-clientapp`) by name from PATH: this interpreter's bin/ goes first so that they
    come from the same environment as `flower_command`'s executables.
    """
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path.rstrip(os.pathsep), "FLWR_HOME": str(flwr_home)}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{process.args[0]} did not listen on {host}:{port} within {timeout:.0f} s")


def _descendants(pid: int) -> list[int]:
    """All live descendants of `pid`, read from /proc (helpers may leave their process group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _signal_tree(process: subprocess.Popen, sig: int) -> None:
    for pid in [process.pid, *_descendants(process.pid)]:
        for send in (lambda p: os.killpg(os.getpgid(p), sig), lambda p: os.kill(p, sig)):
            try:
                send(pid)
            except (ProcessLookupError, PermissionError):
                pass


class LocalFederation:
    """A SuperLink and `num_supernodes` SuperNodes on loopback, as a context manager."""

    def __init__(self, num_supernodes: int, log_dir: Path, host: str = "127.0.0.1",
                 start_timeout: float = 60.0) -> None:
        if num_supernodes < 1:
            raise ValueError(f"need at least one SuperNode, got {num_supernodes}")
        self.num_supernodes = num_supernodes
        self.log_dir = Path(log_dir)
        self.host = host
        self.start_timeout = start_timeout
        self.processes: list[subprocess.Popen] = []
        self.flwr_home = Path(tempfile.mkdtemp(prefix="fedisguise-flwr-"))
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return child_env(self.flwr_home)

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = (self.log_dir / log_name).open("wb")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()  # the child holds its own descriptor
        self.processes.append(process)
        return process

    def __enter__(self) -> LocalFederation:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.port = free_port(self.host)
            superlink = self._spawn(
                [flower_command("flower-superlink"), "--insecure",
                 "--host", self.host, "--port", str(self.port),
                 # Offline machines cannot `uv sync`; the environment already has the deps.
                 "--disable-runtime-dependency-installation"],
                "superlink.log",
            )
            wait_for_port(self.host, self.port, self.start_timeout, superlink)
            for pid in range(self.num_supernodes):
                self._spawn(
                    [flower_command("flower-supernode"), "--insecure",
                     "--superlink", self.address,
                     "--port", str(free_port(self.host)),
                     "--node-config", f"partition-id={pid} num-partitions={self.num_supernodes}"],
                    f"supernode-{pid}.log",
                )
            write_connection(self.flwr_home, self.address)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self, grace: float = 10.0) -> None:
        """End every process started here and all their descendants."""
        trees = {p.pid: [p.pid, *_descendants(p.pid)] for p in self.processes}
        for process in reversed(self.processes):
            _signal_tree(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pids in trees.values():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for process in self.processes:
            if process.poll() is None:
                process.wait(timeout=5)
        self.processes.clear()
        shutil.rmtree(self.flwr_home, ignore_errors=True)

    def pids(self) -> list[int]:
        return [pid for p in self.processes for pid in (p.pid, *_descendants(p.pid))]


def write_connection(flwr_home: Path, address: str) -> None:
    """`flwr run` reads SuperLink connections from $FLWR_HOME/config.toml (Flower >= 1.41)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{address}"\ninsecure = true\n'
    )


def submit_run(cfg: Config, flwr_home: Path, env: dict[str, str]) -> None:
    """`flwr run` the app with this config as its run config, streaming the logs here."""
    if not (APP_DIR / "pyproject.toml").is_file():
        raise RuntimeError(
            f"deployment mode needs the fedisguise source tree (pyproject.toml in {APP_DIR}); "
            "install with `pip install -e .` from a checkout"
        )
    run_config = flwr_home / "run-config.toml"
    run_config.write_text("".join(f"{_toml_key(k)} = {_toml_value(v)}\n"
                                  for k, v in cfg.to_flat().items()))
    command = [flower_command("flwr"), "run", str(APP_DIR), CONNECTION,
               "--run-config", str(run_config), "--stream"]
    completed = subprocess.run(command, env=env, stdin=subprocess.DEVNULL)
    if completed.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed with exit code {completed.returncode}")


def run_deployment(cfg: Config, superlink: str | None = None) -> None:
    """Run `cfg` on real Flower processes: local ones, or an existing SuperLink."""
    if superlink:
        flwr_home = Path(tempfile.mkdtemp(prefix="fedisguise-flwr-"))
        try:
            write_connection(flwr_home, superlink)
            submit_run(cfg, flwr_home, child_env(flwr_home))
        finally:
            shutil.rmtree(flwr_home, ignore_errors=True)
        return
    with LocalFederation(cfg.experiment.clients, log_dir=cfg.run_dir / "logs") as federation:
        submit_run(cfg, federation.flwr_home, federation.env)


def _toml_key(key: str) -> str:
    return '"' + key + '"'


def _toml_value(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
