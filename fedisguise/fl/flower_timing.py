"""Flower 1.41's hard-coded retry wait, shortened: the one patch the ServerApp and the
SuperNode launcher (fedisguise.deployment.supernode.launcher) share.

Only for the Flower releases whose internals were read for this (FLOWER_SERIES); on any other
nothing is changed.
"""

from __future__ import annotations

FLOWER_SERIES = ("1.41.",)  # the releases whose SuperNode loop and SuperExec were read


def supported(version: str) -> bool:
    return version.startswith(FLOWER_SERIES)


def shorten_retries(first: float) -> bool:
    """Retry a pull of a message's objects after `first` s instead of Flower's 1 s (doubling
    up to its cap as before). A SuperNode records a message before it has pulled the
    message's objects, so a ClientApp that starts at once finds them missing: one 1 s backoff
    per message, which the 2.5 s start of a stock flwr-clientapp used to hide (the SuperLink
    and the ServerApp's pulls of replies alike). False, and nothing changed, on a Flower
    whose pulls were not read for this."""
    import flwr
    from flwr.supercore.inflatable import inflatable_utils

    functions = (inflatable_utils.pull_objects,
                 inflatable_utils.pull_and_inflate_object_from_tree)
    if not supported(flwr.__version__) or not all(
            "initial_backoff" in (f.__kwdefaults__ or {}) for f in functions):
        return False
    for function in functions:
        function.__kwdefaults__["initial_backoff"] = min(
            first, function.__kwdefaults__["initial_backoff"])
    return True
