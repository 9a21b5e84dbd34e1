#!/usr/bin/env python
"""How simulation time and memory grow with the number of clients.

For each federation size (10, 100, 1000 clients by default) one fresh `run.py` process
simulates Fashion-MNIST's whole training split divided between the clients (IID), with
`strategy.fraction_train` = `fraction_evaluate` = 0.1, 2 rounds, lenet, 1 local epoch, a
1000-image test set. Printed per size: s/round (mean `round_seconds`), s per sampled client
(s/round ÷ clients sampled per round) and peak memory: the largest sum of PSS (proportional
set size: shared pages counted once over the processes sharing them) over the run's whole
process tree, Ray's workers included, sampled every 0.2 s; the largest single process's RSS
beside it. Ratios against the smallest size come last.

Every size trains on the same 6000 images a round in all (1 client of 6000 at 10 clients,
100 of 60 at 1000): what grows with the sampled clients is their per-client cost. A control
run (`control`) holds the largest federation but samples as many clients a round as the
second size does: its s/round against that size's shows whether time follows the sampled
clients or the total.

    python bench/scale.py --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [pid], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _memory(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in bytes, (0, 0) if it is gone."""
    try:
        text = (Path("/proc") / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return 0, 0
    fields = {line.split(":")[0]: int(line.split()[1]) * 1024
              for line in text.splitlines()[1:] if line.split()[-1] == "kB"}
    return fields.get("Pss", 0), fields.get("Rss", 0)


class PeakMemory(threading.Thread):
    """Samples a process tree's summed PSS and its largest RSS until stopped."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_pss = self.peak_rss = 0
        self.processes = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            pids = _tree(self.pid)
            sizes = [_memory(p) for p in pids]
            self.peak_pss = max(self.peak_pss, sum(s[0] for s in sizes))
            self.peak_rss = max(self.peak_rss, max((s[1] for s in sizes), default=0))
            self.processes = max(self.processes, len(pids))
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


def run_size(clients: int, rounds: int, fraction: float, out: Path, name: str = "",
             folder: str = "") -> dict[str, float]:
    name = name or f"scale-{clients}"
    command = [sys.executable, str(ROOT / "run.py"), "--config", str(ROOT / "configs" / "fedavg.toml"),
               "--clients", str(clients), "--rounds", str(rounds), "--out", str(out),
               "--set", f"experiment.name={name}",
               "--set", f"strategy.fraction_train={fraction}",
               "--set", f"strategy.fraction_evaluate={fraction}",
               "--set", "data.test_samples=1000"]
    if folder:  # your own images: the same sizes on an image folder
        command += ["--set", "data.dataset=folder", "--set", f"data.data_dir={folder}"]
    started = time.perf_counter()
    log = (out / f"{name}.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    sampler = PeakMemory(process.pid)
    sampler.start()
    code = process.wait()
    sampler.stop()
    log.close()
    if code != 0:
        tail = (out / f"{name}.log").read_text()[-3000:]
        raise RuntimeError(f"{clients} clients: run.py exited {code}:\n{tail}")
    record = json.loads((out / name / "metrics.json").read_text())
    seconds = [r["round_seconds"] for r in record["rounds"]]
    sampled = max(1, math.floor(fraction * clients + 1e-9))  # Flower: int(fraction * n)
    per_round = sum(seconds) / len(seconds)
    return {"clients": clients, "sampled_per_round": sampled, "s_per_round": per_round,
            "round_seconds": seconds, "s_per_sampled_client": per_round / sampled,
            "peak_pss_mb": sampler.peak_pss / 2**20, "peak_process_rss_mb": sampler.peak_rss / 2**20,
            "processes": sampler.processes, "wall_seconds": time.perf_counter() - started,
            "final_test_accuracy": record["final"]["test_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--folder", default="", help="an image folder (data.dataset = "
                        "folder) instead of Fashion-MNIST; bench/data.py writes one")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="fedisguise-scale-") as tmp:
        for i, clients in enumerate(args.clients, 1):
            print(f"[{i}/{len(args.clients)}] {clients} clients ...", file=sys.stderr, flush=True)
            results.append(run_size(clients, args.rounds, args.fraction, Path(tmp),
                                    folder=args.folder))
            r = results[-1]
            print(f"    {r['s_per_round']:.2f} s/round, {r['s_per_sampled_client']:.3f} s per "
                  f"sampled client, peak {r['peak_pss_mb']:.0f} MB", file=sys.stderr)
        if len(args.clients) > 1:
            largest, like = max(args.clients), sorted(args.clients)[1]
            sampled = max(1, math.floor(args.fraction * like))
            print(f"[control] {largest} clients, {sampled} sampled ...", file=sys.stderr,
                  flush=True)
            control = run_size(largest, args.rounds, sampled / largest, Path(tmp),
                               name=f"control-{largest}", folder=args.folder)
    base = results[0]
    ratios = {str(r["clients"]): {
        "s_per_round": r["s_per_round"] / base["s_per_round"],
        "sampled_clients": r["sampled_per_round"] / base["sampled_per_round"],
        "peak_memory": r["peak_pss_mb"] / base["peak_pss_mb"]} for r in results}
    report = {"rounds": args.rounds, "fraction": args.fraction, "cpus": os.cpu_count(),
              "sizes": results, "ratios_to_smallest": ratios}
    if len(args.clients) > 1:
        twin = next(r for r in results if r["clients"] == like)
        report["control"] = {**control, "compare_with_clients": like,
                             "s_per_round_ratio": control["s_per_round"] / twin["s_per_round"],
                             "steady_ratio": control["round_seconds"][-1]
                             / twin["round_seconds"][-1]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for r in results + ([report["control"]] if "control" in report else []):
        print(f"{r['clients']:5d} clients, {r['sampled_per_round']:4d} sampled: "
              f"{r['s_per_round']:7.2f} s/round (last round {r['round_seconds'][-1]:.2f}), "
              f"{r['s_per_sampled_client']:.3f} s/sampled client, peak {r['peak_pss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
