"""The ClientApp's link to its SuperNode's warm worker: where the worker listens, the wire
format, and `forward`, which hands a message to the worker (starting it where none runs).

Why: Flower 1.41 starts a fresh `flwr-clientapp` per message, and each would import torch and
prepare the node's data. The ClientApp stays light and forwards the message to one long-lived
worker per node (fedisguise.deployment.supernode.worker, started here by its module name, so
that nothing here imports the deployment). What follows describes both ends.

A SuperNode's warm worker: one long-lived process per node that handles its messages.

Flower 1.41's SuperNode starts a fresh `flwr-clientapp` process for every message (its
Kubernetes-only warm executors do not cover ClientApps). Each one would import torch, load the
dataset, partition and disguise before training a few seconds' worth: that, not the training,
made a deployment round 10-20x slower than a simulated one. Here the ClientApp stays light: it
forwards the message's content and its Context over a Unix socket to this worker, which keeps
torch imported and the node's prepared data in memory (fedisguise.fl.client_work's cache), and
waits for the reply. Both ends run on the node's own machine, as the same user.

- One worker per node: the socket's name is a digest of the node's config (partition, key
  file path), this interpreter and the source files of fedisguise and strategies, so a code
  change or another environment gets a fresh worker and never stale code.
- The socket lives in a folder only its owner can enter (0700; checked), the worker accepts
  peers of its own uid only, and nothing but Flower's own records crosses it (protobuf, no
  pickle). Key material never does: the worker reads the node's key file itself.
- The worker ends when the SuperNode it serves is gone, after `FEDISGUISE_WORKER_IDLE` s
  (default 600) without a message, or on SIGTERM; it carries the SuperNode's environment, so
  a LocalFederation ends it with everything else it started.
- A worker that dies mid-message fails that message (the server records the failure) and the
  next message starts a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext  # pylint: disable=E0611
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # pylint: disable=E0611

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("fedisguise", "strategies")
IDLE_ENV = "FEDISGUISE_WORKER_IDLE"
DIR_ENV = "FEDISGUISE_WORKER_DIR"
START_TIMEOUT = 180.0  # importing torch on a loaded 2-core machine can take a while
KINDS = ("train", "evaluate")
WORKER_MODULE = "fedisguise.deployment.supernode.worker"  # started by name, never imported
SOCKET_PATH_MAX = 107  # Linux's sun_path, less its terminating NUL


class WorkerError(RuntimeError):
    """The worker could not be reached, or it failed on the message (its traceback attached)."""


# ---- where a node's worker listens ------------------------------------------------------
def worker_dir() -> Path:
    """The folder of this user's worker sockets and logs: $FEDISGUISE_WORKER_DIR, else
    $XDG_RUNTIME_DIR/fedisguise-workers, else /tmp/fedisguise-workers-<uid> (not $TMPDIR: a
    socket's path must stay under 108 bytes). Created 0700, refused when another user owns
    it or others may enter it (a socket there could be impersonated)."""
    if os.environ.get(DIR_ENV):
        folder = Path(os.environ[DIR_ENV])
    elif os.environ.get("XDG_RUNTIME_DIR"):
        folder = Path(os.environ["XDG_RUNTIME_DIR"]) / "fedisguise-workers"
    else:
        folder = Path("/tmp") / f"fedisguise-workers-{os.getuid()}"
    if len(str(folder)) > SOCKET_PATH_MAX - len("/node-0123456789abcdef0123.sock"):
        raise WorkerError(f"{folder}: too long a path for a Unix socket (at most "
                          f"{SOCKET_PATH_MAX} bytes); set ${DIR_ENV} to a shorter folder")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise WorkerError(f"{folder}: must be owned by uid {os.getuid()} with mode 0700 "
                          f"(is uid {st.st_uid}, mode {st.st_mode & 0o777:04o}); remove it")
    return folder


def source_fingerprint() -> str:
    """A digest of this interpreter and of this code's source files (relative path and
    content): a new one on any edit, and the same for the checkout and for the copy Flower
    installs from the app bundle, so a worker started beside a SuperNode serves its messages."""
    # the environment (a venv's prefix) and the interpreter it runs, however it was called
    # (`python` and the `python3.11` of a script's shebang are one interpreter)
    h = hashlib.sha256(f"{sys.prefix}|{os.path.realpath(sys.executable)}".encode())
    for name in SOURCE_DIRS:
        for path in sorted((PACKAGE_ROOT / name).rglob("*.py")):
            h.update(f"{path.relative_to(PACKAGE_ROOT)}\n".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def socket_path(node_config: dict) -> Path:
    """The socket of the worker that serves a node with this config, under this code."""
    h = hashlib.sha256(source_fingerprint().encode())
    for key in sorted(node_config):
        h.update(f"{key}={node_config[key]!r}\n".encode())
    return worker_dir() / f"node-{h.hexdigest()[:20]}.sock"


# ---- framing: length-prefixed byte strings ----------------------------------------------
def _send(conn: socket.socket, *frames: bytes) -> None:
    conn.sendall(b"".join(struct.pack(">Q", len(f)) + f for f in frames))


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other end closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv(conn: socket.socket) -> bytes:
    (length,) = struct.unpack(">Q", _recv_exact(conn, 8))
    return _recv_exact(conn, length)


def _encode(content: RecordDict, context: Context) -> tuple[bytes, bytes]:
    return (recorddict_to_proto(content).SerializeToString(),
            context_to_proto(context).SerializeToString())


def _decode(content: bytes, context: bytes) -> tuple[RecordDict, Context]:
    proto_content, proto_context = ProtoRecordDict(), ProtoContext()
    proto_content.ParseFromString(content)
    proto_context.ParseFromString(context)
    return recorddict_from_proto(proto_content), context_from_proto(proto_context)


# ---- the ClientApp's side ---------------------------------------------------------------
def forward(kind: str, content: RecordDict, context: Context) -> RecordDict:
    """Have this node's worker (started here when none runs) answer a `kind` message; the
    node's persistent state comes back into `context.state`."""
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}; valid: {list(KINDS)}")
    path = socket_path(dict(context.node_config))
    with _connected(path) as conn:
        _send(conn, kind.encode(), *_encode(content, context))
        try:
            status = _recv(conn)
            body = [_recv(conn) for _ in range(2 if status == b"ok" else 1)]
        except EOFError:
            raise WorkerError(f"the node's worker ({path.with_suffix('.log')}) ended before "
                              f"it replied to the {kind} message") from None
    if status != b"ok":
        raise WorkerError(f"the node's worker failed on the {kind} message:\n"
                          f"{body[0].decode(errors='replace')}")
    reply, returned = _decode(*body)
    context.state = returned.state
    return reply


