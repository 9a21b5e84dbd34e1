"""Ends a local federation's processes when the run.py that started them dies, even by SIGKILL.

Every process of a `LocalFederation` (SuperLink, SuperNodes, and the helpers they spawn:
`flower-superexec`, `flwr-serverapp`, `flwr-clientapp`) carries the federation's marker in its
environment, which children inherit even when they are re-parented or leave the process
group. The reaper is a separate process, in its own session, holding the read end of a pipe
whose write end only run.py holds: when run.py exits by any means, the read returns EOF and the
reaper ends every marked process.

    python -m fedisguise.deployment.reaper MARKER     # started by LocalFederation, never by hand
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

MARKER_ENV = "FEDISGUISE_FEDERATION"
NODE_ENV = "FEDISGUISE_NODE"  # "superlink", "supernode-<i>" or "submit"


def marked(marker: str, node: str | None = None) -> list[int]:
    """Live processes (of this user) whose environment carries `marker` (and `node`)."""
    want = f"{MARKER_ENV}={marker}".encode()
    want_node = f"{NODE_ENV}={node}".encode() if node is not None else None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if want in env and (want_node is None or want_node in env):
            found.append(int(entry.name))
    return found


def end_marked(marker: str, node: str | None = None, grace: float = 5.0) -> list[int]:
    """SIGTERM every marked process, SIGKILL what is left after `grace` s; the pids ended."""
    return terminate(lambda: marked(marker, node), grace)


def terminate(find: Callable[[], Iterable[int]], grace: float) -> list[int]:
    """SIGTERM the processes `find` names, wait up to `grace` s for them to go, then SIGKILL
    every process `find` names by then; the pids signalled first."""
    pids = set(find())
    for pid in pids:
        _send(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pids & set(find()):
        time.sleep(0.1)
    for pid in find():
        _send(pid, signal.SIGKILL)
    return sorted(pids)


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    marker = argv[1]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe decides
    sys.stdin.buffer.read()  # EOF: the parent closed the pipe or died
    end_marked(marker)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
