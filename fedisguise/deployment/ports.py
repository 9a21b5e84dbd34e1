"""Loopback ports for the local federation's processes: one never handed out twice, whether a
child (or its grandchild) listens on it, and a start retried on a fresh port when another
program takes it first."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fedisguise.deployment.processes import descendants

_HANDED_OUT: set[int] = set()  # ports free_port gave to processes started from here
_HANDED_OUT_LOCK = threading.Lock()


# Flower 1.41's flower-supernode binds its runtime API (`--port`) before anything else and
# exits with this line when the port is taken (flwr/supernode/cli/flower_supernode.py).
RUNTIME_PORT_TAKEN = "SuperNode Runtime HTTP API failed to start"
# flower-superlink serves its APIs on `--port` through uvicorn, which logs this line and the
# SuperLink exits 1 when the port is taken (measured with Flower 1.41).
SUPERLINK_PORT_TAKEN = "error while attempting to bind on address"
PORT_TRIES = 3


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, and not one this process handed out already.

    The port is released before the child binds it, so another bind can still take it in
    between (start_on_free_port retries that case); handing each out once at least keeps two
    of our own children from being given the same one.
    """
    with _HANDED_OUT_LOCK:
        for _ in range(64):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise RuntimeError(f"no port on {host} that this process has not handed out already")


def listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _listening_sockets(port: int) -> set[str] | None:
    """The 'socket:[inode]' names of every TCP socket listening on `port`, from /proc/net;
    None where the kernel gives no /proc/net (not Linux)."""
    names: set[str] = set()
    found = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()  # sl local_address rem_address st ... uid timeout inode
            if (len(fields) > 9 and fields[3] == "0A"
                    and int(fields[1].rsplit(":", 1)[1], 16) == port):
                names.add(f"socket:[{fields[9]}]")
    return names if found else None


def listens(process: subprocess.Popen, host: str, port: int) -> bool:
    """True if `process` or one of its descendants listens on host:port.

    Another process listening there (one that took the port between free_port and the
    child's bind) does not count: its child will exit with the port-taken line, and
    start_on_free_port starts it again. Without /proc/net, anything listening counts.
    """
    sockets = _listening_sockets(port)
    if sockets is None:
        return listening(host, port)
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in sockets:
                    return True
            except OSError:
                continue
    return False


def await_listen(host: str, port: int, timeout: float, process: subprocess.Popen) -> bool:
    """True once `process` (or a descendant) listens on host:port, False if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listens(process, host, port):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.1)
    raise TimeoutError(f"{process.args[0]} did not listen on {host}:{port} within {timeout:.0f} s")


class PortsTaken(OSError):
    """A local SuperLink or SuperNode lost every port it was given before it could bind it:
    the machine's loopback ports are taken, not a fault of the run (run.py exits 2)."""


def start_on_free_port(start: Callable[[], tuple[subprocess.Popen, int]], log: Path,
                       taken: str, what: str, host: str, timeout: float,
                       forget: Callable[[subprocess.Popen], None]) -> subprocess.Popen:
    """Start a process on a port from free_port and wait until it listens there.

    free_port releases the port before the child binds it, so another bind (an outbound
    connection's port, say) can take it in between. A child that exits with the `taken` line
    in its `log` is started again on a fresh port, PORT_TRIES times in all, each lost log
    kept as <log>.port-taken-<try>.log and the lost process handed to `forget`. Returns the
    last process: listening, or exited for a reason of its own (the caller says so);
    PortsTaken where it lost its port every time.
    """
    process, port = start()
    lost = []
    for attempt in range(1, PORT_TRIES + 1):
        if await_listen(host, port, timeout, process):
            break
        if taken not in log.read_text(errors="replace"):
            break  # it ended for a reason of its own
        lost.append(port)
        if attempt == PORT_TRIES:  # the exited process stays listed: the federation reaps it
            raise PortsTaken(f"{what} lost its port to another program on each of "
                             f"{PORT_TRIES} tries (ports {', '.join(map(str, lost))} on "
                             f"{host}); something is taking loopback ports as fast as they "
                             f"free up; nothing was trained: try again later, with --force (logs: "
                             f"{log.parent})")
        log.rename(log.with_name(f"{log.stem}.port-taken-{attempt}.log"))
        print(f"{what}: port {port} was taken before it bound it; starting it again on a "
              f"fresh port", file=sys.stderr)
        forget(process)
        process, port = start()
    return process
