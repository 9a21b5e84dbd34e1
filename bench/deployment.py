#!/usr/bin/env python
"""What a round costs in deployment against simulation and against Flower's own floor.

In one process, on configs/smoke.toml with 2 clients (5 rounds by default):

- simulation (`run_simulation`, Ray);
- deployment: a SuperLink and 2 SuperNodes on loopback, launched by
fedisguise.deployment.supernode.launcher
  (Flower's SuperNode polling every 0.2 s, each message's `flwr-clientapp` forked from a warm
  process), fedisguise's ClientApp handing each message to the node's warm worker
  (fedisguise.deployment.supernode.worker);
- the same with Flower's stock `flower-supernode` (`deployment.fast_nodes = false`);
- deployment without the worker (`warm-worker=false`, stock SuperNodes: every message trains
  in the fresh `flwr-clientapp` process Flower starts for it, as before either existed);
- Flower's floor: the same federation running bench/flower_floor, a ClientApp that replies
  without working, with the same model bytes and the same FedAvg train + evaluate rounds;
  with fast and with stock SuperNodes.

s/round is each run's mean `round_seconds` (the start of a round's train phase to the end of
its evaluate phase) over all rounds, and `steady` the median of rounds 2.. (round 1 also
starts the workers and prepares the data). Printed: deployment ÷ simulation, and fedisguise's
overhead above the floor (deployment − floor under the same SuperNodes, s/round).

    python bench/deployment.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedisguise.config import DRIVER, DRIVER_KEY, load_config  # noqa: E402
from fedisguise.deployment.federation import LocalFederation  # noqa: E402
from fedisguise.experiment import run_experiment  # noqa: E402
from fedisguise.models import build_model  # noqa: E402
from fedisguise.deployment.submission import APP_DIR, submit_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLOOR_APP = ROOT / "bench" / "flower_floor"


def figures(seconds: list[float]) -> dict[str, float]:
    return {"s_per_round": statistics.fmean(seconds),
            "steady_s_per_round": statistics.median(seconds[1:] or seconds),
            "rounds": len(seconds)}


def fedisguise_run(cfg, mode: str, out: Path, name: str, worker: bool = True,
                   fast: bool = True) -> dict[str, float]:
    cfg = replace(cfg, experiment=replace(cfg.experiment, mode=mode, out=str(out), name=name),
                  deployment=replace(cfg.deployment, fast_nodes=fast))
    started = time.perf_counter()
    if mode == "simulation":
        record = run_experiment(cfg, force=True)
    else:  # the same run as run_experiment's, with the node option the bench varies
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        options = {} if worker else {"warm-worker": "false"}
        with LocalFederation.from_config(cfg, cfg.run_dir / "logs", options) as federation:
            # quiet: Flower's streamed logs would land in --json's stdout
            submit_app(APP_DIR, {**cfg.to_flat(), DRIVER_KEY: DRIVER}, federation.flwr_home,
                       federation.env, quiet=True)
        record = json.loads((cfg.run_dir / "metrics.json").read_text())
    if record.get("status") != "finished":
        raise RuntimeError(f"{cfg.experiment.name}: run {record.get('status')}: "
                           f"{record.get('error')}")
    result = figures([r["round_seconds"] for r in record["rounds"]])
    result["wall_seconds"] = time.perf_counter() - started
    result["final_test_accuracy"] = record["final"]["test_accuracy"]
    return result


def floor_run(cfg, out: Path, name: str, fast: bool = True) -> dict[str, float]:
    shapes = {name: list(t.shape) for name, t in build_model(cfg.model.name, 1, 10, 28)
              .state_dict().items()}
    timings = out / f"{name}-timings.json"
    started = time.perf_counter()
    with LocalFederation(cfg.experiment.clients, out / f"{name}-logs",
                         fast_nodes=fast) as federation:
        submit_app(FLOOR_APP, {"rounds": cfg.experiment.rounds,
                               "clients": cfg.experiment.clients,
                               "timings": str(timings), "shapes": json.dumps(shapes)},
                   federation.flwr_home, federation.env, quiet=True)
    seconds = json.loads(timings.read_text())["round_seconds"]
    result = figures([seconds[k] for k in sorted(seconds, key=int)])
    result["wall_seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "smoke.toml"))
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-no-worker", action="store_true",
                        help="leave out the run without the warm worker (the slowest)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    cfg = load_config(args.config)
    cfg = replace(cfg, experiment=replace(cfg.experiment, clients=args.clients,
                                          rounds=args.rounds))
    # name: (kind, worker, fast SuperNodes)
    runs = {"simulation": ("simulation", True, True),
            "deployment": ("deployment", True, True),
            "floor": ("floor", False, True),
            "deployment-stock-nodes": ("deployment", True, False),
            "floor-stock-nodes": ("floor", False, False)}
    if not args.skip_no_worker:
        runs["deployment-no-worker"] = ("deployment", False, False)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="fedisguise-bench-") as tmp:
        out = Path(tmp)
        for i, (name, (kind, worker, fast)) in enumerate(runs.items(), 1):
            print(f"[{i}/{len(runs)}] {name} ...", file=sys.stderr, flush=True)
            if kind == "floor":
                results[name] = floor_run(cfg, out, name, fast)
            else:
                results[name] = fedisguise_run(cfg, kind, out, name, worker, fast)
            print(f"    {results[name]['s_per_round']:.2f} s/round "
                  f"(steady {results[name]['steady_s_per_round']:.2f})", file=sys.stderr)
    sim, dep, floor = results["simulation"], results["deployment"], results["floor"]
    stock, stock_floor = results["deployment-stock-nodes"], results["floor-stock-nodes"]
    summary = {}
    for key in ("s_per_round", "steady_s_per_round"):
        summary[key] = {
            "deployment_over_simulation": dep[key] / sim[key],
            "floor_over_simulation": floor[key] / sim[key],
            "overhead_above_floor_s": dep[key] - floor[key],
            "stock_nodes_over_simulation": stock[key] / sim[key],
            "stock_floor_over_simulation": stock_floor[key] / sim[key],
            "stock_overhead_above_stock_floor_s": stock[key] - stock_floor[key],
            "stock_nodes_over_fast_nodes": stock[key] / dep[key],
        }
        if "deployment-no-worker" in results:
            summary[key]["no_worker_over_deployment"] = (
                results["deployment-no-worker"][key] / dep[key])
    report = {"config": args.config, "clients": args.clients, "rounds": args.rounds,
              "runs": results, "ratios": summary}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for name, r in results.items():
        print(f"{name:22s} {r['s_per_round']:6.2f} s/round  steady {r['steady_s_per_round']:6.2f}")
    for key, s in summary.items():
        print(f"{key}: " + ", ".join(f"{k} {v:.2f}" for k, v in s.items()))


if __name__ == "__main__":
    main()
