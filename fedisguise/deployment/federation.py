"""Real multi-process deployment: a `flower-superlink` and N `flower-supernode` processes.

`LocalFederation` starts them on loopback, each SuperNode with its own `partition-id`, and
always ends every process it started (and their helpers: `flower-superexec`,
`flwr-serverapp`, `flwr-clientapp`) on success, failure and Ctrl-C. `run_deployment` then
submits the run with `flwr run <app> <connection> --run-config <file> --stream`.
With `superlink="host:port"` nothing is started: the run goes to SuperNodes elsewhere.

`[deployment]` in the config turns on TLS for every API (Flower 1.41: `flower-superlink
--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`, `flower-supernode --root-certificates`,
`root-certificates` in the `flwr` connection) and SuperNode authentication
(`flower-superlink --enable-supernode-auth`; each public key registered with
`flwr supernode register` before its SuperNode starts with `--auth-supernode-private-key`).
Ports come from fedisguise.deployment.ports, and the run is submitted through
fedisguise.deployment.submission.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from fedisguise.config import Config
from fedisguise.deployment import reaper
from fedisguise.deployment.ports import (RUNTIME_PORT_TAKEN, SUPERLINK_PORT_TAKEN, free_port,
                                         start_on_free_port)
from fedisguise.deployment.processes import (descendants, die_with_parent, flower_command,
                                             signal_tree)
from fedisguise.deployment.reaper import MARKER_ENV, NODE_ENV, end_marked
from fedisguise.deployment.submission import (APP_DIR, CONNECTION, SUPEREXEC_POLL_ENV,
                                              check_security, child_env, submit_run,
                                              write_connection)
from fedisguise.deployment.supernode.launcher import remove_leftovers
from fedisguise.deployment.tls import (ServerCertificates, generate_certificates,
                                       generate_supernode_key)
from fedisguise.disguise.keys import NODE_KEY_FILE, key_path

FLOWER_COMMANDS = ("flower-superlink", "flower-supernode", "flwr")


class LocalFederation:
    """A SuperLink and `num_supernodes` SuperNodes on loopback, as a context manager.

    With `tls` every API is HTTPS: `certificates` names a folder with ca.crt, server.pem and
    server.key, or None for a fresh CA and certificate for this host (fedisguise.deployment.tls).
    With `supernode_auth` (needs tls) the SuperLink accepts only registered SuperNodes: each
    SuperNode started here gets its own key pair, registered with `flwr supernode register` before
    it starts. Generated certificates and keys live in `flwr_home` and go with it.

    `key_files`, when given, holds one key file per SuperNode: node i gets
    `disguise-key-file=<absolute path>` in its node config, as a SuperNode elsewhere would.
    `node_options` are further node-config entries for every SuperNode (e.g. `warm-worker`).

    Every process started here carries a marker in its environment, so that helpers a
    SuperNode leaves behind when it dies are ended at once (a watcher thread), and a reaper
    process ends them all if this process dies, even by SIGKILL (fedisguise.deployment.reaper).
    """

    def __init__(self, num_supernodes: int, log_dir: Path, host: str = "127.0.0.1",
                 start_timeout: float = 60.0, tls: bool = False,
                 certificates: str | Path | None = None, supernode_auth: bool = False,
                 key_files: Sequence[str | Path] = (),
                 node_options: dict[str, str] | None = None, fast_nodes: bool = True) -> None:
        if num_supernodes < 1:
            raise ValueError(f"need at least one SuperNode, got {num_supernodes}")
        if (certificates or supernode_auth) and not tls:
            raise ValueError("certificates and supernode_auth need tls=True")
        if key_files and len(key_files) != num_supernodes:
            raise ValueError(f"need one key file per SuperNode ({num_supernodes}), got "
                             f"{len(key_files)}")
        self.num_supernodes = num_supernodes
        self.key_files = [Path(k).resolve() for k in key_files]  # SuperNodes run elsewhere
        self.node_options = dict(node_options or {})  # more node-config entries, every node
        self.fast_nodes = fast_nodes  # SuperNodes through fedisguise.deployment.supernode.launcher
        self.log_dir = Path(log_dir)
        self.host = host
        self.start_timeout = start_timeout
        self.tls = tls
        self.given_certificates = certificates
        self.supernode_auth = supernode_auth
        self.certificates: ServerCertificates | None = None
        self.processes: list[subprocess.Popen] = []
        self.supernodes: list[subprocess.Popen] = []
        self.flwr_home = Path(tempfile.mkdtemp(prefix="fedisguise-flwr-"))
        self.port = 0
        self.marker = uuid.uuid4().hex  # in the environment of every process started here
        self.dead: dict[int, int] = {}  # SuperNode index -> exit code, for those that died
        self._starting: set[int] = set()  # SuperNodes not up yet: _watch leaves them be
        self._fast_pids: list[int] = []  # every fast SuperNode started, restarted ones too
        self._reaper: subprocess.Popen | None = None
        self._watching = threading.Event()

    @classmethod
    def from_config(cls, cfg: Config, log_dir: Path,
                    node_options: dict[str, str] | None = None) -> LocalFederation:
        dep = cfg.deployment
        return cls(cfg.experiment.clients, log_dir, tls=dep.tls,
                   certificates=dep.certificates or None, supernode_auth=dep.supernode_auth,
                   key_files=node_key_files(cfg), node_options=node_options,
                   fast_nodes=dep.fast_nodes)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def root_certificates(self) -> Path | None:
        """The CA certificate SuperNodes and `flwr` verify the SuperLink with (TLS only)."""
        return self.certificates.ca if self.certificates else None

    @property
    def env(self) -> dict[str, str]:
        return {**child_env(self.flwr_home), MARKER_ENV: self.marker, NODE_ENV: "submit"}

    def _spawn(self, args: list[str], log_name: str, node: str) -> subprocess.Popen:
        log = (self.log_dir / log_name).open("wb")
        env = {**self.env, NODE_ENV: node}
        if node == "superlink" and SUPEREXEC_POLL_ENV not in os.environ:
            # its SuperExec starts one ServerApp a run: Flower's 1 s beat costs 1 s once,
            # where 0.1 s would cost requests to the SuperLink all run long
            del env[SUPEREXEC_POLL_ENV]
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, stdin=subprocess.DEVNULL,
                                   # only a prctl call, loaded beforehand: no lock taken
                                   start_new_session=True,
                                   preexec_fn=die_with_parent)  # noqa: PLW1509
        log.close()  # the child holds its own descriptor
        self.processes.append(process)
        return process

    def _start_reaper(self) -> None:
        """A process that ends this federation's processes if this one dies, even by
        SIGKILL (fedisguise.deployment.reaper); a clean stop() closes its pipe and it finds
        nothing."""
        env = {k: v for k, v in os.environ.items() if k not in (MARKER_ENV, NODE_ENV)}
        self._reaper = subprocess.Popen([sys.executable, "-m", reaper.__name__, self.marker],
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=env,
                                        start_new_session=True, cwd=str(APP_DIR))

    def _watch(self) -> None:
        """A SuperNode that dies leaves its `flower-superexec` and `flwr-clientapp` behind,
        re-parented: end them, and say so (the server records the node's failed replies)."""
        while not self._watching.wait(1.0):
            for pid, process in enumerate(list(self.supernodes)):
                if pid not in self.dead and pid not in self._starting \
                        and process.poll() is not None:
                    self.dead[pid] = process.returncode
                    ended = end_marked(self.marker, f"supernode-{pid}", grace=2.0)
                    print(f"SuperNode {pid} died (exit code {process.returncode}); ended its "
                          f"{len(ended)} helper process(es)", file=sys.stderr)

    def __enter__(self) -> Self:
        if self.fast_nodes:  # a bad $FEDISGUISE_SUPERNODE_POLL, refused before anything starts
            from fedisguise.deployment.supernode.launcher import poll_interval

            poll_interval()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_reaper()
            if self.tls:
                self.certificates = (
                    ServerCertificates.in_dir(self.given_certificates)
                    if self.given_certificates
                    else generate_certificates(self.flwr_home / "certs", (self.host,))
                )
            if self.certificates is None:
                security = ["--insecure"]
            else:
                security = ["--ssl-ca-certfile", str(self.certificates.ca),
                            "--ssl-certfile", str(self.certificates.cert),
                            "--ssl-keyfile", str(self.certificates.key)]
                if self.supernode_auth:
                    security.append("--enable-supernode-auth")
            def spawn_superlink() -> tuple[subprocess.Popen, int]:
                self.port = free_port(self.host)
                return self._spawn(
                    [flower_command("flower-superlink"), *security,
                     "--host", self.host, "--port", str(self.port),
                     # Offline machines cannot `uv sync`; the environment has the deps.
                     "--disable-runtime-dependency-installation"],
                    "superlink.log", "superlink",
                ), self.port

            superlink = start_on_free_port(spawn_superlink, self.log_dir / "superlink.log",
                                           SUPERLINK_PORT_TAKEN, "SuperLink", self.host,
                                           self.start_timeout, self.processes.remove)
            if superlink.poll() is not None:
                raise RuntimeError(f"{superlink.args[0]} exited with code "
                                   f"{superlink.returncode} (log: {self.log_dir}/superlink.log)")
            write_connection(self.flwr_home, self.address, self.tls, self.root_certificates)
            launches = [self._launch_supernode(pid) for pid in range(self.num_supernodes)]
            for launch in launches:  # all start at once; each is then awaited
                self._until_listening(launch)
            threading.Thread(target=self._watch, name="supernode-watch", daemon=True).start()
        except BaseException:
            self.stop()
            raise
        return self

    def start_supernode(self, partition_id: int,
                        private_key: Path | None = None) -> subprocess.Popen:
        """Start one more SuperNode for partition `partition_id` (of `num_supernodes`) and
        return once its runtime API listens (or it has exited on its own: `_watch` says so).

        With SuperNode authentication it signs with `private_key`, or, when None, with a fresh
        key pair whose public key is registered first. Its log is supernode-<n>.log, n
        counting the SuperNodes started so far.
        """
        return self._until_listening(self._launch_supernode(partition_id, private_key))

    def _launch_supernode(self, partition_id: int,
                          private_key: Path | None = None) -> _Launch:
        index = len(self.supernodes)
        if self.supernode_auth and private_key is None:
            private_key, public_key = generate_supernode_key(
                self.flwr_home / "keys", f"supernode-{index}")
            self.register(public_key)
        launch = _Launch(index, partition_id, private_key)
        self._starting.add(index)  # until _until_listening: a restart is not a death
        process = self._spawn_supernode(launch)
        self.supernodes.append(process)
        # now, so that its imports overlap the SuperNode's start; a SuperNode started again
        # (a taken port, rare) leaves this worker to end with the first pid, and its
        # ClientApp starts a worker of its own on the first message
        self._prestart_worker(process, index, partition_id)
        return launch

    def _spawn_supernode(self, launch: _Launch) -> subprocess.Popen:
        launcher = ([sys.executable, "-m", "fedisguise.deployment.supernode.launcher", "supernode"]
                    if self.fast_nodes else [flower_command("flower-supernode")])
        launch.port = free_port(self.host)
        args = [*launcher, "--superlink", self.address, "--port", str(launch.port),
                "--node-config", self.node_config(launch.partition_id)]
        if self.root_certificates is None:
            args.append("--insecure")
        else:
            args += ["--root-certificates", str(self.root_certificates)]
        if launch.private_key is not None:
            args += ["--auth-supernode-private-key", str(launch.private_key)]
        process = self._spawn(args, f"supernode-{launch.index}.log", f"supernode-{launch.index}")
        if self.fast_nodes:
            self._fast_pids.append(process.pid)
        return process

    def _until_listening(self, launch: _Launch) -> subprocess.Popen:
        """Wait for the SuperNode's runtime API; one that lost its port to another process
        between free_port and its bind is started again on a fresh port (start_on_free_port),
        its log kept as supernode-<n>.port-taken-<try>.log."""
        first = True

        def spawn() -> tuple[subprocess.Popen, int]:
            nonlocal first
            if not first:
                self.supernodes[launch.index] = self._spawn_supernode(launch)
            first = False
            return self.supernodes[launch.index], launch.port

        try:
            return start_on_free_port(spawn, self.log_dir / f"supernode-{launch.index}.log",
                                      RUNTIME_PORT_TAKEN, f"SuperNode {launch.index}",
                                      self.host, self.start_timeout, self.processes.remove)
        finally:
            self._starting.discard(launch.index)  # from now on _watch reports its death

    def _prestart_worker(self, supernode: subprocess.Popen, index: int,
                         partition_id: int) -> None:
        """Start the node's warm worker now (fedisguise.deployment.supernode.worker), as a process
        of this federation marked as the SuperNode's (ended with its helpers; log worker-<n>.log);
        the node config is read back with Flower's own parser, as the ClientApp sees it."""
        from flwr.common.config import parse_config_args

        from fedisguise.fl import worker_link as node_worker
        from fedisguise.fl.client_app import worker_enabled

        node_config = parse_config_args([self.node_config(partition_id)])
        if not worker_enabled(node_config):
            return
        node_worker.prestart(node_config, supernode.pid, spawn=lambda args: self._spawn(
            args, f"worker-{index}.log", f"supernode-{index}"))

    def node_config(self, partition_id: int) -> str:
        """The `--node-config` of the SuperNode for `partition_id`: its partition, and its own
        key file when the federation has per-node keys."""
        config = f"partition-id={partition_id} num-partitions={self.num_supernodes}"
        if self.key_files:
            config += f" {NODE_KEY_FILE}={_node_config_string(str(self.key_files[partition_id]))}"
        for key, value in self.node_options.items():
            config += f" {key}={_node_config_string(str(value))}"
        return config

    def register(self, public_key: Path) -> None:
        """Allow the SuperNode holding this public key's private key to connect (Flower
        1.41 registers SuperNodes through the SuperLink's Control API)."""
        command = [flower_command("flwr"), "supernode", "register", str(public_key), CONNECTION]
        done = subprocess.run(command, env=self.env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`flwr supernode register {public_key}` failed with exit code "
                               f"{done.returncode}: {(done.stdout + done.stderr).strip()}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self, grace: float = 5.0) -> None:
        """End every process started here and all their descendants, re-parented ones
        included (found by the marker in their environment)."""
        self._watching.set()
        trees = {p.pid: [p.pid, *descendants(p.pid)] for p in self.processes}
        for process in reversed(self.processes):
            signal_tree(process, signal.SIGTERM)
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
        end_marked(self.marker, grace=1.0)
        self.processes.clear()
        if self._reaper is not None:
            self._reaper.stdin.close()  # EOF: the reaper looks once more, finds none, exits
            self._reaper.wait(timeout=10)
            self._reaper = None
        shutil.rmtree(self.flwr_home, ignore_errors=True)
        for pid in self._fast_pids:  # last: what a SuperNode killed outright left behind
            remove_leftovers(pid)

    def pids(self) -> list[int]:
        """Every live process of this federation, re-parented helpers included."""
        from fedisguise.deployment.reaper import marked

        return sorted(set(marked(self.marker))
                      | {pid for p in self.processes for pid in (p.pid, *descendants(p.pid))})


@dataclass
class _Launch:
    """What a SuperNode is started with, kept to start it again on a fresh port."""

    index: int
    partition_id: int
    private_key: Path | None
    port: int = 0


def _node_config_string(value: str) -> str:
    """`value` as a string Flower's `--node-config` parser reads back whole (a TOML literal
    string, or a basic one when it holds a single quote)."""
    if "\n" in value or ("'" in value and '"' in value):
        raise ValueError(f"cannot pass {value!r} in --node-config (a newline, or both quotes)")
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\") + '"'


def node_key_files(cfg: Config) -> list[Path]:
    """The per-node key files of `client.key_dir` (empty without one)."""
    if not cfg.client.key_dir:
        return []
    return [key_path(cfg.client.key_dir, i) for i in range(cfg.experiment.clients)]


def run_deployment(cfg: Config, superlink: str | None = None) -> None:
    """Run `cfg` on real Flower processes: local ones, or an existing SuperLink."""
    check_security(cfg, superlink)
    if superlink:
        flwr_home = Path(tempfile.mkdtemp(prefix="fedisguise-flwr-"))
        try:
            write_connection(flwr_home, superlink, cfg.deployment.tls,
                             cfg.deployment.root_certificates or None)
            submit_run(cfg, flwr_home, child_env(flwr_home))
        finally:
            shutil.rmtree(flwr_home, ignore_errors=True)
        return
    with LocalFederation.from_config(cfg, log_dir=cfg.run_dir / "logs") as federation:
        submit_run(cfg, federation.flwr_home, federation.env)