@contextlib.contextmanager
def _connected(path: Path):
    conn = _try_connect(path)
    if conn is None:
        with _locked(path.with_suffix(".lock")):  # one start, however many messages wait
            conn = _try_connect(path) or _start(path)
    try:
        yield conn
    finally:
        conn.close()


def _try_connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


@contextlib.contextmanager
def _locked(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def prestart(node_config: dict, supernode: int, spawn=None) -> subprocess.Popen | None:
    """Start the worker of a node with this config beside its SuperNode (pid `supernode`),
    before any message: its imports then overlap the federation's start instead of
    delaying round 1. `spawn(args)` starts the command (default: detached, logging into
    the worker folder). None when one listens already."""
    path = socket_path(node_config)
    with _locked(path.with_suffix(".lock")):
        conn = _try_connect(path)
        if conn is not None:
            conn.close()
            return None
        if spawn is None:
            return _spawn(path, supernode)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead worker's socket
        return spawn(worker_command(path, supernode))


def worker_command(path: Path, watch: int) -> list[str]:
    return [sys.executable, "-m", WORKER_MODULE, str(path), "--watch", str(watch)]


def _spawn(path: Path, watch: int) -> subprocess.Popen:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a dead worker's socket
    log = os.open(path.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return subprocess.Popen(
            worker_command(path, watch), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            cwd=str(PACKAGE_ROOT),
            start_new_session=True)  # outlives the one-message process that starts it
    finally:
        os.close(log)


def _start(path: Path) -> socket.socket:
    """Start the worker for `path` and connect once it listens (it binds after its imports,
    so a connection means a warm worker)."""
    log_path = path.with_suffix(".log")
    process = _spawn(path, supernode_pid())
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise WorkerError(f"the node's worker exited with code {process.returncode} before "
                              f"it listened; its log {log_path}:\n{_tail(log_path)}")
        conn = _try_connect(path)
        if conn is not None:
            return conn
        time.sleep(0.05)
    process.kill()
    raise WorkerError(f"the node's worker did not listen on {path} within "
                      f"{START_TIMEOUT:.0f} s; its log {log_path}:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _parent(pid: int) -> int:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


LAUNCHER = b"fedisguise.deployment.supernode.launcher\x00supernode"  # its command line


def supernode_pid() -> int:
    """The `flower-supernode` this process serves (an ancestor: SuperNode -> SuperExec ->
    flwr-clientapp, or SuperNode -> zygote -> its fork under
    fedisguise.deployment.supernode.launcher), else this process's parent; 0 where /proc cannot
    tell."""
    pid = os.getppid()
    first = pid
    while pid > 1:
        try:
            cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes()
        except OSError:
            break
        if b"flower-supernode" in cmdline or LAUNCHER in cmdline:
            return pid
        pid = _parent(pid)
    return first if Path("/proc").is_dir() else 0
