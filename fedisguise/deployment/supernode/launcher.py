"""Flower's own SuperNode, launched so that a message waits less before and around its ClientApp.

Where a deployment round's time went on Flower 1.41 with stock SuperNodes (bench/deployment.py,
even with a ClientApp that does nothing):

- after a pull that finds no message the SuperNode sleeps a hard-coded 3 s, and it looks for
  the ClientApp's reply every 0.5 s (flwr/supernode/start_client_internal.py, no setting);
  the server's next message lands in that sleep, so each message waits ~3 s on every node;
- for every message its SuperExec starts a fresh `flwr-clientapp`, which spends ~2.5 s on a
  2-core machine importing Flower before it asks for the message.

`python -m fedisguise.deployment.supernode.launcher supernode ARGS...` runs Flower's
`flower-supernode ARGS...` in this process with two changes, nothing else:

1. the waits of that one module are capped at `FEDISGUISE_SUPERNODE_POLL` s (default 0.2):
   the SuperNode asks the SuperLink for messages 5x a second instead of every 3 s;
2. PATH starts with a folder whose `flwr-clientapp` is a stdlib-only stub: it hands its
   arguments and its stdin/stdout/stderr over a Unix socket to this node's *zygote*, a
   process that imported Flower once and forks a child per message; the child runs Flower's
   own `flwr_clientapp()` with those arguments (same token, same Runtime API, same app from
   the bundle: the zygote forgets fedisguise's modules before it forks), and the stub exits
   with the child's exit code. Where the zygote is not listening yet, or is gone, the stub
   runs the real `flwr-clientapp` instead.

Only for the Flower releases whose internals were read for this (FLOWER_SERIES); for any
other the launcher says so and runs the stock SuperNode unchanged. The zygote's socket sits in
fedisguise.fl.worker_link's 0700 folder, is 0600, and the zygote serves peers of its own uid
only; nothing but a command line and three file descriptors crosses it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path

from fedisguise.fl.flower_timing import FLOWER_SERIES, shorten_retries, supported

POLL_ENV = "FEDISGUISE_SUPERNODE_POLL"
POLL_DEFAULT = 0.2
STUB_NAME = "flwr-clientapp"
MODULE = "fedisguise.deployment.supernode.launcher"  # python -m MODULE supernode|zygote
MAX_REQUEST = 1 << 16
# What a flwr-clientapp run imports after start-up (measured: httpx's transport pulls in
# httpcore and trio, ~0.7 s a message here); the zygote imports them once.
WARM_IMPORTS = ("httpcore", "httpx", "flwr.clientapp", "flwr.clientapp.mod",
                "flwr.supernode.runtime.run_clientapp")

STUB = '''#!{python} -S
# fedisguise.deployment.supernode.launcher's flwr-clientapp: hand this command to the node's zygote
import json, os, socket, struct, sys
try:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect({socket!r})
except OSError:
    os.execv({real!r}, [{real!r}, *sys.argv[1:]])
request = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}).encode()
socket.send_fds(conn, [struct.pack(">I", len(request)) + request], [0, 1, 2])
code = b""
while len(code) < 4:
    chunk = conn.recv(4 - len(code))
    if not chunk:
        sys.exit(1)
    code += chunk
sys.exit(struct.unpack(">i", code)[0])
'''


def poll_interval() -> float:
    """`FEDISGUISE_SUPERNODE_POLL`, checked: a positive number of seconds."""
    raw = os.environ.get(POLL_ENV, str(POLL_DEFAULT))
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"${POLL_ENV} must be a positive number of seconds, got {raw!r}")
    return value


class _SoonerSleep:
    """Stands in for the `time` module of Flower's SuperNode loop: sleeps at most `cap` s."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str):
        return getattr(time, name)


def shorten_polls(cap: float) -> bool:
    """Cap the sleeps of Flower's SuperNode loop at `cap` s; False (and nothing changed) on a
    Flower whose loop was not read for this."""
    import flwr
    from flwr.supernode import start_client_internal as loop

    if not supported(flwr.__version__) or loop.time is not time:
        return False
    loop.time = _SoonerSleep(cap)
    shorten_retries(cap)
    return True


# ---- the launcher -----------------------------------------------------------------------
def zygote_paths(pid: int) -> tuple[Path, Path]:
    """The zygote socket and the stub folder of the SuperNode launched as process `pid`."""
    from fedisguise.fl.worker_link import worker_dir

    folder = worker_dir()
    return folder / f"clientapp-{pid}.sock", folder / f"clientapp-{pid}"


def _remove_stubs(folder: Path) -> None:
    """Remove a stub folder; each step on its own, since the SuperNode's exit and its
    zygote's both remove it and either may have gone first."""
    with contextlib.suppress(OSError):
        (folder / STUB_NAME).unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def remove_leftovers(pid: int) -> bool:
    """Remove the socket and stub folder of the fast SuperNode that ran as `pid`, once it is
    gone: a SuperNode and zygote ended by SIGKILL (a stop's grace ran out, Flower's own
    5 s force-exit) clean up nothing. False, and nothing removed, while `pid` runs."""
    from fedisguise.deployment.processes import alive

    if alive(pid):
        return False
    sock, folder = zygote_paths(pid)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    _remove_stubs(folder)
    return True


