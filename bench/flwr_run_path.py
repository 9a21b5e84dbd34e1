#!/usr/bin/env python
"""Flower's supported simulation path against today's, per cell and per grid.

Flower 1.41 deprecates `flwr.simulation.run_simulation`, which simulation mode calls (README,
"Flower's deprecations"). Its supported replacement: `flwr run` against a SuperLink that runs
Flower's simulation runtime. Measured here on the same config, one after the other:

- today: `run_experiment` in simulation mode, in this process (Ray started for each run);
- supported: one `flower-superlink --simulation` started once and reused by every cell, each
  cell submitted with `flwr run … --federation-config num-supernodes=N` (Flower's simulation
  runtime starts Ray for each run in its own `flwr-simulation` process). The ServerApp
  finishes the run itself (fedisguise.finish), as under a user's own `flwr run`.

Cells alternate between the two paths. Printed: per cell, each path's wall seconds (train + the run's own figures) and the ratio;
per grid of `--cells` cells, the sums, the SuperLink's start counted once. The issue's rule:
switch if the supported path costs <= 1.2x per cell.

    python bench/flwr_run_path.py --config configs/smoke.toml --rounds 3 --cells 3 --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedisguise.config import load_config  # noqa: E402
from fedisguise.deployment.federation import child_env  # noqa: E402
from fedisguise.experiment import run_experiment  # noqa: E402
from fedisguise.deployment.ports import await_listen, free_port  # noqa: E402
from fedisguise.deployment.processes import end_descendants, flower_command  # noqa: E402
from fedisguise.deployment.submission import APP_DIR, CONNECTION, write_connection  # noqa: E402


def today(cfg, out: Path, name: str) -> float:
    cfg = replace(cfg, experiment=replace(cfg.experiment, mode="simulation", out=str(out),
                                          name=name))
    started = time.perf_counter()
    record = run_experiment(cfg, force=True)
    if record.get("status") != "finished":
        raise RuntimeError(f"{name}: {record.get('status')}: {record.get('error')}")
    return time.perf_counter() - started


def supported(cfg, out: Path, name: str, flwr_home: Path, env: dict[str, str]) -> float:
    cfg = replace(cfg, experiment=replace(cfg.experiment, mode="simulation", out=str(out),
                                          name=name))
    config_file = flwr_home / f"{name}.toml"
    config_file.write_text("".join(f'"{k}" = {json.dumps(v)}\n'
                                   for k, v in cfg.to_flat().items()))
    started = time.perf_counter()
    done = subprocess.run([flower_command("flwr"), "run", str(APP_DIR), CONNECTION,
                           "--run-config", str(config_file), "--federation-config",
                           f"num-supernodes={cfg.experiment.clients}", "--stream"],
                          env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    record = json.loads((cfg.run_dir / "metrics.json").read_text()) \
        if (cfg.run_dir / "metrics.json").is_file() else {}
    if done.returncode or record.get("status") != "finished":
        raise RuntimeError(f"{name}: flwr run exit {done.returncode}, status "
                           f"{record.get('status')}\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/smoke.toml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cells", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cfg = load_config(args.config).with_overrides([f"experiment.rounds={args.rounds}"])
    out = Path(tempfile.mkdtemp(prefix="flwr-run-path-"))
    flwr_home = out / "flwr-home"
    flwr_home.mkdir()
    env = child_env(flwr_home)
    rows = []
    started = time.perf_counter()
    port = free_port()
    superlink = subprocess.Popen(
        [flower_command("flower-superlink"), "--insecure", "--simulation",
         "--host", "127.0.0.1", "--port", str(port),
         "--disable-runtime-dependency-installation"],
        env=env, stdout=(out / "superlink.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        if not await_listen("127.0.0.1", port, 120, superlink):
            raise RuntimeError(f"the SuperLink did not listen: {out / 'superlink.log'}")
        write_connection(flwr_home, f"127.0.0.1:{port}")
        superlink_start = time.perf_counter() - started
        # cells alternate between the paths, so that a change of load falls on both
        for cell in range(args.cells):
            row = {"cell": cell, "today_s": today(cfg, out, f"today-{cell}")}
            row["supported_s"] = supported(cfg, out, f"supported-{cell}", flwr_home, env)
            row["ratio"] = row["supported_s"] / row["today_s"]
            rows.append(row)
    finally:
        end_descendants(superlink.pid)
        superlink.terminate()
        superlink.wait(timeout=30)
    result = {
        "config": args.config, "rounds": args.rounds, "clients": cfg.experiment.clients,
        "cells": rows, "superlink_start_s": superlink_start,
        "grid": {"today_s": sum(r["today_s"] for r in rows),
                 "supported_s": superlink_start + sum(r["supported_s"] for r in rows)},
    }
    result["grid"]["ratio"] = result["grid"]["supported_s"] / result["grid"]["today_s"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for r in rows:
        print(f"cell {r['cell']}: today {r['today_s']:.1f} s, supported {r['supported_s']:.1f} s"
              f", ratio {r['ratio']:.2f}")
    g = result["grid"]
    print(f"grid of {len(rows)}: today {g['today_s']:.1f} s, supported {g['supported_s']:.1f} s "
          f"(SuperLink start {superlink_start:.1f} s), ratio {g['ratio']:.2f}")


if __name__ == "__main__":
    main()
