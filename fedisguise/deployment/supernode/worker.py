"""A SuperNode's warm worker: one long-lived process per node that answers its messages with
torch imported and the node's prepared data in memory (fedisguise.fl.client_work's cache).

The ClientApp's side, the socket's place and the wire format are fedisguise.fl.worker_link
(whose docstring tells the whole design); this is the process it starts:

    python -m fedisguise.deployment.supernode.worker SOCKET --watch SUPERNODE_PID
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path

from fedisguise.fl.worker_link import IDLE_ENV, _decode, _encode, _recv, _send


# ---- the worker's side ------------------------------------------------------------------
def serve(path: Path, watch: int = 0, idle: float | None = None) -> None:
    """Answer messages on `path` until `watch` (a pid; 0: none) is gone, `idle` s pass
    without one, or SIGTERM."""
    from fedisguise.deployment.processes import alive
    from fedisguise.fl import client_work  # torch, data, disguises: imported once, here
    from fedisguise.resolved import resolve_flat

    idle = float(os.environ.get(IDLE_ENV, "600")) if idle is None else idle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    old_umask = os.umask(0o077)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    inode = path.stat().st_ino
    server.listen(16)
    server.settimeout(1.0)
    handlers = {"train": client_work.train_reply, "evaluate": client_work.evaluate_reply}
    last = time.monotonic()
    try:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                if (watch and not alive(watch)) or time.monotonic() - last > idle:
                    break
                continue
            _answer(conn, handlers, resolve_flat)
            last = time.monotonic()
        # Leaving: new messages must start a new worker, and any already queued get answered.
        unlink_own(path, inode)
        server.setblocking(False)
        while True:
            try:
                conn, _ = server.accept()
            except (BlockingIOError, OSError):
                break
            _answer(conn, handlers, resolve_flat)
    finally:
        server.close()
        unlink_own(path, inode)


def unlink_own(path: Path, inode: int) -> None:
    """Remove the socket file if it is still this worker's (a successor may have bound the
    same name already)."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_ino == inode:
            path.unlink()


def _answer(conn: socket.socket, handlers: dict, resolve_flat) -> None:
    """Read one request from `conn`, run its handler on the run its config describes
    (resolved once per run: fedisguise.resolved), send the reply or the traceback."""
    with conn:
        conn.setblocking(True)
        if peer_uid(conn) != os.getuid():
            return  # only the node's own user may ask
        try:
            kind = _recv(conn).decode()
            content, context = _decode(_recv(conn), _recv(conn))
        except (EOFError, ValueError, UnicodeDecodeError, OSError):
            return  # a client that went away, or not one of ours
        try:
            if kind not in handlers:
                raise ValueError(f"unknown message kind {kind!r}")
            reply = handlers[kind](content, context, resolve_flat(
                dict(context.run_config), context.run_id))
            frames = (b"ok", *_encode(reply, context))
        except Exception:  # the ClientApp raises it again, with this traceback
            frames = (b"error", traceback.format_exc().encode())
        with contextlib.suppress(OSError):
            _send(conn, *frames)


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", type=Path)
    parser.add_argument("--watch", type=int, default=0, help="end when this pid is gone")
    parser.add_argument("--idle", type=float, default=None, help=f"seconds (${IDLE_ENV})")
    args = parser.parse_args(argv)
    serve(args.socket, args.watch, args.idle)


if __name__ == "__main__":
    main()
