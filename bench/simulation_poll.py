#!/usr/bin/env python
"""What the simulation server's poll beat costs a round, measured in one process.

A round of a simulation waits twice for its clients (train, then evaluate), and Flower's
in-memory Grid looks for their replies every 0.1 s, so about 0.05 s a wait is spent after
the last reply is in. fedisguise polls every `server_app.SIMULATION_POLL` s instead. This
runs the same small federation with Flower's beat and with ours, alternately (A B A B ...,
so that both sides see the same minutes of a shared machine), and prints the median seconds
per round after round 1 of each, their ratio, and whether the final accuracies agree to
every digit (they must: the beat changes when replies are collected, never which).

    python bench/simulation_poll.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedisguise.fl import server_app  # noqa: E402
from fedisguise.config import load_config  # noqa: E402
from fedisguise.experiment import run_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLOWER_BEAT = 0.1  # flwr's InMemoryGrid pull_interval


def one_run(beat: float, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(median s/round after round 1, final accuracy) of one run with the given beat."""
    server_app.SIMULATION_POLL = beat
    cfg = load_config(ROOT / "configs" / "fedavg.toml").with_overrides([
        f"experiment.out={out}", f"experiment.name=beat-{beat}",
        f"experiment.rounds={args.rounds}", f"experiment.clients={args.clients}",
        f"data.train_per_client={args.images}", "data.test_samples=2000",
        *([] if Path("/usr/share/datasets/fashion-mnist").is_dir()
          else ["data.dataset=synthetic"])])
    record = run_experiment(cfg, force=True)
    seconds = [r["round_seconds"] for r in record["rounds"]][1:]
    return statistics.median(seconds), record["final"]["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--images", type=int, default=100, help="training images per client")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ours = server_app.SIMULATION_POLL
    runs: dict[float, list[tuple[float, float]]] = {FLOWER_BEAT: [], ours: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for beat in runs:
                runs[beat].append(one_run(beat, Path(tmp), args))
    flower = statistics.median(s for s, _ in runs[FLOWER_BEAT])
    fast = statistics.median(s for s, _ in runs[ours])
    result = {"clients": args.clients, "images": args.images, "rounds": args.rounds,
              "repeats": args.repeats, "flower_beat_s": FLOWER_BEAT, "our_beat_s": ours,
              "round_s_flower_beat": round(flower, 3), "round_s_our_beat": round(fast, 3),
              "ratio": round(fast / flower, 3),
              "same_accuracy": len({a for r in runs.values() for _, a in r}) == 1}
    print(json.dumps(result, indent=2) if args.json else
          f"s/round: {flower:.3f} at Flower's {FLOWER_BEAT} s beat, {fast:.3f} at {ours} s "
          f"(ratio {result['ratio']}); same final accuracy: {result['same_accuracy']}")


if __name__ == "__main__":
    main()
