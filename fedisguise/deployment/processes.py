"""The machine's processes as a federation's launcher and its nodes see them: Flower's executables,
a process's live descendants, ending them. A leaf: it imports nothing of the package but the
reaper's `terminate`, so the launcher (deployment), the SuperNode launcher (supernode/launcher.py)
and the node's worker (supernode/worker.py) share it without importing each other."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from fedisguise.deployment.reaper import terminate


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


def descendants(pid: int) -> list[int]:
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


def end_descendants(pid: int, grace: float = 3.0, known: Iterable[int] = ()) -> None:
    """SIGTERM every live descendant of `pid` (and the `known` pids, descendants seen
    earlier that may have been re-parented since), then SIGKILL those left after `grace` s."""
    terminate(lambda: set(descendants(pid)) | {p for p in known if alive(p)}, grace)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def signal_tree(process: subprocess.Popen, sig: int) -> None:
    for pid in [process.pid, *descendants(process.pid)]:
        for send in (lambda p: os.killpg(os.getpgid(p), sig), lambda p: os.kill(p, sig)):
            try:
                send(pid)
            except (ProcessLookupError, PermissionError):
                pass


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # loaded here: a preexec_fn must not import (locks, threads)


def die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the thread that started it dies (run.py's main
    thread); the reaper covers the grandchildren, which this does not reach."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
