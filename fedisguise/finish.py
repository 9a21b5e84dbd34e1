"""What follows a trained model: the defence's own record, the privacy figures and the
attacks, then metrics.json and summary.md.

run.py's driver does this after Flower returns (fedisguise.experiment); under a user's own
`flwr run .` the ServerApp does it itself (fedisguise.fl.server_app), so both paths write the same
results. Where the nodes' keys cannot be known here (a federation this machine did not start,
whose SuperNodes may bring their own key files), privacy figures are skipped with that reason
and attacks are refused: never figures for a key that may not be the node's.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from fedisguise.config import Config

REMOTE_KEYS = ("the SuperNodes of a federation this machine did not start (--superlink, or "
               "your own `flwr run`) may disguise with their own disguise-key-file and draw "
               "from their own secret beside it, which this machine cannot see")


def after_training(cfg: Config, record: dict[str, Any], remote: bool,
                   training_seconds: float) -> dict[str, Any]:
    """Add the figures to a finished run's `record` and write it; returns it. KeyboardInterrupt
    (or a signal that unwinds as one) marks it `interrupted` with the figures done so far."""
    from fedisguise.interrupts import as_interrupt
    from fedisguise.preflight import keys_known
    from fedisguise.privacy.figures import plain_grid, privacy_figures
    from fedisguise.resolved import resolve
    from fedisguise.results import rewrite_record

    # Where the run's time went (a grid adds them up, fedisguise.grids.table): training is
    # everything up to a trained model, Flower's start and the transformation network's
    # training included.
    record["timing"] = {"training": training_seconds}
    known = keys_known(cfg, remote=remote)
    run = resolve(cfg)  # the trained run's config: after the defence prepared itself
    try:
        started = time.perf_counter()
        record.update(run.disguise.defence.run_record(cfg))
        if not cfg.disguised:
            record["grid"] = plain_grid(cfg, cfg.run_dir)
        elif known:
            record["privacy"] = privacy_figures(run, record, cfg.run_dir)
        else:  # never figures for a key that may not be the one node 0 used
            record["privacy"] = {**(record.get("privacy") or {}), "skipped": REMOTE_KEYS}
            print(f"privacy figures skipped: {REMOTE_KEYS}", file=sys.stderr)
        record["timing"]["privacy"] = time.perf_counter() - started
        if cfg.attacks and not known:
            raise RuntimeError(f"attacks not run: {REMOTE_KEYS}")  # preflight refuses this
        started = time.perf_counter()
        if cfg.attacks:
            from fedisguise.attacks.suite import run_attacks

            record["attacks"] = run_attacks(run, cfg.run_dir)
        record["timing"]["attacks"] = time.perf_counter() - started
    except (KeyboardInterrupt, Exception) as why:  # the figures done so far are kept
        interrupt = why if isinstance(why, KeyboardInterrupt) else as_interrupt(why)
        if interrupt is None:
            raise
        record["status"] = "interrupted"
        record["error"] = f"{interrupt or 'interrupted (Ctrl-C)'} after training, during " \
                          "the privacy figures or attacks"
        rewrite_record(cfg.run_dir, record)
        if interrupt is why:
            raise
        raise interrupt from why
    return rewrite_record(cfg.run_dir, record)