def write_stub(folder: Path, sock: Path, real: str) -> Path:
    """The `flwr-clientapp` stub in `folder` (0700), for the zygote on `sock`."""
    folder.mkdir(mode=0o700, exist_ok=True)
    stub = folder / STUB_NAME
    stub.write_text(STUB.format(python=sys.executable, socket=str(sock), real=real))
    stub.chmod(0o700)
    return stub


def real_clientapp() -> str:
    from fedisguise.deployment.processes import flower_command

    return flower_command(STUB_NAME)


def run_supernode(args: list[str]) -> None:
    """Flower's `flower-supernode args...`, with sooner polls and a zygote (module docstring)."""
    import flwr

    cap = poll_interval()
    if not shorten_polls(cap):
        print(f"fedisguise.deployment.supernode.launcher: Flower {flwr.__version__} is not one of "
              f"{', '.join(s + 'x' for s in FLOWER_SERIES)}; running its SuperNode unchanged",
              file=sys.stderr)
    else:
        sock, folder = zygote_paths(os.getpid())
        write_stub(folder, sock, real_clientapp())
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # an earlier process's, with this pid
        zygote = subprocess.Popen([sys.executable, "-m", MODULE, "zygote",
                                   str(sock), "--watch", str(os.getpid())],
                                  stdin=subprocess.DEVNULL)

        def _cleanup() -> None:
            with contextlib.suppress(OSError):
                zygote.terminate()
            _remove_stubs(folder)

        atexit.register(_cleanup)
        os.environ["PATH"] = os.pathsep.join([str(folder), os.environ.get("PATH", "")])
        print(f"{MODULE}: SuperNode polls every {cap:g} s; ClientApps fork from a warm "
              f"process", file=sys.stderr)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *args]
    flower_supernode()


# ---- the zygote -------------------------------------------------------------------------
def serve_zygote(path: Path, watch: int) -> None:
    """Fork a child per request on `path` that runs Flower's `flwr_clientapp()` with the
    request's command line and descriptors, until process `watch` is gone or SIGTERM."""
    from flwr.supernode.cli import flwr_clientapp  # the import each message used to pay

    from fedisguise.deployment.supernode.worker import (  # the worker's socket rules
        peer_uid,
        unlink_own,
    )

    for name in WARM_IMPORTS:  # imported lazily by every flwr-clientapp run
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    shorten_retries(poll_interval())

    # Each child loads the ClientApp Flower installs from the app bundle (flwr's load_app
    # reuses a module already imported), so none of fedisguise stays imported here.
    for name in [m for m in sys.modules if m == "fedisguise" or m.startswith("fedisguise.")]:
        del sys.modules[name]
    with contextlib.suppress(ValueError):
        sys.path.remove(os.getcwd())  # `-m` put the checkout first; Flower puts the bundle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    old_umask = os.umask(0o077)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        path.chmod(0o600)
    finally:
        os.umask(old_umask)
    inode = path.stat().st_ino
    server.listen(16)
    server.settimeout(1.0)
    print(f"{MODULE}: zygote {os.getpid()} ready on {path.name}", file=sys.stderr,
          flush=True)
    try:
        while os.getppid() == watch or not watch:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            if peer_uid(conn) != os.getuid():
                conn.close()  # only the node's own user
                continue
            _fork_child(conn, server, flwr_clientapp)
    finally:
        server.close()
        unlink_own(path, inode)
        _remove_stubs(path.with_suffix(""))  # the launcher's stub folder, gone with its zygote


def _fork_child(conn: socket.socket, server: socket.socket, entry) -> None:
    with conn:
        conn.setblocking(True)
        try:
            data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST + 4, 3)
            (length,) = struct.unpack(">I", data[:4])
            request = json.loads(data[4:4 + length])
            argv, cwd = [str(a) for a in request["argv"]], str(request["cwd"])
            if len(fds) != 3 or len(data) != 4 + length:
                raise ValueError("a request is a command line and three descriptors")
        except (OSError, ValueError, KeyError, TypeError, struct.error):
            for fd in locals().get("fds", []):
                os.close(fd)
            return
        if os.fork() == 0:  # the child: Flower's flwr-clientapp, as if started afresh
            code = 1
            try:
                server.close()
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                    os.close(fd)
                os.chdir(cwd)
                for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                sys.argv = [STUB_NAME, *argv]
                try:
                    entry()
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (exc.code is not None)
            except BaseException:  # noqa: BLE001 - reported on the message's stderr
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                with contextlib.suppress(OSError):
                    conn.sendall(struct.pack(">i", int(code)))
                os._exit(int(code))
        for fd in fds:
            os.close(fd)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["supernode"]:
        run_supernode(argv[1:])
    elif argv[:1] == ["zygote"] and len(argv) == 4 and argv[2] == "--watch":
        serve_zygote(Path(argv[1]), int(argv[3]))
    else:
        sys.exit(f"usage: python -m {MODULE} supernode FLOWER_SUPERNODE_ARGS...\n"
                 f"       python -m {MODULE} zygote SOCKET --watch PID")


if __name__ == "__main__":
    main()
