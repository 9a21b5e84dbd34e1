"""The signal this process is unwinding from, if any.

run.py turns Ctrl-C and SIGTERM into KeyboardInterrupt. Clean-up that runs while it unwinds
(Flower's simulation runtime stopping its backend and Ray, say) can raise an error of its
own, which then replaces the KeyboardInterrupt. Without this record an interrupted run would
be marked failed, a grid would go on to its next cell, and the CLI would exit 1 instead of
128 + the signal.
"""

from __future__ import annotations

_RECEIVED: list[str] = []  # "SIGINT" / "SIGTERM", in the order they came


def record(name: str) -> None:
    """Called by run.py's signal handlers before they raise."""
    _RECEIVED.append(name)


def received() -> str | None:
    """The first interrupting signal this process received, or None."""
    return _RECEIVED[0] if _RECEIVED else None


def clear() -> None:
    _RECEIVED.clear()


def as_interrupt(err: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt `err` stands in for, if a signal is unwinding this process:
    its message names the signal and the error that replaced the interrupt."""
    name = received()
    if name is None or isinstance(err, KeyboardInterrupt):
        return None
    what = "interrupted (Ctrl-C)" if name == "SIGINT" else "terminated (SIGTERM)"
    return KeyboardInterrupt(f"{what}; while stopping: {type(err).__name__}: {err}")
