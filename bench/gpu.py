#!/usr/bin/env python
"""What a GPU buys the research grid, measured in one script on one machine.

1. `rounds`: the full grid's federation (configs/compare-fmnist-full.toml: all 60 000
   training images over 20 clients, Dirichlet 0.5, lenet, 1 local epoch, batch 32, the whole
   test split), `none`, a few rounds, first with every client on the CPU
   (resources.num_gpus = 0, device cpu: the baseline), then with the clients sharing the GPU
   at each fraction asked for (resources.num_gpus = f, device cuda). Printed: s/round after
   round 1, round 1 (start-up), and the ratio to the CPU run; where each client trained is
   read from updates.json (what the clients report), not assumed.
2. `chain`: the grid's `chain` cell of `none`, seed 0 (gradient inversion of one image,
   1000 iterations, then Level 1 and Level 2), with the server's attacks on the CPU and on
   CUDA: wall seconds, their ratio, and the PSNR each recovered.
3. `cells`: cells of the full grid, seed 0, exactly as `run.py --compare` builds them
   (fedisguise.grids.spec.load_grid), run on the GPU one after another while the budget lasts:
   `none`'s utility cell (60 rounds: its plateau round on this machine) and membership
   cell, then the utility cell of every `LABEL=LR` given (the grid's tuning is not rerun:
   the learning rate is the one named, e.g. the CPU grid's choice).

Every stage runs `run.py` in a process of its own, with what is left of `--budget` as its
time limit; the report is rewritten after each stage, so a run cut short keeps what it
measured.

    python bench/gpu.py --json-out gpu.json --fractions 0.1 0.05 \
        --cells visualmixer-vfe0.5=0.001 disguisednets-b7-n100=0.05
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GRID = ROOT / "configs" / "compare-fmnist-full.toml"


class OutOfBudget(Exception):
    """The stage would not finish inside what is left of --budget."""


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.deadline = time.monotonic() + args.budget
        self.report: dict[str, Any] = {"cpus": os.cpu_count(), "budget_s": args.budget,
                                       "skipped": [], "failed": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        if self.args.json_out:
            Path(self.args.json_out).write_text(json.dumps(self.report, indent=2) + "\n")

    def cells(self, overrides: list[str]) -> dict[str, Any]:
        from fedisguise.grids.spec import load_grid

        base = [f"data.data_dir={self.args.data_dir}"] if self.args.data_dir else []
        grid = load_grid(GRID, base + overrides, out=str(self.work / "grid"))
        return {c.name: c.config for c in grid.cells}

    def run(self, name: str, config: Any, overrides: list[str], need: float) -> dict[str, Any]:
        """One run.py process on `config` (+ overrides); its record and wall seconds."""
        import tomli_w

        if self.left() < need:
            raise OutOfBudget(f"{name}: {self.left():.0f} s left, needs about {need:.0f} s")
        cfg = config.with_overrides([f"experiment.name={name}", *overrides])
        path = self.work / f"{name}.toml"
        path.write_bytes(tomli_w.dumps(cfg.to_dict()).encode())
        log = self.work / f"{name}.log"
        started = time.perf_counter()
        with log.open("w") as fh:
            process = subprocess.Popen(
                [sys.executable, str(ROOT / "run.py"), "--config", str(path),
                 "--out", str(self.work / "runs")],
                stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
            try:
                code = process.wait(timeout=max(1.0, self.left()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                raise OutOfBudget(f"{name}: stopped at the budget's end") from None
        wall = time.perf_counter() - started
        if code != 0:
            raise RuntimeError(f"{name}: run.py exited {code}: {log.read_text()[-1500:]}")
        run_dir = self.work / "runs" / name
        record = json.loads((run_dir / "metrics.json").read_text())
        updates = json.loads((run_dir / "updates.json").read_text())
        record["_client_devices"] = sorted({str(u.get("client_device")) for u in updates})
        return {"record": record, "wall_s": wall}

    def attempt(self, label: str, body: Any) -> Any:
        """body()'s value; None where it ran out of budget (listed under `skipped`) or
        failed (under `failed`): one broken stage or cell must not lose the others."""
        try:
            return body()
        except OutOfBudget as why:
            self.report["skipped"].append(str(why))
        except Exception as err:  # noqa: BLE001
            self.report["failed"][label] = f"{type(err).__name__}: {err}"
        return None

    def stage(self, label: str, body: Any) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {label} ({self.left():.0f} s left)",
              file=sys.stderr, flush=True)
        self.attempt(label, body)
        self.save()


def summary(out: dict[str, Any]) -> dict[str, Any]:
    from fedisguise.grids.figures import cell_figures, plateau_round

    record = out["record"]
    figures = cell_figures(record)
    return {"wall_s": round(out["wall_s"], 1),
            "s_per_round": figures["seconds_per_round"],
            "first_round_s": figures["first_round_seconds"],
            "rounds": len(record["rounds"]),
            "accuracy": figures["accuracy"],
            "plateau_round": plateau_round(figures["accuracy_per_round"]),
            "accuracy_per_round": figures["accuracy_per_round"],
            "client_devices": record["_client_devices"], "server_device": record["device"],
            "attack_figures": {k: v for k, v in figures.items()
                               if "." in k and v is not None},
            "versions": record["versions"]}


def stage_rounds(bench: Bench) -> None:
    utility = bench.cells([])["none--utility--seed0"]
    runs = bench.report.setdefault("rounds", {})
    rounds = bench.args.rounds
    settings = [("cpu", ["resources.num_gpus=0", "resources.device=cpu"])]
    device = f"resources.device={bench.args.device}"
    settings += [(f"gpu-{f:g}", [f"resources.num_gpus={f}", device])
                 for f in bench.args.fractions]
    for name, overrides in settings:
        out = bench.run(f"rounds-{name}", utility, [f"experiment.rounds={rounds}", *overrides],
                        need=60 + 15 * rounds)
        runs[name] = {k: v for k, v in summary(out).items() if k != "attack_figures"}
        base = runs.get("cpu")
        if base and name != "cpu" and base["s_per_round"]:
            runs[name]["s_per_round_vs_cpu"] = runs[name]["s_per_round"] / base["s_per_round"]
        bench.save()


def stage_chain(bench: Bench) -> None:
    chain = bench.cells([f"resources.num_gpus={bench.args.fractions[0]}"])["none--chain--seed0"]
    runs = bench.report.setdefault("chain", {})
    for name, device in (("cpu", "cpu"), ("cuda", bench.args.device)):
        gpus = 0 if device == "cpu" else bench.args.fractions[0]
        out = bench.run(f"chain-{name}", chain,
                        [f"resources.device={device}", f"resources.num_gpus={gpus}"], need=120)
        runs[name] = summary(out)
        if name == "cuda" and "cpu" in runs:
            runs[name]["wall_vs_cpu"] = runs[name]["wall_s"] / runs["cpu"]["wall_s"]
        bench.save()


def stage_cells(bench: Bench) -> None:
    gpus = f"resources.num_gpus={bench.args.fractions[0]}"
    configs = bench.cells([gpus])
    todo = [("none--utility--seed0", None), ("none--membership--seed0", None)]
    for spec in bench.args.cells:
        label, _, lr = spec.partition("=")
        todo.append((f"{label}--utility--seed0", float(lr)))
    runs = bench.report.setdefault("cells", {})
    for name, lr in todo:
        if name not in configs:
            bench.report["failed"][name] = "no such cell in the full grid"
            continue
        overrides = [f"resources.device={bench.args.device}",
                     *([f"train.lr={lr}"] if lr else [])]
        out = bench.attempt(name, lambda n=name, o=overrides: bench.run(n, configs[n], o,
                                                                        need=90))
        if out is not None:
            runs[name] = {**summary(out), "lr": out["record"]["config"]["train"]["lr"]}
            bench.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds for the whole bench (stages that do not fit are skipped)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the `rounds` stage")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1],
                        help="resources.num_gpus per client in the GPU runs")
    parser.add_argument("--cells", nargs="*", default=[],
                        help="LABEL=LR: utility cells of the full grid to run after none's")
    parser.add_argument("--stages", nargs="+", default=["rounds", "chain", "cells"],
                        choices=["rounds", "chain", "cells"])
    parser.add_argument("--device", default="cuda",
                        help="resources.device of the GPU runs (cpu only to try this script)")
    parser.add_argument("--data-dir", default="", help="data.data_dir for every run")
    parser.add_argument("--keep", type=Path, help="copy the runs' folders here")
    parser.add_argument("--json-out", help="write the report here after every stage")
    args = parser.parse_args()
    if any(not 0 < f <= 1 for f in args.fractions):
        parser.error("--fractions must lie in (0, 1]")
    import torch

    if not torch.cuda.is_available():
        print("warning: torch sees no CUDA device: every GPU run will fail", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="fedisguise-gpu-") as tmp:
        bench = Bench(args, Path(tmp))
        bench.report["cuda"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                else None)
        stages = {"rounds": stage_rounds, "chain": stage_chain, "cells": stage_cells}
        for name in args.stages:
            bench.stage(name, lambda s=stages[name]: s(bench))
        if args.keep:
            import shutil

            shutil.copytree(Path(tmp), args.keep, dirs_exist_ok=True)
    print(json.dumps(bench.report, indent=2))


if __name__ == "__main__":
    main()
